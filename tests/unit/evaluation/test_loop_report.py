"""`explore loop ab`'s numbers (`explore.loop_report`): proposals from slates and feedback, pairing, lost state."""

from __future__ import annotations

import numpy as np
import pytest

from explore.loop_report import paired_arms, paired_difference, proposals, state_resets
from streams.core.feedback import FeedbackRecord


def _slate(user: str, n: int, clusters: list[int], ts: float = 100.0, offset: int | None = None) -> dict:
    return {"user_id": user, "events_applied": n, "event_ts": ts, "source": "table",
            "input": [0, n if offset is None else offset], "novel_clusters": [{"id": c} for c in clusters]}


def _fed(user: str, n: int, cluster: int, outcome: str) -> FeedbackRecord:
    return FeedbackRecord(f"{user}/{n}/{cluster}", user, n, 100.0, [], {"id": cluster}, 1, "table", {},
                          outcome == "accepted", outcome, 1, None, None, None)


def test_every_proposal_of_a_slate_counts_once_with_its_fate_or_open() -> None:
    slates = [_slate("u", 3, [5, 6, 7]), _slate("u", 3, [5, 6, 7]), _slate("u", 1, [2], ts=10.0)]  # a re-sent slate
    feedback = [_fed("u", 3, 5, "accepted"), _fed("u", 3, 6, "evicted"), _fed("u", 1, 2, "accepted")]
    got = proposals(slates, feedback, since=50.0)  # the slate before `since` is left out
    assert [(p["rank"], p["cluster"], p["outcome"], p["accepted"]) for p in got] == [
        (1, 5, "accepted", True), (2, 6, "evicted", False), (3, 7, "open", False)]


def test_pairing_takes_the_slates_both_arms_made_and_the_difference_of_their_acceptance() -> None:
    control = proposals([_slate("a", 1, [1, 2]), _slate("b", 1, [1, 2]), _slate("c", 4, [3])],
                        [_fed("a", 1, 1, "horizon"), _fed("b", 1, 1, "accepted")], 0.0)
    treated = proposals([_slate("a", 1, [2, 1]), _slate("b", 1, [1, 3])],
                        [_fed("a", 1, 2, "accepted"), _fed("b", 1, 1, "accepted"), _fed("b", 1, 3, "accepted")], 0.0)
    got = paired_arms(treated, control)
    assert (got["common_slates"], got["only_treated"], got["only_control"]) == (2, 0, 1)
    assert got["acceptance_difference"] == pytest.approx(3 / 4 - 1 / 4)
    assert (got["slates_taken_up"]["won"], got["slates_taken_up"]["lost"]) == (1, 0)  # a: none taken up -> one
    assert got["other_clusters"] == 0.5 and got["other_order"] == 1.0


def test_the_paired_interval_is_zero_wide_when_every_user_moves_alike_and_covers_a_mixed_difference() -> None:
    users = np.array(["a", "b", "c", "d"])
    same = paired_difference(np.ones(4), np.ones(4) * 2, np.zeros(4), np.ones(4) * 2, users)
    assert same == pytest.approx((0.5, 0.5, 0.5))
    two = np.full(4, 2)
    diff, lo, hi = paired_difference(np.array([1, 0, 1, 0]), two, np.array([0, 1, 0, 1]), two, users)
    assert diff == pytest.approx(0.0) and lo < 0 < hi


def test_a_slate_whose_count_is_not_the_users_records_so_far_is_a_lost_state() -> None:
    """Counted against the input topic: a count that falls, and one that only lags (the lost events made no
    slate, the old check by falls alone missed it), are both lost state; records of other users and other
    partitions do not count."""
    inputs = [(0, o, u) for o, u in enumerate("uvuvuvuvuu")] + [(1, 0, "u"), (1, 1, "w")]
    whole = [_slate("u", 3, [1], offset=4), _slate("v", 4, [1], offset=7), _slate("w", 1, [1], offset=1)]
    whole[-1]["input"] = [1, 1]
    assert state_resets(whole, inputs) == []
    fell = [_slate("u", 5, [1], offset=8), _slate("u", 2, [1], offset=9)]
    lags = [_slate("u", 3, [1], offset=4), _slate("u", 4, [1], offset=9)]  # 6 records of u up to offset 9
    assert state_resets(whole + fell, inputs) == ["u"] == state_resets(whole + lags, inputs)
    twice = [_slate("v", 5, [1], offset=7)]
    assert state_resets(whole + twice, inputs) == ["v"]


def test_the_arms_engine_settings_are_checked_before_anything_runs() -> None:
    from explore.loop import arm_settings

    assert arm_settings([("feedback_max_open", "8"), ("feedback_horizon_events", "10")]) == \
        {"feedback_max_open": "8", "feedback_horizon_events": "10"}
    for bad, says in (([("feedback_max_opn", "8")], "unknown setting"), ([("m", "2")], "the loop sets"),
                      ([("feedback_max_open", "0")], "at least 1")):
        with pytest.raises(SystemExit, match=says):
            arm_settings(bad)
