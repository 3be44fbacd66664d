"""The exported models a worker serves, read from a Triton model repository.

`ModelFiles` checks that both models (and `explorer`, the mixture of experts, when exported) are
there and were exported with the worker's catalog (the novelty model also with the worker's K and
seqrec's cluster level), reads the decoding parameters
and batch limits the Triton models are configured with (so that the in-process twin decodes like
the server, and no call asks for more rows than a model serves), names the versions every
recommendation carries, and builds the twins.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from interests.clusters.catalog import Catalog, CatalogError
from streams.inference.router import LocalModel


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _pbtxt_param(config: Path, name: str, default: str) -> str:
    """A `parameters` value of a Triton config.pbtxt (the local twin must decode like the server)."""
    text = config.read_text() if config.is_file() else ""
    found = re.search(r'key:\s*"' + re.escape(name) + r'"\s*,\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text)
    return found.group(1) if found else default


def _pbtxt_max_batch(config: Path) -> int | None:
    """A config.pbtxt's `max_batch_size`: the most rows Triton accepts in one request (None: no limit,
    for 0 or no configuration)."""
    text = config.read_text() if config.is_file() else ""
    found = re.search(r"^\s*max_batch_size\s*:\s*(\d+)", text, re.MULTILINE)
    return int(found.group(1)) or None if found else None


def check_novelty_meta(decoder: dict, catalog: Catalog, k: int | None, level: int) -> None:
    """The novelty model must speak the worker's clusters: the same catalog, K and cluster level as the
    worker and seqrec, else its cluster ids name other clusters (or none at all)."""
    n_clusters = len(catalog.descriptions(level))
    problems = []
    if decoder.get("catalog_version") != catalog.version:
        problems.append(f"catalog {decoder.get('catalog_version')}, the worker has catalog {catalog.version}")
    if k is not None and decoder.get("k") != k:
        problems.append(f"K = {decoder.get('k')}, the worker runs K = {k} (setting k)")
    if decoder.get("level", level) != level or len(decoder.get("sequences", ())) != n_clusters:
        problems.append(f"level {decoder.get('level', '?')} with {len(decoder.get('sequences', ()))} clusters, "
                        f"seqrec uses level {level} with {n_clusters} clusters")
    if problems:
        raise CatalogError("interest_generator was exported with " + "; ".join(problems) +
                           ": export the novelty model again (`explore novelty export`) for this catalog")


@dataclass(frozen=True)
class NoveltyServing:
    """What a precompute job needs of the `interest_generator` a repository holds: the rows it writes must
    name its catalog, its contexts have its K, its clusters are numbered below `n_clusters`, and no call
    may carry more rows than `max_batch` (None: no limit); `level` is its catalog level (None: not recorded)."""

    catalog_version: str
    k: int
    n_clusters: int
    max_batch: int | None
    level: int | None = None


def novelty_serving(repository: Path) -> NoveltyServing:
    """The `NoveltyServing` of the `interest_generator` exported into `repository` (the files Triton serves)."""
    model = Path(repository) / "interest_generator"
    decoder = model / "1" / "decoder.json"
    if not decoder.is_file():
        raise FileNotFoundError(f"{decoder} is missing: export the novelty model first (`explore novelty export`)")
    meta = json.loads(decoder.read_text())
    return NoveltyServing(str(meta["catalog_version"]), int(meta["k"]), len(meta["sequences"]),
                          _pbtxt_max_batch(model / "config.pbtxt"), meta.get("level"))


class ModelFiles:
    """The exported models a worker serves, read from a Triton repository, with their versions."""

    def __init__(self, repository: Path, catalog: Catalog, k: int | None = None, version: int = 1) -> None:
        repository = Path(repository)
        self.version = version  # the Triton version of every model of this set (`streams.core.model_sets`)
        self.seqrec_dir = repository / "seqrec" / str(version)
        self.novelty_dir = repository / "interest_generator" / str(version)
        for f in (self.seqrec_dir / "model.onnx", self.seqrec_dir / "meta.json",
                  self.novelty_dir / "model.onnx", self.novelty_dir / "decoder.json"):
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing: export the models first "
                                        "(`explore seqrec export`, `explore novelty export`)")
        self.seqrec_meta = json.loads((self.seqrec_dir / "meta.json").read_text())
        if self.seqrec_meta.get("catalog_version") != catalog.version:
            raise CatalogError(f"seqrec was exported with catalog {self.seqrec_meta.get('catalog_version')}, "
                               f"the worker has catalog {catalog.version}")
        self.novelty_meta = json.loads((self.novelty_dir / "decoder.json").read_text())
        check_novelty_meta(self.novelty_meta, catalog, k, int(self.seqrec_meta["level"]))
        self.max_batch = {name: _pbtxt_max_batch(repository / name / "config.pbtxt")
                          for name in ("seqrec", "interest_generator")}
        config = repository / "interest_generator" / "config.pbtxt"
        self.top_m = int(_pbtxt_param(config, "top_m", "5"))
        self.beam = int(_pbtxt_param(config, "beam", "8"))
        self.versions = {"set": str(version), "catalog": catalog.version,
                         "seqrec": _file_digest(self.seqrec_dir / "model.onnx"),
                         "interest_generator": _file_digest(self.novelty_dir / "model.onnx")}
        self.explorer_dir = repository / "explorer" / str(version)
        self.explorer_meta: dict | None = None
        if (self.explorer_dir / "model.onnx").is_file():
            self._read_explorer(repository, catalog)

    def _read_explorer(self, repository: Path, catalog: Catalog) -> None:
        """The mixture of experts, when the repository holds it (`explore novelty export-mixture`): it must speak
        the catalog level seqrec speaks; its digest names the weights, head and context experts in every slate."""
        meta = json.loads((self.explorer_dir / "meta.json").read_text())
        level = int(self.seqrec_meta["level"])
        if meta.get("catalog_version") != catalog.version or int(meta.get("level", -1)) != level:
            raise CatalogError(f"explorer was exported for catalog {meta.get('catalog_version')} level "
                               f"{meta.get('level')}, the worker serves catalog {catalog.version} level {level}: "
                               "export the mixture again (`explore novelty export-mixture`)")
        self.explorer_meta = meta
        self.max_batch["explorer"] = _pbtxt_max_batch(repository / "explorer" / "config.pbtxt")
        self.versions["explorer"] = _file_digest(self.explorer_dir / "model.onnx")
        self.versions["mixture"] = str(meta["mixture"])

    def local_models(self, threads: int) -> dict[str, LocalModel]:
        """In-process twins of both Triton models: named inputs -> outputs, as Triton answers."""
        from streams.inference.novelty import OnnxNovelty
        from streams.inference.seqrec import OnnxExplorer, OnnxSeqRec

        seqrec = OnnxSeqRec(self.seqrec_dir / "model.onnx", threads=threads)
        novelty = OnnxNovelty(self.novelty_dir, top_m=self.top_m, beam=self.beam, threads=threads)
        local: dict[str, LocalModel] = {
            "seqrec": lambda x: list(seqrec.top_n(x["history"], x["allowed"])),
            "interest_generator": lambda x: list(novelty.propose(x["context"], x["exclude"]))}
        if self.explorer_meta is not None:
            explorer = OnnxExplorer(self.explorer_dir / "model.onnx", threads=threads)
            local["explorer"] = lambda x: explorer.propose(x["history"], x["known"], x["context_scores"])
        return local


__all__ = ["ModelFiles", "NoveltyServing", "novelty_serving"]
