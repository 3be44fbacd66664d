"""Readiness and round-trip checks against any Kafka-protocol broker, via kafka-python."""

from __future__ import annotations

import contextlib
import time
import uuid

from streams.infra.process import tcp_open


def _split(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def kafka_ready(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """True when the broker answers a metadata request (Tansu lacks DescribeCluster)."""
    host, port = _split(bootstrap)
    if not tcp_open(host, port):
        return False
    from kafka import KafkaAdminClient

    ms = int(timeout_s * 1000)
    # A probe: any failure (connection, protocol, configuration) means "not ready yet".
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ms, client_id="explore-probe")
    except Exception:
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def create_topic(bootstrap: str, name: str, partitions: int = 1, compacted: bool = False) -> None:
    """Create a topic if it does not exist yet."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    configs = {"cleanup.policy": "compact"} if compacted else {}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="explore-admin")
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def wait_for_topics(bootstrap: str, partitions: dict[str, int], timeout_s: float = 30.0) -> None:
    """Until the broker's metadata shows every topic with its number of partitions."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, client_id="explore-topics")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            missing = [t for t, n in partitions.items() if len(consumer.partitions_for_topic(t) or ()) != n]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not visible in the broker's metadata after {timeout_s:.0f} s: {missing}")
            time.sleep(0.2)
            consumer.topics()  # refreshes the metadata
    finally:
        consumer.close()


def kafka_round_trip(bootstrap: str, n: int = 20, timeout_s: float = 30.0) -> dict[str, float]:
    """Produce `n` keyed records to a fresh topic and read them back; raise if any is missing.

    Returns timings, so the demo can print what it measured.
    """
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"explore-roundtrip-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    create_topic(bootstrap, topic)
    sent = [f"record-{i}".encode() for i in range(n)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i, value in enumerate(sent):
            producer.send(topic, key=f"user-{i % 3}".encode(), value=value)
        producer.flush(timeout=timeout_s)
    finally:
        producer.close()
    t_produced = time.perf_counter()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100)
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend(r.value for r in records)
    finally:
        consumer.close()
    if got != sent:
        raise RuntimeError(f"Kafka round trip on {bootstrap}: sent {n} records, read back {len(got)} "
                           f"({'out of order' if sorted(got) == sorted(sent) else 'missing or extra'})")
    t_done = time.perf_counter()
    return {"records": float(n), "produce_s": t_produced - t0, "consume_s": t_done - t_produced}
