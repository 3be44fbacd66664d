"""Input records: validation of `interactions` values, pure and without Kafka.

A record is `{user_id, item_id, ts, event}` with optional `event_id` and `weight` (docs/DESIGN.md).
`parse_interaction` returns either an `Interaction` or a `Rejection` whose reason is one of
`REASONS`; the worker sends rejected records to the dead-letter topic as `dead_letter` makes them
(unchanged up to `DLQ_MAX_KEY_BYTES` of key and `DLQ_MAX_BYTES` of value, reason and detail in the
headers), so nothing is dropped silently and every reason is countable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

REASONS = ("missing_key", "oversized", "bad_json", "not_object", "missing_field", "wrong_type", "key_mismatch",
           "unknown_item", "ts_out_of_range", "internal_error")
REQUIRED = ("user_id", "item_id", "ts", "event")
DLQ_MAX_BYTES = 64 * 1024  # of a rejected record's value kept in its dead-letter copy
# Of its key: the producer hashes a key to its partition with aiokafka's pure-Python murmur2, 0.2-0.45 us a
# byte (timeit, two days: 1.3-1.8 ms at 4 kB, 23-49 ms at 100 kB), so a 64 KiB key costs the worker 13-29 ms
# and a flood would stall it.
DLQ_MAX_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Interaction:
    user_id: str
    item_id: str  # external id, as sent
    cluster: int  # the item's cluster in the catalog the worker serves
    ts: float  # event time, seconds since the epoch
    event: str
    event_id: str | None
    weight: float | None  # as sent (a rating, say); None when the record has none


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 4096
    min_ts: float = 1.0  # strictly after the epoch: 0 is the usual "unset"
    max_ts: float = math.inf  # the worker passes its clock + max_future_s
    max_id_length: int = 256  # characters of an id (user, item, event), ints as written in decimal
    max_key_bytes: int = 256  # bytes of a record's key (the user id)


def _is_text(value: object, max_length: int) -> bool:
    """A non-empty string of at most `max_length` characters that UTF-8 can spell. Why the last: JSON's
    \\u escapes allow lone surrogates, which `json` writes back but orjson (which Faust switches to
    for the state when it is installed) refuses; a worker crashed writing such a user's state."""
    return isinstance(value, str) and 0 < len(value) <= max_length and _utf8(value) is not None


def _is_id(value: object, max_length: int) -> bool:
    """Text (`_is_text`) or an integer of at most `max_length` characters: ids are kept in the
    state (event ids up to `dedupe_ids` of them), so their length bounds the state's size."""
    if isinstance(value, str):
        return _is_text(value, max_length)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() <= 4 * max_length and len(str(value)) <= max_length  # bit_length: cheap first cut
    return False


def _is_number(value: object) -> bool:
    """A finite number that fits a float: an int of ~309 digits or more raises OverflowError in
    `math.isfinite` and `float`, so it is refused here rather than anywhere later."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _short(value: object) -> str:
    """At most 80 characters of a value for the DLQ's detail header. Neither a huge int (slow to
    write, refused beyond 4300 digits) nor a container (deep nesting exhausts `repr`'s recursion)
    is written out."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, list | dict):
        return f"<{type(value).__name__} of {len(value)}>"
    return f"{value!r:.80}"


def _utf8(text: str) -> bytes | None:
    """`text` as UTF-8, or None for text no key can spell (a lone surrogate, which JSON's \\u escapes allow)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def parse_interaction(key: bytes | None, value: bytes | None, item_cluster: Mapping[str, int],
                      limits: Limits) -> Interaction | Rejection:
    """The interaction in `value`, or why it is rejected. `key` must be the user id: a keyless record
    could land on any partition, and so on any worker, apart from the user's other events.
    `item_cluster` maps every item the worker knows (its catalog's and those published since) to its cluster."""
    if not key:
        return Rejection("missing_key", "the record has no key (it must be the user id)")
    if len(key) > limits.max_key_bytes:
        return Rejection("oversized", f"key of {len(key)} bytes > {limits.max_key_bytes}")
    if value is None:
        return Rejection("bad_json", "empty value (tombstone)")
    if len(value) > limits.max_payload_bytes:
        return Rejection("oversized", f"{len(value)} bytes > {limits.max_payload_bytes}")
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays or objects
        return Rejection("bad_json", f"{type(exc).__name__}: {str(exc)[:200]}")
    if not isinstance(doc, dict):
        return Rejection("not_object", f"JSON {type(doc).__name__}, expected an object")
    missing = [f for f in REQUIRED if f not in doc]
    if missing:
        return Rejection("missing_field", ", ".join(missing))
    def is_id(v: object) -> bool:
        return _is_id(v, limits.max_id_length)

    for name, ok in (("user_id", is_id), ("item_id", is_id), ("ts", _is_number),
                     ("event", lambda v: _is_text(v, 64))):
        if not ok(doc[name]):
            return Rejection("wrong_type", f"{name}={_short(doc[name])}")
    for name, ok in (("event_id", is_id), ("weight", _is_number)):
        if doc.get(name) is not None and not ok(doc[name]):
            return Rejection("wrong_type", f"{name}={_short(doc[name])}")
    user = str(doc["user_id"])
    if key != _utf8(user):  # byte for byte: a lenient decoding of the key gave two keys one user
        return Rejection("key_mismatch", f"key {key[:80]!r} but user_id {user[:80]!r}")
    cluster = item_cluster.get(str(doc["item_id"]))
    if cluster is None:
        return Rejection("unknown_item", f"item_id {str(doc['item_id'])[:80]!r} is not in the catalog")
    ts = float(doc["ts"])
    if not limits.min_ts <= ts <= limits.max_ts:
        return Rejection("ts_out_of_range", f"ts {ts} outside [{limits.min_ts}, {limits.max_ts:.0f}]")
    event_id = doc.get("event_id")
    weight = doc.get("weight")
    return Interaction(user, str(doc["item_id"]), cluster, ts, doc["event"],
                       None if event_id is None else str(event_id), None if weight is None else float(weight))


def dead_letter(key: bytes | None, value: bytes | None, rejection: Rejection,
                source: str) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of a rejected record's copy in the dead-letter topic: key and value as they
    came, headers `reason`, `detail` and `source` (topic/partition/offset of the original).

    A key over `DLQ_MAX_KEY_BYTES` keeps its first `DLQ_MAX_KEY_BYTES` bytes (hashing it to a partition
    costs the worker 0.2-0.45 us a byte), a value over `DLQ_MAX_BYTES` its first `DLQ_MAX_BYTES`, and a
    `truncated` header gives the original sizes. An input topic can take records larger than a producer
    may send (Faust's limit is 1,000,000 bytes): the copy of a record with a 1 MiB key failed to send,
    the agent crashed and took the worker down with it.
    """
    parts = (("key", key, DLQ_MAX_KEY_BYTES), ("value", value, DLQ_MAX_BYTES))
    headers = [("reason", rejection.reason.encode()),
               ("detail", rejection.detail.encode("utf-8", "backslashreplace")), ("source", source.encode())]
    sizes = [f"{name} {len(part)} bytes" for name, part, limit in parts if part is not None and len(part) > limit]
    if sizes:
        headers.append(("truncated", ", ".join(sizes).encode()))
    key, value = (part if part is None else part[:limit] for _, part, limit in parts)
    return key, value, headers
