"""A real Triton server: the tiny ONNX model behind the Python backend, over gRPC and HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from streams.infra.triton_check import (
    infer_grpc,
    infer_http,
    infer_onnxruntime,
    model_success_count,
    scrape_metrics,
    triton_round_trip,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_grpc_and_http_answer_like_onnxruntime(triton, batch: int) -> None:
    x = np.random.default_rng(batch).normal(size=(batch, 4)).astype(np.float32)
    want = infer_onnxruntime(triton.onnx_path, x)
    got_grpc = infer_grpc(triton.grpc, "tiny_linear", x)
    got_http = infer_http(triton.http, "tiny_linear", x)
    assert got_grpc.shape == got_http.shape == (batch, 3)
    np.testing.assert_allclose(got_grpc, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_http, want, rtol=0, atol=1e-5)


def test_answers_are_the_linear_layer(triton) -> None:
    """Independent of onnxruntime: the served numbers are x W + b for the seed-0 weights."""
    from exporters.tiny import tiny_linear_weights

    w, b = tiny_linear_weights(0)
    x = np.eye(4, dtype=np.float32)
    np.testing.assert_allclose(infer_grpc(triton.grpc, "tiny_linear", x), w + b, atol=1e-5)


def test_concurrent_requests_each_get_their_own_answer(triton) -> None:
    """Dynamic batching merges concurrent requests; none may receive another's rows."""
    inputs = [np.full((1 + i % 3, 4), float(i), dtype=np.float32) for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(lambda x: infer_grpc(triton.grpc, "tiny_linear", x), inputs))
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(y, infer_onnxruntime(triton.onnx_path, x), atol=1e-5)


def test_metrics_endpoint_parses_and_counts_requests(triton) -> None:
    before = model_success_count(triton.metrics, "tiny_linear")
    result = triton_round_trip(triton.grpc, triton.http, triton.onnx_path, metrics_url=triton.metrics)
    assert result["metrics_success_count"] >= before + 2
    samples = scrape_metrics(triton.metrics)
    durations = [v for labels, v in samples["nv_inference_compute_infer_duration_us_total"]
                 if labels.get("model") == "tiny_linear"]
    assert durations and durations[0] > 0
