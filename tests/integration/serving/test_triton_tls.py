"""Triton's gRPC over TLS: the real tritonserver with --grpc-use-ssl and a certificate made here.

The worker's router and the blocking client (`explore infra check`) reach it with the settings
`TRITON_SSL` and `TRITON_SSL_ROOT_CERTS`; a plaintext client and a client that trusts another CA
do not get an answer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from exporters.repository import write_tiny_repository
from streams.config import EngineConfig
from streams.inference.router import ModelRouter
from streams.inference.tls import TritonTLS
from streams.infra.triton import EmbeddedTriton
from streams.infra.triton_check import infer_onnxruntime, triton_round_trip
from tests.integration.secure_kafka import make_tls_files

pytestmark = pytest.mark.integration


def test_the_engine_reaches_triton_over_tls_and_nothing_else_does(tmp_path: Path) -> None:
    repo = write_tiny_repository(tmp_path / "repository")
    tls = make_tls_files(tmp_path / "tls")
    stranger = make_tls_files(tmp_path / "other-ca")
    onnx_path = repo / "tiny_linear" / "1" / "model.onnx"
    flags = ("--grpc-use-ssl=true", f"--grpc-server-cert={tls.certfile}", f"--grpc-server-key={tls.keyfile}")
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)

    async def ask(tls_settings: TritonTLS | None, url: str) -> tuple[np.ndarray, str]:
        router = ModelRouter(url, local={}, timeout_s=5.0, retries=0, tls=tls_settings)
        try:
            (y,), path = await router.infer("tiny_linear", {"x": x}, ["y"])
            return y, path
        finally:
            await router.close()

    with EmbeddedTriton(repo, tmp_path / "triton", extra_args=flags) as server:
        settings = EngineConfig.load(env={"TRITON_URL": server.grpc_url, "TRITON_SSL": "true",
                                          "TRITON_SSL_ROOT_CERTS": str(tls.cafile)})
        y, path = asyncio.run(ask(settings.triton_tls(), settings.triton_url))
        assert path == "triton"
        np.testing.assert_allclose(y, infer_onnxruntime(onnx_path, x), atol=1e-5)
        assert triton_round_trip(server.grpc_url, None, onnx_path, tls=settings.triton_tls())["grpc_ms"] > 0
        for wrong in (None, TritonTLS(str(stranger.cafile))):  # plaintext; a CA that did not sign it
            with pytest.raises(RuntimeError, match="Triton is unreachable"):
                asyncio.run(ask(wrong, server.grpc_url))
