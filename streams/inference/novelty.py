"""Clients of the `interest_generator` model: Triton over gRPC and an in-process twin.

Both take contexts [B, K] (cluster ids, most recent last) and exclusion flags [B, C] (clusters
the user already knows) and return (clusters [B, M], scores [B, M]); empty slots hold cluster -1.
The twin runs the same exported graphs and the same decoding code (`interests.runtime.constrained`) as
the Triton model, over the same `decoder.json` (prior included), so it answers the same: by
default over the key/value cache (prefill.onnx, step.onnx), with `kv_cache=False` re-reading
whole sequences (model.onnx), as the Triton model's `kv_cache` parameter chooses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from interests.runtime.constrained import Generator
from streams.inference.grpc import GrpcModel
from streams.inference.tls import TritonTLS


class OnnxNovelty:
    """The Triton model's work in-process: `model_dir` is repo/interest_generator/1."""

    def __init__(self, model_dir: Path, top_m: int = 5, beam: int = 8, threads: int = 2,
                 kv_cache: bool = True) -> None:
        self.generator = Generator.from_directory(model_dir, top_m, beam, threads, kv_cache)

    def propose(self, contexts: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.generator.propose(contexts, exclude)


class TritonNovelty(GrpcModel):
    """`interest_generator` on a Triton server over gRPC; one long-lived connection."""

    def __init__(self, url: str, model: str = "interest_generator", timeout_s: float = 10.0,
                 tls: TritonTLS | None = None) -> None:
        super().__init__(url, model, timeout_s, tls)

    def propose(self, contexts: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        clusters, scores = self.infer({"context": np.asarray(contexts, np.int64), "exclude": np.asarray(exclude, bool)},
                                      ["clusters", "scores"])
        return clusters, scores
