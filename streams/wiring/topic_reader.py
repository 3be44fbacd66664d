"""Reading a Kafka topic to its end with a consumer of its own: no group, no commits.

What the commands that look back at the engine's output need: `explore novelty dump` (the novelty
table, read_committed as workers read it), `explore loop ab` (slates and feedback), the feedback
readers (`read_feedback_topic` here) and the distributed precompute's "what is already
published" (`streams.precompute.jobs.read_published`). One home, so that they all read past a
reported end the same way (below).
"""

from __future__ import annotations

import contextlib
import time

from streams.core.feedback import FeedbackRecord, parse_feedback
from streams.kafka_security import PLAINTEXT, KafkaSecurity


class TopicMissing(ValueError):
    """The topic does not exist on the broker (a caller for which that means "nothing yet" catches it)."""


def read_topic_records(bootstrap: str, topic: str, security: KafkaSecurity = PLAINTEXT, timeout_s: float = 60.0,
                       isolation: str = "read_uncommitted") -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of `topic` up to its end as of now (`read_topic_positions` says how)."""
    return [(key, value) for _, _, key, value in read_topic_positions(bootstrap, topic, security, timeout_s, isolation)]


def read_topic_positions(bootstrap: str, topic: str, security: KafkaSecurity = PLAINTEXT, timeout_s: float = 60.0,
                         isolation: str = "read_uncommitted") -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every (partition, offset, key, value) of `topic` up to its end as of now, in offset order within each
    partition (partitions interleave as the polls return them).

    Once every partition reached the end the broker reported, it polls on until a poll comes back empty
    (three at most: a topic being written would never end): the embedded broker (Tansu) was seen
    reporting a partition's end below its last records, while it hands them out all the same. Under
    read_committed the reported end is the last stable offset: records of a transaction still open are
    not read. Raises `TopicMissing`, and TimeoutError past `timeout_s`."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level=isolation, **security.client_kwargs())
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            raise TopicMissing(f"topic {topic!r} does not exist at {bootstrap}")
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        out = []
        after_end = 0  # polls since every partition reached the reported end
        while after_end < 3:
            after_end += all(consumer.position(tp) >= end[tp] for tp in tps)
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic!r}: not read to its end in {timeout_s:.0f} s")
            batches = consumer.poll(timeout_ms=500, max_records=10_000)
            if after_end and not batches:
                break
            for batch in batches.values():
                out.extend((r.partition, r.offset, r.key, r.value) for r in batch)
    finally:
        consumer.close()
    return out


def read_topic_values(bootstrap: str, topic: str, security: KafkaSecurity = PLAINTEXT,
                      timeout_s: float = 60.0) -> list[bytes]:
    """Every value of `topic` up to its end as of now (`read_topic_records`; a tombstone as b"")."""
    return [value or b"" for _, value in read_topic_records(bootstrap, topic, security, timeout_s)]


def read_feedback_topic(bootstrap: str, topic: str, security: KafkaSecurity = PLAINTEXT,
                        timeout_s: float = 60.0) -> list[FeedbackRecord]:
    """Every record of the feedback topic up to its end as of now (a consumer of its own, no group);
    values that are not feedback records are skipped, not fatal (anyone may write the topic)."""
    out = []
    for value in read_topic_values(bootstrap, topic, security, timeout_s):
        with contextlib.suppress(ValueError):
            out.append(parse_feedback(value))
    return out


__all__ = ["TopicMissing", "read_feedback_topic", "read_topic_positions", "read_topic_records", "read_topic_values"]
