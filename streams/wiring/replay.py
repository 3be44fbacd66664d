"""The load generator: a dataset's interactions to the `interactions` topic, in time order, at a rate.

Records follow the topic contract (docs/DESIGN.md): key = user id, value = JSON
`{user_id, item_id, ts, event, event_id}`, plus `weight` (the rating) when the dataset has ratings
(any weight other than 1). The event id is stable (`<user>-<position>`), so a
replay that is run twice is recognised as duplicates by the engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from interests.data.datasets import Dataset
from streams.kafka_security import PLAINTEXT, KafkaSecurity


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    item_id: str
    ts: int
    event_id: str
    weight: float | None = None  # the rating, when the source has ratings

    def encode(self) -> tuple[bytes, bytes]:
        value: dict[str, object] = {"user_id": self.user_id, "item_id": self.item_id, "ts": self.ts,
                                    "event": "interaction", "event_id": self.event_id}
        if self.weight is not None:
            value["weight"] = self.weight
        return self.user_id.encode(), json.dumps(value).encode()


def dataset_events(ds: Dataset, start_fraction: float = 0.0, users: Iterable[int] | None = None) -> list[Event]:
    """The interactions at or after the `start_fraction` time quantile, ordered by time (stable per user)."""
    if not 0.0 <= start_fraction < 1.0:
        raise ValueError(f"start fraction must lie in [0, 1), got {start_fraction}")
    position = np.arange(ds.n_interactions) - ds.offsets[ds.users]
    keep = np.ones(ds.n_interactions, bool)
    if start_fraction > 0:
        keep &= ds.timestamps >= np.quantile(ds.timestamps, start_fraction)
    if users is not None:
        keep &= np.isin(ds.users, np.fromiter(users, dtype=np.int64))
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(ds.timestamps[idx], kind="stable")]
    rated = bool(np.any(ds.weights != 1))  # all 1: the source had no ratings (Dataset's convention)
    return [Event(str(ds.user_ids[ds.users[j]]), str(ds.item_ids[ds.items[j]]), int(ds.timestamps[j]),
                  f"{ds.user_ids[ds.users[j]]}-{position[j]}", float(ds.weights[j]) if rated else None)
            for j in idx]


def paced(n: int, rate: float) -> Iterator[int]:
    """Yield 0..n-1, sleeping so that item i leaves no earlier than i / rate seconds after the start."""
    start = time.perf_counter()
    for i in range(n):
        if rate > 0:
            ahead = i / rate - (time.perf_counter() - start)
            if ahead > 0.002:
                time.sleep(ahead)
        yield i


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float = 0.0,
            progress: bool = True, desc: str = "replay", security: KafkaSecurity = PLAINTEXT) -> dict[str, float]:
    """Send keyed records in order at `rate` per second (0: as fast as possible); returns timings."""
    from kafka import KafkaProducer
    from tqdm import tqdm

    # acks="all" (with the idempotent producer this implies): a record the leader acknowledged alone is lost when
    # that broker dies, and a retried batch can land behind newer ones (the 3-broker test saw a user reordered).
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=64 * 1024,
                             **security.client_kwargs())
    t0 = time.perf_counter()
    try:
        for i in tqdm(paced(len(records), rate), total=len(records), desc=desc, unit="ev", disable=not progress,
                      mininterval=0.5):
            key, value = records[i]
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()
    seconds = time.perf_counter() - t0
    return {"records": len(records), "seconds": seconds, "rate": len(records) / seconds if seconds else 0.0}
