"""The novelty LM -> ONNX (next-token log-probabilities) -> Triton's `interest_generator`.

The graph: `input_ids` int64 [B, T] and `attention_mask` int64 [B, T] (left-padded) -> `logprobs`
float32 [B, vocab] for the token after each sequence. There is no KV cache yet, so each decoding
step re-reads the whole sequence (~32 tokens). benchmarks/novelty_serving.py measured that a
cache would pay: on this machine a step that reads one token costs 1/20 of one that reads the
whole sequence at batch 64, so decoding could run several times faster with one (not done yet).

The Triton model runs `interests/constrained.py` (copied next to its model.py) over this graph,
with `decoder.json` holding the pre-tokenised prompt pieces and description sequences, so the
server needs neither a tokenizer nor PyTorch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.repository import write_repository
from interests import constrained
from interests.constrained import left_pad
from interests.novelty_lm import NoveltyLM

OPSET = 17


class NextTokenLogProbs(nn.Module):
    """Left-padded sequences -> log-probabilities of the next token."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False).logits
        return torch.log_softmax(logits[:, -1].float(), -1)


def export_lm(lm: NoveltyLM, path: Path) -> Path:
    model = lm.model.merge_and_unload() if hasattr(lm.model, "merge_and_unload") else lm.model
    module = NextTokenLogProbs(model.eval()).eval()
    ids, mask = left_pad([lm.prompt_ids([0, 1][: lm.meta.get("k", 2)]), lm.head], lm.pad_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(ids), torch.from_numpy(mask)), str(path), opset_version=OPSET,
                          dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["logprobs"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                                        "attention_mask": {0: "batch", 1: "length"}, "logprobs": {0: "batch"}})
    return path


class OnnxNextLogProbs:
    """`next_logprobs` over the exported graph (what the Triton model does, in-process)."""

    def __init__(self, path: Path, pad_id: int, threads: int = 2) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.pad_id = pad_id

    def __call__(self, sequences: list[list[int]]) -> np.ndarray:
        ids, mask = left_pad(sequences, self.pad_id)
        return self.session.run(["logprobs"], {"input_ids": ids, "attention_mask": mask})[0]


def check_lm_parity(lm: NoveltyLM, path: Path, contexts: np.ndarray) -> float:
    """Max |log-prob difference| between PyTorch and ONNX over prompts and prompt + description prefixes."""
    onnx_lp = OnnxNextLogProbs(path, lm.pad_id)
    seqs = [lm.prompt_ids(c) for c in contexts]
    seqs += [s + lm.pieces[i % len(lm.pieces)][:2] for i, s in enumerate(seqs)]
    return float(np.abs(onnx_lp(seqs) - lm.next_logprobs(seqs)).max())


def write_generator_model(dest: Path, lm: NoveltyLM) -> Path:
    """`dest` is the version directory: model.onnx, decoder.json and constrained.py beside model.py."""
    dest = Path(dest)
    export_lm(lm, dest / "model.onnx")
    (dest / "decoder.json").write_text(json.dumps({**lm.decoder_spec(), "k": lm.meta.get("k", 2),
                                                   "catalog_version": lm.meta.get("catalog_version")}))
    shutil.copy2(constrained.__file__, dest / "constrained.py")
    return dest


def export_generator(lm: NoveltyLM, repository: Path) -> Path:
    """Write `repository/interest_generator`; returns the ONNX path."""
    write_repository(repository, {"interest_generator": lambda d: write_generator_model(d, lm)})
    return Path(repository) / "interest_generator" / "1" / "model.onnx"
