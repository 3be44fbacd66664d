"""Faust application settings that every worker of this engine shares.

The defaults of Faust are tuned for a cluster that is up for weeks; ours restart in tests and
demos. Measured against the embedded broker: with Faust's default session timeout a worker
waited ~33 s to join and ~110 s to rejoin after a restart; with a 6 s session timeout and a 1 s
heartbeat both take a few seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import faust

from streams.kafka_security import PLAINTEXT, KafkaSecurity


def make_app(app_id: str, bootstrap: str, data_dir: Path, web_port: int | None = None,
             fetch_max_wait_ms: int = 100, security: KafkaSecurity = PLAINTEXT, **settings: object) -> faust.App:
    """A Faust app on `bootstrap` with quick group joins, short fetch waits, its data under `data_dir`,
    connecting as `security` says, and none of Faust's own web pages (`FAUST_PAGES_OFF`)."""
    defaults: dict[str, object] = {
        "broker": f"kafka://{bootstrap}",
        "datadir": str(data_dir),
        "broker_session_timeout": 6,
        "broker_heartbeat_interval": 1,
        "broker_request_timeout": 30,
        "topic_partitions": 1,
        "topic_replication_factor": 1,
        "producer_linger_ms": 1,
        "web_enabled": web_port is not None,
        "web_port": web_port or 6066,
        "web_bind": "127.0.0.1",
        "web_host": "127.0.0.1",
        **FAUST_PAGES_OFF,
        **security.faust_settings(),
    }
    defaults.update(settings)
    app = faust.App(app_id, **defaults)
    app.transport = transport_class(fetch_max_wait_ms)(app.conf.broker_consumer, app)
    return app


# Faust serves pages of its own next to the engine's: /router/ (every worker's URL and partitions),
# /table/ (any table's keys and values: users' state, unauthenticated), and with `debug` /graph
# and statistics at /. The engine answers what it means to publish itself (/users/{id} with its
# token, /metrics, /health, /ready, /live); Faust's are turned off. `app.router` (Python) keeps
# working without its pages.
FAUST_PAGES_OFF: dict[str, object] = {"web_router_enabled": False, "web_tables_enabled": False,
                                      "web_graph_enabled": False, "web_stats_enabled": False,
                                      "web_metrics_enabled": False}


def transport_class(fetch_max_wait_ms: int) -> type:
    """Faust's aiokafka transport with the worker consumer's fetch wait set to `fetch_max_wait_ms`.

    Faust 0.15 hardcodes 1500 ms. A broker that does not wake a waiting fetch when data arrives
    (the embedded one) answers only when the wait ends, so every event waited up to 1.5 s
    before the engine saw it (demo p50 ~650 ms). Apache Kafka answers as soon as data arrives
    whatever the wait; a short one only adds empty fetches while a partition is idle.
    """
    from faust.transport.drivers import aiokafka as driver

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: driver.Transport):  # type: ignore[no-untyped-def]
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read by AIOKafkaConsumer.start()
            return consumer

    class FetchWaitConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        Consumer = FetchWaitConsumer

    return Transport


def env(name: str, default: str | None = None) -> str:
    """An environment setting, with a clear error when a required one is missing."""
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise SystemExit(f"error: set {name} (see `explore --help`)")
    return value
