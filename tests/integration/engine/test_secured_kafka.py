"""The engine on Apache Kafka with a SASL_SSL listener and ACLs (certificates made here).

One broker for the module: TLS with a CA made by the test, SASL with PLAIN, SCRAM-SHA-256 and
SCRAM-SHA-512, and the StandardAuthorizer (nothing allowed without an ACL). Workers are real
worker processes (`explore serve`), started with the settings a user would set:

- without credentials: refused at start, and the error names the setting to set;
- with a wrong password: the error says the broker refused the credentials;
- with credentials (SCRAM-SHA-512) and its ACLs: events in (produced over PLAIN), state, slates
  out (read over SCRAM-SHA-256); its web pages ask for the bearer token and Faust's are off;
- without write access to the DLQ (nor an ACL for its consumer group): refused at start, naming
  each topic or group and the operation;
- read access to the novelty topic withdrawn while it runs: the novelty-table follower crashes on
  the broker's refusal, is started again until the access is back, then reads what was published
  meanwhile; no event is lost or applied twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.config import EngineConfig
from streams.infra.apache_kafka import ApacheKafka, SaslSslListener
from streams.infra.kafka_check import KafkaAccessError, create_topics, kafka_round_trip
from streams.infra.process import wait_until
from streams.infra.worker_process import WorkerProcess, http_json
from streams.kafka_security import KafkaSecurity
from streams.wiring.replay import produce
from streams.wiring.worker import engine_topics, ensure_topics
from tests.integration.engine_support import expected_states, item_cluster_map, read_topic, synthetic_events
from tests.integration.secure_kafka import grant, make_tls_files, revoke_denial

pytestmark = pytest.mark.integration

USERS = {"admin": "admin-secret", "engine": "engine-secret", "nodlq": "nodlq-secret"}


@dataclass(frozen=True)
class SecuredKafka:
    bootstrap: str
    listener: SaslSslListener

    def security(self, user: str, mechanism: str = "PLAIN") -> KafkaSecurity:
        return self.listener.client_security(user, mechanism)


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    work = tmp_path_factory.mktemp("secured-kafka")
    tls = make_tls_files(work / "tls")
    listener = SaslSslListener(tls.keystore, tls.cafile, USERS)
    with ApacheKafka(work / "kafka", secured=listener) as kafka:
        yield SecuredKafka(kafka.bootstrap, listener)


def secured_config(kafka: SecuredKafka, seqrec_artifacts, repository: Path, user: str = "",  # type: ignore[no-untyped-def]
                   mechanism: str = "PLAIN", password: str = "", **overrides: object) -> EngineConfig:
    """A config whose app id and topics share one prefix (ACLs grant by prefix), connecting as `user`."""
    tag = f"sec-{uuid.uuid4().hex[:8]}"
    values: dict[str, object] = {
        "bootstrap": kafka.bootstrap, "app_id": f"{tag}-engine", "interactions_topic": f"{tag}-interactions",
        "dlq_topic": f"{tag}-dlq", "recommendations_topic": f"{tag}-recs", "novelty_topic": f"{tag}-novel",
        "feedback_topic": f"{tag}-feedback", "items_topic": f"{tag}-items", "retry_topic": f"{tag}-retry",
        "models_topic": f"{tag}-sets",
        "partitions": 2, "catalog": str(Path(seqrec_artifacts.checkpoint).parent / "catalog"),
        "repository": str(repository), "triton_url": "", "batch_within_ms": 10, **overrides}
    if user:
        values.update(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=mechanism, kafka_sasl_username=user,
                      kafka_sasl_password=password or USERS[user], kafka_ssl_cafile=str(kafka.listener.cafile))
    return EngineConfig().with_values(values)


def tag_of(cfg: EngineConfig) -> str:
    return cfg.app_id.removesuffix("-engine")


def refusal(cfg: EngineConfig, work_dir: Path, timeout_s: float = 90.0) -> str:
    """The log of an `explore serve` worker that must stop by itself at start (fails if it keeps running)."""
    worker = WorkerProcess(cfg, work_dir, command="serve").start(wait_s=0)
    try:
        wait_until(lambda: not worker.alive(), timeout_s, "the worker to refuse to start")
    finally:
        worker.stop()
    assert worker.proc.returncode() != 0
    return worker.proc.log_path.read_text()


def test_a_worker_without_credentials_is_refused_with_a_clear_error(  # type: ignore[no-untyped-def]
        secured_kafka: SecuredKafka, seqrec_artifacts, novelty_artifacts, tiny_repository: Path,
        tmp_path: Path) -> None:
    log = refusal(secured_config(secured_kafka, seqrec_artifacts, tiny_repository), tmp_path)
    assert f"error: Kafka at {secured_kafka.bootstrap} (PLAINTEXT)" in log, log[-2000:]
    assert "KAFKA_SECURITY_PROTOCOL" in log and "Traceback" not in log


def test_a_wrong_password_is_named_as_refused_credentials(  # type: ignore[no-untyped-def]
        secured_kafka: SecuredKafka, seqrec_artifacts, tiny_repository: Path) -> None:
    cfg = secured_config(secured_kafka, seqrec_artifacts, tiny_repository, "engine", "SCRAM-SHA-256",
                         password="not-the-password")
    with pytest.raises(KafkaAccessError, match=r"SCRAM-SHA-256 as user .engine.\): the broker refused the credentials"):
        ensure_topics(cfg)


def test_a_worker_with_credentials_runs_end_to_end(  # type: ignore[no-untyped-def]
        secured_kafka: SecuredKafka, seqrec_artifacts, novelty_artifacts, tiny_repository: Path,
        tmp_path: Path) -> None:
    cfg = secured_config(secured_kafka, seqrec_artifacts, tiny_repository, "engine", "SCRAM-SHA-512",
                         web_token="web-token-1")
    admin = secured_kafka.security("admin")
    grant(secured_kafka.bootstrap, admin, "engine", [("TOPIC", tag_of(cfg), "PREFIXED", "ALL"),
                                                     ("GROUP", tag_of(cfg), "PREFIXED", "READ")])
    events = synthetic_events(seqrec_artifacts.dataset, n_users=12, max_per_user=8)
    expected = expected_states(events, item_cluster_map(seqrec_artifacts), cfg.k)
    with WorkerProcess(cfg, tmp_path, command="serve") as worker:
        # Events in as the load generator sends them, over PLAIN.
        produce(cfg.bootstrap, cfg.interactions_topic, [e.encode() for e in events], progress=False,
                security=secured_kafka.security("engine", "PLAIN"))

        def applied() -> bool:
            for user, state in expected.items():
                status, body = worker.get(f"/users/{user}")  # with the token
                if status != 200 or body["events_applied"] != state["n"]:
                    return False
            return True

        wait_until(applied, 90, "every event applied", worker.proc, interval_s=0.5)
        user = next(iter(expected))
        assert http_json(f"{worker.url}/users/{user}")[0] == 401  # no token
        assert http_json(f"{worker.url}/users/{user}", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert http_json(f"{worker.url}/live")[0] == 401
        status, health = http_json(f"{worker.url}/health")
        assert status == 200 and set(health) == {"status", "triton"}  # no internal error text
        for faust_page in ("/router/", "/table/", "/table/users/"):
            assert http_json(f"{worker.url}{faust_page}")[0] == 404, faust_page
        owed = {u for u, s in expected.items() if len(s["context"]) == cfg.k}
        assert owed, "the test data must change some contexts"
    # Slates out, read over SCRAM-SHA-256.
    recs = read_topic(cfg.bootstrap, cfg.recommendations_topic, lambda rs: owed <= {r.key.decode() for r in rs},
                      timeout_s=30, security=secured_kafka.security("engine", "SCRAM-SHA-256"))
    assert owed <= {r.key.decode() for r in recs}
    # `explore infra check`'s Kafka round trip, as the same user.
    assert kafka_round_trip(cfg.bootstrap, security=admin)["records"] == 20


def test_a_worker_without_write_access_to_the_dlq_nor_its_group_says_so(  # type: ignore[no-untyped-def]
        secured_kafka: SecuredKafka, seqrec_artifacts, novelty_artifacts, tiny_repository: Path,
        tmp_path: Path) -> None:
    cfg = secured_config(secured_kafka, seqrec_artifacts, tiny_repository, "nodlq", "SCRAM-SHA-512")
    admin = secured_kafka.security("admin")
    create_topics(cfg.bootstrap, engine_topics(cfg), admin)  # an operator made the topics
    grant(secured_kafka.bootstrap, admin, "nodlq", [("TOPIC", tag_of(cfg), "PREFIXED", "ALL")])  # no group ACL
    grant(secured_kafka.bootstrap, admin, "nodlq", [("TOPIC", cfg.dlq_topic, "LITERAL", "WRITE")], deny=True)
    log = refusal(cfg, tmp_path)
    assert "does not allow user 'nodlq'" in log, log[-2000:]
    assert f"topic '{cfg.dlq_topic}': no WRITE permission (rejected input records go there)" in log
    assert f"consumer group '{cfg.app_id}': no READ permission" in log
    assert f"topic '{cfg.recommendations_topic}'" not in log  # only what is missing is named
    assert "Traceback" not in log


def restarts(worker: WorkerProcess) -> float:
    """explore_task_restarts_total{task="novelty_table"}: how often the follower was started again."""
    for line in worker.metrics_text().splitlines():
        if line.startswith('explore_task_restarts_total{task="novelty_table"}'):
            return float(line.split()[-1])
    return 0.0


def test_the_novelty_follower_crashing_on_a_broker_refusal_is_restarted_and_loses_nothing(  # type: ignore[no-untyped-def]
        secured_kafka: SecuredKafka, seqrec_artifacts, novelty_artifacts, tiny_repository: Path,
        tmp_path: Path) -> None:
    """A real crash of the follower task: the broker refuses its fetches (READ on the novelty topic denied
    mid-run, TopicAuthorizationFailedError). It is started again, and crashes again, until READ is allowed
    again; then it reads the row published meanwhile. The agent applies every event meanwhile, once."""
    cfg = secured_config(secured_kafka, seqrec_artifacts, tiny_repository, "engine", "SCRAM-SHA-512")
    admin = secured_kafka.security("admin")
    grant(secured_kafka.bootstrap, admin, "engine", [("TOPIC", tag_of(cfg), "PREFIXED", "ALL"),
                                                     ("GROUP", tag_of(cfg), "PREFIXED", "READ")])
    events = synthetic_events(seqrec_artifacts.dataset, n_users=12, max_per_user=12)
    expected = expected_states(events, item_cluster_map(seqrec_artifacts), cfg.k)
    half = len(events) // 2
    engine = secured_kafka.security("engine", "PLAIN")
    with WorkerProcess(cfg, tmp_path, command="serve") as worker:
        produce(cfg.bootstrap, cfg.interactions_topic, [e.encode() for e in events[:half]], progress=False,
                security=engine)
        grant(secured_kafka.bootstrap, admin, "engine", [("TOPIC", cfg.novelty_topic, "LITERAL", "READ")], deny=True)
        wait_until(lambda: restarts(worker) >= 2, 60, "the follower crashed and was started again", worker.proc)
        stale = json.dumps({"clusters": [0], "scores": [0.0], "catalog_version": "another"}).encode()
        produce(cfg.bootstrap, cfg.novelty_topic, [(b"0,1", stale)], progress=False, security=admin)
        produce(cfg.bootstrap, cfg.interactions_topic, [e.encode() for e in events[half:]], progress=False,
                security=engine)
        crashes = restarts(worker)
        revoke_denial(secured_kafka.bootstrap, admin, "engine", "TOPIC", cfg.novelty_topic, "READ")
        wait_until(lambda: 'explore_novelty_rows_ignored_total{reason="stale"} 1.0' in worker.metrics_text(), 60,
                   "the restarted follower read the row published while it crashed", worker.proc)

        def applied() -> bool:
            return all(worker.get(f"/users/{u}")[1].get("events_applied") == s["n"] for u, s in expected.items())

        wait_until(applied, 90, "every event applied once", worker.proc, interval_s=0.5)
        states = {u: worker.get(f"/users/{u}")[1] for u in expected}
        assert worker.alive() and worker.get("/ready")[0] == 200
        log = worker.proc.log_path.read_text()
    assert "the novelty-table follower crashed (TopicAuthorizationFailedError" in log, log[-3000:]
    for user, state in expected.items():
        assert [c["id"] for c in states[user]["context"]] == state["context"], user
    print(f"\n#13 figures: follower crash: READ on the novelty topic denied mid-run, the follower crashed and was "
          f"started {crashes:.0f}+ times, then read the row published meanwhile; {len(events)} events of "
          f"{len(expected)} users applied exactly once, worker alive and ready")
