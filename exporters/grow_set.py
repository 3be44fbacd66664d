"""`explore items fold`: the served model set grown by the items published since it was built (issue 27).

A published item is applied to users' states at once (the items topic), but it can enter a slate only
through a model set whose catalog holds it. This writes that set without retraining anything:

- the catalog with the items appended (`interests.clusters.new_items.add_items`: same clusters, same
  descriptions; the serving level keeps each item's announced placement) and its placer;
- the serving SASRec's checkpoint with the items appended as cold rows, their vectors made from their
  text by the encoder it was trained with (`interests.seqrec.new_items.extend_checkpoint`), exported as
  `seqrec` (with its ONNX parity check);
- `interest_generator` copied from the served set with the grown catalog's version (the LM names
  clusters, which did not change);
- with the mixture's level directory, `explorer` exported again over the grown SASRec and catalog, its
  item experts grown by empty rows (`ItemExperts.with_items`); the weights, head and context experts
  are the fitted ones.

The result is a staged repository for `explore models publish`, which rolls it out like any set.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from exporters.mixture_export import MixtureExport, export_mixture
from exporters.repository import write_repository
from exporters.seqrec_export import ExportResult, export_seqrec
from interests.clusters.catalog import Catalog
from interests.clusters.new_items import add_items
from interests.clusters.placement import PlacementError, load_placement, save_placement
from interests.novelty.item_experts import ITEM_EXPERTS_FILE, ItemExperts
from interests.novelty.mixture import Mixture
from interests.seqrec.new_items import extend_checkpoint


@dataclass(frozen=True)
class NewItem:
    """An item to add: its id, title and text, and its cluster at the serving level when already announced."""

    item_id: str
    title: str
    text: str
    cluster: int | None = None


@dataclass
class GrownSet:
    catalog: Catalog
    catalog_dir: Path
    checkpoint: Path
    repository: Path  # staged: `explore models publish --staged` reads it
    seqrec: ExportResult
    explorer: MixtureExport | None
    added: int


def grow_set(catalog_dir: Path, items: Sequence[NewItem], checkpoint: Path, generator: Path, out: Path,
             mixture_level: Path | None = None, top_n: int = 20, m: int = 3) -> GrownSet:
    """Write `out/catalog`, `out/seqrec.pt`, `out/repository` (and `out/mixture` with `mixture_level`).

    `generator`: the served set's `interest_generator` version directory (`<repository>/interest_generator/<v>`);
    `checkpoint`: the SASRec the served seqrec was exported from (a text model: `--text tfidf`)."""
    catalog = Catalog.load(catalog_dir)
    placer = load_placement(catalog_dir, catalog)
    if placer is None:
        raise PlacementError(f"{catalog_dir} has no placement.npz: its items cannot be placed at every level")
    decoder = json.loads((Path(generator) / "decoder.json").read_text())
    level = catalog.finest if decoder.get("level") is None else int(decoder["level"])
    fixed = {level: [i.cluster for i in items]} if items and all(i.cluster is not None for i in items) else None
    bigger, bigger_placer = add_items(catalog, placer, [i.item_id for i in items], [i.title for i in items],
                                      [i.text for i in items], fixed)
    out = Path(out)
    catalog_out = bigger.save(out / "catalog")
    save_placement(catalog_out, bigger_placer)
    ckpt = extend_checkpoint(checkpoint, [i.item_id for i in items], [i.text for i in items], bigger.version,
                             out / "seqrec.pt")
    repository = out / "repository"
    with warnings.catch_warnings():  # the tracer's notes on shapes; the parity checks are what count
        warnings.simplefilter("ignore")
        seqrec = export_seqrec(ckpt, catalog_out, repository, top_n=top_n, level=level)
    write_repository(repository, {"interest_generator": lambda d: _generator_copy(Path(generator), d, bigger.version)})
    explorer = None
    if mixture_level is not None:
        grown = _grown_level(Path(mixture_level), bigger, len(items), out / "mixture")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            explorer = export_mixture(grown, catalog_out, repository, m=m, top_n=top_n, seqrec=ckpt)
    return GrownSet(bigger, catalog_out, ckpt, repository, seqrec, explorer, len(items))


def _generator_copy(source: Path, dest: Path, catalog_version: str) -> Path:
    """The served LM's files under the grown catalog's version (its clusters are the same ones)."""
    shutil.copytree(source, dest, dirs_exist_ok=True)
    spec = json.loads((dest / "decoder.json").read_text())
    (dest / "decoder.json").write_text(json.dumps({**spec, "catalog_version": catalog_version}))
    return dest


def _grown_level(level_dir: Path, catalog: Catalog, added: int, dest: Path) -> Path:
    """A copy of a fitted mixture level for the grown catalog: its item experts have rows for the new items."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(level_dir, dest)
    mix = Mixture.load(dest)
    Mixture(mix.weights, mix.level, {**mix.fitted_on, "catalog_version": catalog.version,
                                     "grown_from": mix.fitted_on.get("catalog_version")}).save(dest)
    if (dest / ITEM_EXPERTS_FILE).is_file():
        experts = ItemExperts.load(dest)
        experts.with_items(catalog.item_clusters(mix.level)[-added:] if added else []).save(dest)
    return dest


__all__ = ["GrownSet", "NewItem", "grow_set"]
