"""The exported models a worker serves, read from a Triton model repository.

`ModelFiles` checks that both models are there and were exported with the worker's catalog, reads
the decoding parameters the Triton model is configured with (so that the in-process twin decodes
like the server), names the versions every recommendation carries, and builds the twins.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from interests.catalog import Catalog, CatalogError
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


class ModelFiles:
    """The exported models a worker serves, read from a Triton repository, with their versions."""

    def __init__(self, repository: Path, catalog: Catalog) -> None:
        repository = Path(repository)
        self.seqrec_dir = repository / "seqrec" / "1"
        self.novelty_dir = repository / "interest_generator" / "1"
        for f in (self.seqrec_dir / "model.onnx", self.seqrec_dir / "meta.json",
                  self.novelty_dir / "model.onnx", self.novelty_dir / "decoder.json"):
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing: export the models first "
                                        "(`explore seqrec export`, `explore novelty export`)")
        self.seqrec_meta = json.loads((self.seqrec_dir / "meta.json").read_text())
        if self.seqrec_meta.get("catalog_version") != catalog.version:
            raise CatalogError(f"seqrec was exported with catalog {self.seqrec_meta.get('catalog_version')}, "
                               f"the worker has catalog {catalog.version}")
        config = repository / "interest_generator" / "config.pbtxt"
        self.top_m = int(_pbtxt_param(config, "top_m", "5"))
        self.beam = int(_pbtxt_param(config, "beam", "8"))
        self.versions = {"catalog": catalog.version, "seqrec": _file_digest(self.seqrec_dir / "model.onnx"),
                         "interest_generator": _file_digest(self.novelty_dir / "model.onnx")}

    def local_models(self, threads: int) -> dict[str, LocalModel]:
        """In-process twins of both Triton models: named inputs -> outputs, as Triton answers."""
        from streams.inference.novelty import OnnxNovelty
        from streams.inference.seqrec import OnnxSeqRec

        seqrec = OnnxSeqRec(self.seqrec_dir / "model.onnx", threads=threads)
        novelty = OnnxNovelty(self.novelty_dir, top_m=self.top_m, beam=self.beam, threads=threads)
        return {"seqrec": lambda x: list(seqrec.top_n(x["history"], x["allowed"])),
                "interest_generator": lambda x: list(novelty.propose(x["context"], x["exclude"]))}


__all__ = ["ModelFiles"]
