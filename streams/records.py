"""Input records: validation of `interactions` values, pure and without Kafka.

A record is `{user_id, item_id, ts, event}` with optional `event_id` and `weight` (docs/DESIGN.md).
`parse_interaction` returns either an `Interaction` or a `Rejection` whose reason is one of
`REASONS`; the worker sends rejected records unchanged to the dead-letter topic with the reason
and detail in the headers, so nothing is dropped silently and every reason is countable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

REASONS = ("oversized", "bad_json", "not_object", "missing_field", "wrong_type", "key_mismatch",
           "unknown_item", "ts_out_of_range")
REQUIRED = ("user_id", "item_id", "ts", "event")


@dataclass(frozen=True, slots=True)
class Interaction:
    user_id: str
    item: int  # dense item index of the catalog (0-based)
    item_id: str  # external id, as sent
    ts: float  # event time, seconds since the epoch
    event: str
    event_id: str | None
    weight: float


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 4096
    min_ts: float = 1.0  # strictly after the epoch: 0 is the usual "unset"
    max_ts: float = math.inf  # the worker passes its clock + max_future_s


def _is_id(value: object) -> bool:
    if isinstance(value, str):
        return 0 < len(value) <= 256
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_interaction(key: bytes | None, value: bytes | None, item_index: dict[str, int],
                      limits: Limits) -> Interaction | Rejection:
    """The interaction in `value`, or why it is rejected. `key`, when present, must be the user id."""
    if value is None:
        return Rejection("bad_json", "empty value (tombstone)")
    if len(value) > limits.max_payload_bytes:
        return Rejection("oversized", f"{len(value)} bytes > {limits.max_payload_bytes}")
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Rejection("bad_json", str(exc)[:200])
    if not isinstance(doc, dict):
        return Rejection("not_object", f"JSON {type(doc).__name__}, expected an object")
    missing = [f for f in REQUIRED if f not in doc]
    if missing:
        return Rejection("missing_field", ", ".join(missing))
    for name, ok in (("user_id", _is_id), ("item_id", _is_id), ("ts", _is_number),
                     ("event", lambda v: isinstance(v, str) and 0 < len(v) <= 64)):
        if not ok(doc[name]):
            return Rejection("wrong_type", f"{name}={doc[name]!r:.80}")
    for name, ok in (("event_id", _is_id), ("weight", _is_number)):
        if doc.get(name) is not None and not ok(doc[name]):
            return Rejection("wrong_type", f"{name}={doc[name]!r:.80}")
    user = str(doc["user_id"])
    if key is not None and key.decode("utf-8", "replace") != user:
        return Rejection("key_mismatch", f"key {key[:80]!r} but user_id {user[:80]!r}")
    item = item_index.get(str(doc["item_id"]))
    if item is None:
        return Rejection("unknown_item", f"item_id {str(doc['item_id'])[:80]!r} is not in the catalog")
    ts = float(doc["ts"])
    if not limits.min_ts <= ts <= limits.max_ts:
        return Rejection("ts_out_of_range", f"ts {ts} outside [{limits.min_ts}, {limits.max_ts:.0f}]")
    event_id = doc.get("event_id")
    weight = doc.get("weight")
    return Interaction(user, item, str(doc["item_id"]), ts, doc["event"],
                       None if event_id is None else str(event_id), 1.0 if weight is None else float(weight))
