"""Fine-tuning data for the novelty model: (last K distinct clusters) -> next *novel* cluster.

For each user, in time order, every interaction whose cluster the user has never touched before
is a novel transition; its context is the user's last K distinct clusters before it (most recent
last). Examples are split by time (global quantiles of their timestamps), so nothing from the
future of the validation or test periods trains the model. As in Wang et al., the training set is
diversified: examples per target cluster and per context are capped, so the model cannot score well
by naming the popular clusters; `distribution` reports what the caps did.

Prompts are written in language with the catalog's descriptions (see PROMPT and TARGET).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from interests.data.datasets import Dataset

HEAD, SEP, TAIL = "The user enjoyed:", ";", ". A new interest for the user:"
PROMPT = HEAD + " {context}" + TAIL
SEPARATOR = SEP + " "
TARGET = " {description}"


@dataclass(frozen=True)
class NoveltyExamples:
    """Aligned arrays, one row per novel transition."""

    contexts: np.ndarray  # int32 [n, K]: cluster ids, oldest first, most recent last
    targets: np.ndarray  # int32 [n]
    known: list[frozenset[int]]  # clusters the user had touched before the target
    users: np.ndarray  # int32 [n]
    timestamps: np.ndarray  # int64 [n]
    positions: np.ndarray  # int64 [n]: row of the target's interaction in the dataset's arrays

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx: np.ndarray) -> NoveltyExamples:
        return NoveltyExamples(self.contexts[idx], self.targets[idx], [self.known[i] for i in idx],
                               self.users[idx], self.timestamps[idx], self.positions[idx])


def _walk(ds: Dataset, item_cluster: np.ndarray, until: int | None = None
          ) -> Iterator[tuple[int, int, int, list[int], set[int]]]:
    """(user, row, cluster, the user's distinct clusters before it (most recent last), every cluster seen before it)
    for each interaction in each user's order (before `until`). The list and set are the walk's own: copy them."""
    off = ds.offsets
    for u in range(ds.n_users):
        recent: list[int] = []
        seen: set[int] = set()
        for j in range(off[u], off[u + 1]):
            if until is not None and ds.timestamps[j] >= until:
                break
            c = int(item_cluster[ds.items[j]])
            yield u, j, c, recent, seen
            seen.add(c)
            if c in recent:
                recent.remove(c)
            recent.append(c)


def _examples(ds: Dataset, picked: list[tuple[int, int, int, list[int], frozenset[int]]], k: int) -> NoveltyExamples:
    """NoveltyExamples of (user, row, target, context, known) tuples."""
    return NoveltyExamples(np.array([p[3] for p in picked], np.int32).reshape(-1, k),
                           np.array([p[2] for p in picked], np.int32), [p[4] for p in picked],
                           np.array([p[0] for p in picked], np.int32),
                           np.array([ds.timestamps[p[1]] for p in picked], np.int64),
                           np.array([p[1] for p in picked], np.int64))


def novel_transitions(ds: Dataset, item_cluster: np.ndarray, k: int = 2) -> NoveltyExamples:
    """Every novel transition that has at least K distinct clusters before it."""
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    return _examples(ds, [(u, j, c, recent[-k:], frozenset(seen)) for u, j, c, recent, seen in _walk(ds, item_cluster)
                          if c not in seen and len(recent) >= k], k)


def context_transitions(ds: Dataset, item_cluster: np.ndarray, k: int = 2, until: int | None = None) -> NoveltyExamples:
    """Every move to another cluster, novel or not, that has at least K distinct clusters before it (and, with
    `until`, comes before that timestamp): what the LM can pretrain on before the novel transitions (issue 26,
    item 4b). About three times as many as the novel ones on MovieLens, and the same prompt shape: the last K
    distinct clusters, then the cluster the user went to. A return to a known cluster counts; staying does not."""
    return _examples(ds, [(u, j, c, recent[-k:], frozenset(seen))
                          for u, j, c, recent, seen in _walk(ds, item_cluster, until)
                          if len(recent) >= k and c != recent[-1]], k)


@dataclass(frozen=True)
class TimeSplit:
    train: NoveltyExamples
    valid: NoveltyExamples
    test: NoveltyExamples
    cut_valid: int  # first timestamp of validation
    cut_test: int  # first timestamp of test


def split_by_time(ex: NoveltyExamples, valid: float = 0.1, test: float = 0.1) -> TimeSplit:
    """Train on the earliest examples, validate on the next ones, test on the latest."""
    order = np.argsort(ex.timestamps, kind="stable")
    n = len(order)
    a, b = int(n * (1 - valid - test)), int(n * (1 - test))
    stamps = ex.timestamps[order]
    return TimeSplit(ex.subset(order[:a]), ex.subset(order[a:b]), ex.subset(order[b:]),
                     int(stamps[a]) if a < n else 0, int(stamps[b]) if b < n else 0)


def diversify(ex: NoveltyExamples, max_per_target: int | None, max_per_context: int | None,
              seed: int = 0) -> NoveltyExamples:
    """Cap examples per target cluster and per context, keeping a seeded random sample of each."""
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(ex))
    for key_of, cap in ((lambda i: int(ex.targets[i]), max_per_target),
                        (lambda i: tuple(ex.contexts[i].tolist()), max_per_context)):
        if cap is None:
            continue
        counts: Counter = Counter()
        kept = []
        for i in keep:
            key = key_of(i)
            if counts[key] < cap:
                counts[key] += 1
                kept.append(i)
        keep = np.array(kept, dtype=np.int64)
    return ex.subset(np.sort(keep))


def distribution(ex: NoveltyExamples, n_clusters: int) -> dict[str, float]:
    """How concentrated the targets are: examples, distinct targets and contexts, entropy, top shares."""
    counts = np.bincount(ex.targets, minlength=n_clusters).astype(np.float64)
    p = counts / max(counts.sum(), 1)
    nz = p[p > 0]
    top = np.sort(p)[::-1]
    return {"examples": float(len(ex)), "targets": float((counts > 0).sum()),
            "contexts": float(len({tuple(c) for c in ex.contexts.tolist()})),
            "entropy_bits": float(-(nz * np.log2(nz)).sum()), "max_entropy_bits": float(np.log2(n_clusters)),
            "top1_share": float(top[0]) if len(top) else 0.0, "top5_share": float(top[:5].sum())}


def prompt(context: np.ndarray | list[int], descriptions: list[str]) -> str:
    """The prompt for a context (cluster ids, most recent last)."""
    return PROMPT.format(context=SEPARATOR.join(descriptions[int(c)] for c in context))


def target_text(cluster: int, descriptions: list[str]) -> str:
    return TARGET.format(description=descriptions[int(cluster)])


def short_title(title: str) -> str:
    """A title as a prompt shows it: without a trailing year, "(1994)" (tokens cost; the year adds little)."""
    return re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip() or title


def context_texts(descriptions: list[str], top_items: list[list[str]], titles: int) -> list[str]:
    """How each cluster reads in a prompt's context: its description and its `titles` most-trafficked
    item titles, ' war, drama ("Forrest Gump", "Braveheart")'. Titles are where a pretrained model's
    knowledge of the catalogue lives; the target stays the bare description (`target_text`)."""
    out = []
    for description, items in zip(descriptions, top_items, strict=True):
        shown = [short_title(t) for t in items[:titles]]
        out.append(TARGET.format(description=description)
                   + (" (" + ", ".join(f'"{t}"' for t in shown) + ")" if shown else ""))
    return out


def diversified_sample(ex: NoveltyExamples, n: int, seed: int = 0) -> NoveltyExamples:
    """At most `n` examples, spread over targets: the largest per-target cap that keeps n or fewer
    (then a seeded random cut to n). A base model learns from few examples; these cover every target."""
    if n <= 0 or len(ex) <= n:
        return ex
    cap = max(1, n // max(1, len(np.unique(ex.targets))))
    while len(diversify(ex, cap + 1, None, seed)) <= n:
        cap += 1
    kept = diversify(ex, cap, None, seed)
    if len(kept) > n:
        kept = kept.subset(np.sort(np.random.default_rng(seed).permutation(len(kept))[:n]))
    return kept


def auto_cap(values: np.ndarray, floor: int) -> int:
    """Twice the median count per key: popular keys are cut to a few times a typical one."""
    _, counts = np.unique(values, axis=0, return_counts=True)
    return max(floor, int(2 * np.median(counts)))


def novelty_test_start(ds: Dataset, item_clusters: list[np.ndarray], k: int) -> int:
    """The earliest first timestamp of the novelty test period over catalog levels (`split_by_time`).

    A model trained on interactions before it (the item policy, when it serves as an exploration
    baseline) has seen nothing of any level's test period.
    """
    return novelty_period_start(ds, item_clusters, k, "test")


def novelty_period_start(ds: Dataset, item_clusters: list[np.ndarray], k: int, period: str) -> int:
    """The earliest first timestamp of the novelty split's `period` ("valid" or "test") over levels.

    "valid": a model trained before it has seen no validation moment of any level, so scores it
    gives there can fit the weights of the mixture of experts without leakage (`interests.novelty.mixture`).
    """
    if period not in ("valid", "test"):
        raise ValueError(f"period is 'valid' or 'test', got {period!r}")
    splits = [split_by_time(novel_transitions(ds, clusters, k)) for clusters in item_clusters]
    starts = [s.cut_valid if period == "valid" else s.cut_test for s in splits]
    return min(s for s in starts if s) if any(starts) else int(ds.timestamps.max()) + 1
