"""Novelty policies without a language model, as score rows, and the one rule that reads any policy.

Every policy here gives a score per (moment, cluster) ([moments, clusters]); `top_m` removes the
clusters the user knows and takes the M best, so no policy can propose a known cluster, and ties go
to the lower cluster id for every policy alike. The judge (`interests.evaluation.judge`), the engine
report (`explore report`), the prior's choice and the mixture's experts all read the baselines from
here: random, popular, transition counts (with back-off), cluster co-occurrence (item-kNN lifted to
clusters), text similarity of the descriptions, and the item policy's next-item probabilities summed
per cluster ("let SASRec explore").

Pure numpy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from interests.data.datasets import Dataset
from interests.novelty.examples import NoveltyExamples

# Histories of the moments -> next-item probabilities [B, n_items] (0-based items), the item policy.
RANDOM, POPULAR, TRANSITIONS = "random", "popular", "transition counts"  # the baselines every report shows
Proposals = list[list[int]]  # M clusters per moment, best first
# Histories of the moments -> next-item probabilities [B, n_items] (0-based items), the item policy.
NextItemProbs = Callable[[list[np.ndarray]], np.ndarray]


def top_m(scores: np.ndarray, excludes: Sequence[frozenset[int] | set[int]], m: int) -> list[list[int]]:
    """The M best-scored clusters of each row that are not excluded (ties: lower id first).

    Clusters scored -inf (impossible for the method) are never proposed.
    """
    out = []
    for row, ex in zip(scores, excludes, strict=True):
        order = np.argsort(-row, kind="stable")
        picked: list[int] = []
        for c in order:
            if len(picked) == m or not np.isfinite(row[c]):
                break
            if int(c) not in ex:
                picked.append(int(c))
        out.append(picked)
    return out


def random_scores(n_moments: int, n_clusters: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n_moments, n_clusters))


def popular_scores(train: NoveltyExamples, n_clusters: int, n_moments: int) -> np.ndarray:
    """How often each cluster was a novel target in training (the same row for every moment)."""
    counts = np.bincount(train.targets, minlength=n_clusters).astype(np.float64)
    return np.broadcast_to(counts, (n_moments, n_clusters))


def transition_scores(train: NoveltyExamples, n_clusters: int, contexts: np.ndarray) -> np.ndarray:
    """Counts after the full context first, then after its last cluster, then popularity (back-off).

    The three tiers are kept apart by scale: any full-context count outranks any last-cluster
    count, which outranks any popularity count, so the ranking is the back-off order.
    """
    full: dict[tuple[int, ...], Counter] = {}
    last: dict[int, Counter] = {}
    for ctx, t in zip(train.contexts.tolist(), train.targets.tolist(), strict=True):
        full.setdefault(tuple(ctx), Counter())[t] += 1
        last.setdefault(ctx[-1], Counter())[t] += 1
    pop = np.bincount(train.targets, minlength=n_clusters).astype(np.float64)
    scale = float(len(train) + 1)
    out = np.empty((len(contexts), n_clusters))
    for i, ctx in enumerate(contexts.tolist()):
        row = pop.copy()
        for c, v in last.get(ctx[-1], Counter()).items():
            row[c] += v * scale
        for c, v in full.get(tuple(ctx), Counter()).items():
            row[c] += v * scale * scale
        out[i] = row
    return out


def cooccurrence_similarity(ds: Dataset, item_cluster: np.ndarray, n_clusters: int, until_ts: int) -> np.ndarray:
    """[n_clusters, n_clusters] cosine similarity of clusters over users (item-kNN lifted to clusters).

    A cluster is a vector over users: 1 when the user interacted with one of its items before
    `until_ts`. Two clusters are similar when the same users have both.
    """
    keep = ds.timestamps < until_ts
    presence = np.zeros((ds.n_users, n_clusters))
    presence[ds.users[keep], item_cluster[ds.items[keep]]] = 1.0
    gram = presence.T @ presence
    norm = np.sqrt(np.maximum(np.diag(gram), 1e-12))
    return gram / norm[:, None] / norm[None, :]


def context_similarity_scores(similarity: np.ndarray, contexts: np.ndarray) -> np.ndarray:
    """Each cluster's mean similarity to the context's clusters (padding -1 ignored)."""
    out = np.zeros((len(contexts), similarity.shape[0]))
    for i, ctx in enumerate(contexts):
        real = ctx[ctx >= 0]
        if len(real):
            out[i] = similarity[real].mean(0)
    return out


def text_similarity(description_vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of the clusters' description embeddings."""
    v = description_vectors / np.maximum(np.linalg.norm(description_vectors, axis=1, keepdims=True), 1e-12)
    return v @ v.T


def seqrec_cluster_scores(next_item_probs: NextItemProbs, histories: list[np.ndarray], item_cluster: np.ndarray,
                          n_clusters: int, batch: int = 256) -> np.ndarray:
    """[moments, clusters]: the item policy's next-item probabilities summed over each cluster's items."""
    # Items sorted by cluster, summed over each cluster's contiguous run: O(items) per history and no
    # [items, clusters] matrix (which would not fit at a million items and a thousand clusters).
    order = np.argsort(item_cluster, kind="stable")
    sizes = np.bincount(item_cluster, minlength=n_clusters)
    filled = np.flatnonzero(sizes)  # clusters without items stay 0 (reduceat needs increasing starts)
    starts = np.concatenate([[0], np.cumsum(sizes[filled])[:-1]])
    out = np.zeros((len(histories), n_clusters))
    for start in range(0, len(histories), batch):
        probs = np.asarray(next_item_probs(histories[start:start + batch]), np.float64)[:, order]
        out[start:start + batch, filled] = np.add.reduceat(probs, starts, axis=1)
    return out


def histories_at(ds: Dataset, test: NoveltyExamples) -> list[np.ndarray]:
    """Each moment's history: the user's items before the target's interaction (0-based)."""
    off = ds.offsets
    return [ds.items[off[u]:row] for u, row in zip(test.users, test.positions, strict=True)]


def hit_rate(proposals: Proposals, targets: np.ndarray) -> float:
    """Share of moments whose target is among the proposals (nan when there are none)."""
    if not len(targets):
        return float("nan")
    return float(np.mean([int(t) in p for p, t in zip(proposals, targets, strict=True)]))


def popularity_log_prior(train: NoveltyExamples, n_clusters: int, smoothing: float = 1.0) -> np.ndarray:
    """log P_pop(c): smoothed frequency of each cluster as a novel target in `train`."""
    counts = np.bincount(np.asarray(train.targets, dtype=np.int64), minlength=n_clusters).astype(np.float64)
    counts += smoothing
    return np.log(counts / counts.sum())


def baseline_scores(train: NoveltyExamples, n_clusters: int, contexts: np.ndarray, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """The three baselines a practitioner tries first, at moments with these `contexts`: random, popular
    and transition counts (`train`: the training period's novel transitions). The judge scores them and the
    engine report proposes `top_m` of them: one implementation, one tie-breaking."""
    return {RANDOM: random_scores(len(contexts), n_clusters, seed),
            POPULAR: popular_scores(train, n_clusters, len(contexts)),
            TRANSITIONS: transition_scores(train, n_clusters, contexts)}
