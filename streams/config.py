"""Engine configuration: defaults, then a config file, then the environment, then the command line.

Every setting has one name in three spellings: the field (`batch_size`), the environment
variable (`EXPLORE_BATCH_SIZE`; a few keep their common names such as `KAFKA_BOOTSTRAP` and
`TRITON_URL`) and the config-file key (TOML or JSON, the field name). `explore serve --help`
prints the table below, so the documentation and the code cannot drift apart.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import tomllib
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from streams.inference.tls import TritonTLS
from streams.kafka_security import KafkaSecurity

POLICIES = ("auto", "mixture", "lm")  # setting `policy`


@dataclass(frozen=True, slots=True)
class Horizon:
    """How long a proposal may wait for the user: `events` interactions, `seconds` of event time (0: no limit)."""

    events: int
    seconds: float


def _setting(default: Any, help: str, env: str | None = None, secret: bool = False) -> Any:
    """A setting: its default, its help line, its environment variable (default EXPLORE_<NAME>);
    a secret one stays out of the config's repr, so it never reaches a log line or a traceback."""
    return field(default=default, repr=not secret, metadata={"help": help, "env": env})


def _parse_bool(value: Any) -> bool:
    """A boolean setting from a config file (a bool) or the environment (text: true/false, 1/0, yes/no)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


@dataclass(frozen=True)
class EngineConfig:
    bootstrap: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers (host:port[,host:port])", "KAFKA_BOOTSTRAP")
    app_id: str = _setting("interest-explorer", "Faust app id: consumer group and prefix of the changelog topics")
    interactions_topic: str = _setting("interactions", "input topic, keyed by user id")
    dlq_topic: str = _setting("interactions-dlq", "rejected input records, unchanged, reason in the headers")
    recommendations_topic: str = _setting("recommendations", "output topic: novel clusters and slates")
    novelty_topic: str = _setting("novel-interests", "compacted topic with the precomputed novelty table")
    items_topic: str = _setting("items", "compacted topic of items published after the catalog (issue 27): "
                                         "`explore items publish`")
    models_topic: str = _setting("model-sets", "compacted control topic of the model sets (`explore models publish`, "
                                               "`rollback`): every worker serves the set it names")
    retry_topic: str = _setting("", "events on items not published yet wait here, keyed by user; empty: the "
                                    "interactions topic's name + '-retry' (each input its own: a worker sends "
                                    "what waited back to its own input)")
    unknown_item_wait_s: float = _setting(600.0, "how long an event on an unknown item waits for its item to be "
                                                 "published (retry topic) before it goes to the DLQ as "
                                                 "unknown_item; 0: straight to the DLQ")
    retry_interval_s: float = _setting(5.0, "how often a waiting event looks again for its item, at first (each look "
                                            "reads and writes it again: N waiting events cost N / this records a "
                                            "second)")
    retry_backoff_s: str = _setting("30,300", "the looks of events that have waited long: comma-separated intervals "
                                              "(seconds, increasing) of further retry topics (the retry topic's name "
                                              "+ '-1', '-2', ...); an event moves to the next once it has waited "
                                              "that long (default: every 5 s for 30 s, every 30 s until 5 min, then "
                                              "every 5 min: 16 looks in 10 min instead of 120); empty: every look "
                                              "after retry_interval_s")
    feedback_topic: str = _setting("exploration-feedback", "output topic: one record per proposed novel cluster "
                                                           "once it resolves (accepted or not)")
    partitions: int = _setting(8, "partitions of the topics the engine creates (the interactions topic too)")
    catalog: str = _setting("", "catalog directory (`explore clusters build --out`)")
    catalogs: str = _setting("", "directory of earlier and published catalogs (one sub-directory each; `explore "
                                 "models publish` names them by version): a model set's catalog is read there, and "
                                 "a user whose "
                                 "state was written under one of them keeps its known clusters older than its "
                                 "history, mapped by shared items (streams.core.migration); empty: the "
                                 "history's alone")
    repository: str = _setting("", "Triton model repository with seqrec/ and interest_generator/ "
                                   "(the in-process fallback runs the same files)")
    triton_url: str = _setting("", "Triton gRPC host:port; empty: in-process onnxruntime only", "TRITON_URL")
    triton_timeout_s: float = _setting(2.0, "timeout of one Triton request")
    triton_retries: int = _setting(1, "retries of a failed Triton request before falling back")
    triton_retry_after_s: float = _setting(5.0, "after a failure, time on the fallback before Triton is tried again")
    policy: str = _setting("auto", "novelty policy: mixture (the repository's `explorer`: the fitted mixture of "
                                   "experts, its novel clusters and the slate in one model call), lm (the LM's "
                                   "table row alone, then `seqrec`), auto (mixture when the repository holds "
                                   "explorer)")
    k: int = _setting(2, "context length: the user's last K distinct clusters")
    m: int = _setting(3, "novel clusters per slate")
    n: int = _setting(10, "items per slate")
    recent_items: int = _setting(200, "items kept per user (the model sees its max_len newest; "
                                      "slates never repeat any of them)")
    dedupe_ids: int = _setting(64, "recent event ids kept per user to drop duplicate deliveries")
    slate_max_age_s: float = _setting(86400.0, "event-time age after which a slate is renewed without a context change")
    feedback_horizon_events: int = _setting(20, "a proposed novel cluster is accepted when one of the user's next this "
                                                "many events lands in it, else not; 0: no event limit")
    feedback_horizon_s: float = _setting(86400.0, "a proposed novel cluster counts as accepted only within this much "
                                                  "event time after its slate; 0: no time limit (at least one of the "
                                                  "two horizons must be set)")
    feedback_max_open: int = _setting(20, "open slates remembered per user for feedback; a newer one resolves the "
                                          "oldest as evicted, without a label (bounds the state); below "
                                          "feedback_horizon_events a user who changes context often loses labels")
    batch_size: int = _setting(500, "events per micro-batch (Faust take)")
    batch_within_ms: int = _setting(20, "longest wait to fill a micro-batch")
    max_payload_bytes: int = _setting(4096, "larger input records go to the DLQ")
    max_future_s: float = _setting(86400.0, "event timestamps further ahead of the worker's clock go to the DLQ")
    max_id_length: int = _setting(256, "longer user, item and event ids (characters; ints as written) go to the DLQ "
                                       "(event ids are kept in the state, so this bounds its size)")
    max_key_bytes: int = _setting(256, "input records with a longer key go to the DLQ")
    user_ttl_s: float = _setting(0.0, "forget a user (tombstone in the changelog) this long after its last event was "
                                      "applied (worker clock); 0: never")
    fetch_max_wait_ms: int = _setting(100, "longest a fetch waits on the broker for data (Faust's own 1500 ms "
                                           "is added to every event's latency by a broker that does not wake a "
                                           "waiting fetch, such as the embedded one)")
    store: str = _setting("memory://", "table store: memory:// or rocksdb:// (rocksdict)")
    gc_young_threshold: int = _setting(100_000, "allocations between CPython's young cyclic-GC collections "
                                                "(CPython's default: 700; users' states are millions of small "
                                                "objects the collector would rescan: recovery 3x slower)")
    data_dir: str = _setting("", "worker data directory (default: $EXPLORE_HOME/worker/APP_ID)")
    web_port: int = _setting(6066, "port of /metrics, /health, /ready and /users/{id}")
    web_host: str = _setting("127.0.0.1", "address the web server binds")
    advertised_url: str = _setting("", "URL at which the other workers reach this one's web server (GET /users/{id} "
                                       "asks the worker that holds the user); empty: http://WEB_HOST:WEB_PORT, "
                                       "or this host's address when WEB_HOST binds every interface")
    threads: int = _setting(1, "onnxruntime threads of the in-process fallback")
    kafka_security_protocol: str = _setting("PLAINTEXT", "how every Kafka client connects: PLAINTEXT, SSL, "
                                                         "SASL_PLAINTEXT or SASL_SSL", "KAFKA_SECURITY_PROTOCOL")
    kafka_sasl_mechanism: str = _setting("PLAIN", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                                         "KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str = _setting("", "SASL user name", "KAFKA_SASL_USERNAME")
    kafka_sasl_password: str = _setting("", "SASL password", "KAFKA_SASL_PASSWORD", secret=True)
    kafka_ssl_cafile: str = _setting("", "PEM file of the CA that signed the brokers' certificates "
                                         "(empty: the system's CAs)", "KAFKA_SSL_CAFILE")
    kafka_ssl_certfile: str = _setting("", "PEM client certificate, for brokers that ask for one",
                                       "KAFKA_SSL_CERTFILE")
    kafka_ssl_keyfile: str = _setting("", "PEM private key of the client certificate", "KAFKA_SSL_KEYFILE")
    kafka_ssl_check_hostname: bool = _setting(True, "check that a broker's certificate names the host dialled",
                                              "KAFKA_SSL_CHECK_HOSTNAME")
    replication_factor: int = _setting(0, "replicas of each topic the engine creates; 0: as many brokers as the "
                                          "cluster has, at most 3")
    min_insync_replicas: int = _setting(0, "min.insync.replicas of the topics the engine creates (a write needs "
                                           "this many replicas); 0: replication_factor - 1, at least 1")
    triton_ssl: bool = _setting(False, "TLS for Triton's gRPC (the server runs with --grpc-use-ssl)", "TRITON_SSL")
    triton_ssl_root_certs: str = _setting("", "PEM CA file that signed Triton's certificate (empty: the system's)",
                                          "TRITON_SSL_ROOT_CERTS")
    triton_ssl_certfile: str = _setting("", "PEM client certificate for Triton (--grpc-use-ssl-mutual)",
                                        "TRITON_SSL_CERTFILE")
    triton_ssl_keyfile: str = _setting("", "PEM private key of that client certificate", "TRITON_SSL_KEYFILE")
    web_token: str = _setting("", "bearer token that /users/{id} and /live require (workers send it to each "
                                  "other); empty: no token", secret=True)
    key_partitioner: str = _setting("murmur2", "how producers of the interactions topic partition by key: murmur2 "
                                               "(Java, kafka-python, aiokafka) or crc32 (librdkafka's default); "
                                               "/users/{id} asks the worker that owns the key's partition")

    @classmethod
    def env_name(cls, name: str) -> str:
        meta = next(f for f in fields(cls) if f.name == name).metadata
        return meta.get("env") or f"EXPLORE_{name.upper()}"

    @classmethod
    def load(cls, path: str | Path | None = None, env: dict[str, str] | None = None,
             **overrides: Any) -> EngineConfig:
        """Defaults < config file (`path` or $EXPLORE_CONFIG) < environment < `overrides` (not None)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        path = path or env.get("EXPLORE_CONFIG")
        if path:
            values.update(read_file(Path(path)))
        for f in fields(cls):
            name = cls.env_name(f.name)
            if env.get(name, "") != "":
                values[f.name] = env[name]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls().with_values(values)

    def with_values(self, values: dict[str, Any]) -> EngineConfig:
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        typed = {}
        for name, value in values.items():
            kind = type(known[name].default)
            try:
                typed[name] = _parse_bool(value) if kind is bool else kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"setting {name} ({self.env_name(name)}): {value!r} "
                                 f"is not a {kind.__name__}") from None
        cfg = replace(self, **typed)
        cfg.check()
        return cfg

    @property
    def waiting_topic(self) -> str:
        """The retry topic's name: setting `retry_topic`, or the interactions topic's + '-retry'."""
        return self.retry_topic or f"{self.interactions_topic}-retry"

    @property
    def retry_intervals(self) -> tuple[float, ...]:
        """The interval of each retry topic, the first's `retry_interval_s` (`streams.core.items.retry_tier`)."""
        return (self.retry_interval_s, *(float(x) for x in self.retry_backoff_s.split(",") if x.strip()))

    @property
    def retry_topics(self) -> list[str]:
        """The retry topics, one per interval: the retry topic, then its name + '-1', '-2', ..."""
        return [self.waiting_topic, *(f"{self.waiting_topic}-{i}" for i in range(1, len(self.retry_intervals)))]

    def check(self) -> None:
        for name in ("k", "m", "n", "partitions", "batch_size", "recent_items", "dedupe_ids", "max_payload_bytes",
                     "fetch_max_wait_ms", "max_id_length", "max_key_bytes", "feedback_max_open", "gc_young_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name} must be at least 1, got {getattr(self, name)}")
        if self.feedback_horizon_events < 0 or self.feedback_horizon_s < 0 or not (
                self.feedback_horizon_events or self.feedback_horizon_s):
            raise ValueError("settings feedback_horizon_events and feedback_horizon_s must be 0 (off) or more, "
                             "and not both 0: a proposal must resolve some time")
        if 0 < self.feedback_max_open < self.feedback_horizon_events:
            # Allowed (state is the price of labels), but said: at 8 against a horizon of 20 events, 55 % of the
            # proposals in `explore loop ab` were evicted unlabelled (a new slate comes with each context change).
            warnings.warn(f"feedback_max_open ({self.feedback_max_open}) is below feedback_horizon_events "
                          f"({self.feedback_horizon_events}): a user who changes context more often than that "
                          "within the horizon has proposals evicted without a label", stacklevel=3)
        if self.unknown_item_wait_s < 0 or self.retry_interval_s <= 0:
            raise ValueError("setting unknown_item_wait_s must be 0 (no wait) or more, retry_interval_s more than 0")
        try:
            intervals = self.retry_intervals
        except ValueError:
            raise ValueError(f"setting retry_backoff_s: {self.retry_backoff_s!r} is not a comma-separated list of "
                             "seconds") from None
        if any(b <= a for a, b in itertools.pairwise(intervals)):
            raise ValueError(f"setting retry_backoff_s: {self.retry_backoff_s!r} must increase, each interval longer "
                             f"than the one before (retry_interval_s = {self.retry_interval_s:g})")
        if self.user_ttl_s < 0:
            raise ValueError(f"setting user_ttl_s must be 0 (never) or more, got {self.user_ttl_s}")
        if self.store not in ("memory://", "rocksdb://"):
            raise ValueError(f"setting store must be memory:// or rocksdb://, got {self.store!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"setting policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.replication_factor < 0 or self.min_insync_replicas < 0:
            raise ValueError("settings replication_factor and min_insync_replicas must be 0 (automatic) or more")
        if self.replication_factor and self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"setting min_insync_replicas ({self.min_insync_replicas}) cannot exceed "
                             f"replication_factor ({self.replication_factor}): no write could succeed")
        if self.key_partitioner not in ("murmur2", "crc32"):
            raise ValueError(f"setting key_partitioner must be murmur2 or crc32, got {self.key_partitioner!r}")
        if (self.triton_ssl_root_certs or self.triton_ssl_certfile or self.triton_ssl_keyfile) and not self.triton_ssl:
            raise ValueError("Triton TLS files are set but triton_ssl (TRITON_SSL) is off")
        self.kafka_security()  # its own checks: protocol, mechanism, credentials, files
        self.triton_tls()

    def kafka_security(self) -> KafkaSecurity:
        """How every Kafka client of the engine and its commands connects."""
        try:
            return KafkaSecurity(self.kafka_security_protocol, self.kafka_sasl_mechanism, self.kafka_sasl_username,
                                 self.kafka_sasl_password, self.kafka_ssl_cafile, self.kafka_ssl_certfile,
                                 self.kafka_ssl_keyfile, self.kafka_ssl_check_hostname)
        except ValueError as e:
            raise ValueError(f"Kafka security settings (kafka_*, KAFKA_*): {e}") from None

    def triton_tls(self) -> TritonTLS | None:
        """TLS for the Triton gRPC client, or None for a plaintext channel."""
        if not self.triton_ssl:
            return None
        return TritonTLS(self.triton_ssl_root_certs, self.triton_ssl_certfile, self.triton_ssl_keyfile)

    def feedback_horizon(self) -> Horizon:
        """How long a proposed cluster waits for the user before it resolves as not accepted."""
        return Horizon(self.feedback_horizon_events, self.feedback_horizon_s)

    def canonical_url(self) -> str:
        """Where other workers reach this worker's web server (Faust's `canonical_url`).

        A wildcard bind address cannot be dialled, so it is replaced by the address this host's
        name resolves to: inside a container, the container's address on its network.
        """
        if self.advertised_url:
            return self.advertised_url.rstrip("/")
        host = self.web_host
        if host in ("", "0.0.0.0", "::"):
            try:
                host = socket.gethostbyname(socket.gethostname())
            except OSError as exc:
                raise ValueError(f"web_host {self.web_host!r} binds every interface and this host's name "
                                 f"({socket.gethostname()}) does not resolve ({exc}): set advertised_url "
                                 f"({self.env_name('advertised_url')}) to where other workers reach it") from None
        return f"http://{host}:{self.web_port}"

    def as_env(self) -> dict[str, str]:
        """The configuration as environment variables (to start a worker process with)."""
        return {self.env_name(f.name): str(getattr(self, f.name)) for f in fields(self)}


def read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"config file {path} not found")
    text = path.read_text()
    try:
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"config file {path}: {exc}") from None
    return doc.get("engine", doc) if isinstance(doc, dict) else {}


def describe() -> str:
    """The settings table for `--help`: name, environment variable, default, meaning."""
    rows = [(f.name, EngineConfig.env_name(f.name), repr(f.default), f.metadata["help"]) for f in fields(EngineConfig)]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"  {a:<{w0}}  {b:<{w1}}  {d} (default {c})" for a, b, c, d in rows)
