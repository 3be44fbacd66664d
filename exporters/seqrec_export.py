"""`explore seqrec export`: checkpoint + catalog -> ONNX with the restricted top-N -> Triton repository."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from exporters.repository import write_repository
from exporters.seqrec_onnx import Parity, TopNGraph, check_parity, check_tensorrt, random_inputs, write_seqrec_model
from interests.clusters.catalog import Catalog, CatalogError
from interests.seqrec.clustered_topn import ClusteredTopN
from interests.seqrec.sasrec import fold_text
from interests.seqrec.topn import RestrictedTopN
from interests.seqrec.train import load_checkpoint


@dataclass
class ExportResult:
    repository: Path
    onnx_path: Path
    parity: Parity
    meta: dict
    tensorrt: Parity | None = None


GRAPHS = {"clustered": ClusteredTopN, "full": RestrictedTopN}  # served: clustered; full: the reference


def restricted_model(checkpoint: Path, catalog: Catalog, top_n: int, level: int | None,
                     graph: str = "clustered") -> tuple[TopNGraph, dict]:
    """The checkpoint's SASRec wrapped with the catalog's item-to-cluster map at `level`.

    `graph`: "clustered" scores only the allowed clusters' items (what is served); "full" scores
    every item (the reference, same answers, O(catalog) per request).
    """
    model, ckpt = load_checkpoint(checkpoint)
    if ckpt.get("catalog_version") != catalog.version:
        raise CatalogError(f"{checkpoint} was trained with catalog {ckpt.get('catalog_version')}, "
                           f"not {catalog.version}: export with the catalog it was trained with")
    lv = catalog.finest if level is None else level
    item_cluster = torch.from_numpy(catalog.item_clusters(lv).astype(np.int64))
    # A text model's item vectors folded into plain id embeddings: the graph and Triton stay as they are.
    return GRAPHS[graph](fold_text(model), item_cluster, catalog.levels[lv], top_n), {**ckpt, "level": lv}


def export_seqrec(checkpoint: Path, catalog_dir: Path, repository: Path, top_n: int = 20,
                  level: int | None = None, seed: int = 0, tensorrt: bool = False) -> ExportResult:
    """Write `repository/seqrec` and check ONNX against PyTorch on random and real histories."""
    catalog = Catalog.load(catalog_dir)
    module, ckpt = restricted_model(checkpoint, catalog, top_n, level)
    cfg = module.model.cfg
    meta = {"model": "seqrec", "catalog_version": catalog.version, "level": ckpt["level"],
            "n_items": cfg.n_items, "n_clusters": module.n_clusters, "top_n": module.top_n, "max_len": cfg.max_len,
            "graph": "clustered", "cluster_size": module.cluster_size,
            "valid": ckpt.get("valid", {}), "trained_on": ckpt.get("dataset", "")}
    write_repository(repository, {"seqrec": lambda d: write_seqrec_model(d, module, meta)})
    onnx_path = Path(repository) / "seqrec" / "1" / "model.onnx"
    rng = np.random.default_rng(seed)
    cases = [random_inputs(cfg.n_items, module.n_clusters, b, length, rng)
             for b, length in ((1, cfg.max_len), (7, cfg.max_len), (16, 5), (64, cfg.max_len))]
    real = ckpt.get("sample_histories")
    if real is not None and len(real):
        real = np.asarray(real, np.int64)
        allowed = random_inputs(cfg.n_items, module.n_clusters, len(real), 1, rng)[1]
        cases.append((real, allowed))
        cases.append((real, np.ones_like(allowed)))
    trt = check_tensorrt(module, onnx_path, cases) if tensorrt else None
    return ExportResult(Path(repository), onnx_path, check_parity(module, onnx_path, cases), meta, trt)
