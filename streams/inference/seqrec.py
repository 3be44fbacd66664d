"""Clients of the `seqrec` model (cluster-restricted top-N): Triton over gRPC and an in-process twin;
and the twin of `explorer`, the mixture of experts with its slate (the router calls Triton by name).

Both take histories [B, L] of 1-based item ids (left-padded with 0) and allowed clusters [B, C]
and return (items [B, N], scores [B, N]); slots that no eligible item fills carry item 0 and
EXCLUDED (the one of `interests.runtime.constrained`; the contract is `interests.seqrec.topn`'s); callers drop them
(`streams.core.recommendation.slate_items`). The twin runs the very ONNX file that Triton serves, so
the answers are the same; it is the fallback when Triton is unreachable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from interests.runtime.constrained import left_pad, onnx_session
from streams.inference.grpc import GrpcModel


def pad_histories(histories: list[list[int]] | list[np.ndarray], length: int) -> np.ndarray:
    """[B, length] int64: each history's newest `length` items right-aligned, 0-padded."""
    return left_pad(histories, 0, length)[0]


class OnnxSeqRec:
    """The exported graph in-process (onnxruntime, CPU)."""

    def __init__(self, onnx_path: Path, threads: int = 2, spinning: bool = False) -> None:
        self.session = onnx_session(onnx_path, threads, spinning)  # spinning: see onnx_session

    def top_n(self, history: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        items, scores = self.session.run(["items", "scores"], {"history": np.asarray(history, np.int64),
                                                                "allowed": np.asarray(allowed, bool)})
        return items, scores


EXPLORER_OUTPUTS = ["clusters", "cluster_scores", "items", "scores"]


class OnnxExplorer:
    """The `explorer` graph in-process (`interests.novelty.mixture_topn`): history [B, L], known [B, C] and the
    context part [B, C] in; the top M unknown clusters, their mixture scores and the slate inside them out."""

    def __init__(self, onnx_path: Path, threads: int = 2, spinning: bool = False) -> None:
        self.session = onnx_session(onnx_path, threads, spinning)

    def propose(self, history: np.ndarray, known: np.ndarray, context_scores: np.ndarray) -> list[np.ndarray]:
        return self.session.run(EXPLORER_OUTPUTS, {"history": np.asarray(history, np.int64),
                                                   "known": np.asarray(known, bool),
                                                   "context_scores": np.asarray(context_scores, np.float32)})


class TritonSeqRec(GrpcModel):
    """`seqrec` on a Triton server over gRPC; one long-lived connection."""

    def __init__(self, url: str, model: str = "seqrec", timeout_s: float = 5.0) -> None:
        super().__init__(url, model, timeout_s)

    def top_n(self, history: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        items, scores = self.infer({"history": np.asarray(history, np.int64), "allowed": np.asarray(allowed, bool)},
                                   ["items", "scores"])
        return items, scores
