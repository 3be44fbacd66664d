"""Triton Python-backend model that runs an ONNX file with onnxruntime on the CPU.

The ONNX file (config parameter `onnx_file`, next to this file) is a build output written by the
exporters, never committed. Inputs and outputs are taken by the names in config.pbtxt, so the
same code serves any single-graph model whose tensors match its config.
"""

import json
import os
import sys

# The embedded stub ignores PYTHONPATH when it builds sys.path; the launcher puts the engine's
# site-packages there (streams/infra/triton.py), so honour it before importing numpy/onnxruntime.
for _path in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)

import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    """Loads the ONNX session once per model instance; runs each request batch through it."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(here, params.get("onnx_file", "model.onnx")),
                                            sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            results = self.session.run(self.outputs, feeds)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(n, r) for n, r in zip(self.outputs, results, strict=True)]))
        return responses
