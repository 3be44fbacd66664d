"""The precomputed novelty table on Kafka: a compacted topic keyed by the context tuple.

Key: the context's cluster ids joined by commas ("12,7", most recent last). Value: JSON with the
ranked novel clusters and their scores and the catalog version. Compaction keeps the latest answer
per context, so every worker can read the topic as a global table.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence

from streams.kafka_security import PLAINTEXT, KafkaSecurity


def context_key(context: Sequence[int]) -> bytes:
    """The table's key for a context (cluster ids, most recent last): the engine's lookups and fills
    and the published precomputed rows must spell it the same."""
    return ",".join(str(int(c)) for c in context).encode()


def parse_row(key: bytes, value: bytes, catalog_version: str, k: int,
              n_clusters: int) -> tuple[list[int], list[float]] | str:
    """(clusters, scores) of a novelty-topic record, or why it is not used: "stale" (written for another
    catalog version, or without one) or "invalid" (a key that is not K cluster ids, cluster ids out of
    range or repeated, more of them than the catalog has, scores that do not match).

    Anyone who can write the topic can add rows; only rows of this catalog are kept, so the table
    stays bounded (at most one row per context of K clusters) and a foreign row can never index
    past the catalog's clusters.
    """
    if len(value) > 256 + 64 * n_clusters:  # a full row: one id and one score per cluster
        return "invalid"
    try:
        context = [int(c) for c in key.split(b",")]
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return "invalid"
    if len(context) != k or any(not 0 <= c < n_clusters for c in context) or context_key(context) != key:
        return "invalid"
    if not isinstance(doc, dict):
        return "invalid"
    if doc.get("catalog_version") != catalog_version:
        return "stale"
    clusters, scores = doc.get("clusters"), doc.get("scores")
    if not isinstance(clusters, list) or not isinstance(scores, list) or len(clusters) != len(scores):
        return "invalid"
    if len(clusters) > n_clusters or len(set(clusters)) != len(clusters):
        return "invalid"
    if not all(type(c) is int and 0 <= c < n_clusters for c in clusters):
        return "invalid"
    if not all(type(s) in (int, float) and math.isfinite(s) for s in scores):
        return "invalid"
    return clusters, [float(s) for s in scores]


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


def publish_table(bootstrap: str, topic: str, rows: Iterable[dict], security: KafkaSecurity = PLAINTEXT,
                  replication_factor: int = 0, min_insync_replicas: int = 0) -> int:
    """Create the compacted topic if needed (replicated as the engine's topics are) and write one record
    per context; returns the count."""
    if not bootstrap:
        raise ValueError("publishing the novelty table needs a broker: pass --bootstrap or set KAFKA_BOOTSTRAP")
    from kafka import KafkaProducer

    from streams.infra.kafka_check import create_topic

    create_topic(bootstrap, topic, partitions=1, compacted=True, security=security,
                 replication_factor=replication_factor, min_insync_replicas=min_insync_replicas)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **security.client_kwargs())
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
