"""Triton Python-backend model `explorer`: the mixture's novel clusters and the slate inside them, one call.

All requests of a dynamic batch run as one onnxruntime call: histories are left-padded with 0 to
the longest (the padding convention of the model), the per-cluster inputs stacked, run, and split
back. The same loop as `seqrec`'s model.py, with the mixture's inputs and outputs.
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
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

OUTPUTS = ["clusters", "cluster_scores", "items", "scores"]


def left_pad(histories: list, length: int) -> np.ndarray:
    """Stack [b_i, L_i] int64 arrays into [sum b_i, length], right-aligned, 0-padded."""
    out = np.zeros((sum(h.shape[0] for h in histories), length), dtype=np.int64)
    row = 0
    for h in histories:
        out[row:row + h.shape[0], length - h.shape[1]:] = h
        row += h.shape[0]
    return out


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        spinning = params.get("intra_op_spinning", "false").lower() in ("1", "true", "yes")
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(os.path.join(here, params.get("onnx_file", "model.onnx")),
                                            sess_options=options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        get = pb_utils.get_input_tensor_by_name
        histories = [get(r, "history").as_numpy().astype(np.int64) for r in requests]
        known = [get(r, "known").as_numpy().astype(bool) for r in requests]
        context = [get(r, "context_scores").as_numpy().astype(np.float32) for r in requests]
        sizes = [h.shape[0] for h in histories]
        try:
            if len({k.shape[1] for k in known} | {c.shape[1] for c in context}) != 1:
                raise ValueError("requests in one batch disagree on the number of clusters")
            outputs = self.session.run(OUTPUTS, {
                "history": left_pad(histories, max(h.shape[1] for h in histories)),
                "known": np.concatenate(known), "context_scores": np.concatenate(context)})
        except Exception as e:  # one bad batch must not take the model down: answer each request with it
            error = pb_utils.TritonError(f"explorer: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, out[start:start + n]) for name, out in zip(OUTPUTS, outputs, strict=True)]))
            start += n
        return responses
