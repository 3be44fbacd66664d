"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018), in plain PyTorch.

A causal transformer reads a user's item history and, at every position, scores every item as the
next one by a dot product with the (shared) item embeddings.

Two choices differ from the paper, both so that a served model sees what it was trained on:
- Histories are left-padded and positions count back from the newest item (the newest is
  position 0). A history of any length then puts its latest items at the positions they had in
  training, so the exported model accepts any history length.
- Attention is written out (no nn.MultiheadAttention) so the ONNX export is a plain graph.

Item ids are 1..n_items; 0 is padding.

Cold items (issue 27): with `text_dim` > 0 an item's vector is its id embedding (only for items
seen in training, `warm`) plus a learnt projection of its text embedding, so an item that had no
interaction before training still has a vector, made from its text alone, and can be ranked.
`fold_text` turns such a model into a plain one for export (the ONNX graph does not change).
Training may also drop warm items' id embeddings at random (`id_dropped`, DropoutNet's id dropout,
drawn by `interests.seqrec.train.id_dropout_mask`), so that the text part learns to stand alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn


@dataclass
class SASRecConfig:
    n_items: int
    max_len: int = 50
    dim: int = 64
    heads: int = 2
    blocks: int = 2
    dropout: float = 0.2
    # Width of the item text embeddings the model reads (0: none, the id-only model; the default, so that
    # checkpoints written before the text part load unchanged).
    text_dim: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head attention where position t sees positions <= t that are not padding."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x [B, L, D]; allowed [B, 1, L, L] bool (query, key)."""
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, length, d)
        return self.out(y)


class Block(nn.Module):
    """Pre-norm transformer block: attention and a point-wise feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), allowed))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRec(nn.Module):
    """Histories [B, L] of item ids (0 = padding, left-padded) -> hidden states [B, L, D].

    With `cfg.text_dim` > 0 the model also holds `item_text` [n_items + 1, text_dim] (a buffer: the
    text encoder is not trained here; row 0, padding, is zero), `warm` [n_items + 1] (items with a
    training interaction) and `text_proj`, and `item_vectors` combines them (see there). A new item's
    vector is computed from its text by the same `text_proj`, which the checkpoint keeps: this is
    how the items of issue 27's later steps (added to the catalog after training) get a vector.
    """

    def __init__(self, cfg: SASRecConfig, item_text: torch.Tensor | None = None,
                 warm: torch.Tensor | None = None) -> None:
        """`item_text` [n_items, text_dim] and `warm` [n_items] bool, for items 1..n (text models only).

        Left out (a checkpoint being loaded: its state dict fills them), the text is zero and every
        item is warm.
        """
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        if cfg.text_dim:  # created last, so that the id-only layers draw the same initial weights by seed
            self._init_text(item_text, warm)

    def _init_text(self, item_text: torch.Tensor | None, warm: torch.Tensor | None) -> None:
        n, t = self.cfg.n_items, self.cfg.text_dim
        text = torch.zeros(n + 1, t)
        if item_text is not None:
            if tuple(item_text.shape) != (n, t):
                raise ValueError(f"item_text must be [{n}, {t}], got {tuple(item_text.shape)}")
            text[1:] = item_text.float()
        seen = torch.ones(n + 1, dtype=torch.bool)
        if warm is not None:
            if tuple(warm.shape) != (n,):
                raise ValueError(f"warm must be [{n}], got {tuple(warm.shape)}")
            seen[1:] = warm.bool()
        seen[0] = False  # padding stays the zero vector
        self.register_buffer("item_text", text)
        self.register_buffer("warm", seen)
        self.text_proj = nn.Linear(t, self.cfg.dim, bias=False)
        # Text rows are unit vectors: std 0.02 puts the text part on the scale of the id embeddings at start.
        nn.init.normal_(self.text_proj.weight, std=0.02)

    def item_vectors(self, id_dropped: torch.Tensor | None = None) -> torch.Tensor:
        """The [n_items + 1, D] item table that both reads histories and scores items (row 0: padding, zero).

        Id-only model: the id embeddings. Text model: warm * id embedding + text_proj(item text). The
        id embedding of an item with no training interaction is masked out, not merely small: it was
        never trained, so it would only add noise, and an item added later has none at all. Such an
        item is represented by its text alone, in the same space as the items the model learnt.

        `id_dropped` [n_items + 1] bool (training only, text models only): warm items whose id embedding
        is masked out too, so that for this batch they are their text part alone, as a cold item is.
        """
        if not self.cfg.text_dim:
            return self.item_emb.weight
        keep = self.warm if id_dropped is None else self.warm & ~id_dropped
        return self.item_emb.weight * keep[:, None] + self.text_proj(self.item_text)

    def forward(self, history: torch.Tensor, id_dropped: torch.Tensor | None = None) -> torch.Tensor:
        history = history[:, -self.cfg.max_len:]
        items = self.item_emb(history) if not self.cfg.text_dim else self.item_vectors(id_dropped)[history]
        return self.encode(items, history > 0)

    def encode(self, items: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, D] of item vectors [B, L, D] (`real`: not padding), the newest last.

        Apart from `forward` so that a graph holding the embeddings in another layout (by cluster:
        `interests.seqrec.clustered_topn`) looks them up itself and the export keeps one copy of them.
        """
        length = items.shape[1]
        # Newest item at position 0, whatever the length of the history.
        positions = (length - 1) - torch.arange(length, device=items.device)  # (a descending arange exports wrongly)
        x = items * math.sqrt(self.cfg.dim) + self.pos_emb(positions)[None]
        x = self.drop(x) * real[..., None]
        idx = torch.arange(length, device=items.device)  # comparisons, not tril/eye: ONNX-friendly for bool
        allowed = (idx[None, :] <= idx[:, None])[None, None] & real[:, None, None, :]
        # A padding query may see nothing; let it see itself so the softmax stays finite.
        allowed = allowed | (idx[None, :] == idx[:, None])[None, None]
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)

    def item_scores(self, hidden: torch.Tensor, id_dropped: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of items 1..n_items for hidden states [..., D] -> [..., n_items] (`id_dropped`: `item_vectors`)."""
        return hidden @ self.item_vectors(id_dropped)[1:].T

    def last_scores(self, history: torch.Tensor) -> torch.Tensor:
        """Scores of every item as the next one after each history: [B, n_items]."""
        return self.item_scores(self.forward(history)[:, -1])


def with_items(model: SASRec, text: torch.Tensor) -> SASRec:
    """A copy of a text model with items n+1..n+k appended, cold: their vectors are `text_proj(text)` alone.

    `text` [k, text_dim]: the new items' text embeddings, made by the encoder the model's own were made by
    (`interests.seqrec.new_items`). The learnt weights are shared values, not retrained, so every item the model
    had keeps its vector and score exactly: a new item is ranked as an item without training interactions always
    was. An id-only model has nothing to make a new item's vector from, and is refused.
    """
    if not model.cfg.text_dim:
        raise ValueError("an id-only SASRec (text 'none') has no vector for an item it never saw: train it with a "
                         "text part (`explore seqrec train --text tfidf`)")
    text = torch.as_tensor(text, dtype=torch.float32)
    if text.ndim != 2 or text.shape[1] != model.cfg.text_dim:
        raise ValueError(f"new items' text must be [k, {model.cfg.text_dim}], got {tuple(text.shape)}")
    n, k = model.cfg.n_items, text.shape[0]
    bigger = SASRec(replace(model.cfg, n_items=n + k))
    state = dict(model.state_dict())
    with torch.no_grad():
        state["item_emb.weight"] = torch.cat([state["item_emb.weight"], torch.zeros(k, model.cfg.dim)])
        state["item_text"] = torch.cat([state["item_text"], text])
        state["warm"] = torch.cat([state["warm"], torch.zeros(k, dtype=torch.bool)])
    bigger.load_state_dict(state)
    return bigger.train(model.training)


def map_text(model: SASRec, item_text: torch.Tensor, warm: torch.Tensor, ridge: float = 1.0) -> SASRec:
    """A text model made from a trained id-only one, whose warm items keep their vectors exactly.

    `text_proj` is fitted after training, by ridge regression of the warm items' id embeddings on their texts
    (the mapping approach to cold start: content -> collaborative embedding, van den Oord et al., NeurIPS 2013),
    and each warm item's id embedding becomes `id embedding - text_proj(text)`, so that `item_vectors` (their sum)
    is today's vector for every warm item: the warm ranking cannot lose anything. An item that is not `warm`
    (no training interaction, or added later by `with_items`) is its mapped text alone. `item_text` [n_items,
    text_dim], `warm` [n_items] bool (items 1..n); `ridge` is the L2 penalty (text rows are unit vectors).
    """
    if model.cfg.text_dim:
        raise ValueError("map_text takes an id-only SASRec (text 'none'); this one has a text part already")
    text = torch.as_tensor(item_text, dtype=torch.float64)
    warm = torch.as_tensor(warm, dtype=torch.bool)
    n, d = model.cfg.n_items, model.cfg.dim
    if text.ndim != 2 or text.shape[0] != n or tuple(warm.shape) != (n,):
        raise ValueError(f"item_text must be [{n}, t] and warm [{n}], got {tuple(text.shape)}, {tuple(warm.shape)}")
    ids = model.item_emb.weight.detach()[1:].double()
    x, y = text[warm], ids[warm]
    w = torch.linalg.solve(x.T @ x + ridge * torch.eye(text.shape[1], dtype=torch.float64), x.T @ y)  # [t, d]
    mapped = SASRec(replace(model.cfg, text_dim=text.shape[1]), text.float(), warm)
    state = {k: v for k, v in model.state_dict().items()}
    with torch.no_grad():
        state["text_proj.weight"] = w.T.float()
        emb = torch.zeros(n + 1, d)
        emb[1:][warm] = (y - x @ w).float()  # so that id embedding + text part is the trained vector
        state["item_emb.weight"] = emb
        state["item_text"], state["warm"] = mapped.item_text, mapped.warm
    mapped.load_state_dict(state)
    return mapped.train(model.training)


def fold_text(model: SASRec) -> SASRec:
    """A plain SASRec (text_dim 0) whose id embeddings are `model.item_vectors()`: same scores.

    Whatever reads `item_emb` directly must be given the folded model: the clustered top-N (the
    exporters fold before they build it, so the ONNX graph and Triton stay as they are) and the
    cluster head's initialisation (`interests.novelty.fit_mixture`). An id-only model is returned as it is.
    """
    if not model.cfg.text_dim:
        return model
    plain = SASRec(replace(model.cfg, text_dim=0))
    state = {k: v for k, v in model.state_dict().items() if k not in {"item_text", "warm", "text_proj.weight"}}
    with torch.no_grad():
        state["item_emb.weight"] = model.item_vectors().detach().clone()
    plain.load_state_dict(state)
    return plain.train(model.training)
