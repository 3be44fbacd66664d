"""TLS for the Triton gRPC clients: the one place that turns the settings into client arguments.

The worker's asyncio client (`streams.inference.router`) and the blocking one (`streams.inference.grpc`,
used by `explore infra check` and the benchmarks) take the same `tritonclient` keywords; both get
them from here so that a TLS Triton needs the settings once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TritonTLS:
    """PEM files for a TLS gRPC channel to Triton (`tritonserver --grpc-use-ssl=true`).

    `root_certificates` is the CA that signed the server's certificate (empty: the system's CAs);
    the client pair is for a server that also checks clients (`--grpc-use-ssl-mutual=true`).
    """

    root_certificates: str = ""
    certificate_chain: str = ""
    private_key: str = ""

    def __post_init__(self) -> None:
        for name in ("root_certificates", "certificate_chain", "private_key"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"Triton TLS: {name.replace('_', ' ')} file {path} does not exist")
        if bool(self.certificate_chain) != bool(self.private_key):
            raise ValueError("Triton TLS: a client certificate and its private key go together")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `tritonclient.grpc[.aio].InferenceServerClient` (it reads the files)."""
        return {"ssl": True, "root_certificates": self.root_certificates or None,
                "certificate_chain": self.certificate_chain or None, "private_key": self.private_key or None}


def grpc_client_kwargs(tls: TritonTLS | None) -> dict[str, Any]:
    """The TLS keywords of a Triton gRPC client, or none for a plaintext channel."""
    return tls.client_kwargs() if tls is not None else {}
