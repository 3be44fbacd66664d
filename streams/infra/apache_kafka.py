"""Real Apache Kafka (KRaft, one node that is broker and controller) on loopback, without Docker.

Tests of restarts, rebalancing and latency need the real thing: the embedded Tansu broker is
not a reference for correctness. The broker jars are resolved through Maven from
`kafka-pom.xml` (beside this file) and cached outside the repository, storage is formatted in a
fresh work directory, and the JVM runs as a managed child process.

Run by hand: `scripts/kafka-local fetch|run`, or `explore infra up --kafka apache`.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from streams.infra.kafka_check import kafka_ready
from streams.infra.paths import explore_home
from streams.infra.process import InfraError, ManagedProcess, ProcessService, free_port, require_free_port
from streams.kafka_security import PLAINTEXT, KafkaSecurity

DEFAULT_VERSION = "4.1.1"
_HERE = Path(__file__).resolve().parent
POM = _HERE / "kafka-pom.xml"
LOG4J = _HERE / "kafka-log4j2.properties"
_INSTALL_HINT = "On Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless maven"


def java_major_version(java: str = "java") -> int:
    """The major version of `java`, or an InfraError saying what to install."""
    exe = shutil.which(java)
    if exe is None:
        raise InfraError(f"Apache Kafka needs Java 17 or newer, and no 'java' is on PATH. {_INSTALL_HINT}")
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise InfraError(f"Could not read the Java version from: {out.stderr.strip()!r}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def kafka_libs(version: str = DEFAULT_VERSION, quiet: bool = False) -> Path:
    """The directory holding the broker jars for `version`, resolved through Maven once.

    A lock makes concurrent callers wait for one download; the directory appears atomically, so
    an interrupted download is never mistaken for a complete one.
    """
    root = explore_home() / "kafka" / version
    libs = root / "libs"
    if any(libs.glob("kafka_2.13-*.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise InfraError(f"Resolving the Apache Kafka jars needs Maven ('mvn' is not on PATH). {_INSTALL_HINT}")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if any(libs.glob("kafka_2.13-*.jar")):
            return libs
        tmp = Path(tempfile.mkdtemp(prefix="libs-", dir=root))
        if not quiet:
            print(f"Resolving Apache Kafka {version} through Maven into {libs} (once) ...", file=sys.stderr)
        cmd = ["mvn", "-B", "-q", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={tmp}", f"-Dkafka.version={version}"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            raise InfraError(f"Maven could not resolve Apache Kafka {version}:\n{(res.stdout + res.stderr)[-3000:]}")
        tmp.rename(libs)
    return libs


def _cluster_id() -> str:
    """A KRaft cluster id: a UUID in URL-safe base64 without padding (what kafka-storage makes)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass(frozen=True)
class SaslSslListener:
    """A secured client listener: SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) over TLS, with ACLs.

    `keystore` is one PEM file with the broker's private key (PKCS#8, unencrypted) and its
    certificate chain; `cafile` the CA that signed it (the broker's own inter-broker client checks
    it too). Every user in `users` can log in with each mechanism (PLAIN from the JAAS line, SCRAM
    from credentials written when the storage is formatted). `admin` is a super user and the
    broker's own identity; everyone else is allowed only what ACLs grant.
    """

    keystore: Path
    cafile: Path
    users: dict[str, str] = field(default_factory=dict)  # name -> password (no spaces, quotes or commas)
    admin: str = "admin"

    def client_security(self, user: str, mechanism: str = "PLAIN") -> KafkaSecurity:
        """How `user` connects to this listener."""
        return KafkaSecurity("SASL_SSL", mechanism, user, self.users[user], ssl_cafile=str(self.cafile))

    def properties(self, port: int, controller_port: int) -> list[str]:
        """The listener, SASL, TLS and authorizer lines of server.properties."""
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.users.items())
        admin_password = self.users[self.admin]
        return [
            f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            "listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
            f'required username="{self.admin}" password="{admin_password}" {plain_users};',
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.cafile}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # ANONYMOUS is the broker itself on the plaintext controller listener (loopback, KRaft only).
            f"super.users=User:{self.admin};User:ANONYMOUS",
        ]

    def scram_arguments(self) -> list[str]:
        """`kafka-storage format` arguments that store every user's SCRAM credentials."""
        return [arg for name, password in self.users.items() for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
                for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")]


def server_properties(work_dir: Path, port: int, controller_port: int,
                      secured: SaslSslListener | None = None) -> str:
    """A single-node KRaft configuration tuned for tests: quick group joins, small internal topics;
    with `secured`, the client listener is SASL_SSL with ACLs instead of PLAINTEXT."""
    if secured is None:
        listener = [
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
    else:
        listener = secured.properties(port, controller_port)
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        "controller.listener.names=CONTROLLER",
        *listener,
        f"log.dirs={work_dir / 'data'}",
        "num.partitions=1",
        "auto.create.topics.enable=true",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "log.retention.hours=24",
        "",
    ])


class ApacheKafka(ProcessService):
    """A single-node Apache Kafka broker+controller on loopback; a context manager."""

    kind = "apache"
    ready_interval_s = 0.5
    stop_grace_s = 30.0  # a controlled shutdown, then SIGKILL

    def __init__(self, work_dir: Path, port: int | None = None, version: str = DEFAULT_VERSION,
                 detached: bool = False, heap_mb: int = 768, secured: SaslSslListener | None = None) -> None:
        if port is not None:
            require_free_port(port, "Apache Kafka")
        if java_major_version() < 17:
            raise InfraError(f"Apache Kafka {version} needs Java 17 or newer. {_INSTALL_HINT}")
        self.version = version
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.controller_port = free_port()
        self.work_dir = Path(work_dir)
        self.heap_mb = heap_mb
        self.detached = detached
        self.secured = secured
        # How this object's own readiness probe connects: as the admin on a secured listener.
        self.security = secured.client_security(secured.admin) if secured else PLAINTEXT
        self.what = f"Apache Kafka {version}" + (" (SASL_SSL, ACLs)" if secured else "")
        self.process: ManagedProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _java(self, libs: Path, *args: str) -> list[str]:
        return ["java", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={LOG4J}", "-cp", f"{libs}/*", *args]

    def start(self, timeout_s: float = 90.0) -> ApacheKafka:
        """Fetch the jars if needed, format storage, start the broker, wait for metadata."""
        libs = kafka_libs(self.version)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        props = self.work_dir / "server.properties"
        props.write_text(server_properties(self.work_dir, self.port, self.controller_port, self.secured))
        scram = self.secured.scram_arguments() if self.secured else []
        fmt = subprocess.run(self._java(libs, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                                        "-t", _cluster_id(), "-c", str(props), *scram),
                             capture_output=True, text=True, check=False)
        if fmt.returncode != 0:
            raise InfraError(f"Formatting Kafka storage in {self.work_dir} failed:\n{fmt.stdout}{fmt.stderr}")
        self.process = ManagedProcess(name="apache-kafka", argv=self._java(libs, "kafka.Kafka", str(props)),
                                      log_path=self.work_dir / "kafka.log", detached=self.detached)
        self._run(timeout_s)
        return self

    def ready(self) -> bool:
        return kafka_ready(self.bootstrap, security=self.security)


def main(argv: list[str] | None = None) -> int:
    """`fetch` resolves the jars; `run` starts a broker in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="kafka-local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="resolve the broker jars through Maven into the cache")
    p_fetch.add_argument("--version", default=DEFAULT_VERSION)
    p_run = sub.add_parser("run", help="run a broker in the foreground; Ctrl-C stops it")
    p_run.add_argument("--version", default=DEFAULT_VERSION)
    p_run.add_argument("--port", type=int, default=9092)
    p_run.add_argument("--work-dir", type=Path, default=None,
                       help="storage and logs (default: a fresh directory under the cache)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(kafka_libs(args.version))
            return 0
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="kafka-", dir=explore_home()))
        with ApacheKafka(work, port=args.port, version=args.version) as kafka:
            print(f"Apache Kafka {args.version} ready at {kafka.bootstrap} (log: {work / 'kafka.log'}); "
                  "Ctrl-C stops it", flush=True)
            try:
                while kafka.process is not None and kafka.process.alive():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    except InfraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
