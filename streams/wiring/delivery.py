"""Delivery of the input topic: each record applied exactly once, whatever Faust and the broker do.

The worker (`streams.wiring.worker`) takes records with `noack_take` and hands them here before and after
`Engine.handle`; everything that knows about offsets lives in this module:

- `PartitionOrder`: each partition is applied as one gapless sequence of offsets (Faust can deliver
  a partition out of order after a rebalance, faust-streaming #221);
- `AckGuard`: only the offsets of records the engine applied may be committed (Faust acks records
  it skipped while stopping or rebalancing);
- `write_state`: a table write lands in the changelog partition of its input partition;
- where a partition resumes (after the last offset applied, kept in the `positions` table, else
  at its first record) and which partitions stalled (records wait, nothing arrives: re-seek).

Events are acked only after their batch's state, DLQ records and recommendations have been handed
to the producer; Faust flushes the producer before it commits offsets, so a committed offset never
runs ahead of the changelog writes of the events before it.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import faust
from faust.streams import _current_event
from faust.types import TP

from streams.core.metrics import Metrics
from streams.kafka_security import PLAINTEXT, KafkaSecurity


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets of a partition that never came: `expected` up to `resumed_at` (exclusive) were stepped over."""

    partition: int
    expected: int
    resumed_at: int


class PartitionOrder:
    """Apply each input partition as one gapless sequence of offsets, whatever Faust delivers.

    After a rebalance Faust can deliver a partition out of order (faust-streaming #221): records
    fetched before the rebalance are skipped, newer ones are delivered, and the skipped ones come
    back only after the seek to the committed offset. Applied as they come, a user's history would
    be reordered, and the per-user offset check would then take the late record for a duplicate.
    So each partition has a next offset to apply: an older record is a duplicate (already in the
    state), the expected one is applied, a newer one reveals a gap: it and the rest of its partition
    in the batch wait, and the worker seeks back to the expected offset. A gap that a seek does not
    fill within `accept_gap_s` is real (offsets that hold no record, e.g. transaction markers) and
    is stepped over; `classify` reports it, so that it is logged and counted, never silent.

    `classify` does not move a partition: `advance` does, once the batch's writes (state, DLQ) have
    been handed to the producer. A batch that fails in between is thereby classified the same way
    when its records come again, instead of being taken for duplicates and lost.
    """

    APPLY, DUPLICATE, WAIT = "apply", "duplicate", "wait"

    def __init__(self, accept_gap_s: float = 10.0) -> None:
        self.next: dict[int, int] = {}
        self.accept_gap_s = accept_gap_s
        self._gap: dict[int, tuple[int, float]] = {}  # partition -> (expected offset, first seen)

    def forget(self, partitions: set[int]) -> None:
        """Partitions this worker no longer owns: their next owner starts from the table."""
        for p in partitions:
            self.next.pop(p, None)
            self._gap.pop(p, None)

    def classify(self, records: Sequence[tuple[int, int]],
                 now: float) -> tuple[list[str], dict[int, int], list[Gap]]:
        """One verdict per (partition, offset), in order, the offsets to seek back to, and the gaps
        stepped over. Nothing moves until `advance`."""
        verdicts: list[str] = []
        seeks: dict[int, int] = {}
        gaps: list[Gap] = []
        nxt = dict(self.next)
        for p, o in records:
            expected = nxt[p]
            if p in seeks:
                verdicts.append(self.WAIT)
            elif o > expected and not self._accept(p, expected, now):
                verdicts.append(self.WAIT)
                seeks[p] = expected
            elif o < expected:
                verdicts.append(self.DUPLICATE)
            else:
                if o > expected:
                    gaps.append(Gap(p, expected, o))
                verdicts.append(self.APPLY)
                nxt[p] = o + 1
                self._gap.pop(p, None)
        return verdicts, seeks, gaps

    def advance(self, applied: Sequence[tuple[int, int]]) -> None:
        """These (partition, offset) records have had their fate written: their partitions move past them."""
        for p, o in applied:
            self.next[p] = max(self.next.get(p, o + 1), o + 1)

    def _accept(self, p: int, expected: int, now: float) -> bool:
        first = self._gap.get(p)
        if first is None or first[0] != expected:
            self._gap[p] = (expected, now)
            return False
        return now - first[1] >= self.accept_gap_s


class AckGuard:
    """Only the offsets of records the engine applied may be committed.

    Faust acks, and so commits, records it never delivered to the agent: when flow control is
    suspended (the worker is stopping, or a rebalance began) or a record belongs to an older
    consumer generation, `Stream` skips the record *and acks it* ("we want to ack the filtered
    out message"). Records that were fetched but still queued when a worker stopped were thus
    committed unprocessed: measured here on Apache Kafka, a SIGTERM mid-stream lost ~25 records
    per partition. The guard wraps the consumer's `ack`: a record of the input topic that the agent
    did not mark as applied is released (so shutdown does not wait for it) but its offset stays
    uncommitted, and the next owner of the partition reads it again.
    """

    def __init__(self, topic: str, metrics: Metrics) -> None:
        self.topic, self.metrics = topic, metrics
        self.applied: set[tuple[int, int]] = set()

    def install(self, consumer: faust.types.ConsumerT) -> None:
        if getattr(consumer, "_explore_ack_guard", None) is self:
            return
        original = consumer.ack

        def ack(message: faust.types.Message) -> bool:
            if message.topic == self.topic:
                key = (message.partition, message.offset)
                if key in self.applied:
                    self.applied.discard(key)
                else:
                    message.acked = True  # Faust is done with it; its offset stays uncommitted
                    consumer._unacked_messages.discard(message)
                    self.metrics.acks_withheld.inc()
                    return False
            return original(message)

        consumer.ack = ack  # type: ignore[method-assign]
        consumer._explore_ack_guard = self  # type: ignore[attr-defined]


def write_state(table: faust.Table, key: str, value: object, event: faust.types.EventT) -> None:
    """`table[key] = value`, its changelog record in the partition of `event` (the key's input partition).

    Faust picks the changelog partition from the "current event" context variable, which a batch
    agent does not set per event; setting it around the write (and restoring it) keeps the table
    co-partitioned with `interactions`, which recovery after a rebalance relies on.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        table[key] = value
    finally:
        _current_event.reset(token)


def delete_state(table: faust.Table, key: str, topic: str, partition: int) -> None:
    """`del table[key]`, its tombstone in changelog partition `partition` (the key's input partition).

    Outside the agent there is no current event, and Faust refuses to pick a changelog partition;
    a stand-in event of the input partition gives it the one `write_state` wrote to, so that the
    tombstone removes the key when the partition is recovered.
    """
    stand_in = _StandIn(topic, partition)  # held here: the context variable keeps only a weak reference
    token = _current_event.set(weakref.ref(stand_in))
    try:
        del table[key]
    finally:
        _current_event.reset(token)


class _StandIn:
    """What Faust reads of the current event to place a changelog record: `message.topic`, `.partition`."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = self
        self.topic, self.partition = topic, partition


async def _offsets(bootstrap: str, topic: str, partitions: Sequence[int], end: bool,
                   timeout_s: float | None, security: KafkaSecurity = PLAINTEXT) -> dict[int, int]:
    """First (or end) offsets of `partitions`, from a client of our own (no group).

    Asking Faust's consumer (`consumer.earliest_offsets`) from the agent hung the worker for
    minutes in one restart run out of five; a separate client keeps these calls off Faust's thread.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka import TopicPartition as AioTP

    def bounded(aw):  # type: ignore[no-untyped-def]
        return aw if timeout_s is None else asyncio.wait_for(aw, timeout_s)

    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                              **security.client_kwargs())
    await bounded(client.start())
    try:
        tps = [AioTP(topic, p) for p in partitions]
        found = await bounded(client.end_offsets(tps) if end else client.beginning_offsets(tps))
    finally:
        await client.stop()
    return {tp.partition: int(offset) for tp, offset in found.items()}


class InputDelivery:
    """The input topic's partitions of one worker: order, resume and stall offsets, acks, lag.

    `positions` is the table of the last offset applied per partition (co-partitioned with the
    input); `order` and `guard` are the `PartitionOrder` and `AckGuard` the agent applies through.
    """

    def __init__(self, bootstrap: str, topic: str, positions: faust.Table, metrics: Metrics, log,  # type: ignore[no-untyped-def]
                 security: KafkaSecurity = PLAINTEXT) -> None:
        self.bootstrap, self.topic, self.positions, self.metrics, self.log = bootstrap, topic, positions, metrics, log
        self.security = security
        self.order = PartitionOrder()
        self.guard = AckGuard(topic, metrics)
        self.last_offset: dict[int, int] = {}  # newest offset acked per partition, for the lag

    def _last_applied(self, partition: int) -> int | None:
        last = self.positions.get(str(partition))
        return None if last is None else int(last)

    async def start_offset(self, partition: int) -> int:
        """Where a partition continues: after the last offset applied (the table), else its first record."""
        return (await self.start_offsets([partition]))[partition]

    async def start_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        """`start_offset` of each partition, the first offsets asked of the broker in one call: one
        client per partition cost ~0.1 s each, so a fresh worker's first batch waited 0.85 s on 8."""
        out, unknown = {}, []
        for p in partitions:
            last = self._last_applied(p)
            if last is None:
                unknown.append(p)
            else:
                out[p] = last + 1
        if unknown:
            firsts = await _offsets(self.bootstrap, self.topic, unknown, end=False, timeout_s=30,
                                    security=self.security)
            for p in unknown:
                self.log.info(f"partition {p}: nothing applied yet, starting at its first offset {firsts[p]}")
            out.update(firsts)
        return out

    async def admit(self, events: list, assigned: set[int], consumer) -> tuple[list, list]:  # type: ignore[no-untyped-def]
        """(events to apply, duplicates) of a batch: records of revoked partitions are dropped (their
        next owner applies them), the rest pass `PartitionOrder`; a gap seeks its partition back."""
        order = self.order
        order.forget(set(order.next) - assigned)
        mine = [e for e in events if e.message.partition in assigned]
        if len(mine) < len(events):
            self.metrics.events.labels("revoked").inc(len(events) - len(mine))
            self.log.warning(f"skipping {len(events) - len(mine)} records of partitions no longer assigned "
                             f"(assigned: {sorted(assigned)})")
        new = sorted({e.message.partition for e in mine} - set(order.next))
        if new:
            order.next.update(await self.start_offsets(new))
        verdicts, seeks, gaps = order.classify([(e.message.partition, e.message.offset) for e in mine],
                                               time.monotonic())
        for gap in gaps:
            self.metrics.gaps.inc()
            self.log.warning(f"partition {gap.partition}: offsets {gap.expected}-{gap.resumed_at - 1} never came in "
                             f"{order.accept_gap_s:.0f} s; stepping over them")
        duplicates = [e for e, v in zip(mine, verdicts, strict=True) if v == order.DUPLICATE]
        apply = [e for e, v in zip(mine, verdicts, strict=True) if v == order.APPLY]
        self.metrics.events.labels("duplicate").inc(len(duplicates))
        for p, offset in seeks.items():
            self.metrics.reseeks.labels("gap").inc()
            self.log.info(f"partition {p}: offset {offset} not delivered yet, records after it wait; seeking back")
            await consumer.seek(TP(self.topic, p), offset)
        return apply, duplicates

    def record_positions(self, applied: list) -> None:
        """The batch's records have had their fate written (state, DLQ): keep its last offset per
        partition (where the partition resumes) and move `order` past them."""
        for p, e in {e.message.partition: e for e in applied}.items():
            write_state(self.positions, str(p), e.message.offset, e)
        self.order.advance([(e.message.partition, e.message.offset) for e in applied])

    def release(self, events: list) -> None:
        """These records are in the state (applied now or before): their offsets may be committed."""
        for e in events:
            self.guard.applied.add((e.message.partition, e.message.offset))

    def acked(self, event) -> None:  # type: ignore[no-untyped-def]
        p = event.message.partition
        self.last_offset[p] = max(self.last_offset.get(p, -1), event.message.offset)

    async def stall_seeks(self, partitions: Sequence[int]) -> dict[int, int]:
        """The partitions among `partitions` whose records wait past where they continue: partition ->
        that offset (the next to apply, else `start_offset`: on a topic whose head retention removed,
        offset 0 would be out of range)."""
        ends = await _offsets(self.bootstrap, self.topic, partitions, end=True, timeout_s=None,
                              security=self.security)
        seeks = {}
        for p in partitions:
            nxt = self.order.next.get(p)
            if nxt is None:
                nxt = await self.start_offset(p)
            if ends[p] > nxt:
                seeks[p] = nxt
        return seeks

    def update_lag(self, consumer) -> None:  # type: ignore[no-untyped-def]
        """`explore_consumer_lag{partition}` of the assigned partitions; a revoked one's gauge goes away
        (it would otherwise show its last value forever)."""
        assigned = set()
        for tp in consumer.assignment():
            if tp.topic != self.topic:
                continue
            assigned.add(tp.partition)
            high = consumer.highwater(tp)
            if high is not None and tp.partition in self.last_offset:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, high - self.last_offset[tp.partition] - 1))
        for p in set(self.last_offset) - assigned:
            del self.last_offset[p]
            self.metrics.lag.remove(str(p))


__all__ = ["AckGuard", "Gap", "InputDelivery", "PartitionOrder", "delete_state", "write_state"]
