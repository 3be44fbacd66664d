"""Bad input and observability: invalid records reach the DLQ with their reason, Prometheus scrapes the worker."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.infra.process import ManagedProcess, free_port, wait_until
from streams.infra.worker_process import WorkerProcess, http_json
from streams.wiring.replay import produce
from streams.wiring.worker import ensure_topics
from tests.integration.engine_support import engine_config, read_topic, synthetic_events

pytestmark = pytest.mark.integration

GOOD = {"user_id": "u", "item_id": "i", "ts": 1_000_000, "event": "click"}


def _not_json(b: bytes) -> bool:
    try:
        json.loads(b)
    except (ValueError, UnicodeDecodeError):
        return True
    return False


def invalid_record(n: int, item: str) -> st.SearchStrategy[tuple[str, bytes | None, bytes]]:
    """(expected reason, key, value) of one invalid record; the key `bad-n` identifies it in the DLQ."""
    key = f"bad-{n}"
    good = {**GOOD, "user_id": key, "item_id": item}
    wrong = {"user_id": st.one_of(st.floats(), st.lists(st.integers(), max_size=2), st.just(""), st.booleans()),
             "item_id": st.one_of(st.none(), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)),
             "ts": st.one_of(st.text(max_size=5), st.booleans(), st.none(), st.just(float("nan"))),
             "event": st.one_of(st.integers(), st.just(""), st.lists(st.text(max_size=2), max_size=2))}
    return st.one_of(
        st.binary(min_size=1, max_size=60).filter(_not_json).map(lambda b: ("bad_json", b)),
        st.one_of(st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3))
        .map(lambda v: ("not_object", json.dumps(v).encode())),
        st.sampled_from(sorted(GOOD)).map(lambda f: ("missing_field",
                                                     json.dumps({k: v for k, v in good.items() if k != f}).encode())),
        st.sampled_from(sorted(wrong)).flatmap(lambda f: wrong[f].map(
            lambda v, f=f: ("wrong_type", json.dumps({**good, f: v}).encode()))),
        st.text(min_size=1, max_size=8).map(lambda t: ("unknown_item",
                                                       json.dumps({**good, "item_id": "no-such-" + t}).encode())),
        st.one_of(st.integers(max_value=0), st.integers(min_value=10**11, max_value=10**13)).map(
            lambda ts: ("ts_out_of_range", json.dumps({**good, "ts": ts}).encode())),
        st.integers(min_value=4100, max_value=9000).map(
            lambda size: ("oversized", json.dumps({**good, "pad": "x" * size}).encode())),
        st.text(min_size=1, max_size=8).map(lambda t: ("key_mismatch", json.dumps({**good, "user_id": "other-" + t})
                                                       .encode())),
    ).map(lambda rv: (rv[0], key.encode(), rv[1]))


def test_invalid_records_reach_the_dlq_and_valid_ones_are_applied(apache_bootstrap: str, triton, seqrec_artifacts,  # type: ignore[no-untyped-def]
                                                                   novelty_artifacts, tmp_path: Path) -> None:
    cfg = engine_config(apache_bootstrap, seqrec_artifacts, triton.repository, triton.grpc)
    ensure_topics(cfg)
    item = seqrec_artifacts.catalog.item_ids[0]
    valid = synthetic_events(seqrec_artifacts.dataset, n_users=30, max_per_user=20)
    sent: dict[bytes, str] = {}
    rounds = iter(range(10**6))

    with WorkerProcess(cfg, tmp_path) as worker:
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.data())
        def run(data: st.DataObject) -> None:
            r = next(rounds)
            bad = data.draw(st.lists(st.integers(0, 10**9), min_size=250, max_size=400, unique=True)
                            .flatmap(lambda ns: st.tuples(*[invalid_record(r * 10**10 + n, item) for n in ns])))
            share = valid[r * len(valid) // 8:(r + 1) * len(valid) // 8]
            records, j = [], 0
            for i, (reason, key, value) in enumerate(bad):  # interleave: valid records between invalid ones
                sent[key] = reason
                records.append((key, value))
                while j < len(share) and j * len(bad) <= i * len(share):
                    records.append(share[j].encode())
                    j += 1
            records += [e.encode() for e in share[j:]]
            produce(apache_bootstrap, cfg.interactions_topic, records, progress=False)

        run()
        dlq = read_topic(apache_bootstrap, cfg.dlq_topic, lambda recs: len(recs) >= len(sent), timeout_s=90)
        states = {u: worker.get(f"/users/{u}")[1] for u in {e.user_id for e in valid}}
        assert worker.alive()
        metrics = worker.metrics_text()
    got = {r.key: dict(r.headers) for r in dlq}
    assert len(sent) >= 2000 and len(dlq) == len(sent), (len(dlq), len(sent))
    for key, reason in sent.items():
        assert got[key]["reason"].decode() == reason, (key, got[key], reason)
        assert got[key]["detail"] and got[key]["source"].startswith(cfg.interactions_topic.encode())
    per_user: dict[str, int] = {}
    for e in valid:
        per_user[e.user_id] = per_user.get(e.user_id, 0) + 1
    assert {u: s.get("events_applied") for u, s in states.items()} == per_user
    assert f'explore_events_total{{outcome="invalid"}} {float(len(sent))}' in metrics


def test_prometheus_scrapes_the_worker_and_triton(apache_bootstrap: str, triton, seqrec_artifacts,  # type: ignore[no-untyped-def]
                                                 novelty_artifacts, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is needed (`make test` installs it)"
    cfg = engine_config(apache_bootstrap, seqrec_artifacts, triton.repository, triton.grpc)
    ensure_topics(cfg)
    events = synthetic_events(seqrec_artifacts.dataset, n_users=20, max_per_user=10)
    with WorkerProcess(cfg, tmp_path) as worker:
        produce(apache_bootstrap, cfg.interactions_topic, [e.encode() for e in events], progress=False)
        port = free_port()
        config = tmp_path / "prometheus.yml"
        triton_metrics = triton.metrics.replace("http://", "").split("/")[0]
        config.write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: engine
    static_configs: [{{targets: ["127.0.0.1:{worker.cfg.web_port}"]}}]
  - job_name: triton
    static_configs: [{{targets: ["{triton_metrics}"]}}]
""")
        check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        prom = ManagedProcess("prometheus", [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path}/tsdb",
                                             f"--web.listen-address=127.0.0.1:{port}"], tmp_path / "prometheus.log")
        prom.start()
        try:
            def query(q: str) -> list:
                status, body = http_json(f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(q)}")
                return body.get("data", {}).get("result", []) if status == 200 else []

            def applied() -> float:
                rows = query('explore_events_total{outcome="applied",job="engine"}')
                return float(rows[0]["value"][1]) if rows else -1.0

            wait_until(lambda: applied() == len(events), 60, "Prometheus sees every applied event", prom)
            wait_until(lambda: bool(query('nv_inference_count{job="triton",model="seqrec"}')), 30,
                       "Prometheus sees Triton's inference counts", prom)
            latency = query('explore_event_to_slate_seconds_count{job="engine"}')
            up = query('up{job="engine"}')
        finally:
            prom.stop()
    assert latency and float(latency[0]["value"][1]) > 0
    assert up and up[0]["value"][1] == "1"


def hostile_records(item: str) -> list[tuple[str, bytes | None, bytes]]:
    """(expected reason, key, value) of records that raised inside the worker, or were accepted, before
    issue 13; each key (or, keyless, its item of the value) names the record in the DLQ."""
    good = {**GOOD, "item_id": item}

    def rec(user: str, **fields: object) -> bytes:
        return json.dumps({**good, "user_id": user, **fields}).encode()

    out: list[tuple[str, bytes | None, bytes]] = []
    for n in range(3):
        user = f"hostile-{n}"
        out += [("bad_json", f"{user}-nested".encode(), b"[" * 2000 + b"]" * 2000),  # RecursionError before
                ("wrong_type", f"{user}-ts".encode(),
                 rec(f"{user}-ts").replace(b'"ts": 1000000', b'"ts": ' + b"9" * 400)),
                ("wrong_type", f"{user}-weight".encode(), rec(f"{user}-weight", weight=10**400)),  # OverflowError
                ("wrong_type", f"{user}-event-id".encode(), rec(f"{user}-event-id", event_id=10**300)),
                ("oversized", f"{user}-key-".encode() + b"k" * 300, rec(f"{user}-key-" + "k" * 300)),
                ("missing_key", None, rec(f"{user}-keyless"))]
    return out


def test_hostile_records_reach_the_dlq_and_cost_no_valid_event(apache_bootstrap: str, triton, seqrec_artifacts,  # type: ignore[no-untyped-def]
                                                               novelty_artifacts, tmp_path: Path) -> None:
    """Each hostile record goes to the DLQ with its reason, the valid records of its batches are applied
    once each, and the worker keeps going. Before: one nested value or huge integer raised out of the
    agent and every record of its batch (up to 500) was counted as a duplicate afterwards, never applied;
    keyless records and ids of any length were accepted."""
    cfg = engine_config(apache_bootstrap, seqrec_artifacts, triton.repository, triton.grpc)
    ensure_topics(cfg)
    valid = synthetic_events(seqrec_artifacts.dataset, n_users=30, max_per_user=20)
    hostile = hostile_records(seqrec_artifacts.catalog.item_ids[0])
    records: list[tuple[bytes | None, bytes]] = []
    step = len(valid) // len(hostile)
    for i, (_, key, value) in enumerate(hostile):  # spread over the stream, so that most batches hold one
        records += [e.encode() for e in valid[i * step:(i + 1) * step]] + [(key, value)]
    records += [e.encode() for e in valid[len(hostile) * step:]]
    with WorkerProcess(cfg, tmp_path) as worker:
        produce(apache_bootstrap, cfg.interactions_topic, records, progress=False)
        dlq = read_topic(apache_bootstrap, cfg.dlq_topic, lambda recs: len(recs) >= len(hostile), timeout_s=90)
        per_user: dict[str, int] = {}
        for e in valid:
            per_user[e.user_id] = per_user.get(e.user_id, 0) + 1

        def applied() -> bool:
            return all(worker.get(f"/users/{u}")[1].get("events_applied") == n for u, n in per_user.items())

        wait_until(applied, 90, "every valid event applied", worker.proc, interval_s=0.5)
        assert worker.alive()
        metrics = worker.metrics_text()
    got = sorted((dict(r.headers)["reason"].decode(), r.key, r.value) for r in dlq)
    assert got == sorted(hostile), [g[:2] for g in got]
    assert f'explore_events_total{{outcome="applied"}} {float(len(valid))}' in metrics
    assert f'explore_events_total{{outcome="invalid"}} {float(len(hostile))}' in metrics


def test_hostile_novelty_rows_are_ignored_and_the_worker_gets_ready(apache_bootstrap: str, triton,  # type: ignore[no-untyped-def]
                                                                    seqrec_artifacts, novelty_artifacts,
                                                                    tmp_path: Path) -> None:
    """Anyone who can write the novelty topic: a deeply nested value crashed the table follower before
    (RecursionError), the table never loaded and /ready answered 503 for good; rows of another catalog
    or with cluster ids past the catalog's were used; a list as a cluster id or a 400-digit score crashed it
    again after every restart (the table stopped at that row for good)."""
    cfg = engine_config(apache_bootstrap, seqrec_artifacts, triton.repository, triton.grpc)
    ensure_topics(cfg)
    version = seqrec_artifacts.catalog.version

    def row(clusters: list[int], catalog_version: str) -> bytes:
        return json.dumps({"clusters": clusters, "scores": [0.0] * len(clusters),
                           "catalog_version": catalog_version}).encode()

    unhashable = json.dumps({"clusters": [[2]], "scores": [0.0], "catalog_version": version}).encode()
    huge_score = json.dumps({"clusters": [2], "scores": [10**400], "catalog_version": version}).encode()
    rows = [(b"0,1", b"[" * 3000 + b"]" * 3000), (b"0,1", row([999], version)), (b"1,0", row([2], "another")),
            (b"spam-" + b"x" * 100, row([2], version)), (b"0,1", unhashable), (b"1,0", huge_score)]
    produce(apache_bootstrap, cfg.novelty_topic, rows, progress=False)
    with WorkerProcess(cfg, tmp_path) as worker:  # start() waits for /ready
        status, body = worker.get("/ready")
        metrics = worker.metrics_text()
    assert status == 200 and body["novelty_contexts"] == 0, body
    assert 'explore_novelty_rows_ignored_total{reason="invalid"} 5.0' in metrics
    assert 'explore_task_restarts_total{task="novelty_table"}' not in metrics  # the two raised before: a crash loop
    assert 'explore_novelty_rows_ignored_total{reason="stale"} 1.0' in metrics
