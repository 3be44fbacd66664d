"""Cluster-restricted top-N inside the model graph: the contract of Triton's `seqrec`, and the
full-scoring graph that defines it.

Input: item histories [B, L] (1-based ids, 0 pads, left-padded) and the allowed clusters [B, C]
(1 = allowed). Output: the top-N items [B, N] (1-based ids) and their scores [B, N]. Items outside
the allowed clusters and items already in the history are excluded inside the graph, with the
item-to-cluster map as a constant, so no [B, n_items] score tensor ever leaves the model.

Order: by score, highest first; equal scores by item id, lowest first (`ranked_top_n`), so that
every graph and runtime that computes the same scores returns the same ids, ties included.
When fewer than N items are eligible, the remaining slots carry item 0 and score EXCLUDED (finite,
so that every runtime returns the same numbers); callers drop them.

`RestrictedTopN` scores every item and masks: O(catalog) per request. It is the reference;
`interests.seqrec.clustered_topn.ClusteredTopN` gives the same answer scoring only the allowed clusters.
"""

from __future__ import annotations

import torch
from torch import nn

from interests.runtime.constrained import EXCLUDED
from interests.seqrec.sasrec import SASRec

# Ids travel through float32 in `ranked_top_n` (ONNX TopK on floats): exact below 2^24.
MAX_ITEMS = 1 << 24
_NO_TIE = -float(MAX_ITEMS) * 2  # a tie key below every -id


def ranked_top_n(scores: torch.Tensor, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n best of candidates `scores` [B, M] (EXCLUDED: not eligible) with item `ids` [B, M], M >= n.

    Ties are broken by the lowest id, whatever the order of the candidates, so that a graph that
    lays items out by cluster returns exactly what the full-scoring one does. TopK alone breaks
    ties by position, and a set cut inside a tie would depend on the layout: the n-th best score t
    is found first, every candidate above t is taken, the lowest ids at t fill the rest, and the
    (at most 2n) picks are ordered by pairwise comparison. Extra cost over TopK: one more TopK
    over the candidates and O(n^2).
    """
    top, at = scores.topk(n, dim=1)  # [B, n], best first
    t = top[:, n - 1:]  # [B, 1] the n-th best score
    above = top > t
    slots_left = n - above.sum(1, keepdim=True)
    tie_key = torch.where(scores == t, -ids.to(torch.float32), torch.full_like(scores, _NO_TIE))
    tie_top, _ = tie_key.topk(n, dim=1)  # the lowest ids at t
    rank = torch.arange(n, device=scores.device)[None]
    tied = (tie_top > _NO_TIE / 2) & (rank < slots_left) & (t > EXCLUDED)
    cand_ids = torch.cat([ids.gather(1, at), (-tie_top).to(ids.dtype)], 1)  # [B, 2n]
    cand_scores = torch.cat([top, t.expand(-1, n)], 1)
    ok = torch.cat([above, tied], 1)
    s_i, s_j = cand_scores[:, :, None], cand_scores[:, None, :]
    before = ok[:, None, :] & ((s_j > s_i) | ((s_j == s_i) & (cand_ids[:, None, :] < cand_ids[:, :, None])))
    place = torch.where(ok, before.to(torch.float32).sum(2), torch.full_like(cand_scores, 4.0 * n))
    _, order = (-place).topk(n, dim=1)  # place 0 first
    ok = ok.gather(1, order)
    items = torch.where(ok, cand_ids.gather(1, order), torch.zeros_like(order))
    return items, torch.where(ok, cand_scores.gather(1, order), torch.full_like(top, EXCLUDED))


def check_item_clusters(item_cluster: torch.Tensor, n_items: int, n_clusters: int) -> None:
    """Both graphs take the catalog's item-to-cluster map as a constant: it must cover every item."""
    if item_cluster.shape != (n_items,):
        raise ValueError(f"item_cluster must map all {n_items} items, got {tuple(item_cluster.shape)}")
    if int(item_cluster.max()) >= n_clusters or int(item_cluster.min()) < 0:
        raise ValueError("item_cluster holds ids outside [0, n_clusters)")
    if n_items >= MAX_ITEMS:
        raise ValueError(f"{n_items} items: the top-N graph orders ties by id in float32, exact below {MAX_ITEMS}")


class RestrictedTopN(nn.Module):
    """Scores every item, masks what is not allowed or already seen, takes the top N: the reference."""

    def __init__(self, model: SASRec, item_cluster: torch.Tensor, n_clusters: int, top_n: int = 20) -> None:
        super().__init__()
        check_item_clusters(item_cluster, model.cfg.n_items, n_clusters)
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
        ids = torch.arange(1, self.model.cfg.n_items + 1, device=history.device)[None].expand(history.shape[0], -1)
        return ranked_top_n(scores, ids, self.top_n)
