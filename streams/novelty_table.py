"""The precomputed novelty table on Kafka: a compacted topic keyed by the context tuple.

Key: the context's cluster ids joined by commas ("12,7", most recent last). Value: JSON with the
ranked novel clusters and their scores and the catalog version. Compaction keeps the latest answer
per context, so every worker can read the topic as a global table.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence

import numpy as np

from streams.kafka_security import PLAINTEXT, KafkaSecurity


def context_key(context: Sequence[int]) -> bytes:
    """The table's key for a context (cluster ids, most recent last): the engine's lookups and fills
    and the published precomputed rows must spell it the same."""
    return ",".join(str(int(c)) for c in context).encode()


def row_value(clusters: Sequence[int], scores: Sequence[float], catalog_version: str | None,
              source: str | None = None) -> bytes:
    """A row's record value as published (precomputed, or a worker's live fill with `source`):
    `parse_row` reads it back."""
    doc: dict = {"clusters": list(clusters), "scores": list(scores), "catalog_version": catalog_version}
    if source is not None:
        doc["source"] = source
    return json.dumps(doc).encode()


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
    # Types before `set` and `isfinite`: a list as a cluster id (unhashable) or a 400-digit score (OverflowError)
    # raised here, crashed the follower, and its restart met the same row again, for good.
    # map/min/max rather than a Python loop per entry: a starting worker parses every row of the topic
    # (1M rows of 64 at 1,000 clusters; the loops were a third of the time, benchmarks/scale.py).
    if len(clusters) > n_clusters or not set(map(type, clusters)) <= {int}:
        return "invalid"
    if (clusters and (min(clusters) < 0 or max(clusters) >= n_clusters)) or len(set(clusters)) != len(clusters):
        return "invalid"
    try:  # an int too large for a float makes `math.isfinite` raise
        if not set(map(type, scores)) <= {int, float} or not all(map(math.isfinite, scores)):
            return "invalid"
    except OverflowError:
        return "invalid"
    return clusters, list(map(float, scores))


Row = tuple[list[int], list[float]]  # (ranked clusters, their scores), as parse_row gives them


class CompactTable(MutableMapping[bytes, Row]):
    """The novelty table as a worker holds it: every row in two numpy arrays, keyed by context.

    Why: 1,000 clusters give ~1M contexts of 64 ranked clusters each. As Python rows (lists of int
    and float objects) that is ~2.7 kB a row, ~2.7 GB in every worker (`benchmarks/scale.py`); here
    a row is 64 x (2-byte cluster + 8-byte score), the scores kept exactly as published, plus the
    key's dict entry. It reads and writes (clusters, scores) lists as the dict did, so the engine
    is unchanged; rows are stored in slots that grow by doubling and are reused after a delete.
    """

    def __init__(self, n_clusters: int, capacity: int = 1024) -> None:
        self.dtype = np.int16 if n_clusters <= np.iinfo(np.int16).max else np.int32
        self.slots: dict[bytes, int] = {}
        self.free: list[int] = []
        self.used = 0
        self.clusters = np.zeros((capacity, 0), self.dtype)
        self.scores = np.zeros((capacity, 0), np.float64)
        self.length = np.zeros(capacity, np.int32)

    def __getitem__(self, key: bytes) -> Row:
        slot = self.slots[key]
        n = int(self.length[slot])
        return self.clusters[slot, :n].tolist(), self.scores[slot, :n].tolist()

    def __setitem__(self, key: bytes, row: Row) -> None:
        clusters, scores = row
        slot = self.slots.get(key)
        if slot is None:
            slot = self.free.pop() if self.free else self.used
            self.used = max(self.used, slot + 1)
            self.fit(slot + 1, len(clusters))
            self.slots[key] = slot
        else:
            self.fit(slot + 1, len(clusters))
        self.clusters[slot, :len(clusters)] = clusters
        self.scores[slot, :len(scores)] = scores
        self.length[slot] = len(clusters)

    def __delitem__(self, key: bytes) -> None:
        self.free.append(self.slots.pop(key))

    def __contains__(self, key: object) -> bool:
        return key in self.slots

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def clear(self) -> None:
        self.slots.clear()
        self.free.clear()
        self.used = 0

    def fit(self, rows: int, depth: int) -> None:
        """Grow the arrays to hold `rows` rows of `depth` clusters: doubling, so n rows cost O(n) copies."""
        capacity, width = self.clusters.shape
        if rows <= capacity and depth <= width:
            return
        capacity, width = max(rows, 2 * capacity if rows > capacity else capacity), max(depth, width)
        for name in ("clusters", "scores"):
            old = getattr(self, name)
            new = np.zeros((capacity, width), old.dtype)
            new[:old.shape[0], :old.shape[1]] = old
            setattr(self, name, new)
        self.length = np.concatenate([self.length, np.zeros(capacity - len(self.length), np.int32)])

    def nbytes(self) -> int:
        """Bytes of the arrays (the key index is a dict on top: ~100-150 bytes a context)."""
        return self.clusters.nbytes + self.scores.nbytes + self.length.nbytes


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
            value = row_value(row["clusters"], row["scores"], row.get("catalog_version"))
            producer.send(topic, key=context_key(row["context"]), value=value)
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent
