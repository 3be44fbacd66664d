"""TLS and channel options for the Triton gRPC clients: the one place that turns the settings into
client arguments.

The worker's asyncio client (`streams.inference.router`) and the blocking one (`streams.inference.grpc`,
used by `explore infra check` and the benchmarks) take the same `tritonclient` keywords; both get
them from here so that a TLS Triton needs the settings once, and every channel reconnects alike.
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


def channel_args(reconnect_s: float = 1.0) -> list[tuple[str, int]]:
    """`tritonclient`'s own channel options plus two that make a restarted Triton reachable at once.

    Why: gRPC keeps connections in a process-wide pool shared by channels to the same address, and
    while a server is down it retries with exponential backoff (up to 120 s). After Triton came back,
    a client made anew still got the pooled connection's "Connection refused" until that backoff
    ran out, so a worker stayed on its fallback long after Triton answered (seen 20+ s in the
    Triton-outage test). Each channel owns its connections here, and waits at most `reconnect_s`.
    """
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    backoff_ms = max(100, int(reconnect_s * 1000))
    return [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", min(backoff_ms, 1000)),
            ("grpc.min_reconnect_backoff_ms", min(backoff_ms, 1000)),
            ("grpc.max_reconnect_backoff_ms", backoff_ms)]


def grpc_client_kwargs(tls: TritonTLS | None, reconnect_s: float = 1.0) -> dict[str, Any]:
    """The keywords of a Triton gRPC client: TLS (none for a plaintext channel) and `channel_args`."""
    return {**(tls.client_kwargs() if tls is not None else {}), "channel_args": channel_args(reconnect_s)}
