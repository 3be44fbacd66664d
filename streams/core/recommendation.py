"""What a slate is made of, and the record it becomes on the `recommendations` topic.

`novel_for_user` and `slate_items` pick from model answers (the novelty table's row or a live
`interest_generator` answer; `seqrec`'s top items); `Recommendation` is one slate, with its own
encoding. Pure: no Kafka, no models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass


def novel_for_user(ranked: Sequence[int], scores: Sequence[float], known: Sequence[int],
                   m: int) -> list[tuple[int, float]]:
    """The best `m` of a context's ranked clusters (a table row or a live answer) that the user does
    not know yet; empty slots (cluster -1) are skipped."""
    known_set = set(known)
    out = []
    for c, s in zip(ranked, scores, strict=False):
        if c >= 0 and c not in known_set:
            out.append((int(c), float(s)))
            if len(out) == m:
                break
    return out


def slate_items(items: Sequence[int], scores: Sequence[float], seen: Sequence[int], n: int,
                floor: float) -> list[tuple[int, float]]:
    """The model's top items (1-based ids) as 0-based indices, minus padding slots and anything seen."""
    seen_set = set(seen)
    out = []
    for i, s in zip(items, scores, strict=True):
        if s > floor and (i - 1) not in seen_set:
            out.append((int(i) - 1, float(s)))
            if len(out) == n:
                break
    return out


@dataclass
class Recommendation:
    """One slate for one user, as written to `recommendations` (keyed by user id).

    `trigger_ts` is the Kafka timestamp of the event that changed the user's context: `encode`
    stamps the event-to-slate latency against it at send time, so the latency covers the writes
    before the send too.
    """

    user_id: str
    context: list[dict]  # [{"id", "description"}], most recent last
    novel_clusters: list[dict]  # [{"id", "description", "score"}]
    slate: list[dict]  # [{"item_id", "cluster", "score"}]
    source: str  # "table" or "live": where the novel clusters came from
    seqrec_path: str  # "triton" or "onnx"
    versions: dict[str, str]
    event_ts: float
    input: tuple[int, int]  # partition, offset of the user's last record in the batch
    events_applied: int
    trigger_ts: float

    @property
    def key(self) -> bytes:
        return self.user_id.encode()

    def encode(self, now: float) -> bytes:
        """The record's JSON value, with `latency_ms` (trigger to `now`) and `sent_at`."""
        return json.dumps({
            "user_id": self.user_id, "context": self.context, "novel_clusters": self.novel_clusters,
            "slate": self.slate, "source": self.source, "seqrec_path": self.seqrec_path, "versions": self.versions,
            "event_ts": self.event_ts, "input": list(self.input), "events_applied": self.events_applied,
            "latency_ms": round((now - self.trigger_ts) * 1000, 2), "sent_at": now}).encode()


__all__ = ["Recommendation", "novel_for_user", "slate_items"]
