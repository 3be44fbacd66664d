"""Triton Python-backend model: a history and per-cluster inputs in, the exported graph's outputs out.

Serves `seqrec` (history, allowed -> items, scores) and `explorer` (history, known, context_scores ->
clusters, cluster_scores, items, scores; the export copies this file there): the input and output
names come from the model's config.pbtxt. All requests of a dynamic batch run as one onnxruntime
call: histories are left-padded with 0 to the longest (the padding convention of the model), the
other inputs stacked, run, and split back.
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
        self.name = config["name"]
        self.inputs = [i["name"] for i in config["input"] if i["name"] != "history"]
        self.outputs = [o["name"] for o in config["output"]]
        here = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        # Pool threads that spin between calls cost 2-4x the CPU at serving rates (config.pbtxt). The key is
        # interests.runtime.constrained.SPINNING's: this directory is served on its own and cannot import the project.
        spinning = params.get("intra_op_spinning", "false").lower() in ("1", "true", "yes")
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(os.path.join(here, params.get("onnx_file", "model.onnx")),
                                            sess_options=options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        get = pb_utils.get_input_tensor_by_name
        histories = [get(r, "history").as_numpy().astype(np.int64) for r in requests]
        others = {name: [get(r, name).as_numpy() for r in requests] for name in self.inputs}
        sizes = [h.shape[0] for h in histories]
        try:
            if len({a.shape[1] for arrays in others.values() for a in arrays}) > 1:
                raise ValueError("requests in one batch disagree on the number of clusters")
            feed = {name: np.concatenate(arrays) for name, arrays in others.items()}
            feed["history"] = left_pad(histories, max(h.shape[1] for h in histories))
            outputs = self.session.run(self.outputs, feed)
        except Exception as e:  # one bad batch must not take the model down: answer each request with it
            error = pb_utils.TritonError(f"{self.name}: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, out[start:start + n]) for name, out in zip(self.outputs, outputs, strict=True)]))
            start += n
        return responses
