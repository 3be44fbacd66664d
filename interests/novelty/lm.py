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
from interests.novelty.examples import (
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
from interests.runtime.constrained import assemble_prompt, left_pad

PAD, EOS, UNK = "[PAD]", "[EOS]", "[UNK]"


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: the first CUDA device where one is visible, else the CPU; anything else as torch reads it.
    A named device that is not there fails here, with its name, rather than deep inside a forward pass."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device


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

    from interests.novelty.base_models import resolve_base_model

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
        # the model's device (the CPU without a model: wire-contract tests build prompts with a tokenizer alone)
        self.device = next(model.parameters()).device if model is not None else torch.device("cpu")
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

    def to(self, device: torch.device | str) -> NoveltyLM:
        """Move the model; every method takes numpy in and gives numpy out, whatever the device."""
        self.model.to(device)
        self.device = torch.device(device)
        return self

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

    def contexts_per_batch(self, rows_per_context: int, limit: int = 64, budget_bytes: float | None = None) -> int:
        """Contexts one search batch may hold so that the key/value cache of its hypotheses (`rows_per_context`
        each, a prompt plus a description long) stays within `budget_bytes` per copy (a step holds about three).

        `limit` for the small GPT-2 (its cache is ~2 KB a token); a 30-layer base model's is ~46 KB, and
        64 contexts x 32 hypotheses of SmolLM2 took 20 GB and were killed. On a GPU the budget is a
        tenth of its free memory and the limit four times larger (a batch there costs its launches).
        """
        if budget_bytes is None:
            budget_bytes = 5e8
            if self.device.type == "cuda":
                budget_bytes, limit = torch.cuda.mem_get_info(self.device)[0] / 10, limit * 4
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
            i, m = (torch.from_numpy(a[start:start + 256]).to(self.device) for a in (ids, mask))
            logits = self.model(input_ids=i, attention_mask=m, position_ids=position_ids(m)).logits
            out.append(torch.log_softmax(logits[:, -1].float(), -1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.tokenizer)))

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
        """`CachedLM.prefill` in PyTorch: log-probs after each prompt; state (past keys/values, mask)."""
        self.model.eval()
        ids, mask = left_pad(prompts, self.pad_id)
        m = torch.from_numpy(mask).to(self.device)
        logprobs, past = Prefill(self.model)(torch.from_numpy(ids).to(self.device), m)
        return logprobs.cpu().numpy(), (past, m)

    @torch.no_grad()
    def step(self, state: tuple[torch.Tensor, torch.Tensor], parents: np.ndarray,
             tokens: np.ndarray) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
        """`CachedLM.step` in PyTorch: row i continues row parents[i] of the state with tokens[i]."""
        past, mask = state
        rows = torch.from_numpy(np.asarray(parents, dtype=np.int64)).to(self.device)
        mask = torch.cat([mask[rows], torch.ones((len(rows), 1), dtype=mask.dtype, device=self.device)], 1)
        new = torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(self.device).view(-1, 1)
        logprobs, present = Step(self.model)(new, mask, past.index_select(2, rows))
        return logprobs.cpu().numpy(), (present, mask)

    @torch.no_grad()
    def description_table(self, contexts: np.ndarray) -> np.ndarray:
        """[n_contexts, n_clusters]: log P(description + end | prompt) summed over tokens, for every
        description after every context, by teacher forcing: one prefill per prompt, then every
        description at once over copies of its cache. The same numbers as the trie search with a beam
        as wide as the catalog (`novelty_prior.description_scores`, which uses this when it can), in
        two forward passes per batch instead of one per token with a Python search between: what
        makes a 30-layer model's exact scoring affordable. The context's own clusters get -inf."""
        self.model.eval()
        n = len(self.sequences)
        seq_ids, seq_mask = (torch.from_numpy(a).to(self.device) for a in _right_pad(self.sequences, self.pad_id))
        width = seq_ids.shape[1]
        per_batch = min(self.contexts_per_batch(n), self._logit_bound(n * width))
        out = np.full((len(contexts), n), -np.inf)
        for start in range(0, len(contexts), per_batch):
            chunk = contexts[start:start + per_batch]
            ids, mask = (torch.from_numpy(a).to(self.device) for a in left_pad([self.prompt_ids(c) for c in chunk],
                                                                                  self.pad_id))
            first, past = Prefill(self.model)(ids, mask)
            rows = torch.arange(len(chunk), device=self.device).repeat_interleave(n)
            full_mask = torch.cat([mask[rows], seq_mask[:, :-1].repeat(len(chunk), 1)], 1)
            positions = mask.sum(-1)[rows, None] + torch.arange(width - 1, device=self.device)[None, :]
            tokens = seq_ids.repeat(len(chunk), 1)
            logits = self.model(input_ids=tokens[:, :-1], attention_mask=full_mask, position_ids=positions,
                                past_key_values=unstack_cache(past.index_select(2, rows))).logits
            rest = torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, 1:, None])[..., 0]
            lp = torch.cat([first[rows].gather(-1, tokens[:, :1]), rest], 1) * seq_mask.repeat(len(chunk), 1)
            table = lp.sum(1).view(len(chunk), n).cpu().numpy().astype(np.float64)
            for row, c in enumerate(chunk):
                table[row, list(map(int, c))] = -np.inf
            out[start:start + len(chunk)] = table
        return out

    def _logit_bound(self, rows_tokens: int, budget_bytes: float | None = None) -> int:
        """Contexts whose teacher-forced logits ([rows x tokens, vocab] fp32, twice with the log-softmax)
        fit the same memory budget as `contexts_per_batch`'s cache."""
        if budget_bytes is None:
            budget_bytes = torch.cuda.mem_get_info(self.device)[0] / 10 if self.device.type == "cuda" else 5e8
        return int(max(1, budget_bytes // (rows_tokens * len(self.tokenizer) * 4 * 2)))

    def save(self, directory: Path, delta: bool = False) -> Path:
        """The model, its tokenizer and `novelty.json`. `delta`: only what differs from a base model —
        a LoRA adapter in peft's own format (~2 MB instead of ~540 MB for SmolLM2), nothing for a
        zero-shot model — so that a model trained on one machine travels; `load` rebuilds the rest
        from the base model named in the meta."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        directory = Path(directory)
        base = (self.meta.get("lm_config") or {}).get("base_model")
        if delta and not base:
            raise ValueError("only a model fine-tuned from a base model can be saved as a delta")
        if delta and hasattr(self.model, "peft_config"):
            self.model.save_pretrained(directory)  # adapter_config.json + adapter_model.safetensors
        elif not delta:
            model = self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
            model.save_pretrained(directory)
        elif not self.meta["lm_config"].get("zero_shot"):
            raise ValueError("a delta is a LoRA adapter or nothing (zero-shot): this model's weights all changed")
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        (directory / "novelty.json").write_text(json.dumps({**self.meta, "descriptions": self.descriptions}, indent=1))
        return directory

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> NoveltyLM:
        """A saved model directory, full or delta (`save`); a delta needs its base model on this machine."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        directory = Path(directory)
        meta = json.loads((directory / "novelty.json").read_text())
        if (directory / "config.json").exists():
            model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, attn_implementation="eager")
        else:
            model = _delta_model(directory, meta["lm_config"])
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        return cls(model.eval(), tokenizer, meta.pop("descriptions"), meta).to(resolve_device(device))


def _delta_model(directory: Path, cfg: dict):  # type: ignore[no-untyped-def]
    """The base model of `cfg` with the directory's LoRA adapter merged in (none for zero-shot)."""
    from transformers import AutoModelForCausalLM

    from interests.novelty.base_models import resolve_base_model

    path = resolve_base_model(cfg["base_model"], cfg.get("allow_download", False))
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=not cfg.get("allow_download"),
                                                 attn_implementation="eager")
    if (directory / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, directory).merge_and_unload()
    elif not cfg.get("zero_shot"):
        raise FileNotFoundError(f"{directory} holds neither a model (config.json) nor a LoRA adapter")
    return model


def _right_pad(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) [n, longest], each sequence left-aligned (the descriptions after a prompt)."""
    width = max(map(len, sequences))
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for i, s in enumerate(sequences):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return ids, mask


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
    """The mean target-token loss of one batch, moved to the model's device (the data stays on the CPU)."""
    d = lm.device
    return lm.model(input_ids=ids.to(d), attention_mask=mask.to(d), labels=labels.to(d)).loss


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
                     top_items: list[list[str]] | None = None,
                     pretrain: NoveltyExamples | None = None) -> tuple[NoveltyLM, dict]:
    """Train (or fine-tune) the LM on prompt -> novel-cluster description; keep the best epoch.

    `top_items` (titles per cluster, most trafficked first) lets the prompt show titles (`cfg.titles`).
    `cfg.zero_shot` returns the base model untrained; `cfg.max_train_examples`, `max_valid_examples`
    and `max_train_seconds` bound what a pretrained model costs on a CPU (the best epoch by validation
    loss is still the one kept, and a budget that runs out mid-epoch ends training after that epoch's
    validation). `pretrain` (`interests.novelty.examples.context_transitions`): examples fitted first, with the
    same validation (novel transitions) choosing their best epoch and its own `max_train_seconds`, before the
    novel ones (issue 26, item 4b: more data for a small LM).
    """
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
    lm.to(resolve_device(cfg.device))
    t0 = time.perf_counter()
    if cfg.zero_shot:
        model.eval()
        return lm, {"history": [], "best_valid_loss": float("nan"), "seconds": 0.0, "train_examples": 0}
    train = diversified_sample(train, cfg.max_train_examples, cfg.seed)
    if cfg.max_valid_examples and len(valid) > cfg.max_valid_examples:
        valid = valid.subset(np.sort(np.random.default_rng(cfg.seed).permutation(len(valid))[:cfg.max_valid_examples]))
    checks = _batches(lm, valid) if len(valid) else None
    before: dict = {}
    if pretrain is not None and len(pretrain):
        history, best = _fit(lm, _batches(lm, pretrain), checks, cfg, progress, "pretrain ")
        before = {"pretrain": {"history": history, "best_valid_loss": best, "examples": len(pretrain)}}
        lm.meta["pretrained_on_transitions"] = len(pretrain)
    history, best = _fit(lm, _batches(lm, train), checks, cfg, progress, "")
    return lm, {"history": history, "best_valid_loss": best, "seconds": time.perf_counter() - t0,
                "train_examples": len(train), "valid_examples": len(valid), **before}


def _fit(lm: NoveltyLM, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
         checks: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, cfg: LMConfig, progress: bool,
         label: str) -> tuple[list[dict], float]:
    """Epochs over `data` (ids, mask, labels) until `cfg.patience` epochs without a better loss on `checks` (the
    training loss when there are none) or `cfg.max_train_seconds`; the best epoch's weights are kept."""
    from tqdm import tqdm

    model, (x, m, y) = lm.model, data
    vx, vm, vy = checks if checks is not None else (x[:0], m[:0], y[:0])
    eval_batch = cfg.batch_size if cfg.base_model else 256  # a large vocabulary's logits are big
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, since, history = float("inf"), None, 0, []
    out_of_time, t0 = False, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total, seen = 0.0, 0
        for start in tqdm(range(0, len(order), cfg.batch_size), desc=f"{label}epoch {epoch}", leave=False,
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
            tqdm.write(f"{label}epoch {epoch:3d}  loss {total / seen:.4f}  valid loss {val:.4f}  "
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
    return history, best
