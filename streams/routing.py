"""Which worker to ask for a user's state: pure functions behind `GET /users/{id}`.

A user's state lives on the worker that owns the user's partition. Any worker answers the
request: it serves the state it holds, or asks the others. The owner computed from the key comes
first, but it is computed with the default (murmur2) partitioner, and a producer with another
partitioner (librdkafka's default is CRC32) puts users elsewhere; so the remaining workers of the
group are asked after it, and the answer never depends on how the input was partitioned.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit


def url_ident(url: str) -> tuple[str, int]:
    """(host, port) of a worker URL, so that `http://h:1` and `http://h:1/` compare equal."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    return (parts.hostname or "", parts.port or 80)


def peers_to_ask(own: str, owner: str | None, workers: Iterable[str]) -> list[str]:
    """The workers to ask, in order: the key's owner, then every other worker; never this one."""
    seen = {url_ident(own)}
    order: list[str] = []
    for url in ([owner] if owner else []) + sorted(workers):
        ident = url_ident(url)
        if ident not in seen:
            seen.add(ident)
            order.append(url.rstrip("/"))
    return order


__all__ = ["peers_to_ask", "url_ident"]
