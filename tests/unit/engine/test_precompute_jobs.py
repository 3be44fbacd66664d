"""The distributed precompute's pure parts: requests, rows, progress, and the worker's batch logic.

The worker's Kafka clients are stand-ins here, recording the calls, so that what a failure does (abort,
read the batch again, publish nothing) is checked without a broker; the real broker and Triton are in
tests/integration/engine/test_precompute_jobs.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from streams.core.model_files import NoveltyServing
from streams.core.table import context_key, parse_row, ranked_row
from streams.precompute.jobs import (
    first_offsets,
    next_offsets,
    parse_request,
    pending,
    progress,
    published_keys,
    request_value,
)
from streams.precompute.worker import PrecomputeWorker, WorkerSettings, propose_rows

SERVING = NoveltyServing("cat-1", 2, 5, 3)


def test_a_request_names_a_context_of_this_catalog() -> None:
    ok = request_value("cat-1")
    assert parse_request(b"3,1", ok, "cat-1", 2, 5) == [3, 1]
    assert parse_request(b"3,1", request_value("cat-0"), "cat-1", 2, 5) == "stale"
    for key in (b"3", b"3,1,2", b"3,3", b"3,5", b"-1,2", b"03,1", b"3, 1", b"a,b", None):
        assert parse_request(key, ok, "cat-1", 2, 5) == "invalid", key
    for value in (b"[]", b"not json", b"", None, b"[" * 100_000):
        assert parse_request(b"3,1", value, "cat-1", 2, 5) == "invalid", value


def test_a_ranked_row_drops_empty_slots_and_parses_back() -> None:
    clusters, scores = ranked_row(np.array([4, 2, -1]), np.array([-0.5, -1.25, -1e9], np.float32))
    assert (clusters, scores) == ([4, 2], [-0.5, -1.25])
    from streams.core.table import row_value

    parsed = parse_row(b"0,1", row_value(clusters, scores, "cat-1", source="precompute"), "cat-1", 2, 5)
    assert parsed[:2] == ([4, 2], [-0.5, -1.25])


def test_published_keys_are_usable_rows_of_this_catalog_in_offset_order() -> None:
    from streams.core.table import row_value

    row = row_value([2], [-1.0], "cat-1")
    records = [(b"0,1", row), (b"1,0", row_value([2], [-1.0], "cat-0")), (b"2,3", row), (b"2,3", None),
               (b"3,4", b"{broken"), (None, row), (b"4,0", row)]
    assert published_keys(records, "cat-1", 2, 5) == {b"0,1", b"4,0"}


def test_pending_skips_published_and_repeated_contexts_in_order() -> None:
    contexts = [[0, 1], [1, 0], [0, 1], [2, 3], [3, 2]]
    assert pending(contexts, {context_key([2, 3])}) == [[0, 1], [1, 0], [3, 2]]


def test_offsets_of_a_batch() -> None:
    records = [(0, 7), (1, 3), (0, 5), (0, 6), (2, 0)]
    assert next_offsets(records) == {0: 8, 1: 4, 2: 1}
    assert first_offsets(records) == {0: 5, 1: 3, 2: 0}


def test_progress_over_retained_records() -> None:
    p = progress(begin={0: 0, 1: 10, 2: 5}, end={0: 100, 1: 60, 2: 5}, committed={0: 40, 1: None})
    assert (p.done, p.total, p.left) == (40, 150, 110)
    assert progress({0: 50}, {0: 60}, {0: 20}).done == 0  # committed before retention removed the records


class FakeModel:
    """Answers each context with the clusters it leaves, best first; records the rows per call."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.fail = fail

    def propose(self, contexts: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.fail:
            raise ConnectionError("Triton is down")
        self.calls.append(len(contexts))
        out = np.full((len(contexts), 3), -1)
        for i, ctx in enumerate(contexts.tolist()):
            left = [c for c in range(exclude.shape[1]) if c not in ctx][:3]
            out[i, :len(left)] = left
        return out, -np.arange(3, dtype=np.float32)[None].repeat(len(contexts), 0)


def test_propose_rows_keeps_to_the_batch_limit_and_the_order() -> None:
    model = FakeModel()
    rows = propose_rows(model, [[0, 1], [1, 2], [2, 3], [3, 4], [4, 0]], 5, max_batch=2)
    assert model.calls == [2, 2, 1]
    assert rows[0] == ([2, 3, 4], [0.0, -1.0, -2.0]) and rows[4][0] == [1, 2, 3]


class FakeProducer:
    def __init__(self, fail_commit: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail_commit = fail_commit

    def begin_transaction(self) -> None:
        self.calls.append(("begin",))

    def send(self, topic: str, key: bytes, value: bytes, headers: list) -> None:
        self.calls.append(("send", key))

    def send_offsets_to_transaction(self, offsets: dict, group: object) -> None:
        self.calls.append(("offsets", {tp.partition: o.offset for tp, o in offsets.items()}))

    def commit_transaction(self) -> None:
        if self.fail_commit:
            raise TimeoutError("the coordinator did not answer")
        self.calls.append(("commit",))

    def abort_transaction(self) -> None:
        self.calls.append(("abort",))


class FakeConsumer:
    def __init__(self) -> None:
        from kafka import TopicPartition

        self.seeks: dict[int, int] = {}
        self.assigned = {TopicPartition("novelty-requests", p) for p in (0, 1)}

    def assignment(self) -> set:
        return self.assigned

    def seek(self, tp: object, offset: int) -> None:
        self.seeks[tp.partition] = offset  # type: ignore[attr-defined]

    def group_metadata(self) -> str:
        return "group"


def _worker(model: FakeModel, producer: FakeProducer) -> PrecomputeWorker:
    worker = PrecomputeWorker(WorkerSettings("unused:9092", SERVING, worker_id="w", backoff_s=0.0), model)
    worker.consumer, worker.producer = FakeConsumer(), producer
    return worker


def _requests() -> list:
    ok = request_value("cat-1")
    return [SimpleNamespace(key=b"0,1", value=ok, partition=0, offset=4),
            SimpleNamespace(key=b"9,9", value=ok, partition=1, offset=2),
            SimpleNamespace(key=b"2,3", value=request_value("old"), partition=0, offset=5),
            SimpleNamespace(key=b"1,2", value=ok, partition=1, offset=3)]


def test_a_batch_is_one_transaction_of_its_rows_and_offsets() -> None:
    producer = FakeProducer()
    worker = _worker(FakeModel(), producer)
    worker.handle(_requests())
    assert producer.calls == [("begin",), ("send", b"0,1"), ("send", b"1,2"), ("offsets", {0: 6, 1: 4}),
                              ("commit",)]  # the invalid and the stale request: skipped, their offsets committed
    assert (worker.totals.published, worker.totals.skipped, worker.totals.batches) == (2, 2, 1)
    assert worker.consumer.seeks == {}
    text = worker.metrics.render().decode()
    assert 'explore_precompute_contexts_total{outcome="stale"} 1.0' in text
    assert 'explore_precompute_batches_total{outcome="committed"} 1.0' in text


@pytest.mark.parametrize("stage", ["triton", "kafka"])
def test_a_failed_batch_is_aborted_and_read_again(stage: str) -> None:
    producer = FakeProducer(fail_commit=stage == "kafka")
    worker = _worker(FakeModel(fail=stage == "triton"), producer)
    worker.handle(_requests())
    assert worker.consumer.seeks == {0: 4, 1: 2}  # back to the batch's first request in each partition
    assert ("commit",) not in producer.calls and worker.totals.published == 0
    assert producer.calls[-1:] == ([("abort",)] if stage == "kafka" else [])
    assert f'explore_precompute_errors_total{{stage="{stage}"}} 1.0' in worker.metrics.render().decode()


def test_the_exit_line_is_json() -> None:
    worker = _worker(FakeModel(), FakeProducer())
    assert json.loads(worker.totals.line())["precompute_worker"]["worker"] == "w"
