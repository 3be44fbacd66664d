"""The novelty table on Kafka: publishing rows to its compacted topic, and what the worker's follower
of that topic needs (its fetch size and its crash guard). The rows' format, keys and the in-memory
table are `streams.core.table`'s: pure, no Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from streams.config import EngineConfig
from streams.core.table import context_key, row_value
from streams.kafka_security import PLAINTEXT, KafkaSecurity

FETCH_RECORDS = 5000  # records a worker's table follower takes (and parses, `parse_rows`) at a time


async def keep_running(task: Callable[[], Awaitable[None]], on_crash: Callable[[Exception], None],
                       backoff_s: float = 1.0) -> None:
    """Run `task` until it returns; start it again `backoff_s` after each crash (reported to `on_crash`).

    The novelty-table follower is such a task: if it died with a broker error, the table would never
    load (or never learn another row) and `/ready` would answer 503 for good.
    """
    while True:
        try:
            await task()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any crash: report it and start again
            on_crash(exc)
        await asyncio.sleep(backoff_s)


async def follow_compacted(cfg: EngineConfig, topic: str, learn: Callable[[list], None],
                           loaded: Callable[[], None], at: Callable[[int], None] | None = None) -> None:
    """Keep a whole compacted topic in memory: every record from its beginning to `learn` (a fetch's (key,
    value) pairs at a time), `loaded()` once the end seen at start is reached, then follow it for good;
    `at(offset)`: where it has read to (summed over partitions), after each fetch learnt."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    # read_committed: the rows of a precompute worker's aborted transaction (it died mid-batch, and its
    # batch is answered again) are never learnt; end_offsets is then the last stable offset.
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False, group_id=None,
                                fetch_max_wait_ms=200, isolation_level="read_committed",
                                **cfg.kafka_security().client_kwargs())
    told = False
    try:
        await consumer.start()
        parts = consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=FETCH_RECORDS)
            for records in batches.values():
                learn([(r.key, r.value) for r in records])
            if at is not None:
                at(sum([await consumer.position(tp) for tp in tps]))
            if not told:
                reached = {tp: await consumer.position(tp) for tp in tps}
                if all(reached[tp] >= end[tp] for tp in tps):
                    told = True
                    loaded()
    finally:
        await consumer.stop()


async def topic_end(cfg: EngineConfig, topic: str) -> int:
    """The end offset of `topic` now (summed over partitions; the last stable offset), for a follower to reach."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False, group_id=None,
                                isolation_level="read_committed", **cfg.kafka_security().client_kwargs())
    try:
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or {0}]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def publish_compacted(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes | None]], what: str,
                      security: KafkaSecurity = PLAINTEXT, replication_factor: int = 0,
                      min_insync_replicas: int = 0) -> int:
    """Create the compacted one-partition topic if needed (every worker reads it whole; replicated as the
    engine's topics are) and write `records` (key, value; no value: a tombstone), acknowledged by every in-sync
    replica; the count."""
    if not bootstrap:
        raise ValueError(f"publishing {what} needs a broker: pass --bootstrap or set KAFKA_BOOTSTRAP")
    from kafka import KafkaProducer

    from streams.infra.kafka_check import create_topic

    create_topic(bootstrap, topic, partitions=1, compacted=True, security=security,
                 replication_factor=replication_factor, min_insync_replicas=min_insync_replicas)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **security.client_kwargs())
    sent = 0
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent


def publish_table(bootstrap: str, topic: str, rows: Iterable[dict], security: KafkaSecurity = PLAINTEXT,
                  replication_factor: int = 0, min_insync_replicas: int = 0) -> int:
    """Write one record per context to the compacted novelty topic, its writer "precompute" unless the row
    names one (rows published by the demo, the loop and `precompute`/`rerank --publish` are all computed
    ahead, as the distributed precompute's are); returns the count."""
    records = ((context_key(row["context"]),
                row_value(row["clusters"], row["scores"], row.get("catalog_version"), row.get("source") or "precompute",
                          row.get("versions"))) for row in rows)
    return publish_compacted(bootstrap, topic, records, "the novelty table", security, replication_factor,
                             min_insync_replicas)
