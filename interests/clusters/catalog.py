"""The versioned cluster catalog: the contract between the language model, the item recommender
and the streaming engine.

On disk, a directory:
- `catalog.json`: version, levels, build parameters, and per cluster its id, level, parent,
  description, keywords, size (items), traffic (interactions) and top items;
- `items.csv`: every item's external id, title and cluster at each level.

The version is a content hash of what the models depend on (levels, clusters with their
descriptions, the item-to-cluster map), so a model that records it is never served with another
catalog: `Catalog.load` recomputes it and refuses a catalog whose files were edited. Only numpy
and the standard library here: the streaming worker reads catalogs too.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

FORMAT = 1


class CatalogError(ValueError):
    """A catalog that is missing, malformed, or whose content does not match its version."""


@dataclass(frozen=True)
class Cluster:
    id: int  # dense within its level
    level: int  # 0 = coarsest
    parent: int | None  # id at level - 1
    description: str
    keywords: list[str]
    size: int  # items
    traffic: int  # interactions
    top_items: list[str] = field(default_factory=list)  # titles (or ids) of the most-trafficked items


@dataclass(frozen=True)
class Catalog:
    levels: list[int]  # clusters per level, coarse to fine
    clusters: list[list[Cluster]]  # [level][id]
    item_ids: list[str]
    item_titles: list[str]
    assignments: np.ndarray  # int32 [n_levels, n_items]: cluster id of each item per level
    meta: dict = field(default_factory=dict)  # dataset, parameters, timings: not part of the version

    @cached_property
    def version(self) -> str:
        """A content hash (12 hex digits) of the clusters, their descriptions and the item map.

        Computed once per catalog object (it is frozen): hashing 10,000 items and 1,000 clusters takes
        ~1.6 ms, and a worker checks every novelty row it learns against it, so per call it held a
        1M-row table to ~330 rows/s (`benchmarks/table_ready.py`)."""
        h = hashlib.sha256()
        h.update(json.dumps({"format": FORMAT, "levels": self.levels,
                             "clusters": [[(c.id, c.level, c.parent, c.description) for c in lv]
                                          for lv in self.clusters],
                             "items": self.item_ids}, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.assignments, dtype="<i4").tobytes())
        return h.hexdigest()[:12]

    @property
    def finest(self) -> int:
        return len(self.levels) - 1

    def descriptions(self, level: int | None = None) -> list[str]:
        lv = self.finest if level is None else level
        return [c.description for c in self.clusters[lv]]

    def item_clusters(self, level: int | None = None) -> np.ndarray:
        """Cluster id of each item (dense item order of `item_ids`) at `level` (default: the finest)."""
        return self.assignments[self.finest if level is None else level]

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "version": self.version, "levels": self.levels, "meta": self.meta,
               "clusters": [[asdict(c) for c in lv] for lv in self.clusters]}
        (directory / "catalog.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False))
        with open(directory / "items.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["item_id", "title", *[f"level{lv}" for lv in range(len(self.levels))]])
            for i, (item, title) in enumerate(zip(self.item_ids, self.item_titles, strict=True)):
                writer.writerow([item, title, *self.assignments[:, i].tolist()])
        return directory

    @classmethod
    def load(cls, directory: Path) -> Catalog:
        directory = Path(directory)
        path = directory / "catalog.json"
        if not path.is_file():
            raise CatalogError(f"{directory}: no catalog.json here (build one with `explore clusters build`)")
        try:
            doc = json.loads(path.read_text())
            clusters = [[Cluster(**c) for c in lv] for lv in doc["clusters"]]
            with open(directory / "items.csv", newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))[1:]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise CatalogError(f"{directory}: unreadable catalog: {e}") from e
        table = np.array([[int(v) for v in r[2:]] for r in rows], dtype=np.int32)
        assignments = table.T.reshape(len(doc["levels"]), -1)
        catalog = cls(doc["levels"], clusters, [r[0] for r in rows], [r[1] for r in rows], assignments,
                      doc.get("meta", {}))
        if catalog.version != doc["version"]:
            raise CatalogError(f"{directory}: content does not match version {doc['version']} "
                               f"(it hashes to {catalog.version}); the files were changed after the build")
        return catalog


def check_same_items(catalog: Catalog, item_ids: list[str] | np.ndarray, what: str = "the dataset") -> None:
    """Refuse to pair a catalog with data or a model over other items (ids and their order)."""
    ids = [str(i) for i in item_ids]
    if ids != catalog.item_ids:
        missing = len(set(ids) - set(catalog.item_ids))
        raise CatalogError(f"catalog {catalog.version} and {what} disagree on the items ({len(catalog.item_ids)} vs "
                           f"{len(ids)} items, {missing} unknown to the catalog): build the catalog from the same data")
