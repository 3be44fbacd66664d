"""Leave-one-out by time, the standard protocol for sequential recommenders.

For each user with at least 3 interactions: the last interaction is the test target, the one
before it the validation target, the rest trains. Users with fewer train only. Order is the
dataset's: by timestamp, ties in file order. Item ids here are 1-based (0 pads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from interests.data.datasets import Dataset

PROTOCOL = ("leave-one-out by time (last interaction = test, second-to-last = validation; ties in file "
            "order), full ranking over all {n} items, items already seen included")


@dataclass(frozen=True)
class LeaveOneOut:
    n_items: int
    train: list[np.ndarray]  # per user, 1-based item ids to train on
    valid_users: np.ndarray  # users evaluated
    valid_history: list[np.ndarray]  # history before the validation target
    valid_target: np.ndarray
    test_history: list[np.ndarray]  # history before the test target (includes the validation item)
    test_target: np.ndarray

    def protocol(self) -> str:
        return PROTOCOL.format(n=f"{self.n_items:,}")


def leave_one_out(ds: Dataset) -> LeaveOneOut:
    seqs = [s.astype(np.int64) + 1 for s in ds.sequences()]
    train, users, vh, vt, th, tt = [], [], [], [], [], []
    for u, s in enumerate(seqs):
        if len(s) >= 3:
            train.append(s[:-2])
            users.append(u)
            vh.append(s[:-2])
            vt.append(s[-2])
            th.append(s[:-1])
            tt.append(s[-1])
        else:
            train.append(s)
    return LeaveOneOut(ds.n_items, train, np.array(users), vh, np.array(vt), th, np.array(tt))


def pad_left(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """[len(seqs), length] int64, each sequence's last `length` items right-aligned, 0-padded."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        tail = s[-length:]
        if len(tail):
            out[i, length - len(tail):] = tail
    return out


def training_windows(train: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) [W, max_len]: each sequence cut into windows; target = the next item.

    Windows end at the sequence's end and step back by max_len, so every position of every
    sequence is a training target exactly once (0 = no target).
    """
    inputs, targets = [], []
    for s in train:
        if len(s) < 2:
            continue
        x, y = s[:-1], s[1:]
        for end in range(len(x), 0, -max_len):
            start = max(0, end - max_len)
            inputs.append(x[start:end])
            targets.append(y[start:end])
    return pad_left(inputs, max_len), pad_left(targets, max_len)


def ranking_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k from 1-based ranks of the target items."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks <= k
    return {f"HR@{k}": float(hit.mean()),
            f"NDCG@{k}": float((hit / np.log2(ranks + 1)).mean()),
            f"MRR@{k}": float((hit / ranks).mean())}


def ranks_of(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target among all items (ties count against the target: pessimistic).

    `scores` [B, n_items] for items 1..n; `targets` 1-based.
    """
    target_scores = scores[np.arange(len(targets)), targets - 1]
    return (scores >= target_scores[:, None]).sum(1)


def popularity_ranks(split: LeaveOneOut, which: str = "test") -> np.ndarray:
    """Ranks under the popularity baseline (training counts), same protocol."""
    counts = np.bincount(np.concatenate(split.train), minlength=split.n_items + 1)[1:].astype(np.float64)
    targets = split.test_target if which == "test" else split.valid_target
    scores = np.broadcast_to(counts, (len(targets), split.n_items))
    return ranks_of(scores, targets)


def held_out_start(ds: Dataset, share: float) -> float:
    """Where the last `share` of time starts: the (1 - share) quantile of the interaction times.

    The one definition of "hold out the last share of time" (`explore demo --holdout`, the novelty
    commands' `--holdout`, `explore loop ab`): a command that reuses a demo run's models must cut
    the data exactly where the demo did, or its evaluation period overlaps their training.
    """
    if not 0 < share < 1:
        raise ValueError(f"--holdout is a share of time in (0, 1), got {share}")
    return float(np.quantile(ds.timestamps, 1 - share))


def training_period(ds: Dataset, start_ts: float) -> Dataset:
    """The same users and items, only the interactions before `start_ts` (per-user order kept).

    Models that are judged on a later period are trained on this, so that nothing they learn comes
    from the period they are judged on.
    """
    keep = ds.timestamps < start_ts
    return replace(ds, name=f"{ds.name} (before {time.strftime('%Y-%m-%d', time.gmtime(start_ts))})",
                   users=ds.users[keep], items=ds.items[keep], timestamps=ds.timestamps[keep],
                   weights=ds.weights[keep], events=None if ds.events is None else ds.events[keep])


def newest_items(ds: Dataset, start_ts: float, n: int) -> np.ndarray:
    """Up to `n` items (dense, ascending) to hold out of a training period as if they arrived at `start_ts`: first
    those first met at or after it (the most interactions after it first), then the others by the share of their
    interactions that comes after it (a synthetic data set may have no new item at all; the share keeps the
    choice off the items that most of the training period is about). An item with no interaction after
    `start_ts` is never chosen: nothing would show that it arrived."""
    after = np.bincount(ds.items[ds.timestamps >= start_ts], minlength=ds.n_items)
    total = np.bincount(ds.items, minlength=ds.n_items)
    new = np.flatnonzero((after == total) & (after > 0))
    old = np.flatnonzero((after < total) & (after > 0))
    share = after[old] / total[old]
    order = [new[np.argsort(-after[new], kind="stable")], old[np.lexsort((-after[old], -share))]]
    return np.sort(np.concatenate(order)[:n]).astype(np.int64)


def arriving_at(ds: Dataset, items: np.ndarray, start_ts: float) -> Dataset:
    """`ds` as if `items` (dense) arrived at `start_ts`: their interactions before it are gone (the items stay)."""
    rows = ~(np.isin(ds.items, np.asarray(items, np.int64)) & (ds.timestamps < start_ts))
    return replace(ds, users=ds.users[rows], items=ds.items[rows], timestamps=ds.timestamps[rows],
                   weights=ds.weights[rows], events=None if ds.events is None else ds.events[rows])


def without_items(ds: Dataset, items: np.ndarray) -> Dataset:
    """`ds` as if `items` (dense) did not exist: their interactions and entries gone, the other items numbered again
    in their order. Users keep their numbers (one left with no interaction stays, empty)."""
    if not len(items):
        return ds
    drop = np.zeros(ds.n_items, bool)
    drop[np.asarray(items, np.int64)] = True
    rows = ~drop[ds.items]
    renumber = (np.cumsum(~drop) - 1).astype(np.int32)
    return replace(ds, name=f"{ds.name} (without {int(drop.sum())} items)", item_ids=ds.item_ids[~drop],
                   users=ds.users[rows], items=renumber[ds.items[rows]], timestamps=ds.timestamps[rows],
                   weights=ds.weights[rows], events=None if ds.events is None else ds.events[rows],
                   item_text={f: [t for t, d in zip(texts, drop, strict=True) if not d]
                              for f, texts in ds.item_text.items()})


def in_item_order(ds: Dataset, item_ids: list[str]) -> Dataset:
    """`ds` with its items numbered in the order of `item_ids` (the same items): a catalog grown by items that
    arrived later lists them last (`interests.clusters.new_items`), and whatever pairs the two needs one order."""
    position = {str(i): j for j, i in enumerate(item_ids)}
    if len(position) != len(item_ids) or set(position) != {str(i) for i in ds.item_ids}:
        raise ValueError(f"{len(item_ids)} item ids are not the dataset's {ds.n_items} items")
    new_of_old = np.array([position[str(i)] for i in ds.item_ids], np.int64)
    old_of_new = np.argsort(new_of_old)
    return replace(ds, item_ids=ds.item_ids[old_of_new], items=new_of_old[ds.items].astype(np.int32),
                   item_text={f: [texts[k] for k in old_of_new] for f, texts in ds.item_text.items()})
