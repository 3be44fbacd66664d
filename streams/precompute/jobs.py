"""The novelty precompute as a distributed job: the pure parts, and the Kafka reads around them.

A job is a requests topic (`novelty-requests`, several partitions): one record per context to compute,
keyed by `context_key`, its value naming the catalog version the row is for. Precompute workers
(`streams.precompute.worker`), any number in one consumer group, take batches, ask Triton's
`interest_generator`, and publish the rows to the novelty topic in one Kafka transaction with their
input offsets; the progress of a job is the group's committed offsets against the topic's end.

Why a topic and not a list split by hand: the consumer group gives each worker its share, moves the
share of a worker that died to the others, and its committed offsets are the job's progress, kept by
the brokers; a restarted worker resumes from them without recomputing what is published.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from streams.core.table import context_key, parse_context_key, parse_row
from streams.kafka_security import PLAINTEXT, KafkaSecurity

REQUESTS_TOPIC = "novelty-requests"


def request_value(catalog_version: str) -> bytes:
    """A request's record value: the catalog version its row is for (a worker serving another skips it)."""
    return json.dumps({"catalog_version": catalog_version}).encode()


def parse_request(key: bytes | None, value: bytes | None, catalog_version: str, k: int,
                  n_clusters: int) -> list[int] | str:
    """The context a request asks for, or why it is skipped: "stale" (for another catalog than the one the
    worker's model speaks) or "invalid" (not K distinct cluster ids of this catalog, spelt as `context_key`
    spells them; a value that is not a request). Anyone who can write the topic can add requests, so a
    worker never sends Triton a context it cannot answer."""
    context = parse_context_key(key, k, n_clusters)
    if context is None:
        return "invalid"
    try:
        doc = json.loads(value or b"")
    except (ValueError, RecursionError):
        return "invalid"
    if not isinstance(doc, dict):
        return "invalid"
    return context if doc.get("catalog_version") == catalog_version else "stale"


def published_keys(records: Iterable[tuple[bytes | None, bytes | None]], catalog_version: str, k: int,
                   n_clusters: int) -> set[bytes]:
    """Contexts with a usable row of this catalog on the novelty topic (records in offset order; a
    tombstone or a later unusable row takes a context out again, as it does in the engine's table)."""
    done: set[bytes] = set()
    for key, value in records:
        if key is None:
            continue
        if value is not None and not isinstance(parse_row(key, value, catalog_version, k, n_clusters), str):
            done.add(key)
        elif value is None:
            done.discard(key)
    return done


def pending(contexts: Iterable[Sequence[int]], done: set[bytes]) -> list[list[int]]:
    """The contexts still to compute: not published, each once, in the order given."""
    seen = set(done)
    out = []
    for context in contexts:
        key = context_key(context)
        if key not in seen:
            seen.add(key)
            out.append([int(c) for c in context])
    return out


def next_offsets(records: Iterable[tuple[int, int]]) -> dict[int, int]:
    """The offsets to commit after a batch of (partition, offset): one past the last record per partition."""
    out: dict[int, int] = {}
    for partition, offset in records:
        out[partition] = max(out.get(partition, 0), offset + 1)
    return out


def first_offsets(records: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Where to read again after a batch failed: its first offset per partition."""
    out: dict[int, int] = {}
    for partition, offset in records:
        out[partition] = min(out.get(partition, offset), offset)
    return out


@dataclass(frozen=True)
class Progress:
    """Requests of a job answered (committed by the group) and in all, over the topic's retained records."""

    done: int
    total: int

    @property
    def left(self) -> int:
        return self.total - self.done


def progress(begin: dict[int, int], end: dict[int, int], committed: dict[int, int | None]) -> Progress:
    """The job's progress per partition summed: a partition the group never committed is at its beginning."""
    done = total = 0
    for p, last in end.items():
        first = begin.get(p, 0)
        position = committed.get(p)
        done += min(max(position if position is not None else first, first), last) - first
        total += last - first
    return Progress(done, total)


def read_progress(bootstrap: str, topic: str, group: str, security: KafkaSecurity = PLAINTEXT) -> Progress:
    """The group's committed offsets on `topic` against its beginning and end offsets (a consumer of the
    group that never subscribes reads them without joining it)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                             **security.client_kwargs())
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        committed = {tp.partition: consumer.committed(tp) for tp in tps}
        return progress({tp.partition: o for tp, o in begin.items()}, {tp.partition: o for tp, o in end.items()},
                        committed)
    finally:
        consumer.close()


def read_published(bootstrap: str, topic: str, catalog_version: str, k: int, n_clusters: int,
                   security: KafkaSecurity = PLAINTEXT, timeout_s: float = 600.0) -> set[bytes]:
    """`published_keys` of the novelty topic read to its end, committed rows only (read_committed: the rows
    of a worker's aborted transaction do not count as done); an absent topic has none. It reads past the
    end the broker reports (`read_topic_records`): a row missed there would be computed again."""
    from streams.wiring.topic_reader import TopicMissing, read_topic_records

    try:
        records = read_topic_records(bootstrap, topic, security, timeout_s, isolation="read_committed")
    except TopicMissing:
        return set()
    return published_keys(records, catalog_version, k, n_clusters)


def enqueue(bootstrap: str, topic: str, contexts: Sequence[Sequence[int]], catalog_version: str,
            partitions: int, security: KafkaSecurity = PLAINTEXT, replication_factor: int = 0,
            min_insync_replicas: int = 0) -> int:
    """Create the requests topic if needed and write one request per context (key: `context_key`, so
    that the partitioner spreads them); returns the count."""
    from kafka import KafkaProducer

    from streams.infra.kafka_check import create_topic

    create_topic(bootstrap, topic, partitions=partitions, security=security,
                 replication_factor=replication_factor, min_insync_replicas=min_insync_replicas)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, **security.client_kwargs())
    value = request_value(catalog_version)
    try:
        for context in contexts:
            producer.send(topic, key=context_key(context), value=value)
        producer.flush()
    finally:
        producer.close()
    return len(contexts)
