"""SASRec with the cluster-restricted top-N -> ONNX, checked against PyTorch, -> Triton's `seqrec`.

The exported graph: inputs `history` int64 [B, L] and `allowed` bool [B, C]; outputs `items`
int64 [B, N] (1-based item ids, 0 in unfilled slots) and `scores` float32 [B, N]. Batch and
history length are dynamic; opset 17. Either graph of the contract in `interests.seqrec.topn` exports:
the clustered one (`ClusteredTopN`, served) or the full-scoring reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interests.seqrec.topn import RestrictedTopN

OPSET = 17
TopNGraph = RestrictedTopN  # or its subclass ClusteredTopN: same inputs, outputs and answers


def export_onnx(module: TopNGraph, path: Path) -> Path:
    """Export `module` (in eval mode) to `path` with dynamic batch and history length."""
    module.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    length = module.model.cfg.max_len
    history = torch.randint(1, module.model.cfg.n_items + 1, (2, length))
    allowed = torch.ones(2, module.n_clusters, dtype=torch.bool)
    torch.onnx.export(module, (history, allowed), str(path), opset_version=OPSET, dynamo=False,
                      input_names=["history", "allowed"], output_names=["items", "scores"],
                      dynamic_axes={"history": {0: "batch", 1: "length"}, "allowed": {0: "batch"},
                                    "items": {0: "batch"}, "scores": {0: "batch"}})
    return path


def export_mixture_onnx(module, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Export a `MixtureTopN` (eval mode): inputs history [B, L] int64, known [B, C] bool, context_scores
    [B, C] float32; outputs clusters [B, M] int64, cluster_scores [B, M] float32, items, scores [B, N]."""
    module.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    history = torch.randint(1, module.model.cfg.n_items + 1, (2, module.model.cfg.max_len))
    known = torch.zeros(2, module.n_clusters, dtype=torch.bool)
    context = torch.zeros(2, module.n_clusters)
    torch.onnx.export(module, (history, known, context), str(path), opset_version=OPSET, dynamo=False,
                      input_names=["history", "known", "context_scores"],
                      output_names=["clusters", "cluster_scores", "items", "scores"],
                      dynamic_axes={"history": {0: "batch", 1: "length"}, "known": {0: "batch"},
                                    "context_scores": {0: "batch"}, "clusters": {0: "batch"},
                                    "cluster_scores": {0: "batch"}, "items": {0: "batch"}, "scores": {0: "batch"}})
    return path


@dataclass
class Parity:
    cases: int
    max_abs_score_diff: float
    identical_ids: bool

    def ok(self, tol: float = 1e-4) -> bool:
        return self.identical_ids and self.max_abs_score_diff <= tol


def random_inputs(n_items: int, n_clusters: int, batch: int, length: int, rng: np.random.Generator,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Histories with random left padding and random non-empty cluster masks."""
    history = rng.integers(1, n_items + 1, size=(batch, length))
    for row, pad in enumerate(rng.integers(0, length, size=batch)):
        history[row, :pad] = 0
    allowed = rng.random((batch, n_clusters)) < 0.3
    allowed[np.arange(batch), rng.integers(0, n_clusters, size=batch)] = True
    return history.astype(np.int64), allowed


def check_parity(module: TopNGraph, onnx_path: Path, inputs: list[tuple[np.ndarray, np.ndarray]],
                 providers: list[str] | None = None) -> Parity:
    """Compare PyTorch and onnxruntime on each (history, allowed) pair: score diff and top-N ids.

    Ids are compared where scores are not within 1e-5 of a neighbour: exact ties are ordered by id in
    the graph, but two runtimes may round near-equal scores apart and order them either way.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=providers or ["CPUExecutionProvider"])
    worst, same = 0.0, True
    module.eval()
    for history, allowed in inputs:
        with torch.no_grad():
            t_items, t_scores = (t.numpy() for t in module(torch.from_numpy(history), torch.from_numpy(allowed)))
        o_items, o_scores = session.run(["items", "scores"], {"history": history, "allowed": allowed})
        worst = max(worst, float(np.abs(t_scores - o_scores).max()))
        same &= same_untied_ids(t_items, o_items, t_scores)
    return Parity(len(inputs), worst, same)


def same_untied_ids(t_ids: np.ndarray, o_ids: np.ndarray, t_scores: np.ndarray) -> bool:
    """Whether two ranked id lists agree wherever the reference's score is not within 1e-5 of a neighbour."""
    if t_scores.shape[1] < 2:
        return bool(np.all(t_ids == o_ids))
    gaps = np.abs(np.diff(t_scores, axis=1)) > 1e-5
    untied = np.concatenate([gaps[:, :1], gaps[:, 1:] & gaps[:, :-1], gaps[:, -1:]], axis=1)
    return bool(np.all((t_ids == o_ids) | ~untied))


def check_mixture_parity(module, onnx_path: Path, inputs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],  # type: ignore[no-untyped-def]
                         ) -> Parity:
    """`check_parity` for a `MixtureTopN` on (history, known, context_scores): both the clusters and the
    slate, scores within the worst difference, ids where untied."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst, same = 0.0, True
    module.eval()
    names = ["clusters", "cluster_scores", "items", "scores"]
    for history, known, context in inputs:
        with torch.no_grad():
            t = [x.numpy() for x in module(*(torch.from_numpy(a) for a in (history, known, context)))]
        o = session.run(names, {"history": history, "known": known, "context_scores": context})
        for ids, scores in ((0, 1), (2, 3)):
            worst = max(worst, float(np.abs(t[scores] - o[scores]).max()))
            same &= same_untied_ids(t[ids], o[ids], t[scores])
    return Parity(len(inputs), worst, same)


def write_seqrec_model(dest: Path, module: TopNGraph, meta: dict) -> Path:
    """Write `dest` (a Triton model version directory, e.g. repo/seqrec/1): model.onnx + meta.json."""
    dest = Path(dest)
    export_onnx(module, dest / "model.onnx")
    (dest / "meta.json").write_text(json.dumps(meta, indent=1))
    return dest


TENSORRT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def tensorrt_available() -> bool:
    """True when onnxruntime offers the TensorRT execution provider (the `gpu` extra on a GPU machine)."""
    import onnxruntime as ort

    return "TensorrtExecutionProvider" in ort.get_available_providers()


def check_tensorrt(module: TopNGraph, onnx_path: Path, inputs: list[tuple[np.ndarray, np.ndarray]],
                   tol: float = 1e-2) -> Parity:
    """Build the TensorRT engine through onnxruntime's TensorRT provider and compare with PyTorch.

    TensorRT may fuse and reorder float math (and runs FP32 here, FP16 only when asked), so the
    score tolerance is looser than the CPU check; ids must still agree where scores are not tied.
    """
    if not tensorrt_available():
        raise RuntimeError("onnxruntime has no TensorrtExecutionProvider here: install the 'gpu' extra "
                           "(onnxruntime-gpu with TensorRT libraries) on a machine with an NVIDIA GPU")
    parity = check_parity(module, onnx_path, inputs, providers=TENSORRT)
    if parity.max_abs_score_diff > tol:
        raise AssertionError(f"TensorRT differs from PyTorch by {parity.max_abs_score_diff:.3g} (> {tol})")
    return parity
