"""The Faust worker: Kafka in, `Engine.handle` per micro-batch, Kafka out; wiring only.

`create_app(cfg)` builds it: topics, tables, the agent, timers and web pages. `explore serve` runs
it, and `streams.wiring.app` holds one built from the environment for a plain Faust command line. What
the wiring relies on lives beside it: `streams.core.engine` (a batch in, what to write out),
`streams.wiring.delivery` (offsets: order, acks, resume and stall, lag) and `streams.web.peers` (which worker
answers `GET /users/{id}`).

- Events are taken with `noack_take` and acked only after their batch's state, DLQ records,
  recommendations and feedback records have been handed to the producer (`streams.wiring.delivery` says why).
  Slates, feedback and DLQ records go straight to the producer (`app.producer.send`), not through
  Faust's `Topic.send`: a batch's slates and feedback (up to ~50 at 1,000 events/s) cost 30 ms
  through the topic and 3.4 ms direct (engine_throughput's send stage), and a flood of bad input
  is all DLQ records; both append to the same client's buffer, which Faust flushes before it
  commits offsets, so what an ack promises is the same.
- The user table is written once per user per batch, to the changelog partition of the user's
  input partition (co-partitioned: `interactions` is keyed by user, so no repartition hop).
- Records of partitions that were revoked while the batch was buffered are not applied: the
  worker that owns the partition now will see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import faust
from faust.types import TP
from faust.web import Request, Response, View, Web

from streams.config import EngineConfig
from streams.core.engine import Engine, RawRecord, ServingSet, user_view
from streams.core.items import FIRST_SEEN, first_seen
from streams.core.metrics import Metrics, StageClock
from streams.core.records import dead_letter
from streams.core.state import expired_users
from streams.infra.kafka_check import TopicSpec
from streams.infra.paths import explore_home
from streams.web.live_page import LiveFeed, counters, render_page
from streams.web.peers import bearer_ok, find_user
from streams.wiring.delivery import InputDelivery, delete_state, write_state
from streams.wiring.faust_app import make_app
from streams.wiring.items_topic import settle_waiting
from streams.wiring.model_sets import SetSwitcher
from streams.wiring.table_topic import follow_compacted, keep_running, topic_end

TABLES = ("users", "positions")


def engine_topics(cfg: EngineConfig) -> list[TopicSpec]:
    """Every topic a worker uses, with the operations its Kafka user needs on each and why."""
    read, write, both = frozenset({"READ"}), frozenset({"WRITE"}), frozenset({"READ", "WRITE"})
    return [
        TopicSpec(cfg.interactions_topic, cfg.partitions, operations=read, why="the input"),
        TopicSpec(cfg.dlq_topic, cfg.partitions, operations=write, why="rejected input records go there"),
        TopicSpec(cfg.recommendations_topic, cfg.partitions, operations=write, why="the slates go there"),
        TopicSpec(cfg.feedback_topic, cfg.partitions, operations=write,
                  why="what users did with the proposed clusters goes there"),
        TopicSpec(cfg.novelty_topic, 1, compacted=True, operations=both,
                  why="the novelty table: read whole, live answers written back"),
        TopicSpec(cfg.items_topic, 1, compacted=True, operations=read,
                  why="items published after the catalog: read whole"),
        TopicSpec(cfg.models_topic, 1, compacted=True, operations=read,
                  why="the model sets published and the one to serve: read whole"),
        *(TopicSpec(topic, cfg.partitions, operations=both, why="events on items not published yet wait there"
                    + (f" (those that waited {cfg.retry_intervals[tier]:g} s or more)" if tier else ""))
          for tier, topic in enumerate(cfg.retry_topics)),
        *(TopicSpec(f"{cfg.app_id}-{table}-changelog", cfg.partitions, compacted=True, operations=both,
                    why=f"the {table} table's changelog") for table in TABLES),
        # Faust's leader election subscribes to it; created here so that it is replicated like the rest.
        TopicSpec(f"{cfg.app_id}-__assignor-__leader", 1, operations=read, why="Faust's leader election"),
    ]


def ensure_topics(cfg: EngineConfig, timeout_s: float = 30.0) -> None:
    """Create the engine's missing topics (tables' changelogs included), wait until the broker lists
    them, and check that the broker grants this worker's user what it needs on each.

    Faust creates changelog topics itself, but subscribes right after: a topic the metadata does
    not show yet is "ignored", and its table is then neither recovered nor writable (seen on
    Apache Kafka). Creating them before the worker starts removes the race. The access check turns
    a missing ACL into an error at start, naming the topic and operation, instead of a failed send
    when the first record needs that topic (a DLQ nobody may write is found only by a bad record).
    """
    from streams.infra.kafka_check import check_access, create_topics, wait_for_topics

    security = cfg.kafka_security()
    topics = engine_topics(cfg)
    create_topics(cfg.bootstrap, topics, security, cfg.replication_factor, cfg.min_insync_replicas)
    wait_for_topics(cfg.bootstrap, {t.name: t.partitions for t in topics}, timeout_s, security)
    check_access(cfg.bootstrap, topics, security, group=cfg.app_id)


def collect_cycles_rarely(young: int) -> None:
    """Raise CPython's cyclic-GC thresholds for the worker process (`young`: setting gc_young_threshold).

    Why: a `memory://` worker holds each user's state as ~15 small dicts and lists, millions of
    objects at 100k users, and the collector's young collections (every 700 allocations by default)
    and the full ones they trigger rescan them. Measured (`benchmarks/user_state.py`, and loading
    100,000 states from their changelog JSON in a loop): 29.9 s with the defaults, 7.2 s with these.
    The states themselves are acyclic (JSON), so reference counting frees them as soon as a new copy
    replaces them; only the rare cycles of Faust, aiokafka and asyncio wait for the collector, and
    100,000 allocations between young collections bounds what they hold.
    """
    gc.set_threshold(young, 50, 100)


def create_app(cfg: EngineConfig) -> faust.App:
    collect_cycles_rarely(cfg.gc_young_threshold)
    metrics = Metrics()
    engine = Engine(cfg, metrics)
    data_dir = Path(cfg.data_dir) if cfg.data_dir else explore_home() / "worker" / cfg.app_id
    data_dir.mkdir(parents=True, exist_ok=True)
    own_url = cfg.canonical_url()
    app = make_app(cfg.app_id, cfg.bootstrap, data_dir, web_port=cfg.web_port, web_bind=cfg.web_host,
                   web_host=cfg.web_host, canonical_url=own_url, topic_partitions=cfg.partitions,
                   store=cfg.store, fetch_max_wait_ms=cfg.fetch_max_wait_ms, security=cfg.kafka_security())
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    interactions = app.topic(cfg.interactions_topic, partitions=cfg.partitions, **raw)
    users = app.Table("users", default=None, partitions=cfg.partitions, key_type=str, value_type=None)
    positions = app.Table("positions", default=None, partitions=cfg.partitions, key_type=str, value_type=None)
    app.engine, app.metrics = engine, metrics  # type: ignore[attr-defined]
    status: dict = {"items_loaded": False, "sets_loaded": False, "processing": False, "in_batch": False,
                    "last_batch": 0.0, "items_at": 0}
    delivery = InputDelivery(cfg.bootstrap, cfg.interactions_topic, positions, metrics, app.log,
                             security=cfg.kafka_security())
    live = LiveFeed()  # the latest slates, for GET /live
    titles = dict(zip(engine.catalog.item_ids, engine.catalog.item_titles, strict=True))
    titled = {engine.catalog.version}  # catalogs whose titles `titles` holds: a set switched to adds its own
    # Log every batch's offsets, stage times and slowest slate (debugging delivery; latency tails:
    # benchmarks/engine_throughput.py --trace reads these lines).
    trace = os.environ.get("EXPLORE_TRACE_BATCHES") == "1"

    def crashed(name: str) -> Callable[[Exception], None]:
        def report(exc: Exception) -> None:
            metrics.task_restarts.labels(name).inc()
            app.log.error(f"the {name.replace('_', '-')} follower crashed ({type(exc).__name__}: {exc}); "
                          "starting it again")
        return report

    def follower(name: str, topic: str, learn: Callable[[list], None], loaded: str,
                 what: Callable[[], str], at: Callable[[int], None] | None = None) -> Callable[[], Awaitable[None]]:
        """A task that keeps a whole compacted topic in memory (`follow_compacted`), sets `status[loaded]`
        once it reached the end it saw at start, and starts again from the topic's beginning after a crash."""
        def done() -> None:
            status[loaded] = True
            app.log.info(f"{topic} loaded: {what()}")

        async def follow() -> None:
            await keep_running(lambda: follow_compacted(cfg, topic, learn, done, at), crashed(name), backoff_s=1.0)

        follow.__name__ = follow.__qualname__ = f"follow_{name}"
        return follow

    def follow_table(s: ServingSet, loaded: asyncio.Event) -> asyncio.Task:
        """The follower of one model set's novelty table (its own topic), for as long as the set is served."""
        def done() -> None:
            loaded.set()
            app.log.info(f"{s.table_topic} loaded: {len(s.table)} contexts of model set {s.number}")

        return asyncio.ensure_future(keep_running(
            lambda: follow_compacted(cfg, s.table_topic, lambda records: engine.learn_many(records, s), done),
            crashed("novelty_table"), backoff_s=1.0))

    async def items_read() -> None:
        """Until the items follower has read what the items topic holds now."""
        end = await topic_end(cfg, cfg.items_topic)
        while status["items_at"] < end:
            await asyncio.sleep(0.05)

    switcher = SetSwitcher(engine, metrics, follow_table, app.log,
                            lambda: status["in_batch"] or not status["processing"], items_read)
    app.task(follower("items", cfg.items_topic, engine.learn_items, "items_loaded",
                      lambda: f"{len(engine.published)} published items",
                      lambda offset: status.__setitem__("items_at", offset)))
    app.task(follower("model_sets", cfg.models_topic, switcher.view.learn, "sets_loaded",
                      lambda: f"serving set {switcher.view.wanted()} of {len(switcher.view.manifests)} published"))

    @app.task
    async def keep_serving_the_wanted_set() -> None:
        """Load the model set the control topic names beside the one served (`SetSwitcher`)."""
        switcher.start()
        while True:
            if status["sets_loaded"]:
                try:
                    await switcher.prepare()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # logged and tried again: the served set goes on meanwhile
                    crashed("model_sets")(exc)
            await asyncio.sleep(0.2)

    def waiting(tier: int):  # type: ignore[no-untyped-def]
        async def wait_for_items(stream) -> None:  # type: ignore[no-untyped-def]
            """Events on items not published yet, on retry topic `tier`: `streams.wiring.items_topic.settle_waiting`."""
            async for event in stream.events():
                await settle_waiting(app.producer, cfg, engine.cluster_of, metrics, event.message, tier)
        return wait_for_items

    for tier, name in enumerate(cfg.retry_topics):
        app.agent(app.topic(name, partitions=cfg.partitions, **raw), name=f"wait_for_items_{tier}")(waiting(tier))

    @app.agent(interactions)
    async def process(stream) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 30
        # Start with the items, the wanted model set and its table, not with a burst of misses on another set.
        while not (status["items_loaded"] and status["sets_loaded"] and switcher.settled()) \
                and time.monotonic() < deadline:
            switcher.switch(at_start=True)
            await asyncio.sleep(0.05)
        delivery.guard.install(app.consumer)
        status["processing"] = True
        status["last_batch"] = time.monotonic()
        async for events in stream.noack_take(cfg.batch_size, within=cfg.batch_within_ms / 1000):
            status["last_batch"], status["in_batch"] = time.monotonic(), True
            switcher.switch()  # a batch boundary: a new model set serves whole batches only
            clock = StageClock(metrics.stage)
            oldest = min(e.message.timestamp for e in events)  # seconds (Faust's), the producer's clock
            clock.observe("queued", max(0.0, time.time() - oldest))
            assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == cfg.interactions_topic}
            mine, duplicates = await delivery.admit(events, assigned, app.consumer)
            metrics.batch.observe(len(events))
            records = [RawRecord(e.message.key, e.message.value, e.message.partition, e.message.offset,
                                 e.message.timestamp) for e in mine]
            clock.mark("admit")
            now_s = time.time()
            result = await engine.handle(records, users.get, now=now_s)
            clock.mark("handle")
            by_offset = {(e.message.partition, e.message.offset): e for e in mine}
            for rec, rej in result.dlq:
                key, value, headers = dead_letter(rec.key, rec.value, rej,
                                                  f"{cfg.interactions_topic}/{rec.partition}/{rec.offset}")
                await app.producer.send(cfg.dlq_topic, key, value, partition=None, timestamp=None, headers=headers)
            for rec in result.retry:  # to the same partition: a user's waiting events keep their order
                # An event back from the retry topic keeps the time it was first met (its header), so that its
                # wait stays bounded by unknown_item_wait_s if its item is unknown here again (a worker whose
                # items follower is behind, or a withdrawn item).
                since = first_seen(by_offset[(rec.partition, rec.offset)].message.headers, now_s)
                await app.producer.send(cfg.waiting_topic, rec.key, rec.value, partition=rec.partition, timestamp=None,
                                        headers=[(FIRST_SEEN, repr(since).encode())])
            for key, value in result.table_fills:  # the set that made them is still served: no switch inside a batch
                await app.producer.send(engine.serving.table_topic, key, value, partition=None, timestamp=None,
                                        headers=None)
            for user, (state, rec) in result.states.items():
                write_state(users, user, state, by_offset[(rec.partition, rec.offset)])
            delivery.record_positions(mine)
            clock.mark("write")
            now = time.time()
            for recommendation in result.recommendations:
                metrics.latency.observe(now - recommendation.trigger_ts)
                value = recommendation.encode(now)
                await app.producer.send(cfg.recommendations_topic, recommendation.key, value,
                                        partition=None, timestamp=None, headers=None)
                live.add(value)
            for record in result.feedback:
                await app.producer.send(cfg.feedback_topic, record.key, record.encode(),
                                        partition=None, timestamp=None, headers=None)
            clock.mark("send")
            delivery.release(mine + duplicates)
            for e in events:
                delivery.acked(e)
                await stream.ack(e)
            clock.mark("ack")
            if trace:
                slowest = max((now - r.trigger_ts for r in result.recommendations), default=0.0)
                spans: dict[int, list[int]] = {}
                for e in events:
                    spans.setdefault(e.message.partition, []).append(e.message.offset)
                app.log.info("batch acked: " + " ".join(f"p{p}:{min(o)}-{max(o)}({len(o)})"
                                                       for p, o in sorted(spans.items()))
                             + f" | sent_at={now:.3f} slates={len(result.recommendations)} "
                             f"slowest_ms={1000 * slowest:.1f} "
                             + " ".join(f"{k}_ms={1000 * v:.1f}" for k, v in clock.spent.items()))
            delivery.update_lag(app.consumer)
            status["in_batch"] = False

    @app.page("/metrics")
    async def metrics_view(web: Web, request: Request) -> Response:
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web: Web, request: Request) -> Response:
        """Alive, and which path serves the models; the error behind a fallback is in the log, not
        here (its text can name internal hosts, and this page is open to any prober)."""
        return web.json({"status": "ok", "triton": "up" if engine.router.triton_up else "fallback"})

    def refused(web: Web, request: Request) -> Response | None:
        """401 unless the request carries the web token (pages that show users' data)."""
        if bearer_ok(request.headers.get("Authorization"), cfg.web_token):
            return None
        return web.json({"error": "this page needs the worker's web token: Authorization: Bearer TOKEN"},
                        status=401, headers={"WWW-Authenticate": 'Bearer realm="interest-explorer"'})

    @app.page("/ready")
    async def ready(web: Web, request: Request) -> Response:
        ok = switcher.settled() and status["items_loaded"] and status["processing"] and not app.rebalancing
        body = {"ready": ok, "novelty_table_loaded": switcher.table_loaded(), "items_loaded": status["items_loaded"],
                "model_set": engine.serving.number, "wanted_model_set": switcher.view.wanted(),
                "rebalancing": app.rebalancing, "published_items": len(engine.published),
                "novelty_contexts": len(engine.table), "novelty_versions": engine.table.version_counts()}
        return web.json(body, status=200 if ok else 503)

    @app.page("/live")
    async def live_view(web: Web, request: Request) -> Response:
        """The latest slates and counters as a self-refreshing HTML page (`?users=a,b` pins users)."""
        denied = refused(web, request)
        if denied is not None:
            return denied
        pinned = [u for u in request.query.get("users", "").split(",") if u]
        if engine.catalog.version not in titled:  # a grown set's new items, by title
            titles.update(zip(engine.catalog.item_ids, engine.catalog.item_titles, strict=True))
            titled.add(engine.catalog.version)
        return web.html(render_page(live, counters(metrics.registry), titles, pinned, own_url))

    @app.page("/users/{user_id}")
    class UserView(View):
        """A user's state and last slate, from whichever worker holds it (`?local=1`: this one only)."""

        async def get(self, request: Request, user_id: str) -> Response:
            denied = refused(self.web, request)
            if denied is not None:
                return denied
            body, code = await find_user(app, users, cfg.interactions_topic, own_url, user_id,
                                         bool(request.query.get("local")), lambda state: user_view(state, engine),
                                         cfg.partitions, cfg.key_partitioner, cfg.web_token)
            return self.json(body, status=code)

    if cfg.user_ttl_s > 0:
        @app.timer(min(60.0, max(1.0, cfg.user_ttl_s / 10)))
        async def forget_users() -> None:
            """Delete users without an event for `user_ttl_s` (a tombstone in their changelog partition)."""
            if app.rebalancing:
                return
            mine = {tp.partition for tp in app.consumer.assignment() if tp.topic == cfg.interactions_topic}
            gone = expired_users(list(users.items()), time.time(), cfg.user_ttl_s, mine)
            for user, partition in gone:
                delete_state(users, user, cfg.interactions_topic, partition)
            metrics.users_expired.inc(len(gone))

    @app.timer(max(1.0, cfg.triton_retry_after_s))
    async def probe_triton() -> None:
        """Triton's readiness while the worker is on its fallback (or has not called it yet): the
        gauge and `/health` follow Triton even when no event needs a model."""
        await engine.router.probe()

    @app.timer(5.0)
    async def refresh_lag() -> None:
        delivery.update_lag(app.consumer)

    @app.timer(5.0)
    async def unstick() -> None:
        """Re-seek partitions that have records waiting while the agent has received nothing for 15 s.

        After a restart that followed a SIGKILL, Faust's consumer sometimes delivered nothing at all
        (about 2 runs in 5 here; its recovery resumes fetching before it seeks, faust-streaming #216).
        A seek to where each partition continues restarts the fetch; the gapless order makes it safe.
        """
        if not status["processing"] or app.rebalancing or time.monotonic() - status["last_batch"] < 15:
            return
        mine = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == cfg.interactions_topic)
        if not mine:
            return
        for p, offset in (await delivery.stall_seeks(mine)).items():
            metrics.reseeks.labels("stall").inc()
            app.log.warning(f"partition {p}: records from offset {offset} wait but nothing arrived for 15 s; seeking")
            await app.consumer.seek(TP(cfg.interactions_topic, p), offset)
        status["last_batch"] = time.monotonic()

    @app.on_before_shutdown.connect
    async def close_router(app: faust.App, **kwargs: object) -> None:
        with contextlib.suppress(Exception):
            await engine.router.close()

    return app
