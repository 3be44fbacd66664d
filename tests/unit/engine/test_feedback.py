"""Exploration feedback's pure logic: what resolves when (`streams.core.feedback`), and its record."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import EngineConfig
from streams.core.feedback import (
    FeedbackRecord,
    Horizon,
    feedback_record,
    open_slate,
    parse_feedback,
    remember,
    resolve,
)
from streams.core.state import copy_state, new_state

VERSIONS = {"catalog": "c1", "seqrec": "s1", "interest_generator": "g1"}
DESCRIPTIONS = [f"words of {c}" for c in range(10)]
TABLE: dict[str, dict[str, str]] = {}  # the versions the slates below name (a state's `vs`)


def slate(n: int, ts: float, clusters: list[int], source: str = "table") -> dict:
    return open_slate(n, ts, [0, 1], clusters, source, VERSIONS, TABLE)


def outcomes(resolved: list) -> dict[int, tuple[str, int]]:
    return {r.cluster: (r.outcome, r.after_events) for r in resolved}


def test_an_event_in_a_proposed_cluster_accepts_it_and_leaves_the_others_open() -> None:
    open_ = [slate(5, 100.0, [7, 8, 9])]
    got = resolve(open_, 6, 110.0, 8, "item-x", 4.5, Horizon(3, 0))
    assert [(r.cluster, r.rank, r.outcome, r.item_id, r.rating, r.after_events) for r in got] == \
        [(8, 2, "accepted", "item-x", 4.5, 1)]
    assert open_[0]["open"] == [[7, 1], [9, 3]]


def test_the_event_horizon_closes_what_is_left_as_not_accepted_on_its_last_event() -> None:
    open_ = [slate(5, 100.0, [7, 8])]
    assert resolve(open_, 6, 110.0, 2, "a", None, Horizon(3, 0)) == []
    assert resolve(open_, 7, 120.0, 2, "b", None, Horizon(3, 0)) == []
    got = resolve(open_, 8, 130.0, 7, "c", None, Horizon(3, 0))  # the third event: accepts 7, closes 8
    assert outcomes(got) == {7: ("accepted", 3), 8: ("horizon", 3)}
    assert open_ == []


def test_an_event_past_the_time_horizon_closes_the_slate_without_counting() -> None:
    open_ = [slate(5, 100.0, [7, 8])]
    assert outcomes(resolve(open_, 6, 150.0, 7, "a", None, Horizon(0, 50.0))) == {7: ("accepted", 1)}
    got = resolve(open_, 7, 151.0, 8, "b", None, Horizon(0, 50.0))  # in cluster 8, but 51 s after the slate
    assert outcomes(got) == {8: ("horizon", 2)} and open_ == []


def test_slates_resolve_independently_and_one_event_can_accept_a_cluster_in_each() -> None:
    open_ = [slate(5, 100.0, [7, 8]), slate(6, 105.0, [7, 9], source="live")]
    got = resolve(open_, 7, 110.0, 7, "a", None, Horizon(2, 0))
    assert sorted((r.slate["n"], r.cluster, r.outcome) for r in got) == \
        [(5, 7, "accepted"), (5, 8, "horizon"), (6, 7, "accepted")]
    assert open_ == [{**slate(6, 105.0, [7, 9], source="live"), "open": [[9, 2]]}]


def test_a_new_slate_beyond_the_bound_evicts_the_oldest_open_one() -> None:
    open_: list[dict] = []
    assert remember(open_, slate(5, 100.0, [7, 8]), max_open=2) == []
    assert remember(open_, slate(6, 101.0, [9]), max_open=2) == []
    evicted = remember(open_, slate(9, 102.0, [3]), max_open=2)
    assert [(r.slate["n"], r.cluster, r.rank, r.outcome, r.after_events) for r in evicted] == \
        [(5, 7, 1, "evicted", 4), (5, 8, 2, "evicted", 4)]
    assert [s["n"] for s in open_] == [6, 9]


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40)), max_size=30),
       n_events=st.integers(0, 6), seconds=st.sampled_from([0.0, 30.0, 90.0]),
       slate_every=st.integers(1, 4), max_open=st.integers(1, 4))
def test_every_proposal_resolves_at_most_once_and_the_state_stays_bounded(
        events: list[tuple[int, int]], n_events: int, seconds: float, slate_every: int, max_open: int) -> None:
    """Whatever the user does, no proposal is resolved twice, none is lost (resolved or still open),
    and the open slates never exceed the bound."""
    horizon = Horizon(n_events, seconds) if n_events or seconds else Horizon(1, 0)
    open_: list[dict] = []
    proposed: set[tuple[int, int]] = set()
    resolved: list[tuple[int, int]] = []
    ts = 1000.0
    for n, (cluster, gap) in enumerate(events, start=1):
        ts += gap
        resolved += [(r.slate["n"], r.cluster) for r in resolve(open_, n, ts, cluster, "i", None, horizon)]
        if n % slate_every == 0:
            clusters = [c for c in range(6) if c != cluster][:3]
            proposed |= {(n, c) for c in clusters}
            resolved += [(r.slate["n"], r.cluster) for r in remember(open_, slate(n, ts, clusters), max_open)]
        assert len(open_) <= max_open
    still = {(s["n"], c) for s in open_ for c, _ in s["open"]}
    assert len(resolved) == len(set(resolved))
    assert set(resolved) | still == proposed and not set(resolved) & still


def test_the_state_copy_does_not_share_open_slates() -> None:
    state = {**new_state(), "proposals": [slate(5, 100.0, [7, 8])]}
    copy = copy_state(state)
    resolve(copy["proposals"], 6, 101.0, 7, "a", None, Horizon(5, 0))
    copy["proposals"][0]["open"].append([1, 9])
    assert state["proposals"][0]["open"] == [[7, 1], [8, 2]]
    legacy = {k: v for k, v in new_state().items() if k != "proposals"}  # written before feedback existed
    assert copy_state(legacy)["proposals"] == []


def test_a_user_keeps_each_versions_once_and_only_while_a_slate_names_them() -> None:
    from streams.core.feedback import drop_unused_versions, slate_versions

    table: dict[str, dict[str, str]] = {}
    aligned = {**VERSIONS, "alignment": "a1"}
    slates = [open_slate(n, 100.0 + n, [0, 1], [2 + n], "table", v, table)
              for n, v in ((5, VERSIONS), (6, VERSIONS), (7, aligned))]
    assert len(table) == 2 and slates[0]["v"] == slates[1]["v"] != slates[2]["v"]
    assert [slate_versions(x, table) for x in slates] == [VERSIONS, VERSIONS, aligned]
    state = {**new_state(), "proposals": slates, "vs": table}
    assert len(json.dumps(state)) < len(json.dumps({**state, "proposals": [{**x, "v": slate_versions(x, table)}
                                                                           for x in slates]}))
    resolved = resolve(slates, 9, 120.0, 0, "i", None, Horizon(3, 0))  # slates 5 and 6 reach the horizon
    records = [feedback_record("u", r, DESCRIPTIONS, table) for r in resolved]  # before the versions go
    assert {r.slate for r in records} == {5, 6} and all(r.versions == VERSIONS for r in records)
    drop_unused_versions(slates, table)
    assert list(table.values()) == [aligned] and slate_versions(slates[0], table) == aligned
    legacy = {**slates[0], "v": dict(VERSIONS)}  # a slate written before the table: its own dict
    assert slate_versions(legacy, {}) == VERSIONS
    drop_unused_versions([legacy], table)
    assert table == {}
    assert copy_state(state)["vs"] is not state["vs"] and copy_state(new_state())["vs"] == {}


def test_the_record_names_its_proposal_and_reads_back() -> None:
    open_ = [slate(5, 100.0, [7, 8], source="live")]
    (accepted,) = resolve(open_, 6, 110.0, 8, "item-x", 4.5, Horizon(3, 0))
    record = feedback_record("u1", accepted, DESCRIPTIONS, TABLE)
    doc = json.loads(record.encode())
    assert doc["feedback_id"] == "u1/5/8" and record.key == b"u1"
    assert doc["context"] == [{"id": 0, "description": "words of 0"}, {"id": 1, "description": "words of 1"}]
    assert doc["cluster"] == {"id": 8, "description": "words of 8"}
    assert (doc["rank"], doc["source"], doc["versions"], doc["accepted"], doc["rating"]) == \
        (2, "live", VERSIONS, True, 4.5)
    assert parse_feedback(record.encode()) == record
    assert isinstance(parse_feedback(record.encode().decode()), FeedbackRecord)
    for bad in (b"[]", b"{}", json.dumps({**doc, "outcome": "maybe"}).encode(), b"not json"):
        with pytest.raises(ValueError, match="not a feedback record"):
            parse_feedback(bad)


def test_the_horizon_settings_must_let_proposals_resolve() -> None:
    assert EngineConfig().with_values({"feedback_horizon_events": 5, "feedback_horizon_s": 0}).feedback_horizon() \
        == Horizon(5, 0.0)
    for values in ({"feedback_horizon_events": 0, "feedback_horizon_s": 0}, {"feedback_horizon_events": -1},
                   {"feedback_max_open": 0}):
        with pytest.raises(ValueError, match="feedback_"):
            EngineConfig().with_values(values)


def test_fewer_open_slates_than_the_horizon_has_events_is_said() -> None:
    """The defaults let every slate reach its horizon; fewer open slates lose labels to eviction, so say so."""
    import warnings

    cfg = EngineConfig()
    assert cfg.feedback_max_open >= cfg.feedback_horizon_events
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EngineConfig().with_values({"feedback_max_open": 5, "feedback_horizon_events": 5})
        EngineConfig().with_values({"feedback_max_open": 2, "feedback_horizon_events": 0, "feedback_horizon_s": 60})
    with pytest.warns(UserWarning, match="evicted without a label"):
        EngineConfig().with_values({"feedback_max_open": 8, "feedback_horizon_events": 20})


def test_the_replay_sends_ratings_only_when_the_data_set_has_them() -> None:
    """A rating reaches a feedback record only if the replay sends it: MovieLens has ratings, synthetic data not."""
    import numpy as np

    from interests.data.datasets import build_dataset
    from streams.wiring.replay import dataset_events

    def values(weights: list[float] | None) -> list[dict]:
        ds = build_dataset("t", ["u", "u", "v"], ["a", "b", "a"], np.array([1, 2, 3]),
                           None if weights is None else np.array(weights))
        return [json.loads(e.encode()[1]) for e in dataset_events(ds)]

    assert [v.get("weight") for v in values([4.5, 1.0, 3.0])] == [4.5, 1.0, 3.0]
    assert all("weight" not in v for v in values(None))


def test_acceptance_is_accepted_over_labelled_proposals_per_group() -> None:
    from streams.core.feedback import acceptance

    open_ = [slate(5, 100.0, [7, 8, 9]), slate(6, 101.0, [3, 4])]
    resolved = resolve(open_, 7, 110.0, 7, "a", None, Horizon(2, 0))  # slate 5: 7 accepted, 8 and 9 not
    resolved += remember(open_, slate(8, 111.0, [1]), max_open=1)  # slate 6 evicted: no label
    records = [feedback_record("u", r, DESCRIPTIONS, TABLE) for r in resolved]
    assert acceptance(records, lambda r: r.rank) == {1: 1.0, 2: 0.0, 3: 0.0}
    assert acceptance(records, lambda r: r.source) == {"table": 1 / 3}
