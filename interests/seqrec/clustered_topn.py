"""The restricted top-N that costs what it restricts to: score only the allowed clusters' items.

`interests.seqrec.topn.RestrictedTopN` scores all n_items and masks; at a million items that is a [B, 1M]
product and top-k per request, although the engine allows 3 clusters out of hundreds. Here the
items are laid out by cluster in a padded index `members` [C, S] (S = the largest cluster; ids
ascending, 0 pads), and so are their embeddings (`by_cluster`, row 1 + c * S + offset; row 0 and
padding rows zero): a cluster's vectors are one contiguous block, read sequentially (gathering the
same rows scattered over a 1M-item table took twice as long), and the history is looked up in the
same table, so the export holds one copy of the embeddings. The graph

1. picks each row's allowed clusters: TopK over the [B, C] flags with K = the most clusters any
   row of the batch allows (a tensor, so the exported graph keeps it dynamic);
2. gathers those clusters' item ids [B, K*S] and their embeddings, and scores them against the
   history's last hidden state: O(K * S * D) per row instead of O(n_items * D);
3. masks padding, clusters a row did not allow (a row allowing fewer than K) and items of the
   history (each history item's (cluster, offset) says where it sits among the candidates:
   O(L * K), no [B, n_items] mask);
4. ranks with `ranked_top_n`, which orders ties by id, so the answer equals RestrictedTopN's.

Same inputs, outputs and order as RestrictedTopN (the wire contract of `seqrec`). Cost grows with
K times the largest cluster, so balanced clusters keep the padding small; when more than a quarter
of the clusters are allowed (an exploit-only baseline) the graph scores the whole padded table
once per row instead of gathering it (`block_scores`): a (padded) full scoring, without the
[B, K*S, D] gather.
"""

from __future__ import annotations

import numpy as np
import torch

from interests.runtime.constrained import EXCLUDED
from interests.seqrec.sasrec import SASRec
from interests.seqrec.topn import RestrictedTopN, ranked_top_n


@torch.jit.script
def block_scores(hidden: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Scores [B, R] of the embedding `rows` [B, R] of `table` against `hidden` [B, D].

    Few rows a request (a few clusters allowed): gather them, [B, R, D], and multiply row by row.
    When `dense` (most clusters allowed: an exploit-only baseline), that gather would be the whole
    padded table per row (2.6 GB at batch 256 on MovieLens' 32 clusters), so score the whole table
    once, [B, table rows], and pick the columns. Scripted so that the export keeps both (ONNX If).
    """
    if bool(dense):
        return (hidden @ table.t()).gather(1, rows)
    return (table[rows] @ hidden.unsqueeze(2)).squeeze(2)


def cluster_layout(item_cluster: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(members [C, S] 1-based ids by cluster, ascending, 0-padded; offset [n_items] of each item in its row).

    S is the largest cluster (at least 1, so that a catalog of empty clusters still has a shape).
    """
    item_cluster = np.asarray(item_cluster, dtype=np.int64)
    order = np.argsort(item_cluster, kind="stable")  # grouped by cluster, ids ascending within
    counts = np.bincount(item_cluster, minlength=n_clusters)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    offset = np.empty(len(item_cluster), dtype=np.int64)
    offset[order] = np.arange(len(item_cluster)) - starts[item_cluster[order]]
    members = np.zeros((n_clusters, max(int(counts.max(initial=0)), 1)), dtype=np.int64)
    members[item_cluster, offset] = np.arange(1, len(item_cluster) + 1)
    return members, offset


class ClusteredTopN(RestrictedTopN):
    """RestrictedTopN's answer from the allowed clusters' items only (see the module docstring).

    A subclass because it is the same contract with the same constants; only `forward` differs.
    """

    def __init__(self, model: SASRec, item_cluster: torch.Tensor, n_clusters: int, top_n: int = 20) -> None:
        super().__init__(model, item_cluster, n_clusters, top_n)
        members, offset = cluster_layout(item_cluster.numpy(), n_clusters)
        self.cluster_size = members.shape[1]
        self.register_buffer("members", torch.from_numpy(members), persistent=False)
        # Indexed by 1-based id; id 0 (padding) sits in cluster -1, which no row picks, and row 0.
        self.register_buffer("slot_cluster", torch.cat([torch.tensor([-1]), item_cluster.long()]), persistent=False)
        self.register_buffer("slot_offset", torch.cat([torch.tensor([0]), torch.from_numpy(offset)]),
                             persistent=False)
        row = torch.cat([torch.tensor([0]), 1 + item_cluster.long() * self.cluster_size + torch.from_numpy(offset)])
        self.register_buffer("row_of", row, persistent=False)
        # A copy of the model's embeddings at construction (the graph is built from a trained model).
        with torch.no_grad():
            by_cluster = model.item_emb.weight.new_zeros(1 + n_clusters * self.cluster_size, model.cfg.dim)
            by_cluster[row[1:]] = model.item_emb.weight[1:]
        self.register_buffer("by_cluster", by_cluster, persistent=False)

    def forward(self, history: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.slate(history, self.hidden(history), allowed)

    def hidden(self, history: torch.Tensor) -> torch.Tensor:
        """The history's last hidden state [B, D], from the by-cluster copy of the embeddings."""
        recent = history[:, -self.model.cfg.max_len:]
        return self.model.encode(self.by_cluster[self.row_of[recent]], recent > 0)[:, -1]

    def slate(self, history: torch.Tensor, hidden: torch.Tensor,
              allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The restricted top-N for a hidden state already computed (`interests.novelty.mixture_topn` reuses it)."""
        chosen, chosen_ok = self.chosen_clusters(allowed)  # [B, K]
        ids = self.members[chosen].flatten(1)  # [B, K*S]
        rows = 1 + chosen[:, :, None] * self.cluster_size + torch.arange(self.cluster_size, device=history.device)
        dense = chosen_ok.shape[1] * torch.ones((), dtype=torch.int64) * 4 > self.n_clusters  # K > C / 4
        scores = block_scores(hidden, self.by_cluster, rows.flatten(1), dense)  # contiguous blocks
        keep = (ids > 0) & chosen_ok[:, :, None].expand(-1, -1, self.cluster_size).flatten(1)
        scores = self.mask_seen(scores.masked_fill(~keep, EXCLUDED), history, chosen)
        # At least top_n candidates, whatever K * S is (TopK needs them); the extra ones are never eligible.
        pad = torch.zeros_like(ids[:, :1]).expand(-1, self.top_n)
        return ranked_top_n(torch.cat([scores, pad.to(scores.dtype) + EXCLUDED], 1), torch.cat([ids, pad], 1),
                            self.top_n)

    def chosen_clusters(self, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's allowed clusters [B, K] (K = the most any row allows) and which of them are real.

        K is a tensor so that the exported graph keeps it dynamic (an int would be frozen at export).
        """
        flags = allowed.to(torch.float32)
        k = flags.sum(1).max().clamp(min=1).to(torch.int64)
        picked, chosen = flags.topk(k, dim=1)
        return chosen, picked > 0

    def mask_seen(self, scores: torch.Tensor, history: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Scores [B, K*S] with the history's items set to EXCLUDED, found in O(L * K) per row.

        A history item of cluster c at offset o is candidate k*S + o when chosen[k] = c. Misses
        are written to an extra column 0 that is dropped, so no index depends on the batch's K.
        """
        match = self.slot_cluster[history][:, :, None] == chosen[:, None, :]  # [B, L, K]
        k = torch.arange(chosen.shape[1], device=history.device)[None, None, :]
        where = torch.where(match, k * self.cluster_size + self.slot_offset[history][:, :, None] + 1,
                            torch.zeros_like(match, dtype=torch.int64)).flatten(1)
        wide = torch.cat([scores[:, :1], scores], 1)
        wide = wide.scatter(1, where, torch.full_like(where, 0, dtype=scores.dtype) + EXCLUDED)
        return wide[:, 1:]
