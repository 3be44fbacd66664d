"""Evaluating novel-cluster proposals: hit rate against baselines, and whether proposals collapse.

- hit rate@M: the user's actual next novel cluster is among the M proposals for that moment
  (clusters the user already knows are excluded for every method alike);
- baselines on the same examples: a random novel cluster, the most popular novel clusters of the
  training period, and transition counts (the most frequent next novel cluster after this context
  in training, backing off to the last cluster alone, then to popularity);
- over the proposals for every context: the share of clusters ever proposed, the entropy of the
  proposal distribution, and its Jensen-Shannon divergence from the empirical distribution of
  novel-transition targets.

The judge (`interests.judge`) builds on these: more baselines, target sets, levels, intervals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from interests.constrained import DescriptionTrie, beam_search, beam_search_cached
from interests.novelty_data import NoveltyExamples

Proposals = list[list[int]]


def lm_proposals(lm, contexts: np.ndarray, excludes: Sequence[set[int] | frozenset[int]], m: int,  # type: ignore[no-untyped-def]
                 beam: int = 8, batch: int = 64, prior: np.ndarray | None = None,
                 cache: bool = True) -> tuple[Proposals, list[list[float]]]:
    """The LM's top-M clusters (and scores) per context, by constrained beam search (over the LM's
    key/value cache unless `cache` is False), with an optional per-cluster prior added to the scores."""
    trie = DescriptionTrie(lm.sequences)
    prompt_of: dict[tuple[int, ...], list[int]] = {}
    ids, scores = [], []
    for start in range(0, len(contexts), batch):
        chunk = contexts[start:start + batch]
        prompts = []
        for c in chunk:
            key = tuple(int(v) for v in c)
            if key not in prompt_of:
                prompt_of[key] = lm.prompt_ids(c)
            prompts.append(prompt_of[key])
        if cache:
            results = beam_search_cached(lm, trie, prompts, excludes[start:start + batch], m, max(beam, m), prior)
        else:
            results = beam_search(lm.next_logprobs, trie, prompts, excludes[start:start + batch], m, max(beam, m),
                                  prior)
        for r in results:
            ids.append([c for c, _ in r])
            scores.append([s for _, s in r])
    return ids, scores


Excludes = Sequence[set[int] | frozenset[int]]


def random_proposals(n_clusters: int, excludes: Excludes, m: int, seed: int = 0) -> Proposals:
    rng = np.random.default_rng(seed)
    out = []
    for ex in excludes:
        pool = np.array([c for c in range(n_clusters) if c not in ex])
        out.append(rng.permutation(pool)[:m].tolist() if len(pool) else [])
    return out


def _ranked_fill(ranked: Sequence[int], exclude: set[int] | frozenset[int], m: int, out: list[int]) -> list[int]:
    for c in ranked:
        if len(out) >= m:
            break
        if c not in exclude and c not in out:
            out.append(int(c))
    return out


def popular_proposals(train: NoveltyExamples, n_clusters: int, excludes: Sequence[set[int] | frozenset[int]],
                      m: int) -> Proposals:
    ranked = np.argsort(-np.bincount(train.targets, minlength=n_clusters), kind="stable")
    return [_ranked_fill(ranked, ex, m, []) for ex in excludes]


def transition_proposals(train: NoveltyExamples, n_clusters: int, contexts: np.ndarray,
                         excludes: Sequence[set[int] | frozenset[int]], m: int) -> Proposals:
    """Most frequent next novel cluster after the full context, then after its last cluster, then overall."""
    full: dict[tuple[int, ...], Counter] = {}
    last: dict[int, Counter] = {}
    for ctx, t in zip(train.contexts.tolist(), train.targets.tolist(), strict=True):
        full.setdefault(tuple(ctx), Counter())[t] += 1
        last.setdefault(ctx[-1], Counter())[t] += 1
    popular = np.argsort(-np.bincount(train.targets, minlength=n_clusters), kind="stable")
    out = []
    for ctx, ex in zip(contexts.tolist(), excludes, strict=True):
        got: list[int] = []
        for table in (full.get(tuple(ctx)), last.get(ctx[-1])):
            if table:
                _ranked_fill([c for c, _ in table.most_common()], ex, m, got)
        out.append(_ranked_fill(popular, ex, m, got))
    return out


def hit_rate(proposals: Proposals, targets: np.ndarray) -> float:
    """Share of moments whose target is among the proposals (nan when there are none)."""
    if not len(targets):
        return float("nan")
    return float(np.mean([int(t) in p for p, t in zip(proposals, targets, strict=True)]))


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
