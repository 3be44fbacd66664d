"""Triton's `explorer` (the mixture of experts and its slate in one call) on a real tritonserver: it answers as
the in-process twin does, request by request under the dynamic batcher, and a worker's engine that goes
through it makes the slates the twin makes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from exporters.seqrec_onnx import random_inputs
from streams.config import EngineConfig
from streams.core.engine import Engine, RawRecord
from streams.inference.grpc import GrpcModel
from streams.inference.seqrec import EXPLORER_OUTPUTS, OnnxExplorer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def explorer_triton(tmp_path_factory: pytest.TempPathFactory, mixture_artifacts) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from streams.infra.triton import EmbeddedTriton

    with EmbeddedTriton(mixture_artifacts.repository, tmp_path_factory.mktemp("triton-mixture")) as server:
        yield server.grpc_url


def test_concurrent_requests_of_mixed_lengths_each_get_the_twins_answer(explorer_triton: str,  # type: ignore[no-untyped-def]
                                                                        mixture_artifacts) -> None:
    meta = json.loads((mixture_artifacts.repository / "explorer" / "1" / "meta.json").read_text())
    twin = OnnxExplorer(mixture_artifacts.repository / "explorer" / "1" / "model.onnx")
    rng = np.random.default_rng(0)
    requests = []
    for i in range(24):
        history, known = random_inputs(meta["n_items"], meta["n_clusters"], 1 + i % 4,
                                       meta["max_len"] if i % 2 else 7, rng)
        requests.append((history, known & (rng.random(known.shape) < 0.5),
                         rng.normal(size=known.shape).astype(np.float32)))
    client = GrpcModel(explorer_triton, "explorer", timeout_s=30.0)
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda r: client.infer(
                {"history": r[0], "known": r[1], "context_scores": r[2]}, EXPLORER_OUTPUTS), requests))
    finally:
        client.close()
    for (history, known, context), got in zip(requests, answers, strict=True):
        want = twin.propose(history, known, context)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[2], want[2])
        np.testing.assert_allclose(got[1], want[1], atol=1e-5)
        assert not np.take_along_axis(known, np.maximum(got[0], 0), 1)[got[0] >= 0].any()  # never a known cluster


def test_a_worker_through_triton_makes_the_slates_of_its_twin(explorer_triton: str, seqrec_artifacts,  # type: ignore[no-untyped-def]
                                                             mixture_artifacts) -> None:
    base = {"catalog": str(Path(seqrec_artifacts.checkpoint).parent / "catalog"),
            "repository": str(mixture_artifacts.repository)}
    served = Engine(EngineConfig().with_values({**base, "triton_url": explorer_triton}))
    local = Engine(EngineConfig().with_values({**base, "triton_url": ""}))
    ds = seqrec_artifacts.dataset
    records, offset = [], 0
    for u in range(60):
        for row in range(ds.offsets[u], min(ds.offsets[u + 1], ds.offsets[u] + 5)):
            value = json.dumps({"user_id": str(ds.user_ids[u]), "item_id": str(ds.item_ids[ds.items[row]]),
                                "ts": 1000.0 + offset, "event": "click"}).encode()
            records.append(RawRecord(str(ds.user_ids[u]).encode(), value, 0, offset, 1000.0 + offset))
            offset += 1
    try:
        got = asyncio.run(served.handle(records, {}.get, now=5000.0)).recommendations
        want = asyncio.run(local.handle(records, {}.get, now=5000.0)).recommendations
    finally:
        asyncio.run(served.router.close())
    assert got and len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.seqrec_path == "triton" and w.seqrec_path == "onnx" and g.source == "mixture"
        assert [c["id"] for c in g.novel_clusters] == [c["id"] for c in w.novel_clusters]
        assert [x["item_id"] for x in g.slate] == [x["item_id"] for x in w.slate]
        assert g.versions == w.versions and "mixture" in g.versions
