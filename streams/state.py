"""Per-user state and the decisions made on it: pure functions, no Kafka, no models.

The state is a plain dict (the Faust table stores it as JSON in its changelog):

- `items`: the user's newest item indices (dense catalog order), oldest first, bounded;
- `known`: every cluster the user has touched (sorted), never forgotten;
- `context`: the last K distinct clusters, most recent last (the definition the novelty LM is
  trained on, `interests.novelty_data.novel_transitions`);
- `pos`: [partition, offset] of the last input record applied, and `ids`: recent event ids.
  Together they make re-deliveries harmless: after a restart or a rebalance Kafka hands out
  again every record after the last committed offset, and a record at or before `pos` (or with
  an event id already seen) is recognised and leaves the state as it is;
- `n`: interactions applied, `ts`: the newest event time;
- `slate`: the last recommendation sent (context, clusters, items, event time).
"""

from __future__ import annotations

from collections.abc import Sequence

from streams.records import Interaction


def new_state() -> dict:
    return {"items": [], "known": [], "context": [], "pos": None, "ids": [], "n": 0, "ts": 0.0, "slate": None}


def copy_state(state: dict | None) -> dict:
    """A copy to change: the table's object changes only when the batch is written back whole."""
    if state is None:
        return new_state()
    return {**state, "items": list(state["items"]), "known": list(state["known"]),
            "context": list(state["context"]), "ids": list(state["ids"])}


def is_duplicate(state: dict, partition: int, offset: int, event_id: str | None) -> bool:
    """Already applied: a re-delivered record (same partition, offset not after `pos`) or a repeated event id."""
    pos = state["pos"]
    if pos is not None and pos[0] == partition and offset <= pos[1]:
        return True
    return event_id is not None and event_id in state["ids"]


def apply(state: dict, event: Interaction, cluster: int, partition: int, offset: int, k: int,
          recent_items: int, dedupe_ids: int) -> bool:
    """Apply one interaction in place; False (and no change) when it was applied before."""
    if is_duplicate(state, partition, offset, event.event_id):
        return False
    items = state["items"]
    items.append(event.item)
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


def novel_from_table(ranked: Sequence[int], scores: Sequence[float], known: Sequence[int],
                     m: int) -> list[tuple[int, float]]:
    """The best `m` of a context's ranked clusters that the user does not know yet."""
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


class PartitionOrder:
    """Apply each input partition as one gapless sequence of offsets, whatever Faust delivers.

    After a rebalance Faust can deliver a partition out of order (faust-streaming #221): records
    fetched before the rebalance are skipped, newer ones are delivered, and the skipped ones come
    back only after the seek to the committed offset. Applied as they come, a user's history would
    be reordered, and the per-user offset check would then take the late record for a duplicate.
    So each partition has a next offset to apply: an older record is a duplicate (already in the
    state), the expected one is applied, a newer one reveals a gap: it and the rest of its partition
    in the batch wait, and the worker seeks back to the expected offset. A gap that a seek does not
    fill within `accept_gap_s` is real (offsets that hold no record, e.g. transaction markers) and
    is stepped over.
    """

    APPLY, DUPLICATE, WAIT = "apply", "duplicate", "wait"

    def __init__(self, accept_gap_s: float = 10.0) -> None:
        self.next: dict[int, int] = {}
        self.accept_gap_s = accept_gap_s
        self._gap: dict[int, tuple[int, float]] = {}  # partition -> (expected offset, first seen)
        self.accepted_gaps = 0

    def forget(self, partitions: set[int]) -> None:
        """Partitions this worker no longer owns: their next owner starts from the table."""
        for p in partitions:
            self.next.pop(p, None)
            self._gap.pop(p, None)

    def classify(self, records: Sequence[tuple[int, int]], now: float) -> tuple[list[str], dict[int, int]]:
        """One verdict per (partition, offset), in order, and the offsets to seek back to."""
        verdicts, seeks = [], {}
        for p, o in records:
            expected = self.next[p]
            if p in seeks or (o > expected and not self._accept(p, expected, now)):
                verdicts.append(self.WAIT)
                seeks.setdefault(p, expected)
            elif o < expected:
                verdicts.append(self.DUPLICATE)
            else:
                verdicts.append(self.APPLY)
                self.next[p] = o + 1
                self._gap.pop(p, None)
        return verdicts, seeks

    def _accept(self, p: int, expected: int, now: float) -> bool:
        first = self._gap.get(p)
        if first is None or first[0] != expected:
            self._gap[p] = (expected, now)
            return False
        if now - first[1] >= self.accept_gap_s:
            self.accepted_gaps += 1
            return True
        return False
