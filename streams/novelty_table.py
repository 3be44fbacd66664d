"""The precomputed novelty table on Kafka: a compacted topic keyed by the context tuple.

Key: the context's cluster ids joined by commas ("12,7", most recent last). Value: JSON with the
ranked novel clusters and their scores and the catalog version. Compaction keeps the latest answer
per context, so every worker can read the topic as a global table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence


def context_key(context: Sequence[int]) -> bytes:
    """The table's key for a context (cluster ids, most recent last): the engine's lookups and fills
    and the published precomputed rows must spell it the same."""
    return ",".join(str(int(c)) for c in context).encode()


def publish_table(bootstrap: str, topic: str, rows: Iterable[dict]) -> int:
    """Create the compacted topic if needed and write one record per context; returns the count."""
    if not bootstrap:
        raise ValueError("publishing the novelty table needs a broker: pass --bootstrap or set KAFKA_BOOTSTRAP")
    from kafka import KafkaProducer

    from streams.infra.kafka_check import create_topic

    create_topic(bootstrap, topic, partitions=1, compacted=True)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    sent = 0
    try:
        for row in rows:
            value = {"clusters": row["clusters"], "scores": row["scores"],
                     "catalog_version": row.get("catalog_version")}
            producer.send(topic, key=context_key(row["context"]), value=json.dumps(value).encode())
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent
