"""Round trips through any Triton server: gRPC, HTTP and the Prometheus metrics endpoint."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import numpy as np

from streams.inference.tls import TritonTLS


def infer_grpc(url: str, model: str, x: np.ndarray, timeout_s: float = 10.0,
               tls: TritonTLS | None = None) -> np.ndarray:
    """Run `model` on input `x` over gRPC (TLS when `tls` is given) and return output `y`."""
    from streams.inference.grpc import GrpcModel

    client = GrpcModel(url, model, timeout_s, tls=tls)
    try:
        return client.infer({"x": x}, ["y"])[0]
    finally:
        client.close()


def infer_http(url: str, model: str, x: np.ndarray, timeout_s: float = 10.0) -> np.ndarray:
    """Run `model` on input `x` over HTTP (binary tensors) and return output `y`."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url, network_timeout=timeout_s)
    try:
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput("y", binary_data=True)])
        return result.as_numpy("y")
    finally:
        client.close()


def infer_onnxruntime(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    """The in-process reference: the same ONNX file through onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def scrape_metrics(metrics_url: str, timeout_s: float = 5.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Fetch a Prometheus text endpoint and parse it: sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as resp:
        text = resp.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return samples


def triton_round_trip(grpc_url: str, http_url: str | None, onnx_path: Path, model: str = "tiny_linear",
                      batch: int = 8, seed: int = 1, metrics_url: str | None = None,
                      tls: TritonTLS | None = None) -> dict[str, float]:
    """Ask `model` over gRPC (and HTTP) and check the answers against onnxruntime in-process.

    Raises AssertionError with the largest difference when they disagree; returns timings and the
    success count that Triton's metrics report for the model.
    """
    x = np.random.default_rng(seed).normal(size=(batch, 4)).astype(np.float32)
    want = infer_onnxruntime(onnx_path, x)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    got = infer_grpc(grpc_url, model, x, tls=tls)
    out["grpc_ms"] = (time.perf_counter() - t0) * 1000
    _assert_close(got, want, "gRPC")
    if http_url:
        t0 = time.perf_counter()
        got = infer_http(http_url, model, x)
        out["http_ms"] = (time.perf_counter() - t0) * 1000
        _assert_close(got, want, "HTTP")
    if metrics_url:
        # Triton refreshes its counters on an interval: wait until they show our requests.
        expected = 2 if http_url else 1
        deadline = time.monotonic() + 10
        while True:
            count = model_success_count(metrics_url, model)
            if count >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out["metrics_success_count"] = count
    return out


def model_success_count(metrics_url: str, model: str) -> float:
    """Successful inference requests of `model` so far, from Triton's metrics."""
    samples = scrape_metrics(metrics_url)
    # prometheus_client's parser names counter samples with the `_total` suffix.
    rows = samples.get("nv_inference_request_success_total", [])
    return sum(v for labels, v in rows if labels.get("model") == model)


def _assert_close(got: np.ndarray, want: np.ndarray, path: str) -> None:
    if got.shape != want.shape:
        raise AssertionError(f"Triton over {path} answered shape {got.shape}, onnxruntime {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    if diff > 1e-5:
        raise AssertionError(f"Triton over {path} differs from onnxruntime by up to {diff:.3g}")
