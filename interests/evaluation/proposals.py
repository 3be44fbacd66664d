"""Measures of novel-cluster proposals beyond hit rate: do they collapse onto a few clusters?

Over the proposals for every context: the share of clusters ever proposed, the entropy of the
proposal distribution, and its Jensen-Shannon divergence from the empirical distribution of
novel-transition targets; and the buckets of how often a context was seen in training, which the
judge and the engine report split their hit rates by. The policies themselves, the baselines
included, and `hit_rate` live in `interests.novelty.rules`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from interests.novelty.examples import NoveltyExamples
from interests.novelty.rules import Proposals


def _entropy(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(-(nz * np.log2(nz)).sum())


def diversity(proposals: Proposals, n_clusters: int, empirical_targets: np.ndarray) -> dict[str, float]:
    """Coverage, entropy (bits) and JS divergence (bits) from the empirical novel-target distribution."""
    counts = np.bincount([c for p in proposals for c in p], minlength=n_clusters).astype(np.float64)
    p = counts / max(counts.sum(), 1)
    q = np.bincount(empirical_targets, minlength=n_clusters).astype(np.float64)
    q /= max(q.sum(), 1)
    mix = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / b[nz])).sum())

    return {"coverage": float((counts > 0).mean()), "entropy_bits": _entropy(p),
            "jsd_bits": 0.5 * kl(p, mix) + 0.5 * kl(q, mix)}


def context_frequency_buckets(train: NoveltyExamples, contexts: np.ndarray) -> np.ndarray:
    """0: context never seen in training, 1: seen 1-4 times, 2: seen 5+ times."""
    counts = Counter(tuple(c) for c in train.contexts.tolist())
    seen = np.array([counts.get(tuple(c), 0) for c in contexts.tolist()])
    return np.where(seen == 0, 0, np.where(seen < 5, 1, 2))
