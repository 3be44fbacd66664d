"""A precompute worker: requests in, table rows out, one Kafka transaction per batch.

Each batch of requests (`streams.precompute.jobs`) is answered by Triton's `interest_generator` (no
exclusions: the user-independent answer the engine's live fills store too), and its rows go to the
novelty topic together with the batch's input offsets in one transaction
(`send_offsets_to_transaction`). Rows and progress are committed together or not at all, so a worker
killed at any point loses nothing (its uncommitted batch is read again by whoever takes its
partitions) and duplicates nothing (the rows of its open transaction are aborted, invisible to the
read_committed readers: the engine's table follower, the other workers, `enqueue`).

`worker_id` names the worker twice: in its transactional id (the group and the id) and as its static
group membership (`group.instance.id`). A worker started again under the same id aborts its
predecessor's open transaction at once and takes its partitions back without a rebalance; under a new
id, that transaction holds the readers of the novelty topic back until it times out
(`transaction_timeout_s`) and the dead worker's partitions move after the 10 s session timeout. Two
live workers under one id fence each other: the first stops (ProducerFencedError). A plain kafka-python consumer, not
Faust: the work is one model call and one transaction per batch, and nothing here needs a table.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streams.core.metrics import PrecomputeMetrics
from streams.core.model_files import NoveltyServing
from streams.core.table import context_key, ranked_row, row_value
from streams.inference.router import row_chunks
from streams.inference.tls import TritonTLS
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.precompute.jobs import REQUESTS_TOPIC, first_offsets, next_offsets, parse_request

log = logging.getLogger(__name__)
WORKER_HEADER = "precompute-worker"  # on every row: which worker (id/pid) published it


class Proposer(Protocol):
    def propose(self, contexts: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class WorkerSettings:
    bootstrap: str
    serving: NoveltyServing
    requests_topic: str = REQUESTS_TOPIC
    novelty_topic: str = "novel-interests"
    group: str = "novelty-precompute"
    worker_id: str = field(default_factory=socket.gethostname)
    batch: int = 64
    idle_exit_s: float = 0.0  # 0: run until stopped; else exit after this long without a request
    transaction_timeout_s: float = 30.0
    backoff_s: float = 1.0
    security: KafkaSecurity = PLAINTEXT

    @property
    def transactional_id(self) -> str:
        return f"{self.group}.{self.worker_id}"


@dataclass
class Totals:
    """What a worker did, printed as JSON when it stops (the benchmark and the resume test read it)."""

    worker: str
    published: int = 0
    skipped: int = 0
    batches: int = 0
    aborted: int = 0
    triton_s: float = 0.0
    publish_s: float = 0.0
    seconds: float = 0.0

    def line(self) -> str:
        return json.dumps({"precompute_worker": self.__dict__})


def propose_rows(model: Proposer, contexts: list[list[int]], n_clusters: int,
                 max_batch: int | None) -> list[tuple[list[int], list[float]]]:
    """`interest_generator`'s answers for `contexts` without exclusions, in calls of at most `max_batch` rows."""
    inputs = {"context": np.asarray(contexts, np.int64), "exclude": np.zeros((len(contexts), n_clusters), bool)}
    rows = []
    for chunk in row_chunks(inputs, max_batch):
        clusters, scores = model.propose(chunk["context"], chunk["exclude"])
        rows += [ranked_row(c, s) for c, s in zip(clusters.tolist(), scores.tolist(), strict=True)]
    return rows


class PrecomputeWorker:
    """The loop: poll a batch, answer it, publish rows and offsets in one transaction; on failure abort
    and read the batch again."""

    def __init__(self, settings: WorkerSettings, model: Proposer, metrics: PrecomputeMetrics | None = None) -> None:
        self.s, self.model = settings, model
        self.metrics = metrics or PrecomputeMetrics()
        self.totals = Totals(settings.worker_id)
        self.header = [(WORKER_HEADER, f"{settings.worker_id}/{os.getpid()}".encode())]
        self.consumer: Any = None
        self.producer: Any = None

    def open(self) -> None:
        """Join the group and take over the transactional id (aborting a predecessor's open transaction)."""
        from kafka import KafkaConsumer, KafkaProducer

        s = self.s
        self.consumer = KafkaConsumer(s.requests_topic, bootstrap_servers=s.bootstrap, group_id=s.group,
                                      enable_auto_commit=False, isolation_level="read_committed",
                                      auto_offset_reset="earliest", max_poll_records=s.batch,
                                      group_instance_id=s.worker_id, session_timeout_ms=10_000,
                                      **s.security.client_kwargs())
        self.producer = KafkaProducer(bootstrap_servers=s.bootstrap, transactional_id=s.transactional_id,
                                      transaction_timeout_ms=int(s.transaction_timeout_s * 1000), acks="all",
                                      linger_ms=5, **s.security.client_kwargs())
        self.producer.init_transactions()

    def run(self, stop: threading.Event) -> Totals:
        """Work until `stop` is set (or `idle_exit_s` passes without a request); the totals."""
        t0 = idle_since = time.monotonic()
        while not stop.is_set():
            if self.step():
                idle_since = time.monotonic()
            elif self.s.idle_exit_s and time.monotonic() - idle_since >= self.s.idle_exit_s:
                break
        self.totals.seconds = round(time.monotonic() - t0, 3)
        return self.totals

    def step(self) -> bool:
        """One poll and its batch; whether it brought requests."""
        polled = self.consumer.poll(timeout_ms=500, max_records=self.s.batch)
        records = [r for batch in polled.values() for r in batch]
        if records:
            self.handle(records)
        self.metrics.lag.set(self._lag())
        self.metrics.partitions.set(len(self.consumer.assignment()))
        return bool(records)

    def handle(self, records: list) -> None:
        """Answer one batch and commit it; a failure aborts it and rewinds the consumer to its start."""
        s, m = self.s, self.metrics
        parsed = [parse_request(r.key, r.value, s.serving.catalog_version, s.serving.k, s.serving.n_clusters)
                  for r in records]
        contexts = [p for p in parsed if not isinstance(p, str)]
        try:
            t0 = time.perf_counter()
            rows = propose_rows(self.model, contexts, s.serving.n_clusters, s.serving.max_batch) if contexts else []
            spent = time.perf_counter() - t0
            m.seconds.labels("triton").observe(spent)
            self.totals.triton_s += spent
        except Exception as exc:  # Triton down or refusing: nothing was published; read the batch again
            self._failed(records, "triton", exc)
            return
        try:
            t0 = time.perf_counter()
            self._publish(contexts, rows, records)
            spent = time.perf_counter() - t0
            m.seconds.labels("publish").observe(spent)
            self.totals.publish_s += spent
        except Exception as exc:
            self._abort()
            self._failed(records, "kafka", exc)
            return
        self._count(parsed)

    def _publish(self, contexts: list[list[int]], rows: list[tuple[list[int], list[float]]], records: list) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        s = self.s
        self.producer.begin_transaction()
        for context, (clusters, scores) in zip(contexts, rows, strict=True):
            value = row_value(clusters, scores, s.serving.catalog_version, source="precompute")
            self.producer.send(s.novelty_topic, key=context_key(context), value=value, headers=self.header)
        offsets = {TopicPartition(s.requests_topic, p): OffsetAndMetadata(o, "", -1)
                   for p, o in next_offsets((r.partition, r.offset) for r in records).items()}
        self.producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
        self.producer.commit_transaction()

    def _count(self, parsed: list) -> None:
        m, t = self.metrics, self.totals
        for p in parsed:
            m.contexts.labels(p if isinstance(p, str) else "published").inc()
        t.published += sum(1 for p in parsed if not isinstance(p, str))
        t.skipped += sum(1 for p in parsed if isinstance(p, str))
        t.batches += 1
        m.batches.labels("committed").inc()

    def _abort(self) -> None:
        """Abort the open transaction; a producer that cannot (fenced: another worker took this id) stops."""
        from kafka.errors import ProducerFencedError

        try:
            self.producer.abort_transaction()
        except ProducerFencedError:
            raise
        except Exception as exc:  # an abort that fails leaves the broker to time the transaction out
            log.warning(f"aborting the transaction failed ({type(exc).__name__}: {exc})")

    def _failed(self, records: list, stage: str, exc: Exception) -> None:
        from kafka import TopicPartition
        from kafka.errors import ProducerFencedError

        if isinstance(exc, ProducerFencedError):
            raise exc  # another worker runs under this transactional id: this one must stop
        log.warning(f"batch of {len(records)} requests failed at {stage} ({type(exc).__name__}: {exc}); "
                    f"reading it again in {self.s.backoff_s:g} s")
        self.metrics.errors.labels(stage).inc()
        self.metrics.batches.labels("aborted").inc()
        self.totals.aborted += 1
        assigned = self.consumer.assignment()
        for partition, offset in first_offsets((r.partition, r.offset) for r in records).items():
            tp = TopicPartition(self.s.requests_topic, partition)
            if tp in assigned:  # a partition moved away meanwhile starts from the group's committed offset
                self.consumer.seek(tp, offset)
        time.sleep(self.s.backoff_s)

    def _lag(self) -> int:
        lag = 0
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - self.consumer.position(tp))
        return lag

    def close(self) -> None:
        for client in (self.consumer, self.producer):
            if client is not None:
                client.close()


def serve(settings: WorkerSettings, triton_url: str, triton_timeout_s: float = 60.0, metrics_port: int = 0,
          tls: TritonTLS | None = None, stop: threading.Event | None = None) -> Totals:
    """A worker against Triton at `triton_url`, with /metrics on `metrics_port` (0: none), until stopped."""
    from prometheus_client import start_http_server

    from streams.inference.novelty import TritonNovelty

    metrics = PrecomputeMetrics()
    if metrics_port:
        start_http_server(metrics_port, registry=metrics.registry)
    worker = PrecomputeWorker(settings, TritonNovelty(triton_url, timeout_s=triton_timeout_s, tls=tls), metrics)
    try:
        worker.open()
        return worker.run(stop or threading.Event())
    finally:
        worker.close()
