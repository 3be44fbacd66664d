"""A real broker round trip and a real Faust agent, on the embedded broker and on Apache Kafka."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from streams.infra.kafka_check import create_topic, kafka_ready, kafka_round_trip

pytestmark = pytest.mark.integration


def test_broker_answers_metadata(broker: str) -> None:
    assert kafka_ready(broker)


def test_produce_consume_round_trip(broker: str) -> None:
    timings = kafka_round_trip(broker, n=50)
    assert timings["records"] == 50


def _consume(bootstrap: str, topic: str, n: int, timeout_s: float) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
    got: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend((r.key, r.value) for r in records)
    finally:
        consumer.close()
    return got


def test_faust_agent_reads_a_topic_and_writes_another(broker: str, tmp_path: Path) -> None:
    """The pass-through worker, as a real `faust worker` process, copies every record in key order."""
    suffix = uuid.uuid4().hex[:8]
    source, sink = f"agent-in-{suffix}", f"agent-out-{suffix}"
    create_topic(broker, source, partitions=2)
    create_topic(broker, sink, partitions=2)
    sent = [(f"user-{i % 5}".encode(), f"event-{i}".encode()) for i in range(300)]
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    for key, value in sent[:150]:
        producer.send(source, key=key, value=value)
    producer.flush()

    env = {**os.environ, "KAFKA_BOOTSTRAP": broker, "PASSTHROUGH_IN": source, "PASSTHROUGH_OUT": sink,
           "PASSTHROUGH_APP_ID": f"passthrough-{suffix}", "PASSTHROUGH_DATA_DIR": str(tmp_path / "data")}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed in finally
    worker = subprocess.Popen([sys.executable, "-m", "streams.wiring.passthrough", "worker", "-l", "info"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Half the input waits before the worker starts, half arrives while it runs (it has copied a record).
        assert _consume(broker, sink, 1, timeout_s=90), "the worker copied nothing"
        for key, value in sent[150:]:
            producer.send(source, key=key, value=value)
        producer.flush()
        producer.close()
        got = _consume(broker, sink, len(sent), timeout_s=90)
        assert worker.poll() is None, "the worker died"
    finally:
        worker.terminate()
        code = worker.wait(timeout=60)
        log.close()
    tail = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
    assert sorted(got) == sorted(sent), f"sent {len(sent)}, got {len(got)}\n{tail}"
    for user in {k for k, _ in sent}:
        assert [v for k, v in got if k == user] == [v for k, v in sent if k == user], f"order broken for {user!r}"
    assert code == 0, f"worker exited with {code}\n{tail}"
