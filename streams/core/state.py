"""Per-user state and when it needs a slate: pure functions, no Kafka, no models.

The state is a plain dict (the Faust table stores it as JSON in its changelog):

- `items`: the user's newest item ids (external, as sent: they mean the same under every catalog),
  oldest first, bounded;
- `cv`: the version of the catalog whose cluster ids `known`, `context`, `slate` and `proposals` hold;
  a worker serving another catalog migrates the user at their next event (`streams.core.migration`);
- `known`: every cluster the user has touched (sorted), never forgotten;
- `context`: the last K distinct clusters, most recent last (the definition the novelty LM is
  trained on, `interests.novelty.examples.novel_transitions`);
- `pos`: [partition, offset] of the last input record applied, and `ids`: recent event ids.
  Together they make re-deliveries harmless: after a restart or a rebalance Kafka hands out
  again every record after the last committed offset, and a record at or before `pos` (or with
  an event id already seen) is recognised and leaves the state as it is;
- `n`: interactions applied, `ts`: the newest event time, `seen`: the worker's clock when an event
  was last applied (what `user_ttl_s` counts from; states written before it existed use `ts`);
- `slate`: the last recommendation sent (context, clusters, items, event time);
- `proposals`: the slates whose novel clusters are still open for feedback (`streams.core.feedback`),
  at most `feedback_max_open` of them; states written before it existed have none; `vs`: the
  model versions those slates name, once each (`streams.core.feedback.intern_versions`).
"""

from __future__ import annotations

from collections.abc import Iterable

from streams.core.records import Interaction


def new_state() -> dict:
    return {"items": [], "known": [], "context": [], "pos": None, "ids": [], "n": 0, "ts": 0.0, "slate": None,
            "proposals": [], "vs": {}, "cv": None}


def copy_state(state: dict | None) -> dict:
    """A copy to change: the table's object changes only when the batch is written back whole."""
    if state is None:
        return new_state()
    return {**state, "items": list(state["items"]), "known": list(state["known"]),
            "context": list(state["context"]), "ids": list(state["ids"]),
            "proposals": [{**p, "open": [list(x) for x in p["open"]]} for p in state.get("proposals", [])],
            "vs": dict(state.get("vs", {}))}  # its dicts are never changed in place: shared


def is_duplicate(state: dict, partition: int, offset: int, event_id: str | None) -> bool:
    """Already applied: a re-delivered record (same partition, offset not after `pos`) or a repeated event id."""
    pos = state["pos"]
    if pos is not None and pos[0] == partition and offset <= pos[1]:
        return True
    return event_id is not None and event_id in state["ids"]


def apply(state: dict, event: Interaction, partition: int, offset: int, k: int, recent_items: int,
          dedupe_ids: int) -> bool:
    """Apply one interaction in place; False (and no change) when it was applied before."""
    if is_duplicate(state, partition, offset, event.event_id):
        return False
    cluster = event.cluster
    items = state["items"]
    items.append(event.item_id)
    if len(items) > recent_items:
        del items[: len(items) - recent_items]
    known = state["known"]
    if cluster not in known:
        known.append(cluster)
        known.sort()
    context = state["context"]
    if cluster in context:
        context.remove(cluster)
    context.append(cluster)
    if len(context) > k:
        del context[: len(context) - k]
    state["pos"] = [partition, offset]
    if event.event_id is not None:
        ids = state["ids"]
        ids.append(event.event_id)
        if len(ids) > dedupe_ids:
            del ids[: len(ids) - dedupe_ids]
    state["n"] += 1
    state["ts"] = max(state["ts"], event.ts)
    return True


def needs_slate(state: dict, k: int, max_age_s: float) -> bool:
    """A full context (K distinct clusters) that differs from the last slate's, or a slate too old."""
    context = state["context"]
    if len(context) < k:
        return False
    slate = state["slate"]
    return slate is None or slate["context"] != context or state["ts"] - slate["ts"] > max_age_s


def expired_users(states: Iterable[tuple[str, dict | None]], now: float, ttl_s: float,
                  partitions: set[int]) -> list[tuple[str, int]]:
    """(user, input partition) of the users in `partitions` whose last event was applied more than
    `ttl_s` ago (worker clock); `ttl_s` 0 forgets nobody. Only partitions the worker owns are swept:
    a standby's copy is its owner's to delete."""
    if ttl_s <= 0:
        return []
    out = []
    for user, state in states:
        if state is None or state.get("pos") is None or state["pos"][0] not in partitions:
            continue
        seen = state.get("seen")
        if now - (state["ts"] if seen is None else seen) > ttl_s:
            out.append((user, int(state["pos"][0])))
    return out
