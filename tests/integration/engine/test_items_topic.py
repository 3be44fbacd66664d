"""Items published while the engine runs (issue 27, item 1), on Apache Kafka with a worker process: an event
on an item not published yet waits in the retry topic and is applied once the item arrives on the items
topic; one whose item never comes reaches the DLQ as unknown_item after the stated wait, from the second retry
topic, where its looks thinned out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from streams.core.engine import Engine
from streams.core.items import PublishedItem
from streams.infra.process import wait_until
from streams.infra.worker_process import WorkerProcess
from streams.wiring.items_topic import publish_items
from streams.wiring.replay import produce
from streams.wiring.worker import ensure_topics
from tests.integration.engine_support import engine_config, read_topic

pytestmark = pytest.mark.integration

WAIT_S = 6.0


def _event(user: str, item: str, n: int) -> tuple[bytes, bytes]:
    return user.encode(), json.dumps({"user_id": user, "item_id": item, "ts": 1_600_000_000 + n, "event": "click",
                                      "event_id": f"{user}-{n}"}).encode()


def test_an_event_waits_for_its_item_and_one_whose_item_never_comes_reaches_the_dlq(
        apache_bootstrap: str, seqrec_artifacts, novelty_artifacts, tiny_repository: Path,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    cfg = engine_config(apache_bootstrap, seqrec_artifacts, tiny_repository, "", unknown_item_wait_s=WAIT_S,
                        retry_interval_s=1.0, retry_backoff_s="2")  # after 2 s of waiting: the second retry topic
    ensure_topics(cfg)
    engine = Engine(cfg)  # the worker's view of the catalog: its version, level and clusters
    by_cluster: dict[int, list[str]] = {}
    for item, c in zip(engine.item_ids, engine.item_cluster, strict=True):
        by_cluster.setdefault(c, []).append(item)
    a, b, new_cluster = sorted(by_cluster)[:3]
    with WorkerProcess(cfg, tmp_path) as worker:
        produce(apache_bootstrap, cfg.interactions_topic,
                [_event("w1", by_cluster[a][0], 1), _event("w1", "new-1", 2), _event("w1", by_cluster[b][0], 3),
                 _event("w2", "never-1", 1)], progress=False)
        wait_until(lambda: worker.get("/users/w1")[1].get("events_applied") == 2, 60, "w1's known items applied",
                   worker.proc, interval_s=0.3)
        assert "new-1" not in worker.get("/users/w1")[1]["recent_items"]
        published = time.time()
        publish_items(apache_bootstrap, cfg.items_topic,
                      [PublishedItem("new-1", "A new film", "drama", engine.catalog.version, engine.level, new_cluster,
                                     0.2, "tfidf", published)])
        wait_until(lambda: worker.get("/users/w1")[1].get("events_applied") == 3, 60, "the waiting event applied",
                   worker.proc, interval_s=0.2)
        applied_after = time.time() - published
        view = worker.get("/users/w1")[1]
        dlq = read_topic(apache_bootstrap, cfg.dlq_topic, lambda recs: len(recs) >= 1, timeout_s=60)
        metrics = worker.metrics_text()
        assert worker.alive()
    print(f"event on new-1 applied {applied_after:.1f} s after the item was published "
          f"(retry interval {cfg.retry_interval_s:g} s)")
    assert view["recent_items"] == [by_cluster[a][0], by_cluster[b][0], "new-1"]
    assert new_cluster in [c["id"] for c in view["known_clusters"]]
    assert [c["id"] for c in view["context"]][-1] == new_cluster
    assert len(dlq) == 1 and dlq[0].key == b"w2"
    headers = dict(dlq[0].headers)
    assert headers["reason"] == b"unknown_item" and headers["source"].startswith(f"{cfg.waiting_topic}-1/".encode())
    assert 'explore_retried_events_total{outcome="applied"} 1.0' in metrics
    assert 'explore_retried_events_total{outcome="expired"} 1.0' in metrics
    assert 'explore_events_total{outcome="waiting"} 2.0' in metrics
    assert "explore_items_published 1.0" in metrics
