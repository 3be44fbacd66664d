"""Triton's `seqrec`: the restricted top-N over gRPC equals the in-process twin and PyTorch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from exporters.seqrec_onnx import random_inputs
from interests.constrained import EXCLUDED
from interests.seqsplit import leave_one_out, pad_left
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
