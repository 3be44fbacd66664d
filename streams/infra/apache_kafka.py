"""Real Apache Kafka (KRaft; each node both broker and controller) on loopback, without Docker.

Tests of restarts, rebalancing and latency need the real thing: the embedded Tansu broker is
not a reference for correctness. The broker jars are resolved through Maven from
`kafka-pom.xml` (beside this file) and cached outside the repository, storage is formatted in a
fresh work directory, and the JVM runs as a managed child process. `ApacheKafka` is one node (a
cluster of its own by default); `KafkaCluster` runs several of them as one quorum, so that a
broker can be killed and brought back while the others serve (replication tests).

Run by hand: `scripts/kafka-local fetch|run`, or `explore infra up --kafka apache`.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from streams.infra.kafka_check import kafka_ready
from streams.infra.paths import explore_home
from streams.infra.process import (
    InfraError,
    ManagedProcess,
    ProcessService,
    Service,
    free_port,
    require_free_port,
    wait_until,
)
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
    """A KRaft cluster id: a UUID in URL-safe base64 without padding (what kafka-storage makes), never
    starting with "-": kafka-storage's parser took such an id (1 in 64) for an option and the start
    failed ("argument --cluster-id/-t: expected one argument"); Kafka's own Uuid.randomUuid skips them too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


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


def _stored_cluster_id(work_dir: Path) -> str | None:
    """The cluster id storage in `work_dir` was formatted with, if it was: a node started again on kept
    storage must be formatted with the same id, which `--ignore-formatted` does not spare (Kafka 4
    refuses another: "Invalid cluster.id"), so a kept broker (a benchmark's `--work`) came back only once."""
    meta = work_dir / "data" / "meta.properties"
    if not meta.is_file():
        return None
    for line in meta.read_text().splitlines():
        if line.startswith("cluster.id="):
            return line.split("=", 1)[1].strip() or None
    return None


@dataclass(frozen=True)
class Quorum:
    """Where a node stands in a KRaft cluster: its id, every voter (`id@host:port`, comma-joined) and the
    cluster id they were formatted with. A single node is a quorum of one."""

    node_id: int
    voters: str
    cluster_id: str

    @property
    def size(self) -> int:
        return len(self.voters.split(","))


def server_properties(work_dir: Path, port: int, controller_port: int,
                      secured: SaslSslListener | None = None, quorum: Quorum | None = None) -> str:
    """A KRaft configuration tuned for tests: quick group joins, small internal topics replicated to
    every node of the quorum (one by default); with `secured`, the client listener is SASL_SSL with
    ACLs instead of PLAINTEXT."""
    node_id, voters = (quorum.node_id, quorum.voters) if quorum else (1, f"1@127.0.0.1:{controller_port}")
    replicas = min(3, quorum.size) if quorum else 1
    min_isr = max(1, replicas - 1)
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
        f"node.id={node_id}",
        f"controller.quorum.voters={voters}",
        "controller.listener.names=CONTROLLER",
        *listener,
        f"log.dirs={work_dir / 'data'}",
        "num.partitions=1",
        "auto.create.topics.enable=true",
        f"default.replication.factor={replicas}",
        f"offsets.topic.replication.factor={replicas}",
        "offsets.topic.num.partitions=4",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        "transaction.state.log.num.partitions=4",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
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
                 detached: bool = False, heap_mb: int = 768, secured: SaslSslListener | None = None,
                 controller_port: int | None = None, quorum: Quorum | None = None) -> None:
        if port is not None:
            require_free_port(port, "Apache Kafka")
        if java_major_version() < 17:
            raise InfraError(f"Apache Kafka {version} needs Java 17 or newer. {_INSTALL_HINT}")
        self.version = version
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.quorum = quorum
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
        self._prepare()
        self._run(timeout_s)
        return self

    def launch(self) -> ApacheKafka:
        """Format (once) and start the node without waiting: a node of a larger quorum answers only once
        enough of the others run too. Storage formatted before is kept, so a killed node comes back
        with its logs."""
        self._prepare()
        assert self.process is not None
        self.process.start()
        return self

    def _prepare(self) -> None:
        """Write server.properties, format the storage unless it already is, and make the process."""
        libs = kafka_libs(self.version)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        props = self.work_dir / "server.properties"
        props.write_text(server_properties(self.work_dir, self.port, self.controller_port, self.secured, self.quorum))
        scram = self.secured.scram_arguments() if self.secured else []
        cluster_id = self.quorum.cluster_id if self.quorum else (_stored_cluster_id(self.work_dir) or _cluster_id())
        fmt = subprocess.run(self._java(libs, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                                        "-t", cluster_id, "-c", str(props), *scram),
                             capture_output=True, text=True, check=False)
        if fmt.returncode != 0:
            raise InfraError(f"Formatting Kafka storage in {self.work_dir} failed:\n{fmt.stdout}{fmt.stderr}")
        name = f"apache-kafka-{self.quorum.node_id}" if self.quorum else "apache-kafka"
        self.process = ManagedProcess(name=name, argv=self._java(libs, "kafka.Kafka", str(props)),
                                      log_path=self.work_dir / "kafka.log", detached=self.detached)

    def kill(self) -> None:
        """SIGKILL the broker's whole process group, as a crashed machine would stop: no controlled shutdown."""
        if self.process is not None and self.process.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.stop()

    def ready(self) -> bool:
        return kafka_ready(self.bootstrap, security=self.security)


class KafkaCluster(Service):
    """`nodes` Apache Kafka nodes on loopback forming one KRaft quorum (each broker and controller);
    internal topics are replicated to min(3, nodes). A context manager; `kill(i)` and `restart(i)`
    take node i down the hard way and bring it back with its storage, to test a broker that dies."""

    def __init__(self, work_dir: Path, nodes: int = 3, version: str = DEFAULT_VERSION, heap_mb: int = 384) -> None:
        controller_ports = [free_port() for _ in range(nodes)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controller_ports))
        cluster_id = _cluster_id()
        self.nodes = [ApacheKafka(Path(work_dir) / f"node-{i + 1}", version=version, heap_mb=heap_mb,
                                  controller_port=controller_ports[i], quorum=Quorum(i + 1, voters, cluster_id))
                      for i in range(nodes)]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, timeout_s: float = 120.0) -> KafkaCluster:
        """Start every node, then wait until each answers and lists every broker."""
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                self._wait(node, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, node: ApacheKafka, timeout_s: float) -> None:
        """Until `node` answers a metadata request and the cluster lists all its brokers."""
        def ready() -> bool:
            return node.ready() and brokers_listed(node.bootstrap) == len(self.nodes)

        wait_until(ready, timeout_s, f"Kafka node {node.quorum.node_id if node.quorum else 1}", node.process,
                   interval_s=0.5)

    def kill(self, index: int) -> None:
        """SIGKILL node `index` (0-based)."""
        self.nodes[index].kill()

    def restart(self, index: int, timeout_s: float = 120.0) -> None:
        """Start node `index` again on its storage and ports, and wait until the cluster lists it."""
        self._wait(self.nodes[index].launch(), timeout_s)

    def stop(self) -> None:
        """SIGKILL every node: their storage is thrown away, and a controlled shutdown of the last nodes
        waits for a quorum that the first ones to stop took with them."""
        for node in self.nodes:
            node.kill()


def brokers_listed(bootstrap: str) -> int:
    """How many brokers the cluster's metadata lists (0 when it does not answer)."""
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, client_id="explore-probe")
    except Exception:  # not up yet
        return 0
    try:
        return len(admin.describe_cluster()["brokers"])
    except Exception:  # not up yet
        return 0
    finally:
        admin.close()


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
