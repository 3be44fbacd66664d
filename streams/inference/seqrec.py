"""Clients of the `seqrec` model (cluster-restricted top-N): Triton over gRPC and an in-process twin.

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


class TritonSeqRec(GrpcModel):
    """`seqrec` on a Triton server over gRPC; one long-lived connection."""

    def __init__(self, url: str, model: str = "seqrec", timeout_s: float = 5.0) -> None:
        super().__init__(url, model, timeout_s)

    def top_n(self, history: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        items, scores = self.infer({"history": np.asarray(history, np.int64), "allowed": np.asarray(allowed, bool)},
                                   ["items", "scores"])
        return items, scores
