"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018), in plain PyTorch.

A causal transformer reads a user's item history and, at every position, scores every item as the
next one by a dot product with the (shared) item embeddings.

Two choices differ from the paper, both so that a served model sees what it was trained on:
- Histories are left-padded and positions count back from the newest item (the newest is
  position 0). A history of any length then puts its latest items at the positions they had in
  training, so the exported model accepts any history length.
- Attention is written out (no nn.MultiheadAttention) so the ONNX export is a plain graph.

Item ids are 1..n_items; 0 is padding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
    """Histories [B, L] of item ids (0 = padding, left-padded) -> hidden states [B, L, D]."""

    def __init__(self, cfg: SASRecConfig) -> None:
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

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        history = history[:, -self.cfg.max_len:]
        return self.encode(self.item_emb(history), history > 0)

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

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of items 1..n_items for hidden states [..., D] -> [..., n_items]."""
        return hidden @ self.item_emb.weight[1:].T

    def last_scores(self, history: torch.Tensor) -> torch.Tensor:
        """Scores of every item as the next one after each history: [B, n_items]."""
        return self.item_scores(self.forward(history)[:, -1])
