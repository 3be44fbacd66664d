"""Writing a Triton model repository: the committed sources in `triton_models/` plus built weights."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

WeightWriter = Callable[[Path], Path]


def source_dir() -> Path:
    """The committed `triton_models/` sources (`$EXPLORE_TRITON_MODELS` overrides)."""
    override = os.environ.get("EXPLORE_TRITON_MODELS")
    path = Path(override) if override else Path(__file__).resolve().parents[1] / "triton_models"
    if not path.is_dir():
        raise FileNotFoundError(f"Triton model sources not found at {path}; set EXPLORE_TRITON_MODELS "
                                "to the triton_models/ directory of a checkout")
    return path


def write_repository(dest: Path, weights: Mapping[str, WeightWriter]) -> Path:
    """Copy each named model's sources into `dest` and call its writer for `dest/NAME/1/`.

    Only the named models are written, so Triton (which loads every model it finds) never sees
    a model whose weights were not built.
    """
    src = source_dir()
    dest = Path(dest)
    for name, write_weights in weights.items():
        model_src = src / name
        if not (model_src / "config.pbtxt").is_file():
            raise FileNotFoundError(f"No Triton model {name!r} in {src}")
        model_dest = dest / name
        if model_dest.exists():
            shutil.rmtree(model_dest)
        shutil.copytree(model_src, model_dest, ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
        write_weights(model_dest / "1")
    return dest


def write_tiny_repository(dest: Path, seed: int = 0) -> Path:
    """A repository holding only `tiny_linear`: what `explore infra up` serves by default."""
    from exporters.tiny import write_tiny_linear_onnx

    return write_repository(dest, {"tiny_linear": lambda d: write_tiny_linear_onnx(d / "model.onnx", seed)})
