"""Clients of the `interest_generator` model: Triton over gRPC and an in-process twin.

Both take contexts [B, K] (cluster ids, most recent last) and exclusion flags [B, C] (clusters
the user already knows) and return (clusters [B, M], scores [B, M]); empty slots hold cluster -1.
The twin runs the same exported graphs and the same decoding code (`interests.constrained`) as
the Triton model, over the same `decoder.json` (prior included), so it answers the same: by
default over the key/value cache (prefill.onnx, step.onnx), with `kv_cache=False` re-reading
whole sequences (model.onnx), as the Triton model's `kv_cache` parameter chooses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from interests.constrained import Generator, KVCache
from streams.inference.grpc import GrpcModel


class OnnxNovelty:
    """The Triton model's work in-process: `model_dir` is repo/interest_generator/1."""

    def __init__(self, model_dir: Path, top_m: int = 5, beam: int = 8, threads: int = 2,
                 kv_cache: bool = True) -> None:
        import onnxruntime as ort

        model_dir = Path(model_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads

        def session(name: str):  # type: ignore[no-untyped-def]
            return ort.InferenceSession(str(model_dir / name), sess_options=options, providers=["CPUExecutionProvider"])

        spec = json.loads((model_dir / "decoder.json").read_text())
        if kv_cache:
            prefill, step = session("prefill.onnx"), session("step.onnx")
            cache = KVCache(lambda ids, mask: tuple(prefill.run(None, {"input_ids": ids, "attention_mask": mask})),
                            lambda ids, mask, past: tuple(step.run(None, {"input_ids": ids, "attention_mask": mask,
                                                                          "past": past})), spec["pad_id"])
            self.generator = Generator(spec, None, top_m, beam, cached=cache)
        else:
            full = session("model.onnx")
            self.generator = Generator(spec, lambda ids, mask: full.run(["logprobs"], {"input_ids": ids,
                                                                                       "attention_mask": mask})[0],
                                       top_m, beam)

    def propose(self, contexts: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.generator.propose(contexts, exclude)


class TritonNovelty(GrpcModel):
    """`interest_generator` on a Triton server over gRPC; one long-lived connection."""

    def __init__(self, url: str, model: str = "interest_generator", timeout_s: float = 10.0) -> None:
        super().__init__(url, model, timeout_s)

    def propose(self, contexts: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        clusters, scores = self.infer({"context": np.asarray(contexts, np.int64), "exclude": np.asarray(exclude, bool)},
                                      ["clusters", "scores"])
        return clusters, scores
