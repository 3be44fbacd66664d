"""The Faust worker: Kafka in, `Engine.handle` per micro-batch, Kafka out.

`create_app(cfg)` builds it; `explore serve` runs it, and `streams.app` holds one built from the
environment for a plain Faust command line.

Delivery guarantees, and why the agent is written the way it is:

- Events are taken with `noack_take` and acked only after their batch's state, DLQ records and
  recommendations have been handed to the producer. Faust's `take`/`take_events` ack a batch in
  a `finally`, so a worker stopped while it awaits a model call acks (and then commits) events it
  never applied: that loses in-flight events on restart. With manual acks they are delivered
  again instead, and the offset kept in each user's state makes the re-delivery harmless.
- Faust flushes the producer before it commits offsets, so a committed offset never runs ahead of
  the changelog writes of the events before it.
- The user table is written once per user per batch, to the changelog partition of the user's
  input partition (co-partitioned: `interactions` is keyed by user, so no repartition hop).
- Records of partitions that were revoked while the batch was buffered are not applied: the
  worker that owns the partition now will see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from pathlib import Path
from urllib.parse import quote

import faust
from faust.streams import _current_event
from faust.types import TP
from faust.web import Request, Response, View, Web

from streams.config import EngineConfig
from streams.engine import Engine, RawRecord, finish_record, user_view
from streams.faust_app import make_app
from streams.infra.paths import explore_home
from streams.metrics import Metrics
from streams.routing import peers_to_ask
from streams.state import PartitionOrder

TABLES = ("users", "positions")


def ensure_topics(cfg: EngineConfig, timeout_s: float = 30.0) -> None:
    """Create the engine's topics (tables' changelogs included) and wait until the broker lists them.

    Faust creates changelog topics itself, but subscribes right after: a topic the metadata does
    not show yet is "ignored", and its table is then neither recovered nor writable (seen on
    Apache Kafka). Creating them before the worker starts removes the race.
    """
    from streams.infra.kafka_check import create_topic, wait_for_topics

    topics = [(cfg.interactions_topic, False, cfg.partitions), (cfg.dlq_topic, False, cfg.partitions),
              (cfg.recommendations_topic, False, cfg.partitions), (cfg.novelty_topic, True, 1)]
    topics += [(f"{cfg.app_id}-{table}-changelog", True, cfg.partitions) for table in TABLES]
    for name, compacted, partitions in topics:
        create_topic(cfg.bootstrap, name, partitions=partitions, compacted=compacted)
    wait_for_topics(cfg.bootstrap, {name: partitions for name, _, partitions in topics}, timeout_s)


def create_app(cfg: EngineConfig) -> faust.App:
    metrics = Metrics()
    engine = Engine(cfg, metrics)
    data_dir = Path(cfg.data_dir) if cfg.data_dir else explore_home() / "worker" / cfg.app_id
    data_dir.mkdir(parents=True, exist_ok=True)
    own_url = cfg.canonical_url()
    app = make_app(cfg.app_id, cfg.bootstrap, data_dir, web_port=cfg.web_port, web_bind=cfg.web_host,
                   web_host=cfg.web_host, canonical_url=own_url, topic_partitions=cfg.partitions,
                   store=cfg.store, fetch_max_wait_ms=cfg.fetch_max_wait_ms)
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    interactions = app.topic(cfg.interactions_topic, partitions=cfg.partitions, **raw)
    dlq = app.topic(cfg.dlq_topic, **raw)
    recommendations = app.topic(cfg.recommendations_topic, **raw)
    novelty = app.topic(cfg.novelty_topic, **raw)
    users = app.Table("users", default=None, partitions=cfg.partitions, key_type=str, value_type=None)
    positions = app.Table("positions", default=None, partitions=cfg.partitions, key_type=str, value_type=None)
    app.engine, app.metrics = engine, metrics  # type: ignore[attr-defined]
    status: dict = {"table_loaded": False, "processing": False, "last_batch": 0.0}
    last_offset: dict[int, int] = {}
    guard = AckGuard(cfg.interactions_topic, metrics)
    order = PartitionOrder()

    async def start_offset(partition: int) -> int:
        """Where a partition continues: after the last offset applied (the table), else its first record."""
        last = positions.get(str(partition))
        if last is not None:
            return int(last) + 1
        return await earliest_offset(partition)

    async def earliest_offset(partition: int) -> int:
        """The partition's first offset, from a client of our own (no group), with a timeout.

        Asking Faust's consumer (`consumer.earliest_offsets`) from the agent hung the worker for
        minutes in one restart run out of five; a separate client keeps that call off Faust's thread.
        """
        from aiokafka import AIOKafkaConsumer
        from aiokafka import TopicPartition as AioTP

        client = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False, group_id=None)
        await asyncio.wait_for(client.start(), 30)
        try:
            tp = AioTP(cfg.interactions_topic, partition)
            first = int((await asyncio.wait_for(client.beginning_offsets([tp]), 30))[tp])
        finally:
            await client.stop()
        app.log.info(f"partition {partition}: nothing applied yet, starting at its first offset {first}")
        return first
    trace = os.environ.get("EXPLORE_TRACE_BATCHES") == "1"  # log every batch's offsets (debugging delivery)

    @app.task
    async def follow_novelty_table() -> None:
        """Keep the whole compacted novelty topic in memory: the global table every worker reads."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False, group_id=None,
                                    fetch_max_wait_ms=200)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(cfg.novelty_topic) or {0}
            tps = [TopicPartition(cfg.novelty_topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                for records in batches.values():
                    for r in records:
                        engine.learn(r.key, r.value)
                if not status["table_loaded"]:
                    positions = {tp: await consumer.position(tp) for tp in tps}
                    if all(positions[tp] >= end[tp] for tp in tps):
                        status["table_loaded"] = True
                        app.log.info(f"novelty table loaded: {len(engine.table)} contexts")
        finally:
            await consumer.stop()

    @app.agent(interactions)
    async def process(stream) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 30
        while not status["table_loaded"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # start with the table, not with a burst of misses
        guard.install(app.consumer)
        status["processing"] = True
        status["last_batch"] = time.monotonic()
        async for events in stream.noack_take(cfg.batch_size, within=cfg.batch_within_ms / 1000):
            status["last_batch"] = time.monotonic()
            assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == cfg.interactions_topic}
            order.forget(set(order.next) - assigned)
            mine = [e for e in events if e.message.partition in assigned]
            if len(mine) < len(events):
                metrics.events.labels("revoked").inc(len(events) - len(mine))
                app.log.warning(f"skipping {len(events) - len(mine)} records of partitions no longer assigned "
                                f"(assigned: {sorted(assigned)})")
            for p in {e.message.partition for e in mine} - set(order.next):
                order.next[p] = await start_offset(p)
            verdicts, seeks = order.classify([(e.message.partition, e.message.offset) for e in mine], time.monotonic())
            duplicates = [e for e, v in zip(mine, verdicts, strict=True) if v == order.DUPLICATE]
            mine = [e for e, v in zip(mine, verdicts, strict=True) if v == order.APPLY]
            metrics.events.labels("duplicate").inc(len(duplicates))
            for p, offset in seeks.items():
                metrics.reseeks.labels("gap").inc()
                app.log.info(f"partition {p}: offset {offset} not delivered yet, records after it wait; seeking back")
                await app.consumer.seek(TP(cfg.interactions_topic, p), offset)
            metrics.batch.observe(len(events))
            records = [RawRecord(e.message.key, e.message.value, e.message.partition, e.message.offset,
                                 e.message.timestamp) for e in mine]
            result = await engine.handle(records, users.get)
            by_offset = {(e.message.partition, e.message.offset): e for e in mine}
            for rec, rej in result.dlq:
                headers = [("reason", rej.reason.encode()), ("detail", rej.detail.encode()),
                           ("source", f"{cfg.interactions_topic}/{rec.partition}/{rec.offset}".encode())]
                await dlq.send(key=rec.key, value=rec.value, headers=headers)
            for key, value in result.table_fills:
                await novelty.send(key=key, value=value)
            for user, (state, rec) in result.states.items():
                write_state(users, user, state, by_offset[(rec.partition, rec.offset)])
            last_applied = {e.message.partition: e for e in mine}
            for p, e in last_applied.items():
                write_state(positions, str(p), e.message.offset, e)
            now = time.time()
            for key, value, trigger in result.recommendations:
                metrics.latency.observe(now - trigger)
                await recommendations.send(key=key, value=finish_record(value, trigger, now))
            for e in mine + duplicates:
                guard.applied.add((e.message.partition, e.message.offset))
            for e in events:
                last_offset[e.message.partition] = max(last_offset.get(e.message.partition, -1), e.message.offset)
                await stream.ack(e)
            if trace:
                spans: dict[int, list[int]] = {}
                for e in events:
                    spans.setdefault(e.message.partition, []).append(e.message.offset)
                app.log.info("batch acked: " + " ".join(f"p{p}:{min(o)}-{max(o)}({len(o)})"
                                                       for p, o in sorted(spans.items())))
            _update_lag(app, cfg, metrics, last_offset)

    @app.page("/metrics")
    async def metrics_view(web: Web, request: Request) -> Response:
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web: Web, request: Request) -> Response:
        return web.json({"status": "ok", "triton": "up" if engine.router.triton_up else "fallback",
                         "triton_error": engine.router.last_error})

    @app.page("/ready")
    async def ready(web: Web, request: Request) -> Response:
        ok = status["table_loaded"] and status["processing"] and not app.rebalancing
        body = {"ready": ok, "novelty_table_loaded": status["table_loaded"], "rebalancing": app.rebalancing,
                "novelty_contexts": len(engine.table)}
        return web.json(body, status=200 if ok else 503)

    @app.page("/users/{user_id}")
    class UserView(View):
        """A user's state and last slate, from whichever worker holds it (`?local=1`: this one only)."""

        async def get(self, request: Request, user_id: str) -> Response:
            state = users.get(user_id)
            mine = sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == cfg.interactions_topic)
            # A standby replica (or a partition revoked by a rebalance) leaves a copy here that may lag:
            # only the worker that processes the user's partition answers from its table.
            if state is not None and state["pos"] and state["pos"][0] in mine:
                return self.json({"user_id": user_id, "served_by": own_url, **user_view(state, engine)})
            asked: list[str] = []
            if not request.query.get("local"):
                for peer in peers_to_ask(own_url, owner_url(app, user_id), app.router.tables_metadata()):
                    asked.append(peer)
                    body = await ask_peer(app, f"{peer}/users/{quote(user_id, safe='')}")
                    if body is not None:
                        return self.json(body)
            return self.json({"error": f"no worker holds state of user {user_id!r}", "served_by": own_url,
                              "partitions_here": mine, "workers_asked": asked}, status=404)

    @app.timer(5.0)
    async def refresh_lag() -> None:
        _update_lag(app, cfg, metrics, last_offset)

    @app.timer(5.0)
    async def unstick() -> None:
        """Re-seek partitions that have records waiting while the agent has received nothing for 15 s.

        After a restart that followed a SIGKILL, Faust's consumer sometimes delivered nothing at all
        (about 2 runs in 5 here; its recovery resumes fetching before it seeks, faust-streaming #216).
        A seek to where each partition continues restarts the fetch; the gapless order makes it safe.
        """
        if not status["processing"] or app.rebalancing or time.monotonic() - status["last_batch"] < 15:
            return
        from aiokafka import AIOKafkaConsumer
        from aiokafka import TopicPartition as AioTP

        mine = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == cfg.interactions_topic)
        if not mine:
            return
        client = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False, group_id=None)
        await client.start()
        try:
            ends = await client.end_offsets([AioTP(cfg.interactions_topic, p) for p in mine])
        finally:
            await client.stop()
        for p in mine:
            nxt = order.next.get(p)
            if nxt is None:
                last = positions.get(str(p))
                nxt = 0 if last is None else int(last) + 1
            if ends[AioTP(cfg.interactions_topic, p)] > nxt:
                metrics.reseeks.labels("stall").inc()
                app.log.warning(f"partition {p}: records from offset {nxt} wait but nothing arrived for 15 s; seeking")
                await app.consumer.seek(TP(cfg.interactions_topic, p), nxt)
        status["last_batch"] = time.monotonic()

    @app.on_before_shutdown.connect
    async def close_router(app: faust.App, **kwargs: object) -> None:
        with contextlib.suppress(Exception):
            await engine.router.close()

    return app


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


def owner_url(app: faust.App, user: str) -> str | None:
    """The worker that owns `user`'s partition by the default partitioner, or None before an assignment."""
    try:
        return str(app.router.key_store("users", user))
    except KeyError:
        return None


async def ask_peer(app: faust.App, url: str, timeout_s: float = 2.0) -> dict | None:
    """The peer's own answer for a user (never forwarded again), or None when it has none or is unreachable."""
    import aiohttp

    try:
        async with app.http_client.get(url, params={"local": "1"},
                                       timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return await resp.json() if resp.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None


def write_state(users: faust.Table, user: str, state: object, event: faust.types.EventT) -> None:
    """`users[user] = state`, its changelog record in the partition of `event` (the user's input partition).

    Faust picks the changelog partition from the "current event" context variable, which a batch
    agent does not set per event; setting it around the write (and restoring it) keeps the table
    co-partitioned with `interactions`, which recovery after a rebalance relies on.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        users[user] = state
    finally:
        _current_event.reset(token)


def _update_lag(app: faust.App, cfg: EngineConfig, metrics: Metrics, last_offset: dict[int, int]) -> None:
    for tp in app.consumer.assignment():
        if tp.topic != cfg.interactions_topic:
            continue
        high = app.consumer.highwater(tp)
        if high is not None and tp.partition in last_offset:
            metrics.lag.labels(str(tp.partition)).set(max(0, high - last_offset[tp.partition] - 1))
