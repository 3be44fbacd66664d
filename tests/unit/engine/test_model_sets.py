"""Model sets (issue 27, item 4): the control topic's records and rules, and when a worker switches sets."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams.core.metrics import Metrics
from streams.core.model_sets import (
    FIRST_SET,
    SERVING_KEY,
    Serving,
    SetManifest,
    SetsView,
    set_key,
    table_topic,
    to_prune,
)
from streams.wiring.model_sets import SetSwitcher, _versioned_config


def _manifest(n: int) -> SetManifest:
    return SetManifest(n, f"cat{n}", 1, {"seqrec": f"s{n}", "catalog": f"cat{n}"}, f"novel.set{n}", 10 * n, 1.5)


def test_the_control_topic_names_the_served_set_and_keeps_the_ones_before_for_rollbacks() -> None:
    view = SetsView()
    assert view.wanted() == FIRST_SET and view.next_number() == 2  # nothing published: the configured set
    s2 = Serving(FIRST_SET).after_publish(2, 10.0)
    s3 = s2.after_publish(3, 20.0)
    view.learn([(set_key(2), _manifest(2).encode()), (SERVING_KEY, s2.encode()),
                (set_key(3), _manifest(3).encode()), (SERVING_KEY, s3.encode())])
    assert view.wanted() == 3 and view.serving == Serving(3, (1, 2), "publish", 20.0)
    assert view.manifests == {2: _manifest(2), 3: _manifest(3)} and view.next_number() == 4
    back = view.serving.after_rollback(30.0)
    assert back == Serving(2, (1,), "rollback", 30.0)
    assert back.after_rollback(40.0) == Serving(1, (), "rollback", 40.0)
    with pytest.raises(ValueError, match="nothing to roll back to"):
        Serving(1).after_rollback(50.0)
    # A publish after a rollback still numbers past every set ever made: version numbers are never reused.
    view.learn([(SERVING_KEY, back.encode())])
    assert view.wanted() == 2 and view.next_number() == 4


def test_records_that_are_not_the_control_topics_are_counted_and_change_nothing() -> None:
    view = SetsView()
    view.learn([(set_key(2), _manifest(2).encode())])
    view.learn([(b"set/3", _manifest(2).encode()),  # key and manifest disagree
                (SERVING_KEY, b"{not json"), (b"other", b"{}"), (set_key(4), b'{"set": 4}'), (None, b"x")])
    assert view.manifests == {2: _manifest(2)} and view.serving is None
    assert view.ignored == {"invalid": 3, "unknown_key": 2}


def test_each_set_has_its_own_table_topic_and_the_first_the_configured_one() -> None:
    assert table_topic("novel", FIRST_SET) == "novel"
    assert table_topic("novel", 2) == "novel.set2" != table_topic("novel", 3)


def test_a_published_config_keeps_every_version_loaded() -> None:
    config = 'name: "seqrec"\nmax_batch_size: 8\n'
    assert _versioned_config(config) == 'name: "seqrec"\nmax_batch_size: 8\nversion_policy: { all { } }\n'
    again = _versioned_config('name: "s"\nversion_policy: { latest { num_versions: 2 } }\nmax_batch_size: 8\n')
    assert again == 'name: "s"\nmax_batch_size: 8\nversion_policy: { all { } }\n'
    assert _versioned_config(_versioned_config(config)) == _versioned_config(config)


class FakeSet:
    def __init__(self, number: int) -> None:
        self.number, self.table_topic = number, f"t{number}"
        self.catalog = type("C", (), {"version": f"cat{number}"})()


class FakeEngine:
    """The two methods of `Engine` the switcher uses: load a set (here: instantly, or failing) and adopt it."""

    def __init__(self) -> None:
        self.serving = FakeSet(1)
        self.broken: set[int] = set()
        self.adopted: list[int] = []

    def load_set(self, number: int, manifest: SetManifest | None) -> FakeSet:
        if number in self.broken:
            raise FileNotFoundError(f"set {number}'s files are missing")
        return FakeSet(number)

    def adopt(self, s: FakeSet) -> None:
        self.serving = s
        self.adopted.append(s.number)


def _switcher(busy: list[bool]) -> tuple[SetSwitcher, FakeEngine, Metrics, dict[int, asyncio.Event]]:
    engine, metrics, tables = FakeEngine(), Metrics(), {}

    def follow_table(s: FakeSet, loaded: asyncio.Event) -> asyncio.Task:
        tables[s.number] = loaded
        return asyncio.ensure_future(asyncio.sleep(3600))

    switcher = SetSwitcher(engine, metrics, follow_table, logging.getLogger("test"), lambda: busy[0])  # type: ignore[arg-type]
    return switcher, engine, metrics, tables


def test_a_busy_worker_switches_only_at_its_next_batch_boundary_and_only_to_the_wanted_set() -> None:
    async def run() -> None:
        busy = [True]
        switcher, engine, metrics, tables = _switcher(busy)
        switcher.start()
        tables[1].set()
        assert switcher.settled() and not switcher.switch()
        switcher.view.learn([(set_key(2), _manifest(2).encode()),
                             (SERVING_KEY, Serving(1).after_publish(2, 1.0).encode())])
        assert not switcher.settled()
        preparing = asyncio.ensure_future(switcher.prepare())
        await asyncio.sleep(0.01)
        assert switcher.ready is None  # its table is not read yet
        tables[2].set()
        await preparing
        assert switcher.ready is not None and engine.adopted == []  # inside a batch: no switch
        assert switcher.switch() and engine.adopted == [2] and switcher.settled()
        assert 'explore_set_switches_total{reason="publish"} 1.0' in metrics.render().decode()
        # A rollback while the prepared set waits for a batch boundary: the old prepared set is never adopted.
        switcher.view.learn([(SERVING_KEY, Serving(2, (1,)).after_rollback(2.0).encode())])
        preparing = asyncio.ensure_future(switcher.prepare())
        await asyncio.sleep(0.01)
        switcher.view.learn([(SERVING_KEY, Serving(1).after_publish(2, 3.0).encode())])  # and back to 2
        await asyncio.wait_for(preparing, 5)  # set 1's table never loads: the preparation gives up, not waits
        assert switcher.ready is None and not switcher.switch() and engine.adopted == [2]
        assert 1 not in switcher.tables  # the follower of the abandoned set's table is stopped

    asyncio.run(run())


def test_an_idle_worker_switches_at_once_and_a_set_that_cannot_load_leaves_the_served_one() -> None:
    async def run() -> None:
        busy = [False]
        switcher, engine, metrics, tables = _switcher(busy)
        switcher.start()
        engine.broken.add(2)
        switcher.view.learn([(set_key(2), _manifest(2).encode()),
                             (SERVING_KEY, Serving(1).after_publish(2, 1.0).encode())])
        await switcher.prepare()
        assert engine.serving.number == 1 and "explore_set_failures_total 1.0" in metrics.render().decode()
        await switcher.prepare()  # not tried again before RETRY_FAILED_S
        assert "explore_set_failures_total 1.0" in metrics.render().decode()
        switcher.view.learn([(set_key(3), _manifest(3).encode()),
                             (SERVING_KEY, Serving(2, (1,)).after_publish(3, 2.0).encode())])
        preparing = asyncio.ensure_future(switcher.prepare())
        await asyncio.sleep(0.01)
        tables[3].set()
        await preparing
        assert engine.adopted == [3] and switcher.settled()  # idle: no batch boundary to wait for

    asyncio.run(run())


def test_pruning_keeps_the_served_set_its_rollback_targets_and_the_configured_one() -> None:
    view = SetsView()
    served = Serving(FIRST_SET)
    for n in (2, 3, 4, 5):
        served = served.after_publish(n, float(n))
        view.learn([(set_key(n), _manifest(n).encode())])
    view.learn([(SERVING_KEY, served.after_rollback(6.0).encode())])  # serving 4, history (1, 2, 3)
    assert to_prune(view, 1) == ([2, 3, 5], ())
    assert to_prune(view, 2) == ([2, 5], (3,))
    assert to_prune(view, 10) == ([5], (1, 2, 3))  # 5 was rolled back from: no rollback reaches it
    with pytest.raises(ValueError, match="at least 1"):
        to_prune(view, 0)
    view.learn([(set_key(2), None), (set_key(5), None)])  # their tombstones: pruned
    assert sorted(view.manifests) == [3, 4] and to_prune(view, 2) == ([], (3,))
