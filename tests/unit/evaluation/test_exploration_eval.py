"""The report's metrics on hand-made cases: every expected number below is worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from interests.data.datasets import build_dataset
from interests.evaluation.replay import (
    evaluate,
    hit_within,
    moments_at,
    novel_clusters_of,
    novel_hits,
    novel_share,
    rate,
    restricted_slates,
    select_records,
    slate_ranks,
)

# items (dense ids in sorted order): a0=0 a1=1 (cluster 0), b0=2 b1=3 (cluster 1), c0=4 (cluster 2), d0=5 (cluster 3)
CLUSTER = np.array([0, 0, 1, 1, 2, 3])


@pytest.fixture
def ds():  # type: ignore[no-untyped-def]
    rows = [("u1", "a0", 1), ("u1", "b0", 2), ("u1", "a1", 3), ("u1", "c0", 4), ("u1", "b1", 5),
            ("u2", "a0", 1), ("u2", "b0", 2), ("u2", "b1", 3), ("u3", "d0", 1)]
    users, items, ts = zip(*rows, strict=True)
    return build_dataset("hand", list(users), list(items), np.array(ts))


@pytest.fixture
def moments(ds):  # type: ignore[no-untyped-def]
    # u1 after 2 and after 3 interactions, u2 after 2 and after all 3
    return moments_at(ds, CLUSTER, [0, 0, 1, 1], [2, 3, 2, 3], k=2, horizon=2)


def test_moments_know_the_past_and_what_came_next(moments) -> None:  # type: ignore[no-untyped-def]
    assert moments.known == [frozenset({0, 1})] * 4
    # u1 after a0 b0 a1: the last two distinct clusters, most recent last, are b (1) then a (0)
    assert moments.contexts.tolist() == [[0, 1], [1, 0], [0, 1], [0, 1]]
    assert moments.next_item.tolist() == [1, 4, 3, -1]  # a1, c0, b1, none
    assert moments.next_novel.tolist() == [2, 2, -1, -1]  # u1 later touches c; u2 never leaves a and b
    assert [x.tolist() for x in moments.next_items] == [[1, 4], [4, 3], [3], []]
    assert [h.tolist() for h in moments.histories] == [[0, 2], [0, 2, 1], [0, 2], [0, 2, 3]]


def test_a_moment_beyond_the_users_history_is_refused(ds) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="has 1 interactions"):
        moments_at(ds, CLUSTER, [2], [2], k=2)


def test_novel_hit_counts_only_moments_with_a_later_novel_cluster(moments) -> None:  # type: ignore[no-untyped-def]
    hits = novel_hits([[2, 3], [3], [2], [3]], moments.next_novel)
    assert hits.tolist() == [1, 0, -1, -1]
    assert rate(hits) == (0.5, 2)
    assert math.isnan(rate(np.array([-1, -1]))[0])


def test_slate_ranks_and_accuracy(moments) -> None:  # type: ignore[no-untyped-def]
    slates = [np.array([5, 1]), np.array([3, 5]), np.array([3]), np.array([4])]
    ranks = slate_ranks(slates, moments.next_item)
    assert ranks.tolist() == [2.0, math.inf, 1.0]  # the last moment has no next item
    within = hit_within(slates, moments.next_items)
    assert within.tolist() == [1, 1, 1, -1]  # moment 1: item 3 (b1) is the second next
    row = evaluate([[2, 3], [3], [2], [3]], slates, moments, CLUSTER, 4, np.array([2, 2, 3]), n=2).row
    assert row["HR@2"] == pytest.approx(2 / 3)
    assert row["NDCG@2"] == pytest.approx((1 / math.log2(3) + 0 + 1) / 3)
    assert row["hit_within"] == 1.0
    assert row["accuracy_moments"] == 3 and row["novel_moments"] == 2 and row["moments"] == 4


def test_novel_share_is_over_all_slate_items(moments) -> None:  # type: ignore[no-untyped-def]
    # known {0, 1}: items 4 (c) and 5 (d) are novel, 0-3 are not
    slates = [np.array([4, 5, 0]), np.array([1]), np.array([], np.int64), np.array([5])]
    assert novel_share(slates, CLUSTER, moments.known) == pytest.approx(3 / 5)


def test_coverage_entropy_and_jsd(moments) -> None:  # type: ignore[no-untyped-def]
    proposals = [[2, 3], [3], [2], [0]]
    slates = [np.zeros(0, np.int64)] * 4
    row = evaluate(proposals, slates, moments, CLUSTER, 4, np.array([2, 3]), n=10).row
    p = np.array([1, 0, 2, 2]) / 5  # proposal counts per cluster
    q = np.array([0, 0, 1, 1]) / 2  # empirical novel targets
    mix = (p + q) / 2

    def kl(a, b):  # type: ignore[no-untyped-def]
        return sum(x * math.log2(x / y) for x, y in zip(a, b, strict=True) if x > 0)

    assert row["coverage"] == 0.75
    assert row["entropy_bits"] == pytest.approx(-(0.2 * math.log2(0.2) + 2 * 0.4 * math.log2(0.4)))
    assert row["jsd_bits"] == pytest.approx(0.5 * kl(p, mix) + 0.5 * kl(q, mix))
    assert row["proposed"] == 5 / 4 and row["empty_slates"] == 4
    same = evaluate([[2], [3]], [np.zeros(0, np.int64)] * 2, moments_at(
        build_dataset("x", ["u", "u"], ["a", "b"], np.array([1, 2])), np.array([0, 0]), [0, 0], [1, 2], 2),
        np.array([0, 0]), 4, np.array([2, 3]), n=10).row
    assert same["jsd_bits"] == pytest.approx(0.0, abs=1e-12) and same["coverage"] == 0.5


def test_select_records_keeps_the_held_out_period_and_the_last_record_per_position(ds) -> None:  # type: ignore[no-untyped-def]
    def rec(user, n, ts, clusters):  # type: ignore[no-untyped-def]
        return {"user_id": user, "events_applied": n, "event_ts": ts, "novel_clusters": [{"id": c} for c in clusters],
                "slate": []}

    records = [rec("u1", 1, 1, [1]), rec("u1", 3, 3, [3]), rec("u2", 2, 2, [2]), rec("u1", 3, 3, [2]),
               rec("nobody", 1, 5, [0]), rec("u2", 9, 5, [0])]
    sel = select_records(records, ds, start_ts=2)
    assert (sel.before_start, sel.superseded, sel.unknown) == (1, 1, 2)
    assert sel.users.tolist() == [0, 1] and sel.positions.tolist() == [3, 2]
    assert sel.records[0]["novel_clusters"] == [{"id": 2}]  # the later record of (u1, 3) wins


def test_restricted_slates_pass_the_restriction_and_drop_seen_items_and_empty_slots(moments) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def top_n(history, allowed):  # type: ignore[no-untyped-def]
        calls.append((history.copy(), allowed.copy()))
        b = len(history)
        items = np.tile(np.array([1, 5, 6, 3, 2]), (b, 1))  # 1-based: a0, c0, d0, b0, a1
        scores = np.tile(np.array([5.0, 4.0, 3.0, 2.0, -1e9]), (b, 1))
        return items, scores

    slates = restricted_slates(top_n, moments, [[2], [], [2, 3], [3]], n_clusters=4, max_len=3, n=2, batch=2)
    # seen items (a0, b0, ...) are dropped, the -1e9 slot too; moment 1 has no allowed cluster and no call
    assert [s.tolist() for s in slates] == [[4, 5], [], [4, 5], [4, 5]]
    assert len(calls) == 2
    history, allowed = calls[0]
    assert history.tolist() == [[0, 1, 3], [0, 1, 3]]  # 1-based, left-padded to max_len
    assert allowed.tolist() == [[False, False, True, False], [False, False, True, True]]
    assert novel_clusters_of([np.array([0, 4, 5, 4])], CLUSTER, [frozenset({0, 1})], m=1) == [[2]]
    assert novel_clusters_of([np.array([0, 4, 5, 4])], CLUSTER, [frozenset({0, 1})], m=3) == [[2, 3]]


def test_moments_know_the_row_of_the_next_new_cluster_and_its_target_sets(ds, moments) -> None:  # type: ignore[no-untyped-def]
    """The engine report's liked / sticky targets come from the row of the first interaction in the new cluster."""
    from interests.evaluation.judge import target_flags

    assert moments.next_novel.tolist() == [2, 2, -1, -1]
    assert moments.next_novel_row.tolist() == [3, 3, -1, -1]  # u1's c0 is row 3 of the dataset
    flags = target_flags(ds, CLUSTER, moments.next_novel_row, moments.users, moments.next_novel)
    assert flags["any"].tolist() == [True, True, False, False]
    assert flags["liked"] is None  # every weight is 1: no ratings
    assert flags["sticky"].tolist() == [False] * 4  # u1 never comes back to cluster 2
    res = evaluate([[2], [1], [2], [2]], [np.zeros(0, np.int64)] * 4, moments, CLUSTER, 4, np.array([2]), 2,
                   targets=flags)
    assert res.row["novel_hit"] == 0.5 and math.isnan(res.row["novel_hit_liked"])
    assert res.row["novel_hit_ci95"] == [0.5, 0.5]  # one user holds both moments: every resample gives 0.5
