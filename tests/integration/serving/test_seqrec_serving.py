"""Triton's `seqrec`: the restricted top-N over gRPC equals the in-process twin and PyTorch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from exporters.seqrec_onnx import random_inputs
from interests.data.splits import leave_one_out, pad_left
from interests.runtime.constrained import EXCLUDED
from streams.inference.seqrec import OnnxSeqRec, TritonSeqRec

pytestmark = pytest.mark.integration


def valid_slots(scores: np.ndarray) -> np.ndarray:
    """Mask of the slots that hold an eligible item (the others carry EXCLUDED)."""
    return scores > EXCLUDED / 2


def _cases(art, rng):
    cfg = art.module.model.cfg
    real = pad_left(leave_one_out(art.dataset).test_history[:40], cfg.max_len)
    cases = [random_inputs(cfg.n_items, art.module.n_clusters, b, cfg.max_len, rng) for b in (1, 5, 64)]
    cases.append((real, random_inputs(cfg.n_items, art.module.n_clusters, 40, 1, rng)[1]))
    return cases


def test_triton_twin_and_pytorch_agree_and_respect_the_restriction(triton, seqrec_artifacts) -> None:
    art = seqrec_artifacts
    client, twin = TritonSeqRec(triton.grpc), OnnxSeqRec(art.onnx_path)
    cluster_of = art.catalog.item_clusters()
    try:
        for history, allowed in _cases(art, np.random.default_rng(0)):
            t_items, t_scores = client.top_n(history, allowed)
            o_items, o_scores = twin.top_n(history, allowed)
            with torch.no_grad():
                out = art.module(torch.from_numpy(history), torch.from_numpy(allowed))
            p_items, p_scores = (t.numpy() for t in out)
            assert np.array_equal(t_items, o_items) and np.array_equal(t_scores, o_scores)
            np.testing.assert_allclose(t_scores, p_scores, atol=1e-4)
            assert np.array_equal(t_items[valid_slots(t_scores)], p_items[valid_slots(p_scores)])
            for row in range(len(history)):
                got = t_items[row][valid_slots(t_scores[row])]
                assert len(got) > 0
                assert all(allowed[row, cluster_of[i - 1]] for i in got), "item outside the allowed clusters"
                assert not set(got.tolist()) & set(history[row].tolist()), "item already consumed"
    finally:
        client.close()


def test_concurrent_requests_of_mixed_lengths_are_answered_each_correctly(triton, seqrec_artifacts) -> None:
    """The dynamic batcher merges requests; model.py left-pads mixed lengths before one ORT call."""
    art = seqrec_artifacts
    cfg = art.module.model.cfg
    rng = np.random.default_rng(1)
    requests = [random_inputs(cfg.n_items, art.module.n_clusters, 1 + i % 4, cfg.max_len if i % 2 else 7, rng)
                for i in range(32)]
    twin = OnnxSeqRec(art.onnx_path)
    clients = [TritonSeqRec(triton.grpc) for _ in range(8)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda i: clients[i % 8].top_n(*requests[i]), range(len(requests))))
    finally:
        for c in clients:
            c.close()
    for (history, allowed), (items, scores) in zip(requests, answers, strict=True):
        want_items, want_scores = twin.top_n(history, allowed)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        assert np.array_equal(items[valid_slots(scores)], want_items[valid_slots(want_scores)])


def test_the_router_splits_calls_to_the_served_batch_limits_and_a_refusal_is_not_an_outage(  # type: ignore[no-untyped-def]
        triton, seqrec_artifacts, novelty_artifacts) -> None:
    """A worker batch can need more rows than a model serves (seqrec 256, interest_generator 64): the
    router asks in pieces, all on Triton. Before, Triton refused the call, the router took that for an
    outage and served every request from the fallback for `retry_after_s`."""
    import asyncio

    from streams.core.model_files import ModelFiles
    from streams.inference.router import ModelRouter

    art = seqrec_artifacts
    cfg = art.module.model.cfg
    rng = np.random.default_rng(2)
    files = ModelFiles(triton.repository, art.catalog, k=2)
    twins = files.local_models(threads=1)
    calls: list[tuple[str, str, bool]] = []
    router = ModelRouter(triton.grpc, twins, timeout_s=60.0, retries=0, retry_after_s=600.0,
                         on_call=lambda m, p, s, ok: calls.append((m, p, ok)), max_batch=dict(files.max_batch))
    history, allowed = random_inputs(cfg.n_items, art.module.n_clusters, 300, cfg.max_len, rng)
    n = art.module.n_clusters
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]  # contexts: K = 2 distinct clusters
    contexts = np.array([pairs[i % len(pairs)] for i in range(100)], dtype=np.int64)
    novelty_inputs = {"context": contexts, "exclude": np.zeros((100, n), bool)}

    async def run() -> None:
        (items, scores), path = await router.infer("seqrec", {"history": history, "allowed": allowed},
                                                   ["items", "scores"])
        assert path == "triton" and router.triton_up, router.last_error
        twin_items, twin_scores = twins["seqrec"]({"history": history, "allowed": allowed})
        assert np.array_equal(items, twin_items) and np.array_equal(scores, twin_scores)
        (clusters, _), path = await router.infer("interest_generator", novelty_inputs, ["clusters", "scores"])
        assert path == "triton" and len(clusters) == 100, router.last_error
        assert np.array_equal(clusters, twins["interest_generator"](novelty_inputs)[0])
        assert ("seqrec", "triton", True) in calls and not [c for c in calls if not c[2]]
        # A limit above the served one: Triton refuses that request; the twin answers it, Triton stays up.
        router.max_batch["seqrec"] = 1000
        (items, _), path = await router.infer("seqrec", {"history": history, "allowed": allowed}, ["items", "scores"])
        assert path == "onnx" and len(items) == 300 and router.triton_up
        assert calls[-2:] == [("seqrec", "triton", False), ("seqrec", "onnx", True)], calls[-2:]
        _, path = await router.infer("seqrec", {"history": history[:5], "allowed": allowed[:5]}, ["items", "scores"])
        assert path == "triton"
        await router.close()

    asyncio.run(run())
