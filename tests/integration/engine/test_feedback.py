"""Exploration feedback end to end: the records on `exploration-feedback` are what the replayed events imply.

What this adds to the unit tests of `streams.core.feedback`: the wiring (the open slates travel in the
user's state through the changelog, the records reach their topic), the restart (a worker
stopped mid-stream and a second one that recovers the state resolve every proposal exactly once),
and `explore novelty align --topic` reading the records back from a real broker.
The expected records are computed here, independently, from the slates on `recommendations`
(which depend on how events fell into micro-batches) and each user's events after each slate.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from explore.cli import main
from interests.alignment.model import AlignmentModel
from streams.config import EngineConfig
from streams.infra.process import wait_until
from streams.infra.worker_process import WorkerProcess
from streams.wiring.replay import Event, produce
from streams.wiring.worker import ensure_topics
from tests.integration.engine.test_engine_resilience import Producer, applied, assert_exact_states
from tests.integration.engine_support import engine_config, item_cluster_map, read_topic, synthetic_events

pytestmark = pytest.mark.integration

HORIZON_EVENTS, HORIZON_S = 5, 3 * 3600.0  # synthetic users act every 1 min to 2 h: both limits are reached


def expected_feedback(slates: list[dict], events: list[Event], item_cluster: dict[str, int]) -> dict[str, tuple]:
    """feedback_id -> (outcome, rank, events after the slate, item, rating, source) of every proposal whose
    fate the events decide: walk the user's events after the slate until one lands in the cluster (accepted),
    one is more than HORIZON_S after the slate (not accepted; it does not count) or HORIZON_EVENTS have passed."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    out: dict[str, tuple] = {}
    for s in slates:
        later = by_user[s["user_id"]][s["events_applied"]:]
        for rank, cluster in enumerate((c["id"] for c in s["novel_clusters"]), start=1):
            fate = None
            for i, e in enumerate(later, start=1):
                if e.ts - s["event_ts"] > HORIZON_S:
                    fate = ("horizon", rank, i, None, None)
                elif item_cluster[e.item_id] == cluster:
                    fate = ("accepted", rank, i, e.item_id, e.weight)
                elif i == HORIZON_EVENTS:
                    fate = ("horizon", rank, i, None, None)
                if fate:
                    out[f"{s['user_id']}/{s['events_applied']}/{cluster}"] = (*fate, s["source"])
                    break
    return out


def read_to_end(bootstrap: str, topic: str) -> list:
    """Every record of `topic` up to its end offsets as of now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def check_feedback(cfg: EngineConfig, events: list[Event], item_cluster: dict[str, int]) -> dict[str, int]:
    """The feedback topic holds exactly the expected records, once each; returns the count per outcome."""
    slates = [json.loads(r.value) for r in read_to_end(cfg.bootstrap, cfg.recommendations_topic)]
    expected = expected_feedback(slates, events, item_cluster)
    read_topic(cfg.bootstrap, cfg.feedback_topic, lambda rs: len(rs) >= len(expected), timeout_s=30)  # the wait
    records = read_to_end(cfg.bootstrap, cfg.feedback_topic)  # then all of it: a record too many shows
    got = [json.loads(r.value) for r in records]
    assert all(r.key.decode() == doc["user_id"] for r, doc in zip(records, got, strict=True))
    ids = [d["feedback_id"] for d in got]
    assert len(ids) == len(set(ids)), "a proposal was resolved twice"
    assert {d["feedback_id"]: (d["outcome"], d["rank"], d["after_events"], d["item_id"], d["rating"], d["source"])
            for d in got} == expected
    counts = {o: sum(1 for v in expected.values() if v[0] == o) for o in ("accepted", "horizon")}
    print(f"\n#16 figures: {len(events)} events, {len(slates)} slates, feedback records {counts}")
    assert counts["accepted"] and counts["horizon"], counts  # the data must exercise both labels
    assert all(d["accepted"] == (d["outcome"] == "accepted") and d["cluster"]["description"] for d in got)
    return counts


@pytest.mark.parametrize("broker_name", ["tansu", "apache-restart"])
def test_feedback_records_are_what_the_events_imply(broker_name: str, triton, seqrec_artifacts,  # type: ignore[no-untyped-def]
                                                    novelty_artifacts, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    """On the embedded broker a plain replay; on Apache Kafka (restarts are tested there: the embedded
    broker's ListOffsets answers too low) a worker SIGTERMed mid-stream and a second one taking over."""
    bootstrap = request.getfixturevalue("tansu_bootstrap" if broker_name == "tansu" else "apache_bootstrap")
    cfg = engine_config(bootstrap, seqrec_artifacts, triton.repository, triton.grpc, data_dir=str(tmp_path / "data"),
                        feedback_horizon_events=HORIZON_EVENTS, feedback_horizon_s=HORIZON_S)
    ensure_topics(cfg)
    events = [replace(e, weight=float(1 + i % 5)) for i, e in
              enumerate(synthetic_events(seqrec_artifacts.dataset, n_users=40, max_per_user=30))]
    item_cluster = item_cluster_map(seqrec_artifacts)
    records = [e.encode() for e in events]
    if broker_name == "tansu":
        with WorkerProcess(cfg, tmp_path) as worker:
            produce(bootstrap, cfg.interactions_topic, records, rate=300, progress=False)  # many batches: many slates
            assert_exact_states(worker, events, item_cluster, cfg.k)
            counts = check_feedback(cfg, events, item_cluster)
            metrics = worker.metrics_text()
        total = sum(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("explore_feedback_total{"))
        assert total == sum(counts.values())
        # `explore novelty align --topic` reads the same records back from the broker and learns from all of them.
        assert main(["novelty", "align", "--topic", cfg.feedback_topic, "--bootstrap", bootstrap, "--min-events", "1",
                     "--out", str(tmp_path / "align")]) == 0
        assert AlignmentModel.load(tmp_path / "align").meta["outcomes"] == sum(counts.values())
        return
    first = WorkerProcess(cfg, tmp_path, "first").start()
    producer = Producer(bootstrap, cfg.interactions_topic, records, rate=300)
    producer.start()
    try:
        wait_until(lambda: applied(first) > len(events) / 3, 60, "a third of the events applied", first.proc)
        first.stop()  # SIGTERM mid-stream
        assert not first.alive()
        with WorkerProcess(cfg, tmp_path, "second") as second:
            producer.finish()
            assert_exact_states(second, events, item_cluster, cfg.k)
            check_feedback(cfg, events, item_cluster)
    finally:
        first.stop()
