"""Triton Python-backend model `interest_generator`: novel clusters by constrained beam search.

Every request of a dynamic batch is decoded together: the beams of all requests go to the ONNX
language model in one call per decoding step. With the key/value cache (parameter `kv_cache`,
default true) each prompt is encoded once by prefill.onnx and each step feeds one token per
hypothesis to step.onnx; without it every step re-reads whole sequences through model.onnx. The
decoding is `constrained.py` (the project's interests/runtime/constrained.py, copied here at export),
with the prior from decoder.json, so answers equal the PyTorch path's.
"""

import json
import os
import sys

# The embedded stub ignores PYTHONPATH when it builds sys.path; the launcher puts the engine's
# site-packages there (streams/infra/triton.py), so honour it before importing numpy/onnxruntime.
for _path in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from constrained import Generator  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        self.generator = Generator.from_directory(
            here, int(params.get("top_m", "5")), int(params.get("beam", "8")),
            threads=int(params.get("intra_op_threads", "1")),
            kv_cache=params.get("kv_cache", "true").lower() in ("1", "true", "yes"),
            spinning=params.get("intra_op_spinning", "false").lower() in ("1", "true", "yes"))

    def execute(self, requests: list) -> list:
        """Valid requests are decoded together (one LM call per step for all); a bad one gets its error."""
        contexts, excludes, sizes, errors = [], [], [], []
        for r in requests:
            ctx = pb_utils.get_input_tensor_by_name(r, "context").as_numpy().astype(np.int64)
            exc = pb_utils.get_input_tensor_by_name(r, "exclude").as_numpy().astype(bool)
            try:
                self.generator.validate(ctx, exc)
                errors.append(None)
                contexts.append(ctx)
                excludes.append(exc)
                sizes.append(len(ctx))
            except ValueError as e:
                errors.append(f"interest_generator: {e}")
                sizes.append(0)
        if contexts:
            clusters, scores = self.generator.propose(np.concatenate(contexts), np.concatenate(excludes))
        responses, row = [], 0
        for size, error in zip(sizes, errors, strict=True):
            if error:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(error)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("clusters", clusters[row:row + size]),
                pb_utils.Tensor("scores", scores[row:row + size])]))
            row += size
        return responses
