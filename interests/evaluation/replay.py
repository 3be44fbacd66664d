"""Evaluating the engine's output on the replayed period: what it recommended against what users did next.

A *moment* is one recommendation: user u after `p` of their interactions (the engine's
`events_applied`), so the slate was made right after interaction p-1 and "next" means the user's
interactions p, p+1, ... in the dataset. Every method is judged at the very same moments:

- novel-cluster hit rate@M: the user's next *novel* cluster (the first later interaction whose cluster
  the user had not touched in interactions [0, p)) is among the method's M proposed clusters; moments
  with no later novel cluster are left out of this metric (and counted);
- slate accuracy, leave-one-out by time: the target is the next interaction's item; the slate is the
  method's top-N after removing every item the user interacted with before the moment (as the engine
  does); HR@N = the target is in the slate, NDCG@N = 1 / log2(1 + its rank). Moments at a user's last
  interaction have no target and are left out. `hit_within` also counts a slate as a hit when any of
  the next H interactions is in it: a slate of novel clusters aims at later interests, not the next
  click;
- novel share: the share of slate items whose cluster the user did not know (over all slate items,
  as the engine's `explore_slate_novel_items_total / explore_slate_items_total`);
- over all moments: coverage (share of catalog clusters ever proposed), entropy of the proposal
  distribution (bits) and its Jensen-Shannon divergence (bits) from the empirical distribution of the
  held-out period's novel-cluster transitions (`interests.evaluation.proposals.diversity`).

Pure numpy: the sequence recommender comes in as a callable (`top_n(history, allowed)`, the contract
of the exported `seqrec` graph), so this module imports no model runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from interests.data.datasets import Dataset
from interests.data.splits import pad_left, ranking_metrics
from interests.evaluation.proposals import diversity
from interests.evaluation.stats import bootstrap_interval
from interests.novelty.examples import NoveltyExamples, novel_transitions
from interests.novelty.rules import Proposals

TopN = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
EMPTY_SLOT = -5e8  # the graph gives slots that no eligible item fills -1e9
BUCKETS = ("unseen", "rare", "common")  # context seen 0 / 1-4 / 5+ times among training transitions
# (interests.evaluation.proposals.context_frequency_buckets)


@dataclass(frozen=True)
class Moments:
    """Aligned per-moment arrays for one dataset; `p` interactions of user `users[i]` were applied."""

    users: np.ndarray  # int64 [n] dense user
    positions: np.ndarray  # int64 [n] events applied (p >= 1)
    contexts: np.ndarray  # int64 [n, K] last K distinct clusters before the moment, most recent last, -1 padded
    known: list[frozenset[int]]  # clusters of interactions [0, p)
    histories: list[np.ndarray]  # items of interactions [0, p), 0-based
    next_item: np.ndarray  # int64 [n]: item of interaction p; -1 where the user has none
    next_items: list[np.ndarray]  # items of interactions [p, p + H)
    next_novel: np.ndarray  # int64 [n]: first later cluster not in `known`; -1 where there is none
    next_novel_row: np.ndarray  # int64 [n]: the dataset row of that first interaction; -1 where there is none

    def __len__(self) -> int:
        return len(self.users)


def moments_at(ds: Dataset, item_cluster: np.ndarray, users: Sequence[int], positions: Sequence[int], k: int,
               horizon: int = 10) -> Moments:
    """The state of each (user, events applied) moment, and what the user did next."""
    off = ds.offsets
    n = len(users)
    contexts = np.full((n, k), -1, dtype=np.int64)
    known, histories, next_items = [], [], []
    next_item = np.full(n, -1, dtype=np.int64)
    next_novel = np.full(n, -1, dtype=np.int64)
    next_novel_row = np.full(n, -1, dtype=np.int64)
    for i, (u, p) in enumerate(zip(users, positions, strict=True)):
        seq = ds.items[off[u]:off[u + 1]]
        if not 1 <= p <= len(seq):
            raise ValueError(f"user {ds.user_ids[u]} has {len(seq)} interactions, a moment says {p} were applied")
        clusters = item_cluster[seq]
        seen = frozenset(int(c) for c in clusters[:p])
        recent: list[int] = []  # the last K distinct clusters, oldest first (scan backwards)
        for c in clusters[:p][::-1]:
            if int(c) not in recent:
                recent.insert(0, int(c))
                if len(recent) == k:
                    break
        contexts[i, k - len(recent):] = recent
        known.append(seen)
        histories.append(seq[:p])
        if p < len(seq):
            next_item[i] = seq[p]
        next_items.append(seq[p:p + horizon])
        for j, c in enumerate(clusters[p:].tolist()):
            if c not in seen:
                next_novel[i], next_novel_row[i] = c, off[u] + p + j
                break
    return Moments(np.asarray(users, np.int64), np.asarray(positions, np.int64), contexts, known, histories,
                   next_item, next_items, next_novel, next_novel_row)


# --- the engine's records -----------------------------------------------------------------


@dataclass(frozen=True)
class EngineMoments:
    records: list[dict]  # one per moment, in (user, position) order
    users: np.ndarray
    positions: np.ndarray
    before_start: int  # records before the held-out period
    superseded: int  # earlier records of the same (user, events applied)
    unknown: int  # records whose user or position the dataset does not have


def select_records(records: Iterable[dict], ds: Dataset, start_ts: float) -> EngineMoments:
    """The records of the held-out period, the last one per (user, events applied)."""
    user_index = {str(u): i for i, u in enumerate(ds.user_ids)}
    lengths = np.diff(ds.offsets)
    last: dict[tuple[int, int], dict] = {}
    before = superseded = unknown = 0
    for rec in records:
        if float(rec["event_ts"]) < start_ts:
            before += 1
            continue
        u = user_index.get(str(rec["user_id"]))
        p = int(rec["events_applied"])
        if u is None or not 1 <= p <= lengths[u]:
            unknown += 1
            continue
        superseded += (u, p) in last
        last[(u, p)] = rec
    keys = sorted(last)
    return EngineMoments([last[key] for key in keys], np.array([u for u, _ in keys], np.int64),
                         np.array([p for _, p in keys], np.int64), before, superseded, unknown)


def engine_outputs(records: Sequence[dict], ds: Dataset, m: int, n: int) -> tuple[Proposals, list[np.ndarray]]:
    """The engine's first M novel clusters and first N slate items (dense ids) per record."""
    item_index = {str(i): j for j, i in enumerate(ds.item_ids)}
    proposals = [[int(c["id"]) for c in rec["novel_clusters"]][:m] for rec in records]
    slates = [np.array([item_index[str(x["item_id"])] for x in rec["slate"] if str(x["item_id"]) in item_index][:n],
                       np.int64) for rec in records]
    return proposals, slates


# --- slates from the sequence recommender ---------------------------------------------------


def restricted_slates(top_n: TopN, moments: Moments, allowed: Sequence[Sequence[int]] | None, n_clusters: int,
                      max_len: int, n: int, batch: int = 256, progress: bool = False,
                      desc: str = "slates") -> list[np.ndarray]:
    """Each moment's top-N items inside its allowed clusters (None: all clusters), unseen items only.

    A moment with no allowed cluster gets an empty slate. `top_n` takes 1-based histories [B, L]
    (left-padded with 0) and allowed clusters [B, C] and returns (items [B, N'] 1-based, scores)."""
    from tqdm import tqdm

    rows = [i for i in range(len(moments)) if allowed is None or len(allowed[i])]
    slates = [np.zeros(0, np.int64) for _ in range(len(moments))]
    for start in tqdm(range(0, len(rows), batch), desc=desc, unit="batch", disable=not progress, leave=False):
        chunk = rows[start:start + batch]
        history = pad_left([moments.histories[i].astype(np.int64) + 1 for i in chunk], max_len)
        mask = np.zeros((len(chunk), n_clusters), dtype=bool)
        for r, i in enumerate(chunk):
            if allowed is None:
                mask[r] = True
            else:
                mask[r, list(allowed[i])] = True
        items, scores = top_n(history, mask)
        for r, i in enumerate(chunk):
            seen = set(moments.histories[i].tolist())
            keep = [int(x) - 1 for x, s in zip(items[r].tolist(), scores[r].tolist(), strict=True)
                    if s > EMPTY_SLOT and int(x) - 1 not in seen]
            slates[i] = np.array(keep[:n], np.int64)
    return slates


def novel_clusters_of(slates: Sequence[np.ndarray], item_cluster: np.ndarray, known: Sequence[frozenset[int]],
                      m: int) -> Proposals:
    """The first M distinct clusters of each slate (in slate order) that the user did not know:
    what an exploit-only slate proposes to explore."""
    out = []
    for slate, kn in zip(slates, known, strict=True):
        got: list[int] = []
        for c in item_cluster[slate].tolist():
            if c not in kn and c not in got:
                got.append(int(c))
                if len(got) == m:
                    break
        out.append(got)
    return out


# --- metrics --------------------------------------------------------------------------------


def novel_hits(proposals: Proposals, next_novel: np.ndarray) -> np.ndarray:
    """Per moment: 1 if the next novel cluster is proposed, 0 if not, -1 where there is none (excluded)."""
    return np.array([-1 if t < 0 else int(int(t) in p) for p, t in zip(proposals, next_novel, strict=True)], np.int64)


def rate(hits: np.ndarray) -> tuple[float, int]:
    """Mean over the moments that count (hits >= 0), and how many count."""
    valid = hits[hits >= 0]
    return (float(valid.mean()) if len(valid) else float("nan")), len(valid)


def slate_ranks(slates: Sequence[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target in its slate, inf when absent; only moments with a target (>= 0)."""
    out = []
    for slate, t in zip(slates, targets, strict=True):
        if t < 0:
            continue
        where = np.flatnonzero(slate == t)
        out.append(float(where[0] + 1) if len(where) else np.inf)
    return np.array(out, np.float64)


def hit_within(slates: Sequence[np.ndarray], next_items: Sequence[np.ndarray]) -> np.ndarray:
    """Per moment: 1 if any of the next H items is in the slate, -1 where there is no next item."""
    return np.array([-1 if not len(nxt) else int(bool(np.isin(nxt, slate).any()))
                     for slate, nxt in zip(slates, next_items, strict=True)], np.int64)


def novel_share(slates: Sequence[np.ndarray], item_cluster: np.ndarray, known: Sequence[frozenset[int]]) -> float:
    """Share of all slate items whose cluster the user did not know at the moment."""
    items = novel = 0
    for slate, kn in zip(slates, known, strict=True):
        items += len(slate)
        novel += sum(1 for c in item_cluster[slate].tolist() if c not in kn)
    return novel / items if items else float("nan")


@dataclass(frozen=True)
class Result:
    """One method's numbers (`row`) and per-moment outcomes for plots and paired comparisons."""

    row: dict[str, float]
    novel_hits: np.ndarray  # per moment, -1 excluded
    proposals: Proposals


def evaluate(proposals: Proposals, slates: Sequence[np.ndarray], moments: Moments, item_cluster: np.ndarray,
             n_clusters: int, empirical_targets: np.ndarray, n: int, buckets: np.ndarray | None = None,
             targets: dict[str, np.ndarray | None] | None = None, seed: int = 0) -> Result:
    """Every metric of one method at the given moments.

    `targets` (`interests.evaluation.judge.target_flags` of the moments' next new clusters) adds the novel hit
    rate on the liked and sticky targets; every novel hit rate comes with a bootstrap interval by user.
    """
    hits = novel_hits(proposals, moments.next_novel)
    hit, eligible = rate(hits)
    extra: dict[str, float | list[float]] = {"novel_hit_ci95": list(bootstrap_interval(hits, moments.users, seed=seed))}
    for name, mask in (targets or {}).items():
        if name == "any":
            continue
        sub = np.where(mask, hits, -1) if mask is not None else np.full(len(hits), -1)
        extra[f"novel_hit_{name}"], extra[f"novel_moments_{name}"] = rate(sub) if mask is not None else (
            float("nan"), 0)
        extra[f"novel_hit_{name}_ci95"] = list(bootstrap_interval(sub, moments.users, seed=seed))
    ranks = slate_ranks(slates, moments.next_item)
    acc = ranking_metrics(ranks, n) if len(ranks) else {f"HR@{n}": float("nan"), f"NDCG@{n}": float("nan")}
    within, _ = rate(hit_within(slates, moments.next_items))
    row = {"novel_hit": hit, "novel_moments": float(eligible), f"HR@{n}": acc[f"HR@{n}"],
           f"NDCG@{n}": acc[f"NDCG@{n}"], "hit_within": within, "accuracy_moments": float(len(ranks)),
           "novel_share": novel_share(slates, item_cluster, moments.known),
           "proposed": float(np.mean([len(p) for p in proposals])) if len(proposals) else float("nan"),
           **diversity(proposals, n_clusters, empirical_targets), "moments": float(len(moments)),
           "empty_slates": float(sum(1 for s in slates if not len(s))), **extra}
    if buckets is not None:
        for b, name in enumerate(BUCKETS):
            row[f"novel_hit_{name}_ctx"] = rate(hits[buckets == b])[0]
    return Result(row, hits, proposals)


def training_transitions(ds: Dataset, item_cluster: np.ndarray, k: int, start_ts: float
                         ) -> tuple[NoveltyExamples, NoveltyExamples]:
    """Novel-cluster transitions before `start_ts` (what baselines count) and from it on (the empirical targets)."""
    ex = novel_transitions(ds, item_cluster, k)
    before = ex.timestamps < start_ts
    return ex.subset(np.flatnonzero(before)), ex.subset(np.flatnonzero(~before))


__all__ = ["BUCKETS", "EngineMoments", "Moments", "Result", "engine_outputs", "evaluate",
           "hit_within", "moments_at", "novel_clusters_of", "novel_hits", "novel_share", "rate",
           "restricted_slates", "select_records", "slate_ranks", "training_transitions"]
