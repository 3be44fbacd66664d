"""The engine under stress on real Apache Kafka: restarts, rebalancing, a broker killed, a Triton outage.

Every test checks the same invariant at the end: each user's state reflects each of its input
events exactly once (count, context, known clusters, newest items), computed independently here.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from streams.infra.process import InfraError, wait_until
from streams.infra.worker_process import WorkerProcess
from streams.wiring.replay import produce
from streams.wiring.worker import ensure_topics
from tests.integration.engine_support import (
    engine_config,
    expected_states,
    item_cluster_map,
    metric,
    read_topic,
    recommendations,
    synthetic_events,
)

pytestmark = pytest.mark.integration
DUPLICATES = 'explore_events_total{outcome="duplicate"}'


class Producer(threading.Thread):
    """Replays records at a rate in the background, so that workers can be disturbed mid-stream."""

    def __init__(self, bootstrap: str, topic: str, records: list, rate: float) -> None:
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, records, rate)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            produce(*self.args, progress=False)
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self, timeout_s: float = 60.0) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), "the producer did not finish"
        if self.error:
            raise self.error


def applied(worker: WorkerProcess) -> float:
    for line in worker.metrics_text().splitlines():
        if line.startswith('explore_events_total{outcome="applied"}'):
            return float(line.split()[-1])
    return 0.0


def both_answer(a: WorkerProcess, b: WorkerProcess, users: list[str], seen: dict) -> bool:
    """Each worker answers `GET /users/{id}` for every user, both from the same worker, and each holds some."""
    served = set()
    for user in users:
        (status_a, body_a), (status_b, body_b) = a.get(f"/users/{user}"), b.get(f"/users/{user}")
        seen.update(user=user, first=(status_a, body_a), second=(status_b, body_b))
        if status_a != 200 or status_b != 200 or body_a["served_by"] != body_b["served_by"]:
            return False
        assert body_a["user_id"] == body_b["user_id"] == user
        served.add(body_a["served_by"])
    return served == {a.url, b.url}


def assert_exact_states(worker: WorkerProcess, events: list, item_cluster: dict[str, int], k: int,
                        timeout_s: float = 120.0) -> None:
    """Every user's state on `worker` equals the state of applying each of its events exactly once."""
    expected = expected_states(events, item_cluster, k)
    items: dict[str, list[str]] = {}
    for e in events:
        items.setdefault(e.user_id, []).append(e.item_id)
    bodies: dict[str, dict] = {}

    def settled() -> bool:
        for user, exp in expected.items():
            if user not in bodies or bodies[user]["events_applied"] != exp["n"]:
                status, body = worker.get(f"/users/{user}")
                if status == 200:
                    bodies[user] = body
        return all(u in bodies and bodies[u]["events_applied"] == e["n"] for u, e in expected.items())

    try:
        wait_until(settled, timeout_s, "every event applied", worker.proc, interval_s=0.5)
    except Exception:
        wrong = {u: (bodies.get(u, {}).get("events_applied"), e["n"]) for u, e in expected.items()
                 if bodies.get(u, {}).get("events_applied") != e["n"]}
        raise AssertionError(f"users whose state misses or repeats events (got, expected): {wrong}") from None
    for user, exp in expected.items():
        body = bodies[user]
        assert [c["id"] for c in body["context"]] == exp["context"], user
        assert {c["id"] for c in body["known_clusters"]} == exp["known"], user
        assert body["recent_items"] == items[user][-20:], user


@pytest.fixture
def engine_setup(apache_bootstrap: str, triton, seqrec_artifacts, novelty_artifacts):  # type: ignore[no-untyped-def]
    events = synthetic_events(seqrec_artifacts.dataset, n_users=60, max_per_user=30)
    return events, item_cluster_map(seqrec_artifacts)


@pytest.mark.parametrize(("how", "store"), [("sigterm", "memory://"), ("sigkill", "memory://"),
                                           ("sigterm", "rocksdb://")])
def test_restart_recovers_state_and_loses_nothing(how: str, store: str, apache_bootstrap: str, triton,  # type: ignore[no-untyped-def]
                                                  seqrec_artifacts, engine_setup, tmp_path: Path) -> None:
    events, item_cluster = engine_setup
    cfg = engine_config(apache_bootstrap, seqrec_artifacts, triton.repository, triton.grpc,
                        data_dir=str(tmp_path / "data"), store=store)
    ensure_topics(cfg)
    first = WorkerProcess(cfg, tmp_path, "first").start()
    producer = Producer(apache_bootstrap, cfg.interactions_topic, [e.encode() for e in events], rate=400)
    producer.start()
    try:
        wait_until(lambda: applied(first) > len(events) / 4, 60, "a quarter of the events applied", first.proc)
        if how == "sigkill":
            os.killpg(first.proc.pid, signal.SIGKILL)
        first.stop()
        assert not first.alive()
        with WorkerProcess(cfg, tmp_path, "second") as second:
            producer.finish()
            assert_exact_states(second, events, item_cluster, cfg.k)
            text = second.metrics_text()
    finally:
        first.stop()
    assert 'explore_events_total{outcome="applied"}' in text
    duplicates = metric(text, DUPLICATES)
    print(f"\n#13 figures: restart ({how.upper()}, {store}): {len(events)} events of "
          f"{len({e.user_id for e in events})} users, the worker stopped mid-stream, a new one applied every event "
          f"exactly once ({duplicates:.0f} redelivered records recognised as duplicates)")


def test_rebalance_second_worker_joins_and_leaves(apache_bootstrap: str, triton, seqrec_artifacts,  # type: ignore[no-untyped-def]
                                                  engine_setup, tmp_path: Path) -> None:
    events, item_cluster = engine_setup
    cfg = engine_config(apache_bootstrap, seqrec_artifacts, triton.repository, triton.grpc)
    ensure_topics(cfg)
    records = [e.encode() for e in events]
    half = len(records) // 2
    with WorkerProcess(cfg, tmp_path, "first") as first:
        producer = Producer(apache_bootstrap, cfg.interactions_topic, records[:half], rate=250)
        producer.start()
        wait_until(lambda: applied(first) > len(events) / 6, 60, "first events applied", first.proc)
        with WorkerProcess(cfg, tmp_path, "second") as second:
            # The second half goes in once the second worker is up, so that it has events to take
            # however slowly it started; it is still streaming when the second worker leaves.
            producer.finish()
            producer = Producer(apache_bootstrap, cfg.interactions_topic, records[half:], rate=100)
            producer.start()
            wait_until(lambda: applied(second) > 0, 60, "the second worker took partitions", second.proc)
            early = sorted({e.user_id for e in events[:len(events) // 12]})
            seen: dict = {}
            try:
                wait_until(lambda: both_answer(first, second, early, seen), 60, "either worker answers for every user",
                           second.proc)
            except InfraError:
                raise AssertionError(f"the workers do not both answer; last answers: {seen}") from None
            before = applied(second)  # leave while the second worker is applying events
            wait_until(lambda: applied(second) > before, 60, "the second worker applies more", second.proc)
            shared = applied(second)
        producer.finish()
        assert shared > 0
        assert_exact_states(first, events, item_cluster, cfg.k)
    print(f"\n#13 figures: rebalance: {len(events)} events of {len({e.user_id for e in events})} users, a second "
          f"worker joined mid-stream, applied {shared:.0f} of them and left; every event in the state exactly once")


def test_triton_outage_falls_back_and_returns(apache_bootstrap: str, tiny_repository: Path, seqrec_artifacts,  # type: ignore[no-untyped-def]
                                              novelty_artifacts, engine_setup, tmp_path: Path) -> None:
    from streams.infra.triton import EmbeddedTriton

    events, item_cluster = engine_setup
    server = EmbeddedTriton(tiny_repository, tmp_path / "triton").start()
    ports = {"grpc_port": server.grpc_port, "http_port": server.http_port, "metrics_port": server.metrics_port}
    cfg = engine_config(apache_bootstrap, seqrec_artifacts, tiny_repository, server.grpc_url)
    ensure_topics(cfg)
    third = len(events) // 3
    phases = [[e.encode() for e in events[i * third:(i + 1) * third if i < 2 else None]] for i in range(3)]

    def replay(records: list) -> None:
        produce(apache_bootstrap, cfg.interactions_topic, records, rate=300, progress=False)

    try:
        with WorkerProcess(cfg, tmp_path, "worker") as worker:
            replay(phases[0])
            wait_until(lambda: "explore_triton_up 1.0" in worker.metrics_text(), 60, "worker on Triton", worker.proc)
            server.stop()
            replay(phases[1])
            wait_until(lambda: "explore_triton_up 0.0" in worker.metrics_text(), 60, "worker on the fallback",
                       worker.proc)
            server = EmbeddedTriton(tiny_repository, tmp_path / "triton-again", **ports).start()
            back = time.time()
            # No event asks for a model now: the worker's probe alone must find Triton again (before it,
            # a quiet worker stayed on the fallback; and a pooled gRPC connection kept its reconnect
            # backoff, so the events that came next were refused by a Triton that was up).
            wait_until(lambda: "explore_triton_up 1.0" in worker.metrics_text(), 30, "worker back on Triton",
                       worker.proc)
            replay(phases[2])
            assert_exact_states(worker, events, item_cluster, cfg.k)
            text = worker.metrics_text()
    finally:
        server.stop()
    recs = recommendations(read_topic(apache_bootstrap, cfg.recommendations_topic, lambda r: False, timeout_s=5))
    assert any(r["seqrec_path"] == "onnx" for r in recs), "no slate came through the fallback while Triton was down"
    assert any(r["seqrec_path"] == "triton" and r["sent_at"] > back for r in recs), "never went back to Triton"
    assert 'explore_inference_seconds_count{model="seqrec",path="onnx"}' in text
    assert 'explore_inference_errors_total{model=' in text
    paths = {path: sum(1 for r in recs if r["seqrec_path"] == path) for path in ("triton", "onnx")}
    print(f"\n#13 figures: Triton stopped mid-stream and started again: {len(events)} events applied exactly once, "
          f"{len(recs)} slates ({paths['triton']} from Triton, {paths['onnx']} from the twin while it was down)")


def test_triton_refusing_one_model_costs_only_that_model(apache_bootstrap: str, tiny_repository: Path,  # type: ignore[no-untyped-def]
                                                         seqrec_artifacts, novelty_artifacts, engine_setup,
                                                         tmp_path: Path) -> None:
    """Triton runs and serves `interest_generator`, but refuses every `seqrec` request (the model is not
    loaded: what a model that failed to load, or was unloaded, looks like). The slates come from the
    twin; the novel clusters still come from Triton; every event is applied exactly once."""
    from streams.infra.triton import EmbeddedTriton

    events, item_cluster = engine_setup
    only_generator = ("--model-control-mode=explicit", "--load-model=interest_generator")
    cfg = engine_config(apache_bootstrap, seqrec_artifacts, tiny_repository, "")
    ensure_topics(cfg)
    with EmbeddedTriton(tiny_repository, tmp_path / "triton", extra_args=only_generator) as server:
        cfg = cfg.with_values({"triton_url": server.grpc_url})
        with WorkerProcess(cfg, tmp_path, "worker") as worker:
            produce(apache_bootstrap, cfg.interactions_topic, [e.encode() for e in events], rate=600,
                    progress=False)
            assert_exact_states(worker, events, item_cluster, cfg.k)
            text = worker.metrics_text()
            assert worker.alive()
    recs = recommendations(read_topic(apache_bootstrap, cfg.recommendations_topic, lambda r: False, timeout_s=5))
    paths = {path: sum(1 for r in recs if r["seqrec_path"] == path) for path in ("triton", "onnx")}
    generator = {path: metric(text, f'explore_inference_seconds_count{{model="interest_generator",path="{path}"}}')
                 for path in ("triton", "onnx")}
    assert recs and paths["triton"] == 0, paths
    assert generator["triton"] > 0 and generator["onnx"] == 0, generator
    print(f"\n#13 figures: Triton refusing seqrec: {len(events)} events applied exactly once, {len(recs)} slates "
          f"all from the twin, interest_generator calls {generator['triton']:.0f} on Triton and "
          f"{generator['onnx']:.0f} on the twin, worker alive")


def test_a_stalled_partition_is_sought_to_its_first_record_not_to_offset_zero(apache_bootstrap: str) -> None:
    """On a partition whose head retention removed, where nothing was applied yet, the stall re-seek goes
    where `start_offset` starts (its first record); before, it sought to 0, out of range."""
    import asyncio
    import logging
    import uuid

    from kafka import KafkaAdminClient, TopicPartition

    from streams.core.metrics import Metrics
    from streams.infra.kafka_check import create_topic
    from streams.wiring.delivery import InputDelivery

    topic = f"stall-{uuid.uuid4().hex[:8]}"
    create_topic(apache_bootstrap, topic, partitions=2)
    produce(apache_bootstrap, topic, [(b"u", b"%d" % i) for i in range(10)], progress=False)
    partition = read_topic(apache_bootstrap, topic, lambda r: len(r) == 10)[0].partition  # one key: one partition
    admin = KafkaAdminClient(bootstrap_servers=apache_bootstrap)
    try:
        admin.delete_records({TopicPartition(topic, partition): 6})  # what retention does to a partition's head
    finally:
        admin.close()
    positions: dict[str, int] = {}  # nothing applied yet (the `positions` table's interface)
    delivery = InputDelivery(apache_bootstrap, topic, positions, Metrics(), logging.getLogger("test"))
    seeks = asyncio.run(delivery.stall_seeks([partition]))
    assert seeks == {partition: 6}
    positions[str(partition)] = 7  # applied up to 7: it continues at 8
    assert asyncio.run(delivery.stall_seeks([partition])) == {partition: 8}


def test_a_user_without_events_for_the_ttl_is_forgotten_with_a_tombstone(apache_bootstrap: str, triton,  # type: ignore[no-untyped-def]
                                                                         seqrec_artifacts, novelty_artifacts,
                                                                         tmp_path: Path) -> None:
    """user_ttl_s: the worker deletes a user it has not applied an event for since, and the tombstone lands in
    the changelog partition of the user's state, so a recovering worker forgets the user too."""
    cfg = engine_config(apache_bootstrap, seqrec_artifacts, triton.repository, triton.grpc, user_ttl_s=2.0)
    ensure_topics(cfg)
    events = synthetic_events(seqrec_artifacts.dataset, n_users=12, max_per_user=5)
    users = {e.user_id for e in events}
    changelog = f"{cfg.app_id}-users-changelog"

    def tombstoned(records: list) -> set[str]:
        return {r.key.decode().strip('"') for r in records if r.value is None}

    with WorkerProcess(cfg, tmp_path) as worker:
        produce(apache_bootstrap, cfg.interactions_topic, [e.encode() for e in events], progress=False)
        records = read_topic(apache_bootstrap, changelog, lambda recs: tombstoned(recs) >= users, timeout_s=90)
        wait_until(lambda: all(worker.get(f"/users/{u}?local=1")[0] == 404 for u in users), 30,
                   "every user forgotten", worker.proc)
        metrics = worker.metrics_text()
    assert tombstoned(records) >= users
    for user in users:
        mine = [r for r in records if r.key.decode().strip('"') == user]
        assert len({r.partition for r in mine}) == 1, (user, [(r.partition, r.value is None) for r in mine])
        assert mine[-1].value is None and any(r.value is not None for r in mine)
    assert f"explore_users_expired_total {float(len(users))}" in metrics


def busiest_node(bootstrap: str, topics: list[str]) -> int:
    """The id of the broker that leads most partitions of `topics`: killing it moves the most leaders."""
    from collections import Counter

    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        leaders = Counter(p["leader_id"] for t in admin.describe_topics(topics) for p in t["partitions"])
    finally:
        admin.close()
    return leaders.most_common(1)[0][0]


def test_a_broker_killed_mid_stream_and_brought_back_loses_and_repeats_nothing(  # type: ignore[no-untyped-def]
        apache_cluster, triton, seqrec_artifacts, engine_setup, tmp_path: Path) -> None:
    """3 brokers, every engine topic replicated 3 times (min.insync.replicas 2, the defaults on 3 brokers):
    SIGKILL the broker leading most of the engine's partitions while events stream in, keep streaming on
    two, bring it back. The worker never stops, and every event is in the state exactly once."""
    events, item_cluster = engine_setup
    cfg = engine_config(apache_cluster.bootstrap, seqrec_artifacts, triton.repository, triton.grpc)
    ensure_topics(cfg)
    topics = [cfg.interactions_topic, f"{cfg.app_id}-users-changelog", f"{cfg.app_id}-positions-changelog"]
    with WorkerProcess(cfg, tmp_path, "worker") as worker:
        producer = Producer(apache_cluster.bootstrap, cfg.interactions_topic, [e.encode() for e in events], rate=120)
        producer.start()
        wait_until(lambda: applied(worker) > len(events) / 5, 60, "a fifth of the events applied", worker.proc)
        victim = busiest_node(apache_cluster.bootstrap, topics)
        apache_cluster.kill(victim - 1)
        at_kill = applied(worker)
        wait_until(lambda: applied(worker) > at_kill + len(events) / 5, 90, "events applied with a broker down",
                   worker.proc)
        on_two = applied(worker) - at_kill
        apache_cluster.restart(victim - 1)
        producer.finish(timeout_s=120)
        assert_exact_states(worker, events, item_cluster, cfg.k)
        text = worker.metrics_text()
        assert worker.alive()
    duplicates = metric(text, DUPLICATES)
    assert metric(text, 'explore_events_total{outcome="applied"}') == len(events)
    print(f"\n#13 figures: broker kill: {len(events)} events of {len({e.user_id for e in events})} users, "
          f"broker {victim} of 3 SIGKILLed after {at_kill:.0f} applied, {on_two:.0f} applied on two brokers, "
          f"then restarted; applied {len(events)} exactly once, {duplicates:.0f} redelivered records recognised "
          f"as duplicates, worker alive")
