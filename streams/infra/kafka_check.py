"""Readiness, topics, access and round-trip checks against any Kafka-protocol broker, via kafka-python.

Every function takes the client's `KafkaSecurity` (plaintext by default), so the same checks run
against a secured cluster; failures at the first contact are explained (`KafkaAccessError`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

from streams.infra.process import tcp_open
from streams.kafka_security import PLAINTEXT, KafkaSecurity, explain_kafka_error


def _split(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def kafka_ready(bootstrap: str, timeout_s: float = 3.0, security: KafkaSecurity = PLAINTEXT) -> bool:
    """True when the broker answers a metadata request (Tansu lacks DescribeCluster)."""
    host, port = _split(bootstrap)
    if not tcp_open(host, port):
        return False
    from kafka import KafkaAdminClient

    ms = int(timeout_s * 1000)
    # A probe: any failure (connection, protocol, configuration) means "not ready yet".
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ms, client_id="explore-probe",
                                 **security.client_kwargs())
    except Exception:
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            admin.close()


@dataclass(frozen=True)
class TopicSpec:
    """A topic the engine needs, and what it does with it (for the access check's messages)."""

    name: str
    partitions: int
    compacted: bool = False
    operations: frozenset[str] = frozenset({"READ", "WRITE"})  # ACL operation names the user needs
    why: str = ""


class KafkaAccessError(RuntimeError):
    """The broker cannot be reached, refused the credentials, or withholds an operation the engine needs;
    the message says which setting or ACL to change."""


def replication(requested_factor: int, requested_min_insync: int, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for new topics on a cluster of `brokers` brokers.

    0 asks for the automatic choice: as many replicas as brokers, at most 3 (the embedded broker
    gets 1, a 3-broker cluster 3), and writes that need all but one of them, so one broker can be
    down without stopping the engine and no acknowledged write lives on a single broker.
    """
    factor = requested_factor or max(1, min(3, brokers))
    if factor > brokers:
        raise KafkaAccessError(f"replication factor {factor} needs {factor} brokers; the cluster has {brokers} "
                               "(set replication_factor, EXPLORE_REPLICATION_FACTOR, or 0 for automatic)")
    min_insync = requested_min_insync or max(1, factor - 1)
    if min_insync > factor:
        raise KafkaAccessError(f"min.insync.replicas {min_insync} exceeds the replication factor {factor}")
    return factor, min_insync


def missing_operations(authorized: list[str] | None, needed: frozenset[str]) -> set[str]:
    """The needed ACL operations a topic's `authorized_operations` lacks (Kafka's rules: ALL covers
    every operation, READ and WRITE imply DESCRIBE). None means the broker did not say: nothing known
    to be missing."""
    if authorized is None:
        return set()
    have = set(authorized)
    if "ALL" in have:
        return set()
    if have & {"READ", "WRITE", "DELETE", "ALTER"}:
        have.add("DESCRIBE")
    return set(needed) - have


class _ConnectionFailure(logging.Handler):
    """Keeps the most telling connection failure that kafka-python logs.

    Its bootstrap error only says "Unable to bootstrap"; the cause (the SASL answer, the TLS
    handshake) is in the log lines before it, a specific one beating "socket disconnected".
    """

    _SPECIFIC = ("SaslAuthentication", "Authorization", "SSL", "Handshake", "Invalid frame")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if not text.startswith(("Connection failed:", "Bootstrap connection to")):
            return
        cause = text.split("failed: ", 1)[-1].split(" (backoff", 1)[0]
        if not self.message or (any(s in cause for s in self._SPECIFIC)
                                and not any(s in self.message for s in self._SPECIFIC)):
            self.message = cause


def _admin(bootstrap: str, security: KafkaSecurity, client_id: str,  # type: ignore[no-untyped-def]
           timeout_s: float = 10.0):
    """An admin client, with the first contact's failure explained (TLS, credentials, listener)."""
    from kafka import KafkaAdminClient

    failure = _ConnectionFailure()
    logger = logging.getLogger("kafka")
    logger.addHandler(failure)
    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id,
                                bootstrap_timeout_ms=int(timeout_s * 1000), **security.client_kwargs())
    except Exception as exc:  # the client reports every first-contact failure its own way
        raise KafkaAccessError(explain_kafka_error(exc, bootstrap, security, failure.message)) from exc
    finally:
        logger.removeHandler(failure)


def create_topics(bootstrap: str, topics: list[TopicSpec], security: KafkaSecurity = PLAINTEXT,
                  replication_factor: int = 0, min_insync_replicas: int = 0) -> list[str]:
    """Create the topics that do not exist yet (replicated as `replication` decides); return their names.

    Only missing topics are created, so a user whose ACLs allow reading and writing a topic that an
    operator created, but not creating it, passes.
    """
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = _admin(bootstrap, security, "explore-admin")
    try:
        try:
            existing = set(admin.list_topics())
            missing = [t for t in topics if t.name not in existing]
            if not missing:
                return []
            brokers = len(admin.describe_cluster()["brokers"])
        except KafkaError as exc:
            raise KafkaAccessError(explain_kafka_error(exc, bootstrap, security)) from exc
        factor, min_insync = replication(replication_factor, min_insync_replicas, brokers)
        created = []
        for t in missing:
            configs = {"min.insync.replicas": str(min_insync)}
            if t.compacted:
                configs["cleanup.policy"] = "compact"
            spec = {t.name: {"num_partitions": t.partitions, "replication_factor": factor, "configs": configs}}
            try:
                admin.create_topics(spec)
                created.append(t.name)
            except TopicAlreadyExistsError:
                pass  # another worker created it meanwhile
            except KafkaError as exc:
                raise KafkaAccessError(f"creating topic {t.name!r}: "
                                       + explain_kafka_error(exc, bootstrap, security)) from exc
        return created
    finally:
        admin.close()


def create_topic(bootstrap: str, name: str, partitions: int = 1, compacted: bool = False,
                 security: KafkaSecurity = PLAINTEXT, replication_factor: int = 0,
                 min_insync_replicas: int = 0) -> None:
    """Create a topic if it does not exist yet."""
    create_topics(bootstrap, [TopicSpec(name, partitions, compacted)], security, replication_factor,
                  min_insync_replicas)


_TOPIC_AUTHORIZATION_FAILED = 29  # Kafka's error code


def _group_visible(admin, group: str) -> bool:  # type: ignore[no-untyped-def]
    """False when the broker refuses this user the consumer group (not even DESCRIBE: finding its
    coordinator fails with an authorization error). Any other answer, including a coordinator not
    ready yet on a fresh cluster or an answer the client cannot parse (Tansu's), says nothing against
    the user, so it counts as visible."""
    from kafka.errors import GroupAuthorizationFailedError

    try:
        admin.describe_groups([group])
    except GroupAuthorizationFailedError:
        return False
    except Exception:  # a probe: only an explicit refusal is evidence
        pass
    return True


def _error_name(code: int) -> str:
    from kafka.errors import for_code

    return for_code(code).__name__


_NOT_YET_KNOWN = (3, 5)  # UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE


def _describe_settled(admin, names: list[str], timeout_s: float = 15.0) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """Each topic's metadata, asked again while a broker does not know a topic yet.

    On a cluster of several brokers a topic that one broker already lists can be unknown to the broker
    the next request reaches, for a moment: on 3 brokers the access check called topics the engine had
    just created and waited for "unknown", and the worker refused to start.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        described = {t["name"]: t for t in admin.describe_topics(names)}
        if time.monotonic() > deadline or not any(d.get("error_code", 0) in _NOT_YET_KNOWN
                                                  for d in described.values()):
            return described
        time.sleep(0.2)


def check_access(bootstrap: str, topics: list[TopicSpec], security: KafkaSecurity = PLAINTEXT,
                 group: str = "") -> None:
    """Raise a `KafkaAccessError` naming every topic operation the broker withholds from this user.

    A worker that may not write the DLQ would otherwise start, run, and fail only when the first
    bad record arrives; the broker says per topic what the user may do (metadata with authorized
    operations), so it is asked once, before the worker subscribes.
    """
    admin = _admin(bootstrap, security, "explore-access")
    problems = []
    try:
        described = _describe_settled(admin, [t.name for t in topics])
        if group and not _group_visible(admin, group):
            problems.append(f"consumer group {group!r}: no READ permission (the workers share the partitions in it)")
    finally:
        admin.close()
    for t in topics:
        info = described.get(t.name, {})
        code = info.get("error_code", 0)
        if code == _TOPIC_AUTHORIZATION_FAILED:  # not even DESCRIBE: the broker hides the topic
            lacking = set(t.operations) | {"DESCRIBE"}
        elif code:
            problems.append(f"topic {t.name!r}: the broker answers error {code} ({_error_name(code)})")
            continue
        else:
            lacking = missing_operations(info.get("authorized_operations"), t.operations)
        if lacking:
            problems.append(f"topic {t.name!r}: no {'/'.join(sorted(lacking))} permission"
                            + (f" ({t.why})" if t.why else ""))
    if problems:
        who = f"user {security.username!r}" if security.uses_sasl else "this client"
        raise KafkaAccessError(f"Kafka at {bootstrap} does not allow {who} what the engine needs: "
                               + "; ".join(problems) + ". Grant these operations with ACLs "
                               "(kafka-acls --add --allow-principal User:NAME --operation OP --topic TOPIC)")


def wait_for_topics(bootstrap: str, partitions: dict[str, int], timeout_s: float = 30.0,
                    security: KafkaSecurity = PLAINTEXT) -> None:
    """Until the broker's metadata shows every topic with its number of partitions."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, client_id="explore-topics",
                             **security.client_kwargs())
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            missing = [t for t, n in partitions.items() if len(consumer.partitions_for_topic(t) or ()) != n]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not visible in the broker's metadata after {timeout_s:.0f} s: {missing}")
            time.sleep(0.2)
            consumer.topics()  # refreshes the metadata
    finally:
        consumer.close()


def kafka_round_trip(bootstrap: str, n: int = 20, timeout_s: float = 30.0,
                     security: KafkaSecurity = PLAINTEXT) -> dict[str, float]:
    """Produce `n` keyed records to a fresh topic and read them back; raise if any is missing.

    Returns timings, so the demo can print what it measured.
    """
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"explore-roundtrip-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    create_topic(bootstrap, topic, security=security)
    sent = [f"record-{i}".encode() for i in range(n)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **security.client_kwargs())
    try:
        for i, value in enumerate(sent):
            producer.send(topic, key=f"user-{i % 3}".encode(), value=value)
        producer.flush(timeout=timeout_s)
    finally:
        producer.close()
    t_produced = time.perf_counter()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100,
                             **security.client_kwargs())
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend(r.value for r in records)
    finally:
        consumer.close()
    if got != sent:
        raise RuntimeError(f"Kafka round trip on {bootstrap}: sent {n} records, read back {len(got)} "
                           f"({'out of order' if sorted(got) == sorted(sent) else 'missing or extra'})")
    t_done = time.perf_counter()
    return {"records": float(n), "produce_s": t_produced - t0, "consume_s": t_done - t_produced}
