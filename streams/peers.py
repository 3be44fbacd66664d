"""Which worker holds a user's state, and asking it: what `GET /users/{id}` does.

A user's state lives on the worker that owns the user's partition. Any worker answers the
request: it serves the state it holds, or asks the others. The owner computed from the key comes
first, but it is computed with the default (murmur2) partitioner, and a producer with another
partitioner (librdkafka's default is CRC32) puts users elsewhere; so the remaining workers of the
group are asked after it, and the answer never depends on how the input was partitioned.
`url_ident` and `peers_to_ask` are pure; the rest asks Faust and the peers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import quote, urlsplit

import faust


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


def owner_url(app: faust.App, user: str) -> str | None:
    """The worker that owns `user`'s partition by the default partitioner, or None before an assignment."""
    try:
        return str(app.router.key_store("users", user))
    except KeyError:
        return None


async def ask_peer(app: faust.App, url: str, timeout_s: float = 2.0) -> dict | None:
    """The peer's own answer for a user (never forwarded again), or None when it has none or is unreachable."""
    import aiohttp

    try:
        async with app.http_client.get(url, params={"local": "1"},
                                       timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return await resp.json() if resp.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None


async def find_user(app: faust.App, users: faust.Table, topic: str, own_url: str, user_id: str, local: bool,
                    view: Callable[[dict], dict]) -> tuple[dict, int]:
    """(body, HTTP status) for `GET /users/{user_id}`: this worker's state when it processes the user's
    partition, else (unless `local`) the first peer that has it, else 404."""
    state = users.get(user_id)
    mine = sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)
    # A standby replica (or a partition revoked by a rebalance) leaves a copy here that may lag:
    # only the worker that processes the user's partition answers from its table.
    if state is not None and state["pos"] and state["pos"][0] in mine:
        return {"user_id": user_id, "served_by": own_url, **view(state)}, 200
    asked: list[str] = []
    if not local:
        for peer in peers_to_ask(own_url, owner_url(app, user_id), app.router.tables_metadata()):
            asked.append(peer)
            body = await ask_peer(app, f"{peer}/users/{quote(user_id, safe='')}")
            if body is not None:
                return body, 200
    return {"error": f"no worker holds state of user {user_id!r}", "served_by": own_url,
            "partitions_here": mine, "workers_asked": asked}, 404


__all__ = ["ask_peer", "find_user", "owner_url", "peers_to_ask", "url_ident"]
