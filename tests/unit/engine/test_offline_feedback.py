"""`streams.core.offline_feedback`: the engine's proposals and feedback replayed offline.

The expected records come from `expected_feedback` of the feedback integration test: an independent
walk over each slate's later events, the one the real engine's records are checked against.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import permutations

import numpy as np
import pytest

from interests.data.synthetic import make_synthetic
from streams.config import EngineConfig
from streams.core.offline_feedback import simulate_feedback, table_rows
from streams.wiring.replay import dataset_events
from tests.integration.engine.test_feedback import HORIZON_EVENTS, HORIZON_S, expected_feedback

N_CLUSTERS = 5


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    """A small synthetic data set with ratings, and a table that ranks every context's other clusters at random."""
    ds, truth = make_synthetic(n_clusters=N_CLUSTERS, n_users=60, min_len=10, max_len=40, seed=3)
    ds = replace(ds, weights=1.0 + np.arange(ds.n_interactions) % 5)
    rng = np.random.default_rng(0)
    rows = []
    for ctx in permutations(range(N_CLUSTERS), 2):
        others = [c for c in rng.permutation(N_CLUSTERS).tolist() if c not in ctx]
        rows.append({"context": list(ctx), "clusters": others, "scores": [-float(i) for i in range(len(others))]})
    descriptions = [f"theme {c}" for c in range(N_CLUSTERS)]
    cfg = EngineConfig().with_values({"feedback_horizon_events": HORIZON_EVENTS, "feedback_horizon_s": HORIZON_S,
                                      "feedback_max_open": 10_000})
    return ds, truth.item_cluster, rows, descriptions, cfg


def _by_id(records: list) -> dict[str, tuple]:
    return {r.feedback_id: (r.outcome, r.rank, r.after_events, r.item_id, r.rating, r.source) for r in records}


def test_offline_feedback_is_what_the_events_imply(world) -> None:  # type: ignore[no-untyped-def]
    """From a mid-data start to past the end: every slate's proposals resolve as the independent walk says."""
    ds, item_cluster, rows, descriptions, cfg = world
    start = float(np.median(ds.timestamps))
    got = simulate_feedback(ds, item_cluster, table_rows(rows), descriptions, start, float("inf"), cfg)
    events = dataset_events(ds)
    cluster_of = {ds.item_ids[i]: int(c) for i, c in enumerate(item_cluster)}
    expected = expected_feedback(got.slates, events, cluster_of)
    assert got.slates and all(s["event_ts"] >= start for s in got.slates)
    assert _by_id(got.records) == expected
    outcomes = {v[0] for v in expected.values()}
    assert outcomes == {"accepted", "horizon"}, outcomes  # the data must exercise both labels
    assert got.open_at_end == sum(len(s["novel_clusters"]) for s in got.slates) - len(got.records)
    assert got.no_row == 0
    for s in got.slates:  # the row's best M the user did not know: the context's clusters never come back
        assert len(s["novel_clusters"]) <= cfg.m and not {c["id"] for c in s["novel_clusters"]} & set(s["context"])


def test_a_window_never_reads_past_its_end(world) -> None:  # type: ignore[no-untyped-def]
    """Proposals open at the window's end are dropped, not resolved by later events; a missing row is counted."""
    ds, item_cluster, rows, descriptions, cfg = world
    lo, hi = (float(q) for q in np.quantile(ds.timestamps, [0.3, 0.6]))
    seen = simulate_feedback(ds, item_cluster, table_rows(rows), descriptions, lo, hi, cfg).slates[0]["context"]
    kept = [r for r in rows if r["context"] != seen]
    got = simulate_feedback(ds, item_cluster, table_rows(kept), descriptions, lo, hi, cfg)
    full = simulate_feedback(ds, item_cluster, table_rows(kept), descriptions, lo, float("inf"), cfg)
    assert got.records and all(r.resolved_ts is None or r.resolved_ts < hi for r in got.records)
    assert all(lo <= s["event_ts"] < hi for s in got.slates)
    assert got.open_at_end > 0 and got.no_row > 0
    later = {k: v for k, v in _by_id(full.records).items()
             if any(s["events_applied"] == int(k.split("/")[1]) and s["user_id"] == k.split("/")[0]
                    for s in got.slates)}
    assert set(_by_id(got.records)) < set(later)  # the same slates; the longer window resolves more of them
    assert all(later[k] == v for k, v in _by_id(got.records).items())
