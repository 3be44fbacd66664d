"""The novelty language model: prompts in words -> the description of a novel cluster.

Default: a small GPT-2 (Hugging Face `transformers`) with a word-level tokenizer trained on the
prompt template and the catalog's descriptions, trained from scratch in minutes on a CPU. With
`base_model`, any Hugging Face causal LM on disk is fine-tuned instead (optionally through LoRA
with `peft`); nothing is downloaded unless the caller allows it.

Training teaches the target tokens only (prompt tokens are masked out of the loss); the best
epoch by validation loss is kept. Inference left-pads and passes position ids, so a batch of
prompts of any lengths scores as each prompt would alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from interests.configs import LMConfig
from interests.constrained import assemble_prompt, left_pad
from interests.novelty_data import (
    HEAD,
    PROMPT,
    SEP,
    SEPARATOR,
    TAIL,
    NoveltyExamples,
    context_texts,
    diversified_sample,
    target_text,
)

PAD, EOS, UNK = "[PAD]", "[EOS]", "[UNK]"


def train_tokenizer(descriptions: list[str]):  # type: ignore[no-untyped-def]
    """A word-level tokenizer over the template and the descriptions (closed vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [PROMPT.format(context=SEPARATOR.join(descriptions[:2])), *descriptions]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=[PAD, EOS, UNK]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def small_gpt2(vocab_size: int, cfg: LMConfig, pad_id: int, eos_id: int, max_positions: int = 256):  # type: ignore[no-untyped-def]
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=cfg.dim, n_layer=cfg.layers,
                        n_head=cfg.heads, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    config._attn_implementation = "eager"  # a plain graph for the ONNX export
    return GPT2LMHeadModel(config)


def load_base(cfg: LMConfig):  # type: ignore[no-untyped-def]
    """(model, tokenizer) of `cfg.base_model`, offline unless downloads are allowed; LoRA if asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interests.base_models import resolve_base_model

    local = not cfg.allow_download
    path = resolve_base_model(cfg.base_model, cfg.allow_download)  # a registered name is converted once
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=local, attn_implementation="eager")
    if cfg.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as e:
            raise RuntimeError("LoRA needs the peft package: pip install peft") from e
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM"))
    return model, tokenizer


def stack_cache(cache) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """A transformers cache -> one tensor [layers, 2 (key, value), batch, kv heads, length, head dim]."""
    if hasattr(cache, "layers"):
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
    else:  # legacy tuples
        pairs = [(k, v) for k, v, *_ in cache]
    return torch.stack([torch.stack(pair) for pair in pairs])


def unstack_cache(past: torch.Tensor):  # type: ignore[no-untyped-def]
    from transformers.cache_utils import DynamicCache

    return DynamicCache([(past[i, 0], past[i, 1]) for i in range(past.shape[0])])


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position among the real tokens of its left-padded row (padding gets 0).

    Training right-pads, so positions start at 0 there by default; at inference the prompt is
    left-padded, and these positions make a padded row score as it would alone. The prefill graph,
    the no-cache graph (exporters.novelty_onnx) and `NoveltyLM.next_logprobs` all use this.
    """
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class Prefill(torch.nn.Module):
    """Left-padded prompts -> (next-token log-probs [B, vocab], present keys/values [L, 2, B, H, T, D])."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids(attention_mask), use_cache=True)
        return torch.log_softmax(out.logits[:, -1].float(), -1), stack_cache(out.past_key_values)


class Step(torch.nn.Module):
    """One new token per row after its cached past: (ids [B, 1], mask [B, P + 1], past [L, 2, B, H, P, D])
    -> (log-probs [B, vocab], present [L, 2, B, H, P + 1, D]). The mask covers the past (its left padding
    stays 0) and the new token; the new token's position is the number of real tokens before it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new_position = attention_mask.sum(-1, keepdim=True) - 1  # = position_ids(attention_mask)[:, -1:]
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=new_position,
                         past_key_values=unstack_cache(past), use_cache=True)
        return torch.log_softmax(out.logits[:, -1].float(), -1), stack_cache(out.past_key_values)


class NoveltyLM:
    """A causal LM and its tokenizer, with the token sequences of every cluster description."""

    def __init__(self, model, tokenizer, descriptions: list[str], meta: dict | None = None) -> None:  # type: ignore[no-untyped-def]
        self.model, self.tokenizer, self.descriptions = model, tokenizer, descriptions
        self.meta = meta or {}
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        # A description is the same tokens in a context and as a target: " <description>".
        self.pieces = [self.encode(target_text(c, descriptions)) for c in range(len(descriptions))]
        self.sequences = [[*piece, self.eos_id] for piece in self.pieces]
        # ... unless the context shows more (a pretrained model's prompt: the description and item
        # titles, novelty_data.context_texts); the targets stay the descriptions.
        texts = self.meta.get("context_texts")
        self.context_pieces = [self.encode(t) for t in texts] if texts else self.pieces
        self.head, self.sep, self.tail = self.encode(HEAD), self.encode(SEP), self.encode(TAIL)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, context: np.ndarray | list[int]) -> list[int]:
        """The prompt's tokens, assembled from pre-tokenised pieces as Triton's model does (the same
        `assemble_prompt`), so that serving never depends on how a tokenizer splits text."""
        return assemble_prompt(self.head, self.sep, self.tail, self.context_pieces, context)

    @property
    def length_norm(self) -> bool:
        """Whether a description scores by its mean log-probability per token (meta["score"] "mean")
        instead of the sum; `beam_search_cached` reads it, so every caller decodes by the chosen rule."""
        return self.meta.get("score", "sum") == "mean"

    @property
    def prior(self) -> np.ndarray | None:
        """The decoding prior per cluster (alpha * log P_pop), when one was chosen (meta["prior"])."""
        p = self.meta.get("prior")
        if not p or not p.get("alpha"):
            return None
        return p["alpha"] * np.asarray(p["log_p"], dtype=np.float64)

    def contexts_per_batch(self, rows_per_context: int, limit: int = 64, budget_bytes: float = 5e8) -> int:
        """Contexts one search batch may hold so that the key/value cache of its hypotheses (`rows_per_context`
        each, a prompt plus a description long) stays within `budget_bytes` per copy (a step holds about three).

        `limit` for the small GPT-2 (its cache is ~2 KB a token); a 30-layer base model's is ~46 KB, and
        64 contexts x 32 hypotheses of SmolLM2 took 20 GB and were killed.
        """
        cfg = self.model.config
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        k = int(self.meta.get("k", 2))
        tokens = len(self.head) + len(self.tail) + k * (max(map(len, self.context_pieces)) + len(self.sep)) \
            + max(map(len, self.sequences))
        per_context = rows_per_context * tokens * cfg.num_hidden_layers * 2 * kv_heads * head_dim * 4
        return int(max(1, min(limit, budget_bytes // per_context)))

    def decoder_spec(self) -> dict:
        """Everything a tokenizer-free server needs to build prompts and decode clusters."""
        prior = self.prior
        return {"head": self.head, "sep": self.sep, "tail": self.tail, "pieces": self.context_pieces,
                "score": self.meta.get("score", "sum"),
                "sequences": self.sequences, "pad_id": self.pad_id, "eos_id": self.eos_id,
                "vocab_size": len(self.tokenizer), "prior": None if prior is None else prior.tolist(),
                "prior_alpha": (self.meta.get("prior") or {}).get("alpha", 0.0)}

    @torch.no_grad()
    def next_logprobs(self, sequences: list[list[int]]) -> np.ndarray:
        """Log-probabilities of the next token after each sequence: [n, vocab]."""
        self.model.eval()
        ids, mask = left_pad(sequences, self.pad_id)
        out = []
        for start in range(0, len(ids), 256):
            i, m = torch.from_numpy(ids[start:start + 256]), torch.from_numpy(mask[start:start + 256])
            logits = self.model(input_ids=i, attention_mask=m, position_ids=position_ids(m)).logits
            out.append(torch.log_softmax(logits[:, -1].float(), -1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.tokenizer)))

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
        """`CachedLM.prefill` in PyTorch: log-probs after each prompt; state (past keys/values, mask)."""
        self.model.eval()
        ids, mask = left_pad(prompts, self.pad_id)
        m = torch.from_numpy(mask)
        logprobs, past = Prefill(self.model)(torch.from_numpy(ids), m)
        return logprobs.numpy(), (past, m)

    @torch.no_grad()
    def step(self, state: tuple[torch.Tensor, torch.Tensor], parents: np.ndarray,
             tokens: np.ndarray) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
        """`CachedLM.step` in PyTorch: row i continues row parents[i] of the state with tokens[i]."""
        past, mask = state
        rows = torch.from_numpy(np.asarray(parents, dtype=np.int64))
        mask = torch.cat([mask[rows], torch.ones((len(rows), 1), dtype=mask.dtype)], 1)
        logprobs, present = Step(self.model)(torch.from_numpy(np.asarray(tokens, dtype=np.int64)).view(-1, 1), mask,
                                             past.index_select(2, rows))
        return logprobs.numpy(), (present, mask)

    def save(self, directory: Path) -> Path:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        directory = Path(directory)
        model = self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / "novelty.json").write_text(json.dumps({**self.meta, "descriptions": self.descriptions}, indent=1))
        return directory

    @classmethod
    def load(cls, directory: Path) -> NoveltyLM:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        directory = Path(directory)
        meta = json.loads((directory / "novelty.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        return cls(model.eval(), tokenizer, meta.pop("descriptions"), meta)


def _batches(lm: NoveltyLM, ex: NoveltyExamples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention masks and labels (-100 on the prompt and the padding)."""
    rows = [(lm.prompt_ids(c), lm.sequences[int(t)]) for c, t in zip(ex.contexts, ex.targets, strict=True)]
    length = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), length), lm.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        seq = p + t
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, len(p):len(seq)] = torch.tensor(t)
    return ids, mask, labels


def _loss(lm: NoveltyLM, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return lm.model(input_ids=ids, attention_mask=mask, labels=labels).loss


def prompt_meta(descriptions: list[str], cfg: LMConfig, top_items: list[list[str]] | None) -> dict:
    """What a model directory records about its prompt and scoring: the context texts when the prompt
    shows item titles (`cfg.titles`; -1: 2 for a base model, none from scratch, whose prompt stays as
    it always was), and the score rule(s) to try on validation."""
    titles = cfg.titles if cfg.titles >= 0 else (2 if cfg.base_model else 0)
    out: dict = {"titles": titles if top_items is not None else 0,
                 "score": "sum" if cfg.score == "auto" else cfg.score,
                 "score_rules": ["sum", "mean"] if cfg.score == "auto" else [cfg.score]}
    if titles and top_items is not None:
        out["context_texts"] = context_texts(descriptions, top_items, titles)
    return out


def train_novelty_lm(descriptions: list[str], train: NoveltyExamples, valid: NoveltyExamples, cfg: LMConfig,
                     meta: dict | None = None, progress: bool = True,
                     top_items: list[list[str]] | None = None) -> tuple[NoveltyLM, dict]:
    """Train (or fine-tune) the LM on prompt -> novel-cluster description; keep the best epoch.

    `top_items` (titles per cluster, most trafficked first) lets the prompt show titles (`cfg.titles`).
    `cfg.zero_shot` returns the base model untrained; `cfg.max_train_examples`, `max_valid_examples`
    and `max_train_seconds` bound what a pretrained model costs on a CPU (the best epoch by validation
    loss is still the one kept, and a budget that runs out mid-epoch ends training after that epoch's
    validation).
    """
    from tqdm import tqdm

    if cfg.score not in ("sum", "mean", "auto"):
        raise ValueError(f"score must be sum, mean or auto, not {cfg.score!r}")
    if cfg.zero_shot and not cfg.base_model:
        raise ValueError("--zero-shot needs --base-model (a model trained from scratch knows nothing untrained)")
    torch.manual_seed(cfg.seed)
    if cfg.base_model:
        model, tokenizer = load_base(cfg)
    else:
        tokenizer = train_tokenizer(descriptions)
        model = small_gpt2(len(tokenizer), cfg, tokenizer.pad_token_id, tokenizer.eos_token_id)
    lm = NoveltyLM(model, tokenizer, descriptions,
                   {**(meta or {}), "lm_config": asdict(cfg), **prompt_meta(descriptions, cfg, top_items)})
    t0 = time.perf_counter()
    if cfg.zero_shot:
        model.eval()
        return lm, {"history": [], "best_valid_loss": float("nan"), "seconds": 0.0, "train_examples": 0}
    train = diversified_sample(train, cfg.max_train_examples, cfg.seed)
    if cfg.max_valid_examples and len(valid) > cfg.max_valid_examples:
        valid = valid.subset(np.sort(np.random.default_rng(cfg.seed).permutation(len(valid))[:cfg.max_valid_examples]))
    x, m, y = _batches(lm, train)
    vx, vm, vy = _batches(lm, valid) if len(valid) else (x[:0], m[:0], y[:0])
    eval_batch = cfg.batch_size if cfg.base_model else 256  # a large vocabulary's logits are big
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, since, history = float("inf"), None, 0, []
    out_of_time = False
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total, seen = 0.0, 0
        for start in tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch}", leave=False,
                          disable=not progress):
            idx = order[start:start + cfg.batch_size]
            width = int(m[idx].sum(1).max())  # right padding beyond the longest row changes nothing
            loss = _loss(lm, x[idx, :width], m[idx, :width], y[idx, :width])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
            if cfg.max_train_seconds and time.perf_counter() - t0 > cfg.max_train_seconds:
                out_of_time = True
                break
        model.eval()
        with torch.no_grad():
            val = float(np.mean([_loss(lm, vx[s:s + eval_batch], vm[s:s + eval_batch], vy[s:s + eval_batch]).item()
                                 for s in range(0, len(vx), eval_batch)])) if len(vx) else total / seen
        history.append({"epoch": epoch, "loss": total / seen, "valid_loss": val, "examples": seen})
        if progress:
            tqdm.write(f"epoch {epoch:3d}  loss {total / seen:.4f}  valid loss {val:.4f}  "
                       f"({time.perf_counter() - t0:.0f} s{', time budget spent' if out_of_time else ''})")
        if val < best - 1e-4:
            best, since = val, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since += 1
            if since >= cfg.patience:
                break
        if out_of_time:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return lm, {"history": history, "best_valid_loss": best, "seconds": time.perf_counter() - t0,
                "train_examples": len(train), "valid_examples": len(valid)}
