"""`explore novelty export-mixture`: a fitted mixture level -> the `explorer` Triton model.

`explore novelty mix` leaves, per level, the weights (`mixture.json`), the serving cluster head on
the serving SASRec (`cluster_head.pt`) and what the context experts need (`context_experts.npz`).
This writes `repository/explorer/1/`: `model.onnx` (`MixtureTopN`: the sequence expert, the top M
unknown clusters and the slate inside them, in one graph), `context_experts.npz` (the worker adds
the context part from it and the novelty-table row) and `meta.json` (the weights, the level, and
`mixture`: a digest of everything that decides the proposals, which every slate records), and
`item_experts.npz` when the level mixes the item experts. It checks
onnxruntime against PyTorch, and the graph's cluster scores against the offline `Mixture.score`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from exporters.repository import source_dir, write_repository
from exporters.seqrec_onnx import Parity, check_mixture_parity, export_mixture_onnx, random_inputs
from interests.clusters.catalog import Catalog, CatalogError
from interests.novelty.cluster_head import HEAD_FILE, load_head
from interests.novelty.item_experts import ITEM_EXPERTS_FILE
from interests.novelty.mixture import CONTEXT_FILE, MIXTURE_FILE, ContextExperts, Mixture, served_context_scores
from interests.novelty.mixture_topn import MixtureTopN
from interests.seqrec.sasrec import fold_text
from interests.seqrec.train import load_checkpoint

MODEL = "explorer"


@dataclass
class MixtureExport:
    repository: Path
    onnx_path: Path
    parity: Parity
    meta: dict


def mixture_digest(level_dir: Path) -> str:
    """12 hex of the files that decide the served proposals: the weights, the head, the context and item experts."""
    h = hashlib.sha256()
    for name in (MIXTURE_FILE, HEAD_FILE, CONTEXT_FILE, ITEM_EXPERTS_FILE):
        if name == ITEM_EXPERTS_FILE and not (Path(level_dir) / name).is_file():
            continue  # a level fitted without the item experts
        h.update((Path(level_dir) / name).read_bytes())
    return h.hexdigest()[:12]


def mixture_module(level_dir: Path, catalog: Catalog, m: int, top_n: int, seqrec: Path | None = None,
                   ) -> tuple[MixtureTopN, Mixture, dict]:
    """The `MixtureTopN` of a fitted level: its serving SASRec (`seqrec`, or the one the head was trained
    on), its head and its sequence weight; refuses a level fitted with the exact sums (not servable at
    O(clusters)) or for another catalog."""
    level_dir = Path(level_dir)
    missing = [n for n in (MIXTURE_FILE, HEAD_FILE, CONTEXT_FILE) if not (level_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{level_dir} lacks {', '.join(missing)}: fit it with `explore novelty mix "
                                "--sequence head` (a level directory, e.g. runs/mixture/level-1)")
    mix = Mixture.load(level_dir)
    info = mix.fitted_on
    if info.get("sequence") != "head":
        raise ValueError(f"{level_dir} was fitted with the {info.get('sequence')!r} sequence expert: only the "
                         "cluster head serves at O(clusters) per user (`explore novelty mix --sequence head`)")
    if info.get("catalog_version") != catalog.version:
        raise CatalogError(f"{level_dir} was fitted with catalog {info.get('catalog_version')}, not "
                           f"{catalog.version}")
    head, head_meta = load_head(level_dir / HEAD_FILE)
    path = Path(seqrec or head_meta.get("seqrec") or info["seqrec"][0])
    model, ckpt = load_checkpoint(path)
    if ckpt.get("catalog_version") != catalog.version:
        raise CatalogError(f"{path} was trained with catalog {ckpt.get('catalog_version')}, not {catalog.version}")
    item_cluster = torch.from_numpy(catalog.item_clusters(mix.level).astype(np.int64))
    model = fold_text(model)  # a text model's item vectors as plain id embeddings (the graph reads item_emb)
    module = MixtureTopN(model, item_cluster, catalog.levels[mix.level], head, mix.weights.get("sequence", 0.0),
                         m, top_n)
    return module, mix, {"seqrec_checkpoint": str(path), "trained_until": ckpt.get("trained_until")}


def export_mixture(level_dir: Path, catalog_dir: Path, repository: Path, m: int = 3, top_n: int = 20,
                   seqrec: Path | None = None, seed: int = 0) -> MixtureExport:
    """Write `repository/explorer` (the other models of the repository are left as they are)."""
    catalog = Catalog.load(catalog_dir)
    module, mix, source = mixture_module(level_dir, catalog, m, top_n, seqrec)
    cfg = module.model.cfg
    meta = {"model": MODEL, "catalog_version": catalog.version, "level": mix.level, "n_items": cfg.n_items,
            "n_clusters": module.n_clusters, "m": module.m, "top_n": module.top_n, "max_len": cfg.max_len,
            "weights": mix.weights, "mixture": mixture_digest(level_dir), "fitted_on": mix.fitted_on, **source}

    def write(dest: Path) -> Path:
        export_mixture_onnx(module, dest / "model.onnx")
        # seqrec's model.py serves any history + per-cluster inputs graph, by the names its config gives
        shutil.copy2(source_dir() / "seqrec" / "1" / "model.py", dest / "model.py")
        shutil.copy2(Path(level_dir) / CONTEXT_FILE, dest / CONTEXT_FILE)
        if (Path(level_dir) / ITEM_EXPERTS_FILE).is_file():
            shutil.copy2(Path(level_dir) / ITEM_EXPERTS_FILE, dest / ITEM_EXPERTS_FILE)
        (dest / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        return dest

    write_repository(repository, {MODEL: write})
    onnx_path = Path(repository) / MODEL / "1" / "model.onnx"
    rng = np.random.default_rng(seed)
    experts = ContextExperts.load(Path(level_dir))
    cases = []
    for batch, length in ((1, cfg.max_len), (7, cfg.max_len), (16, 5)):
        history, known = random_inputs(cfg.n_items, module.n_clusters, batch, length, rng)
        contexts = rng.integers(0, module.n_clusters, size=(batch, 2))
        rows = [(rng.permutation(module.n_clusters)[:5].tolist(), (-rng.random(5) * 10).tolist()) for _ in contexts]
        histories = [np.asarray(h[h > 0], np.int64) - 1 for h in history]  # the graph's are 1-based, 0-padded
        context = served_context_scores(mix, experts, contexts, rows, histories)
        cases.append((history, known, context))
    return MixtureExport(Path(repository), onnx_path, check_mixture_parity(module, onnx_path, cases), meta)
