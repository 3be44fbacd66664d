"""Kafka + Triton as one stack: external when the environment names them, embedded otherwise.

`KAFKA_BOOTSTRAP` names an existing Kafka cluster; without it the stack starts the embedded
Tansu broker (or real Apache Kafka when asked). `TRITON_URL` (gRPC, `host:port`) names an
existing Triton server, with `TRITON_HTTP_URL` and `TRITON_METRICS_URL` optional; without it the
stack starts the embedded `tritonserver` over a model repository.

Two ways to hold a stack: `Stack` (a context manager, used by the demo and the tests; stops
everything on exit, even on errors) and `up()`/`down()`/`status()` behind `explore infra`, which
start detached processes and remember them in `$EXPLORE_HOME/infra/state.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from streams.inference.tls import TritonTLS, grpc_client_kwargs
from streams.infra.kafka_check import kafka_ready
from streams.infra.paths import explore_home
from streams.infra.process import InfraError, Service, kill_group, pid_alive, pid_cmdline
from streams.infra.triton import http_ready
from streams.kafka_security import PLAINTEXT

KafkaKind = Literal["tansu", "apache"]


@dataclass
class ServiceRecord:
    """A running service as `explore infra status` shows it."""

    name: str
    kind: str  # "tansu", "apache", "embedded" or "external"
    address: str
    pid: int | None = None
    marker: str | None = None  # a string of its command line, guards against pid reuse
    log: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class Endpoints:
    """Where the engine finds Kafka and Triton."""

    kafka_bootstrap: str
    triton_grpc: str
    triton_http: str | None = None
    triton_metrics: str | None = None


def strip_scheme(url: str) -> str:
    """`grpc://host:port` or `http://host:port/` -> `host:port`."""
    return url.split("://", 1)[-1].rstrip("/")


def external_kafka() -> str | None:
    value = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    return value or None


def external_triton() -> tuple[str, str | None, str | None] | None:
    """(gRPC, HTTP, metrics URL) from the environment, or None when TRITON_URL is unset."""
    grpc = os.environ.get("TRITON_URL", "").strip()
    if not grpc:
        return None
    http = os.environ.get("TRITON_HTTP_URL", "").strip() or None
    metrics = os.environ.get("TRITON_METRICS_URL", "").strip() or None
    return strip_scheme(grpc), strip_scheme(http) if http else None, metrics


def external_settings():  # type: ignore[no-untyped-def]
    """The engine's settings from the environment: an external Kafka or Triton (KAFKA_BOOTSTRAP,
    TRITON_URL) is reached with the same security settings as the worker reaches it."""
    from streams.config import EngineConfig

    try:
        return EngineConfig.load()
    except ValueError as e:
        raise InfraError(str(e)) from None


def triton_grpc_ready(url: str, tls: TritonTLS | None = None) -> bool:
    """True when a Triton server answers ServerReady over gRPC."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        client = grpcclient.InferenceServerClient(url=url, **grpc_client_kwargs(tls))
    except InferenceServerException:
        return False
    try:
        return bool(client.is_server_ready(client_timeout=2.0))
    except InferenceServerException:
        return False
    finally:
        client.close()


def _start_kafka(kind: KafkaKind, work_dir: Path, detached: bool, port: int | None):
    if kind == "apache":
        from streams.infra.apache_kafka import ApacheKafka

        return ApacheKafka(work_dir / "kafka", port=port, detached=detached).start()
    from streams.infra.tansu import EmbeddedKafka

    return EmbeddedKafka(work_dir / "kafka", port=port, detached=detached).start()


class Stack(Service):
    """Kafka and Triton for the life of a `with` block; embedded parts are always stopped."""

    def __init__(self, work_dir: Path, model_repository: Path | None, kafka: KafkaKind = "tansu",
                 kafka_port: int | None = None, triton_args: tuple[str, ...] = ()) -> None:
        """`triton_args` go to an embedded tritonserver (e.g. explicit model control, for model sets)."""
        self.work_dir = Path(work_dir)
        self.triton_args = triton_args
        self.model_repository = model_repository
        self.kafka_kind = kafka
        self.kafka_port = kafka_port
        self._kafka = None
        self._triton = None
        self.records: list[ServiceRecord] = []
        self.endpoints: Endpoints | None = None

    def start(self) -> Stack:
        try:
            bootstrap = self._start_kafka()
            grpc, http, metrics = self._start_triton()
        except BaseException:
            self.stop()
            raise
        self.endpoints = Endpoints(bootstrap, grpc, http, metrics)
        return self

    def _start_kafka(self) -> str:
        ext = external_kafka()
        if ext:
            if not kafka_ready(ext, timeout_s=10, security=external_settings().kafka_security()):
                raise InfraError(f"KAFKA_BOOTSTRAP={ext} does not answer a metadata request")
            self.records.append(ServiceRecord("kafka", "external", ext))
            return ext
        self._kafka = _start_kafka(self.kafka_kind, self.work_dir, False, self.kafka_port)
        self.records.append(ServiceRecord("kafka", self._kafka.kind, self._kafka.bootstrap,
                                          self._kafka.process.pid, log=str(self._kafka.process.log_path)))
        return self._kafka.bootstrap

    def _start_triton(self) -> tuple[str, str | None, str | None]:
        ext = external_triton()
        if ext:
            if not triton_grpc_ready(ext[0], external_settings().triton_tls()):
                raise InfraError(f"TRITON_URL={ext[0]} does not answer ServerReady over gRPC")
            self.records.append(ServiceRecord("triton", "external", ext[0]))
            return ext
        if self.model_repository is None:
            raise InfraError("No TRITON_URL and no model repository to start the embedded Triton with")
        from streams.infra.triton import EmbeddedTriton

        self._triton = EmbeddedTriton(self.model_repository, self.work_dir / "triton",
                                      extra_args=self.triton_args).start()
        t = self._triton
        self.records.append(ServiceRecord("triton", "embedded", t.grpc_url, t.process.pid,
                                          log=str(t.process.log_path),
                                          extra={"http": t.http_url, "metrics": t.metrics_url,
                                                 "model_repository": str(t.model_repository)}))
        return t.grpc_url, t.http_url, t.metrics_url

    def stop(self) -> None:
        for service in (self._triton, self._kafka):
            if service is not None:
                service.stop()
        self._triton = self._kafka = None


# --- detached stacks for `explore infra up|down|status` --------------------------------------


def state_file() -> Path:
    return explore_home() / "infra" / "state.json"


def read_state() -> list[ServiceRecord]:
    path = state_file()
    if not path.is_file():
        return []
    return [ServiceRecord(**r) for r in json.loads(path.read_text())["services"]]


def _write_state(records: list[ServiceRecord]) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"written": time.time(), "services": [asdict(r) for r in records]}, indent=2))
    tmp.replace(path)


def up(model_repository: Path | None, kafka: KafkaKind = "tansu", kafka_port: int | None = None) -> list[ServiceRecord]:
    """Start what the environment does not name, detached, and record it for `down`."""
    running = [r for r in read_state() if r.pid and pid_alive(r.pid)]
    if running:
        names = ", ".join(f"{r.name} (pid {r.pid})" for r in running)
        raise InfraError(f"Already up: {names}. Run `explore infra down` first.")
    work = explore_home() / "infra" / "run"
    shutil.rmtree(work, ignore_errors=True)
    records: list[ServiceRecord] = []
    try:
        ext = external_kafka()
        if ext:
            records.append(ServiceRecord("kafka", "external", ext))
        else:
            k = _start_kafka(kafka, work, True, kafka_port)
            records.append(ServiceRecord("kafka", k.kind, k.bootstrap, k.process.pid,
                                         "kafka.Kafka" if k.kind == "apache" else "tansu", str(k.process.log_path)))
            _write_state(records)
        ext_t = external_triton()
        if ext_t:
            records.append(ServiceRecord("triton", "external", ext_t[0],
                                         extra={k: v for k, v in (("http", ext_t[1]), ("metrics", ext_t[2])) if v}))
        else:
            if model_repository is None:
                raise InfraError("No TRITON_URL and no model repository for the embedded Triton")
            from streams.infra.triton import EmbeddedTriton

            t = EmbeddedTriton(model_repository, work / "triton", detached=True).start()
            records.append(ServiceRecord("triton", "embedded", t.grpc_url, t.process.pid, "tritonserver",
                                         str(t.process.log_path),
                                         {"http": t.http_url, "metrics": t.metrics_url,
                                          "model_repository": str(t.model_repository)}))
    except BaseException:
        _write_state(records)
        down()
        raise
    _write_state(records)
    return records


def down() -> list[str]:
    """Stop every service that `up` started; return what was stopped."""
    stopped = []
    for r in read_state():
        if r.pid and kill_group(r.pid, expect_in_cmdline=r.marker, grace_s=30):
            stopped.append(f"{r.name} ({r.kind}, pid {r.pid})")
    path = state_file()
    if path.exists():
        path.unlink()
    return stopped


def service_healthy(r: ServiceRecord) -> tuple[bool, str]:
    """(healthy, why) for one recorded service."""
    if r.pid is not None and (not pid_alive(r.pid) or (r.marker and r.marker not in pid_cmdline(r.pid))):
        return False, "process is gone"
    external = external_settings() if r.kind == "external" else None  # what `infra up` started is plaintext
    if r.name == "kafka":
        security = external.kafka_security() if external else PLAINTEXT
        ok = kafka_ready(r.address, security=security)
        return (True, "answers metadata") if ok else (False, "no metadata answer")
    http = r.extra.get("http")
    ok = http_ready(http) if http else triton_grpc_ready(r.address, external.triton_tls() if external else None)
    return (True, "ready") if ok else (False, "not ready")


def status() -> list[tuple[ServiceRecord, bool, str]]:
    """Each recorded service (or each external one named by the environment) with its health."""
    records = read_state()
    if not records:
        if external_kafka():
            records.append(ServiceRecord("kafka", "external", external_kafka() or ""))
        ext_t = external_triton()
        if ext_t:
            records.append(ServiceRecord("triton", "external", ext_t[0],
                                         extra={"http": ext_t[1]} if ext_t[1] else {}))
    return [(r, *service_healthy(r)) for r in records]


def endpoints_from_state() -> Endpoints:
    """The endpoints that `up` recorded (for `explore infra check`)."""
    by_name = {r.name: r for r in read_state()}
    if "kafka" not in by_name or "triton" not in by_name:
        raise InfraError("Nothing is up: run `explore infra up` first")
    t = by_name["triton"]
    return Endpoints(by_name["kafka"].address, t.address, t.extra.get("http"), t.extra.get("metrics"))
