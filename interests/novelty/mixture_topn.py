"""The served mixture in one graph: novel clusters and the slate restricted to them, one request.

The worker sends each user's history, the clusters the user knows and the context experts' part
of the mixture (`context_scores` [B, C]: the weighted sum of the LM's, co-occurrence's and
popularity's log-scores for the user's context, all of which depend on the context alone, so a
table row can carry them). The graph

1. encodes the history once (SASRec, from the by-cluster embeddings of `ClusteredTopN`);
2. adds the sequence expert, w_seq * log_softmax(head(hidden)) (`interests.novelty.cluster_head`:
   O(R x D x C) per user, nothing per item);
3. removes the known clusters and takes the top M (`clusters`, `cluster_scores`; a row with fewer
   than M unknown clusters pads with cluster -1 and EXCLUDED);
4. returns the clustered top-N inside those M clusters from the same hidden state (`items`,
   `scores`: the contract of `interests.seqrec.topn`).

So the slate costs one SASRec encoding and O(allowed items), as before, plus the head. The cluster
scores equal `Mixture.score` of the offline judge on the same experts (tested, and through ONNX).
"""

from __future__ import annotations

import copy

import torch

from interests.novelty.cluster_head import ClusterHead
from interests.novelty.mixture import FLOOR
from interests.runtime.constrained import EXCLUDED
from interests.seqrec.clustered_topn import ClusteredTopN
from interests.seqrec.sasrec import SASRec


class MixtureTopN(ClusteredTopN):
    """(history, known, context_scores) -> (clusters, cluster_scores, items, scores); see the module docstring."""

    def __init__(self, model: SASRec, item_cluster: torch.Tensor, n_clusters: int, head: ClusterHead,
                 sequence_weight: float, m: int = 3, top_n: int = 20) -> None:
        super().__init__(model, item_cluster, n_clusters, top_n)
        if head.dims[0] != n_clusters:
            raise ValueError(f"the head scores {head.dims[0]} clusters, the catalog level has {n_clusters}")
        self.head = copy.deepcopy(head).float()  # the graph's own float32 copy; the caller's head is left as is
        self.sequence_weight = float(sequence_weight)
        self.m = min(int(m), n_clusters)

    def forward(self, history: torch.Tensor, known: torch.Tensor,  # type: ignore[override]
                context_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.hidden(history)
        total = self.cluster_scores(hidden, known, context_scores)
        top, clusters = total.topk(self.m, dim=1)  # ties: ONNX TopK and torch both keep the lower index first
        ok = top > EXCLUDED / 2
        allowed = torch.zeros_like(known).scatter(1, clusters, ok)
        items, scores = self.slate(history, hidden, allowed)
        return torch.where(ok, clusters, torch.full_like(clusters, -1)), torch.where(ok, top, EXCLUDED + 0 * top), \
            items, scores

    def cluster_scores(self, hidden: torch.Tensor, known: torch.Tensor, context_scores: torch.Tensor) -> torch.Tensor:
        """[B, C]: context part + w_seq * the head's log-softmax, known clusters EXCLUDED."""
        sequence = self.head(hidden).log_softmax(-1).clamp(min=FLOOR)  # as `floor_scores` offline
        total = context_scores.to(sequence.dtype) + self.sequence_weight * sequence
        return total.masked_fill(known, EXCLUDED)
