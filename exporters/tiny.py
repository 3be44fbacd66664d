"""A tiny linear ONNX model (y = x W + b) that exercises the serving path before real models exist.

Built with the `onnx` helper API (no PyTorch needed), deterministic by seed, so tests and the
demo can compare Triton's answers with onnxruntime in-process on the very same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IN_FEATURES = 4
OUT_FEATURES = 3


def tiny_linear_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The weights W [4, 3] and bias b [3] for `seed`."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(IN_FEATURES, OUT_FEATURES)).astype(np.float32)
    b = rng.normal(size=(OUT_FEATURES,)).astype(np.float32)
    return w, b


def write_tiny_linear_onnx(path: Path, seed: int = 0) -> Path:
    """Write the model to `path` (opset 17, dynamic batch) and return the path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = tiny_linear_weights(seed)
    graph = helper.make_graph(
        nodes=[helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        name="tiny_linear",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", IN_FEATURES])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT_FEATURES])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="interest-explorer")
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
