"""The distributed precompute on Apache Kafka and a real Triton: a worker killed mid-job resumes without
loss or duplication of published rows.

On Apache Kafka because restarts are tested there (Tansu is the demo's broker). The novelty topic is
created without compaction here, so that a duplicated row cannot be hidden by the cleaner.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from streams.core.model_files import novelty_serving
from streams.core.table import decode_row, parse_row, ranked_row
from streams.inference.novelty import TritonNovelty
from streams.infra.kafka_check import create_topic
from streams.precompute.worker import WORKER_HEADER

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parents[1]  # tests/integration, where precompute_crash.py is
BATCH, KILL_AT = 4, 3  # worker 1 commits 2 batches and dies inside its 3rd transaction


def read_all(bootstrap: str, topic: str, isolation: str) -> list:
    """Every record of `topic` a reader with this isolation level sees, to the end it reports."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level=isolation, auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        end = consumer.end_offsets(tps)
        records: list = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def first_pid(run: subprocess.CompletedProcess) -> int:
    """The pid the crashing worker printed before its first batch (tests/integration/precompute_crash.py)."""
    return int(run.stdout.split("pid ", 1)[1].split()[0])


def explore(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explore", "novelty", *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def test_a_killed_worker_resumes_without_loss_or_duplication(apache_bootstrap: str, triton, novelty_artifacts,
                                                              tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    serving = novelty_serving(triton.repository)
    contexts = [list(c) for c in itertools.permutations(range(serving.n_clusters), serving.k)]
    job = ["--repository", str(triton.repository), "--bootstrap", apache_bootstrap, "--requests-topic",
           f"requests-{tag}", "--topic", f"novel-{tag}", "--group", f"precompute-{tag}"]
    create_topic(apache_bootstrap, f"novel-{tag}", partitions=1, compacted=False)
    enq = explore("enqueue", "--all-contexts", "--partitions", "3", *job)
    assert enq.returncode == 0, enq.stderr
    assert f"enqueued {len(contexts)} requests" in enq.stdout

    worker = [*job, "--triton-url", triton.grpc, "--worker-id", "w1", "--batch", str(BATCH)]
    first = subprocess.run([sys.executable, str(HERE / "precompute_crash.py"), str(KILL_AT), *worker],
                           capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == -9, first.stderr  # SIGKILL, inside its third transaction
    second = explore("precompute-worker", *worker, "--idle-exit-s", "3")
    assert second.returncode == 0, second.stderr
    totals = json.loads(second.stdout.strip().splitlines()[-1])["precompute_worker"]

    committed = read_all(apache_bootstrap, f"novel-{tag}", "read_committed")
    everything = read_all(apache_bootstrap, f"novel-{tag}", "read_uncommitted")
    keys = Counter(r.key for r in committed)
    assert sorted(keys) == sorted(",".join(map(str, c)).encode() for c in contexts)  # no loss
    assert set(keys.values()) == {1}  # no duplicate
    # a poll may bring fewer than BATCH requests, so the counts come from the rows' headers
    by_process = Counter(dict(r.headers)[WORKER_HEADER].decode().split("/")[1] for r in committed)
    first_rows = by_process.pop(str(first_pid(first)), 0)
    assert 0 < first_rows <= (KILL_AT - 1) * BATCH and list(by_process.values()) == [len(contexts) - first_rows]
    # nothing published before the kill was recomputed: the second worker answered the rest only, and
    # the killed transaction's rows are on the log, aborted, seen by a read_uncommitted reader alone
    assert totals["published"] == len(contexts) - first_rows and totals["aborted"] == 0
    assert 0 < len(everything) - len(contexts) <= BATCH

    model = TritonNovelty(triton.grpc)  # each row is the model's own answer for its context
    try:
        ctx = np.array(contexts, np.int64)
        clusters, scores = model.propose(ctx, np.zeros((len(ctx), serving.n_clusters), bool))
    finally:
        model.close()
    expected = {",".join(map(str, c)).encode(): ranked_row(cs, ss)
                for c, cs, ss in zip(contexts, clusters.tolist(), scores.tolist(), strict=True)}
    for r in committed:
        row = parse_row(r.key, r.value, serving.catalog_version, serving.k, serving.n_clusters)
        assert not isinstance(row, str) and row[0] == expected[r.key][0], r.key
        assert np.allclose(row[1], expected[r.key][1], atol=1e-4), r.key  # other batch shapes, same answer
        assert decode_row(r.value)["source"] == "precompute"

    status = explore("precompute-status", "--bootstrap", apache_bootstrap, "--requests-topic", f"requests-{tag}",
                     "--group", f"precompute-{tag}")
    assert f"{len(contexts)} of {len(contexts)} requests answered, 0 left" in status.stdout, status.stderr
    again = explore("enqueue", "--all-contexts", *job)  # a second enqueue finds every context published
    assert f"{len(contexts)} already on" in again.stdout and "enqueued 0 requests" in again.stdout, again.stderr


def test_the_engine_never_learns_the_rows_of_an_aborted_transaction(apache_bootstrap: str, triton, seqrec_artifacts,
                                                                    novelty_artifacts, tmp_path: Path) -> None:
    """The engine's table follower reads read_committed: a row of a transaction a precompute worker did not
    commit (it died; its batch is answered again) is never in the table."""
    from kafka import KafkaProducer

    from streams.core.table import row_value
    from streams.infra.worker_process import WorkerProcess
    from streams.wiring.worker import ensure_topics
    from tests.integration.engine_support import engine_config

    cfg = engine_config(apache_bootstrap, seqrec_artifacts, triton.repository, triton.grpc)
    ensure_topics(cfg)
    version = novelty_serving(triton.repository).catalog_version
    producer = KafkaProducer(bootstrap_servers=apache_bootstrap, transactional_id=f"abort-{uuid.uuid4().hex[:8]}")
    producer.init_transactions()
    for key, commit in ((b"0,1", True), (b"1,0", False)):
        producer.begin_transaction()
        producer.send(cfg.novelty_topic, key=key, value=row_value([2, 3], [-1.0, -2.0], version, source="precompute"))
        producer.flush()
        if commit:
            producer.commit_transaction()
        else:
            producer.abort_transaction()
    producer.close()
    assert len(read_all(apache_bootstrap, cfg.novelty_topic, "read_uncommitted")) == 2  # both rows are on the log
    with WorkerProcess(cfg, tmp_path) as worker:
        _, body = worker.get("/ready")
    assert body["novelty_table_loaded"] and body["novelty_contexts"] == 1, body
