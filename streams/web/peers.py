"""Which worker holds a user's state, and asking it: what `GET /users/{id}` does.

A user's state lives on the worker that processes the user's input partition. Any worker answers
the request: it serves the state it holds, or asks the one worker that owns the user. The
partition is computed from the key the way the input's producers partition it (the
`key_partitioner` setting: murmur2, the Java client's, kafka-python's and aiokafka's default, or
crc32, librdkafka's default), and its owner is read from Faust's partition assignment. One
worker is asked, once, with a timeout: an answer never waits on every worker in turn.

Calls between workers carry the web token (`web_token`) when one is set, since the page they call
requires it. `partition_for`, `partition_owner`, `url_ident` and `bearer_ok` are pure; the rest
asks Faust and the peer.
"""

from __future__ import annotations

import hmac
import zlib
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import quote, urlsplit

import faust

PEER_TIMEOUT_S = 2.0


def url_ident(url: str) -> tuple[str, int]:
    """(host, port) of a worker URL, so that `http://h:1` and `http://h:1/` compare equal."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    return (parts.hostname or "", parts.port or 80)


def partition_for(key: bytes, partitions: int, partitioner: str = "murmur2") -> int:
    """The partition a producer with `partitioner` sends `key` to, among `partitions`.

    murmur2 is the Java client's rule (kafka-python and aiokafka copy it); crc32 is librdkafka's
    default ("consistent_random" for keyed records). The two disagree for most keys, so the setting
    must match the producers, or the lookup asks a worker that does not hold the user.
    """
    if partitioner == "murmur2":
        from kafka.partitioner.default import murmur2

        return (murmur2(key) & 0x7FFFFFFF) % partitions
    if partitioner == "crc32":
        return (zlib.crc32(key) & 0xFFFFFFFF) % partitions
    raise ValueError(f"unknown key partitioner {partitioner!r} (murmur2 or crc32)")


def partition_owner(distribution: Mapping[str, Mapping[str, Sequence[int]]], topic: str,
                    partition: int) -> str | None:
    """The worker URL whose active partitions of `topic` include `partition` (Faust's changelog
    distribution: URL -> topic -> partitions), or None while no worker has it."""
    for url, topics in distribution.items():
        if partition in topics.get(topic, ()):
            return str(url).rstrip("/")
    return None


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries the web token (always, when no token is set).

    Compared in constant time, so the answer's timing does not tell how much of a guess was right.
    """
    if not token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def auth_headers(token: str) -> dict[str, str]:
    """The headers a call to another worker's protected page carries."""
    return {"Authorization": f"Bearer {token}"} if token else {}


async def ask_peer(app: faust.App, url: str, token: str, timeout_s: float = PEER_TIMEOUT_S) -> tuple[int, dict]:
    """(status, body) of the peer's own answer for a user (`?local=1`: never forwarded again);
    status 0 when the peer cannot be reached or does not answer in time."""
    import aiohttp

    try:
        async with app.http_client.get(url, params={"local": "1"}, headers=auth_headers(token),
                                       timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status, await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return 0, {"error": f"worker {url.split('/users/')[0]} did not answer ({type(exc).__name__})"}


async def find_user(app: faust.App, users: faust.Table, topic: str, own_url: str, user_id: str, local: bool,
                    view: Callable[[dict], dict], partitions: int, partitioner: str,
                    token: str = "") -> tuple[dict, int]:
    """(body, HTTP status) for `GET /users/{user_id}`: this worker's state when it processes the user's
    partition; else (unless `local`) the answer of the one worker that owns the user's partition;
    404 when the owner has no state, 503 while no worker owns it, 502 when the owner does not answer."""
    state = users.get(user_id)
    mine = sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)
    # A standby replica (or a partition revoked by a rebalance) leaves a copy here that may lag:
    # only the worker that processes the user's partition answers from its table.
    if state is not None and state["pos"] and state["pos"][0] in mine:
        return {"user_id": user_id, "served_by": own_url, **view(state)}, 200
    partition = partition_for(user_id.encode(), partitions, partitioner)
    missing = {"error": f"no state of user {user_id!r}", "served_by": own_url, "partition": partition}
    if local or partition in mine:
        return missing, 404
    owner = partition_owner(app.router.tables_metadata(), users.changelog_topic.get_topic_name(), partition)
    if owner is None or url_ident(owner) == url_ident(own_url):
        return {**missing, "error": f"no worker owns partition {partition} yet (rebalancing?)"}, 503
    status, body = await ask_peer(app, f"{owner}/users/{quote(user_id, safe='')}", token)
    if status == 0:
        return {**missing, **body, "asked": owner}, 502
    return body, status


__all__ = ["ask_peer", "auth_headers", "bearer_ok", "find_user", "partition_for", "partition_owner", "url_ident"]
