"""Items as a stream (issue 27, item 1): the records of the compacted `items` topic, pure and without Kafka.

A new film, video or product is published while the engine runs, before any model has seen it: its
record names the cluster its text placed it in (`interests.clusters.placement`: nearest text
centroid, with the distance), under one catalog version and level. Every worker follows the whole
topic, as it follows the novelty table, and from then on applies events on the item like any other;
an event that came before its item waits in the retry topic (`streams.wiring.worker`).

Key: the item id (UTF-8). Value, JSON:
`{"item_id", "title", "text", "catalog": version, "level", "cluster", "distance", "encoder", "ts"}`;
a tombstone (no value) withdraws a published item. A worker uses a record only when it was placed in
its own catalog and level (`parse_item` says why not otherwise: counted, never fatal); an item of the
catalog itself keeps the catalog's cluster (a record cannot move it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

ITEM_IGNORED = ("invalid", "stale", "in_catalog")  # why a worker leaves an items-topic record out
FIRST_SEEN = "explore-first-seen"  # header of a waiting event: when a worker first met it (seconds, text)


@dataclass(frozen=True, slots=True)
class PublishedItem:
    item_id: str
    title: str
    text: str
    catalog: str  # version of the catalog the cluster belongs to
    level: int
    cluster: int
    distance: float  # 1 - cosine to the cluster's text centroid (1.0: no usable text, placed by traffic)
    encoder: str  # the text embedding that placed it (the catalog build's)
    ts: float  # when it was published (seconds since the epoch)

    @property
    def key(self) -> bytes:
        return self.item_id.encode()

    def encode(self) -> bytes:
        return json.dumps({"item_id": self.item_id, "title": self.title, "text": self.text,
                           "catalog": self.catalog, "level": self.level, "cluster": self.cluster,
                           "distance": round(self.distance, 6), "encoder": self.encoder, "ts": self.ts}).encode()


class Placer(Protocol):
    """What places a text in a cluster (`interests.clusters.placement.TextPlacer`), as this module sees it."""

    encoder: str

    def place(self, texts: Sequence[str], level: int) -> tuple[Sequence[int], Sequence[float]]: ...


def place_items(rows: Sequence[tuple[str, str, str]], placer: Placer, catalog: str, level: int,
                ts: float) -> list[PublishedItem]:
    """The records of (item id, title, text) rows placed by `placer` at `level` of catalog version `catalog`: what
    `explore items publish`, a publish's placing again and the demo's new items write, alike."""
    clusters, distances = placer.place([text for _, _, text in rows], level)
    return [PublishedItem(i, title, text, catalog, level, int(c), float(d), placer.encoder, ts)
            for (i, title, text), c, d in zip(rows, clusters, distances, strict=True)]


def read_item(key: bytes, value: bytes) -> PublishedItem | str:
    """The record's item whatever catalog placed it, or "invalid" (not such a record, or a key that is not its
    item id). A worker keeps every valid placement: a switch to another model set (`streams.core.model_sets`)
    uses the records placed under that set's catalog."""
    try:
        doc = json.loads(value)
        item = PublishedItem(str(doc["item_id"]), str(doc.get("title", "")), str(doc.get("text", "")),
                             str(doc["catalog"]), int(doc["level"]), int(doc["cluster"]), float(doc["distance"]),
                             str(doc.get("encoder", "")), float(doc.get("ts", 0.0)))
    except (ValueError, KeyError, TypeError, RecursionError):
        return "invalid"
    if key != item.key or not math.isfinite(item.distance):
        return "invalid"
    return item


def item_fit(catalog: str, level: int, cluster: int, serving: str, serving_level: int, n_clusters: int) -> str:
    """Whether a placement (catalog version, level, cluster) is usable under the serving catalog and level:
    "" (yes), "stale" (placed under another catalog or level: the next publish places it again) or "invalid"."""
    if catalog != serving or level != serving_level:
        return "stale"
    return "" if 0 <= cluster < n_clusters else "invalid"


def parse_item(key: bytes, value: bytes, catalog: str, level: int, n_clusters: int) -> PublishedItem | str:
    """The record's item, or why a worker serving `catalog` at `level` leaves it out: `read_item`, `item_fit`."""
    item = read_item(key, value)
    if isinstance(item, str):
        return item
    return item_fit(item.catalog, item.level, item.cluster, catalog, level, n_clusters) or item


def retry_fate(item_known: bool, first_seen: float, now: float, wait_s: float) -> str:
    """What becomes of an event waiting for its item: "applied" (the item is published: the event goes back
    to the input, to its user's partition), "expired" (waited `wait_s`: the DLQ, reason unknown_item) or
    "again" (back to the retry topic, to be looked at after another interval)."""
    if item_known:
        return "applied"
    return "expired" if now - first_seen >= wait_s else "again"


def retry_tier(waited_s: float, intervals: Sequence[float]) -> int:
    """Which retry topic an event that has waited `waited_s` goes back to: the last whose interval it has waited
    at least (the first below that). Looks thin out as the wait grows, each topic keeps one interval (a topic is
    in queueing order: its head is always the next record due), and an item published late is still found
    within one interval of the event's current topic."""
    tier = 0
    for i in range(1, len(intervals)):
        if waited_s >= intervals[i]:
            tier = i
    return tier


def first_seen(headers: object, default: float) -> float:
    """The FIRST_SEEN header of a record (Kafka headers as a list of pairs or a mapping), else `default`."""
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    for name, value in pairs:  # type: ignore[union-attr]
        if name == FIRST_SEEN:
            try:
                return float(value.decode() if isinstance(value, bytes) else value)
            except ValueError:
                break
    return default


__all__ = ["FIRST_SEEN", "ITEM_IGNORED", "Placer", "PublishedItem", "first_seen", "item_fit", "parse_item",
           "place_items", "read_item",
           "retry_fate", "retry_tier"]
