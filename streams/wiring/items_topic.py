"""Items published while the engine runs, on Kafka (issue 27, item 1): writing the compacted items topic,
and what the worker does with an event that came before its item. The records' format is
`streams.core.items`'s: pure, no Kafka.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping

from streams.config import EngineConfig
from streams.core.items import FIRST_SEEN, PublishedItem, first_seen, retry_fate, retry_tier
from streams.core.metrics import Metrics
from streams.core.records import Rejection, dead_letter
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.wiring.table_topic import publish_compacted


def publish_items(bootstrap: str, topic: str, items: Iterable[PublishedItem], security: KafkaSecurity = PLAINTEXT,
                  replication_factor: int = 0, min_insync_replicas: int = 0) -> int:
    """Write one record per item to the compacted items topic (created if needed); returns the count."""
    return publish_compacted(bootstrap, topic, ((item.key, item.encode()) for item in items), "items", security,
                             replication_factor, min_insync_replicas)


async def settle_waiting(producer, cfg: EngineConfig, known: Mapping[str, int], metrics: Metrics,  # type: ignore[no-untyped-def]
                         msg, tier: int = 0) -> str:  # type: ignore[no-untyped-def]
    """One record of retry topic `tier` (`streams.core.items.retry_fate`), looked at that topic's interval after
    it was queued: back to its input partition once its item is published, to the DLQ (unknown_item) after
    `unknown_item_wait_s`, else to the end of the retry topic its wait so far calls for (`retry_tier`). Each
    topic is in queueing order with one interval, so sleeping until the head is due delays nothing that is
    due sooner. Its fate, counted.

    Delivery is at least once, as the worker's outputs are: a crash between the send and the retry
    record's commit sends the event twice, and its `event_id` (when it has one) drops the second copy.
    """
    await asyncio.sleep(max(0.0, msg.timestamp + cfg.retry_intervals[tier] - time.time()))
    seen = first_seen(msg.headers, msg.timestamp)
    try:
        item_id = str(json.loads(msg.value)["item_id"])
    except (ValueError, KeyError, TypeError):
        item_id = ""
    fate = retry_fate(item_id in known, seen, time.time(), cfg.unknown_item_wait_s)
    headers = [(FIRST_SEEN, repr(seen).encode())]
    if fate == "applied":  # the same partition: the input partition it came from (the worker sent it so)
        await producer.send(cfg.interactions_topic, msg.key, msg.value, partition=msg.partition, timestamp=None,
                            headers=headers)
    elif fate == "again":
        again = cfg.retry_topics[retry_tier(time.time() - seen, cfg.retry_intervals)]
        await producer.send(again, msg.key, msg.value, partition=msg.partition, timestamp=None, headers=headers)
    else:
        key, value, dl_headers = dead_letter(
            msg.key, msg.value, Rejection("unknown_item", f"item_id {item_id[:80]!r} was not published within "
                                                          f"{cfg.unknown_item_wait_s:g} s"),
            f"{cfg.retry_topics[tier]}/{msg.partition}/{msg.offset}")
        await producer.send(cfg.dlq_topic, key, value, partition=None, timestamp=None, headers=dl_headers)
        metrics.events.labels("invalid").inc()
        metrics.dlq.labels("unknown_item").inc()
    metrics.retried.labels(fate).inc()
    return fate


__all__ = ["publish_items", "settle_waiting"]
