"""The novelty LM -> ONNX -> Triton's `interest_generator`, with a key/value cache.

Three graphs, all with dynamic batch and lengths (opset 17, TorchScript exporter):

- `prefill.onnx`: left-padded prompts `input_ids`/`attention_mask` int64 [B, T] -> `logprobs`
  float32 [B, vocab] for the next token and `present` float32 [layers, 2, B, kv heads, T, head dim];
- `step.onnx`: one new token per row `input_ids` [B, 1], `attention_mask` [B, P + 1] (the past's,
  padding still 0, plus the new token) and `past` [layers, 2, B, heads, P, dim] -> `logprobs` and
  `present` [.., P + 1, ..];
- `model.onnx`: the no-cache reference, `input_ids`/`attention_mask` [B, T] -> `logprobs`, which
  re-reads the whole sequence at every decoding step.

The search (`interests/runtime/constrained.py`, copied next to the Triton model's model.py) encodes each
prompt once with `prefill` and then feeds one token per hypothesis with `step`, gathering its
parent's cache rows: benchmarks/novelty_serving.py measures both paths side by side.
`decoder.json` holds the pre-tokenised prompt pieces, the description sequences and the decoding
prior, so the server needs neither a tokenizer nor PyTorch.

Traced shapes are a trap: a size read as a Python int while tracing becomes a constant of the
graph. `check_lm_parity` therefore runs every graph at several batch sizes, prompt lengths and
past lengths (gathering random parents, as the search does) against PyTorch's no-cache path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.repository import write_repository
from interests.novelty.lm import NoveltyLM, Prefill, Step, position_ids
from interests.runtime import constrained
from interests.runtime.constrained import left_pad, onnx_kv_cache, onnx_logprobs

OPSET = 17


class NextTokenLogProbs(nn.Module):
    """Left-padded sequences -> log-probabilities of the next token (no cache)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids(attention_mask), use_cache=False).logits
        return torch.log_softmax(logits[:, -1].float(), -1)


def _plain(lm: NoveltyLM) -> nn.Module:
    model = lm.model.merge_and_unload() if hasattr(lm.model, "merge_and_unload") else lm.model
    return model.eval()


def _example_prompts(lm: NoveltyLM) -> tuple[np.ndarray, np.ndarray]:
    """Three prompts of different lengths (nothing to specialise on while tracing)."""
    k = lm.meta.get("k", 2)
    n = len(lm.descriptions)
    return left_pad([lm.prompt_ids([i % n for i in range(k)]), lm.head,
                     lm.prompt_ids([(i + 1) % n for i in range(k)])[1:]], lm.pad_id)


def export_lm(lm: NoveltyLM, path: Path) -> Path:
    """The no-cache graph (the reference path)."""
    module = NextTokenLogProbs(_plain(lm)).eval()
    ids, mask = _example_prompts(lm)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(ids), torch.from_numpy(mask)), str(path), opset_version=OPSET,
                          dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["logprobs"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                                        "attention_mask": {0: "batch", 1: "length"}, "logprobs": {0: "batch"}})
    return path


def export_cached_lm(lm: NoveltyLM, directory: Path) -> tuple[Path, Path]:
    """`prefill.onnx` and `step.onnx` in `directory`."""
    model = _plain(lm)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids, mask = (torch.from_numpy(a) for a in _example_prompts(lm))
    prefill, step = directory / "prefill.onnx", directory / "step.onnx"
    with torch.no_grad():
        torch.onnx.export(Prefill(model).eval(), (ids, mask), str(prefill), opset_version=OPSET, dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["logprobs", "present"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                                        "attention_mask": {0: "batch", 1: "length"}, "logprobs": {0: "batch"},
                                        "present": {2: "batch", 4: "length"}})
        _, past = Prefill(model).eval()(ids, mask)
        new = torch.tensor([[lm.eos_id], [lm.pieces[0][0]], [lm.pieces[-1][0]]], dtype=torch.long)
        step_mask = torch.cat([mask, torch.ones((3, 1), dtype=torch.long)], 1)
        torch.onnx.export(Step(model).eval(), (new, step_mask, past), str(step), opset_version=OPSET, dynamo=False,
                          input_names=["input_ids", "attention_mask", "past"], output_names=["logprobs", "present"],
                          dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch", 1: "total"},
                                        "past": {2: "batch", 4: "past_length"}, "logprobs": {0: "batch"},
                                        "present": {2: "batch", 4: "total"}})
    return prefill, step


class OnnxNextLogProbs:
    """`next_logprobs` over the no-cache graph (what the Triton model does without a cache, in-process)."""

    def __init__(self, path: Path, pad_id: int, threads: int = 2) -> None:
        self.run = onnx_logprobs(path, threads)
        self.pad_id = pad_id

    def __call__(self, sequences: list[list[int]]) -> np.ndarray:
        return self.run(*left_pad(sequences, self.pad_id))


def check_lm_parity(lm: NoveltyLM, path: Path, contexts: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Max |log-prob difference| against PyTorch's no-cache path, per graph.

    `model.onnx`: prompts and prompt + description prefixes. `prefill`/`step` (beside `path`): batches of
    1, 5 and len(contexts) prompts of mixed lengths, then six steps that each gather random parent rows
    (the batch grows) and append a token, so the past length runs from the prompt's to six beyond it.
    """
    onnx_lp = OnnxNextLogProbs(path, lm.pad_id)
    seqs = [lm.prompt_ids(c) for c in contexts]
    seqs += [s + lm.pieces[i % len(lm.pieces)][:2] for i, s in enumerate(seqs)]
    out = {"no_cache": float(np.abs(onnx_lp(seqs) - lm.next_logprobs(seqs)).max())}
    if not (Path(path).parent / "step.onnx").exists():
        return out
    cache = onnx_kv_cache(Path(path).parent, lm.pad_id, threads=2)
    rng = np.random.default_rng(seed)
    worst_prefill = worst_step = 0.0
    for batch in sorted({1, 5, len(contexts)}):
        rows = [lm.prompt_ids(c) + lm.pieces[i % len(lm.pieces)][:i % 3] for i, c in enumerate(contexts[:batch])]
        logprobs, state = cache.prefill(rows)
        worst_prefill = max(worst_prefill, float(np.abs(logprobs - lm.next_logprobs(rows)).max()))
        for step in range(6):
            parents = rng.integers(0, len(rows), size=len(rows) + step)
            tokens = rng.integers(0, len(lm.tokenizer), size=len(parents))
            logprobs, state = cache.step(state, parents, tokens)
            rows = [rows[p] + [int(t)] for p, t in zip(parents, tokens, strict=True)]
            worst_step = max(worst_step, float(np.abs(logprobs - lm.next_logprobs(rows)).max()))
    return {**out, "prefill": worst_prefill, "step": worst_step}


def write_generator_model(dest: Path, lm: NoveltyLM) -> Path:
    """`dest` is the version directory: model.onnx, prefill.onnx, step.onnx, decoder.json and constrained.py."""
    dest = Path(dest)
    export_lm(lm, dest / "model.onnx")
    export_cached_lm(lm, dest)
    (dest / "decoder.json").write_text(json.dumps({**lm.decoder_spec(), "k": lm.meta.get("k", 2),
                                                   "catalog_version": lm.meta.get("catalog_version"),
                                                   "level": lm.meta.get("level")}))
    shutil.copy2(constrained.__file__, dest / "constrained.py")
    return dest


def export_generator(lm: NoveltyLM, repository: Path) -> Path:
    """Write `repository/interest_generator`; returns the path of the no-cache ONNX graph (model.onnx)."""
    write_repository(repository, {"interest_generator": lambda d: write_generator_model(d, lm)})
    return Path(repository) / "interest_generator" / "1" / "model.onnx"
