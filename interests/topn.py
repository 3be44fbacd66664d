"""Cluster-restricted top-N inside the model graph: what Triton's `seqrec` serves.

Input: item histories [B, L] (1-based ids, 0 pads, left-padded) and the allowed clusters [B, C]
(1 = allowed). Output: the top-N items [B, N] (1-based ids) and their scores [B, N]. Items outside
the allowed clusters and items already in the history are excluded inside the graph, with the
item-to-cluster map as a constant, so no [B, n_items] score tensor ever leaves the model.

When fewer than N items are eligible, the remaining slots carry score EXCLUDED (finite, so that
every runtime returns the same numbers); callers drop them.
"""

from __future__ import annotations

import torch
from torch import nn

from interests.constrained import EXCLUDED
from interests.sasrec import SASRec


class RestrictedTopN(nn.Module):
    def __init__(self, model: SASRec, item_cluster: torch.Tensor, n_clusters: int, top_n: int = 20) -> None:
        super().__init__()
        if item_cluster.shape != (model.cfg.n_items,):
            raise ValueError(f"item_cluster must map all {model.cfg.n_items} items, got {tuple(item_cluster.shape)}")
        if int(item_cluster.max()) >= n_clusters or int(item_cluster.min()) < 0:
            raise ValueError("item_cluster holds ids outside [0, n_clusters)")
        self.model = model
        self.top_n = min(top_n, model.cfg.n_items)
        self.n_clusters = n_clusters
        self.register_buffer("item_cluster", item_cluster.long(), persistent=False)

    def forward(self, history: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.model.last_scores(history)  # [B, n_items]
        eligible = allowed.to(torch.bool)[:, self.item_cluster]  # [B, n_items]
        seen = torch.zeros(history.shape[0], self.model.cfg.n_items + 1, dtype=torch.bool, device=history.device)
        seen = seen.scatter(1, history, torch.ones_like(history, dtype=torch.bool))[:, 1:]
        scores = scores.masked_fill(~eligible | seen, EXCLUDED)
        top_scores, top_idx = scores.topk(self.top_n, dim=1)
        return top_idx + 1, top_scores
