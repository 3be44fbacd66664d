"""The streaming engine end to end: a real broker, a real Triton server, a worker process."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from streams.infra.process import wait_until
from streams.infra.worker_process import WorkerProcess
from streams.wiring.replay import produce
from streams.wiring.worker import ensure_topics
from tests.integration.engine_support import (
    check_recommendation,
    engine_config,
    expected_states,
    item_cluster_map,
    read_topic,
    recommendations,
    synthetic_events,
)

pytestmark = pytest.mark.integration


def wait_for_states(worker: WorkerProcess, expected: dict[str, dict], timeout_s: float = 90.0) -> None:
    """Until every user's state on the worker shows exactly its expected number of events."""
    pending = dict(expected)

    def done() -> bool:
        for user in list(pending):
            status, body = worker.get(f"/users/{user}")
            if status == 200 and body["events_applied"] == pending[user]["n"]:
                del pending[user]
        return not pending

    wait_until(done, timeout_s, f"states of {len(pending)} users", worker.proc, interval_s=0.5)


def test_end_to_end(broker: str, triton, seqrec_artifacts, novelty_artifacts, tmp_path: Path,  # type: ignore[no-untyped-def]
                    request: pytest.FixtureRequest) -> None:
    # `explore serve` on the embedded broker, the plain Faust command line on Apache Kafka: both ways in.
    command = "serve" if request.node.callspec.params["broker"] == "tansu" else "faust"
    cfg = engine_config(broker, seqrec_artifacts, triton.repository, triton.grpc)
    ensure_topics(cfg)
    events = synthetic_events(seqrec_artifacts.dataset, n_users=40, max_per_user=10)
    item_cluster = item_cluster_map(seqrec_artifacts)
    n_clusters = seqrec_artifacts.catalog.levels[-1]
    expected = expected_states(events, item_cluster, cfg.k)
    by_user: dict[str, list] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    with WorkerProcess(cfg, tmp_path, command=command) as worker:
        produce(broker, cfg.interactions_topic, [e.encode() for e in events], progress=False)
        wait_for_states(worker, expected)
        if command == "serve":
            assert "engine worker" in worker.proc.log_path.read_text(), "not started by explore serve"
        owed = {u for u, s in expected.items() if len(s["context"]) == cfg.k and len(s["known"]) < n_clusters}
        assert owed, "the test data must change some contexts"

        def covered(records: list) -> bool:
            return owed <= {r.key.decode() for r in records}

        recs = recommendations(read_topic(broker, cfg.recommendations_topic, covered, timeout_s=30))
        metrics = worker.metrics_text()
        for user in expected:  # the state the worker holds is the one the events imply
            _, body = worker.get(f"/users/{user}")
            assert [c["id"] for c in body["context"]] == expected[user]["context"]
            assert {c["id"] for c in body["known_clusters"]} == expected[user]["known"]
    assert owed <= {r["user_id"] for r in recs}
    for rec in recs:
        check_recommendation(rec, by_user, item_cluster, n_clusters)
        assert rec["seqrec_path"] == "triton" and rec["latency_ms"] >= 0
    last = {}
    for rec in recs:
        if rec["events_applied"] >= last.get(rec["user_id"], {"events_applied": -1})["events_applied"]:
            last[rec["user_id"]] = rec
    for user in owed:  # the newest slate answers the newest context
        assert [c["id"] for c in last[user]["context"]] == expected[user]["context"]
    assert f'explore_events_total{{outcome="applied"}} {float(len(events))}' in metrics
    assert 'explore_inference_seconds_count{model="seqrec",path="triton"}' in metrics
    assert "explore_triton_up 1.0" in metrics
