"""Exploration feedback: did the user take up a proposed novel cluster? Pure (no models; Kafka only in
`streams.wiring.topic_reader.read_feedback_topic`).

Every slate proposes M novel clusters. The worker remembers them in the user's state (so they are
co-partitioned with the user's events, recovered with the state after a restart, and changed
exactly once per applied event, as the state is) and resolves each one on the user's later events:

- **accepted** when an event within the horizon lands in the cluster (its item's cluster at the
  serving level): the record carries that item and its `weight` as the rating, when the event had one;
- **horizon** (not accepted) when the horizon passes: `horizon.events` events after the slate
  without one in the cluster, or an event more than `horizon.seconds` of event time after the
  slate (that event does not count: it is outside the horizon); 0 turns either limit off;
- **evicted** (not accepted, and not a label: the horizon had not passed) when a user has more
  than `max_open` slates open: the oldest is resolved, so the state stays bounded whatever the
  user does;
- **catalog** (not accepted, and not a label) when the worker moves the user to a new catalog
  (`streams.core.migration`): the slate's clusters no longer mean the same.

A horizon is measured on the user's own events, in their partition order: a user who never comes
back leaves its proposals open (a time horizon needs an event to see that it passed).

One open slate in the state (short keys: it is stored per user in the changelog):
`{"n": events applied when the slate was made, "ts": its event time, "ctx": context cluster ids,
"src": "table" or "live", "v": key of its model versions, "open": [[cluster, rank], ...]}`; rank
is 1-based, the cluster's place among the slate's novel clusters. The versions themselves are
kept once per user, in the state's `vs` (key -> versions, `intern_versions`): every slate of a
worker carries the same few, and as a dict per slate they made a full user 7.1 kB on the changelog
against 5.7 kB now (`benchmarks/user_state.py`). A slate written before has its versions dict in
`v`; both read.

`FeedbackRecord` is the value on the `exploration-feedback` topic (keyed by user id), one per
resolved proposal; `parse_feedback` and `read_feedback_file` read them back
(`streams.wiring.topic_reader.read_feedback_topic` from the topic),
and `labelled_outcomes` turns them into the alignment model's input (`interests.alignment.model`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from interests.alignment.model import Outcome
from streams.config import Horizon

OUTCOMES = ("accepted", "horizon", "evicted", "catalog")
UNLABELLED = ("evicted", "catalog")  # closed before their horizon passed: no label either way


@dataclass(frozen=True, slots=True)
class Resolved:
    """One proposal whose fate is known: the open slate it came from and what happened."""

    slate: dict  # the open slate entry (see the module docstring)
    cluster: int
    rank: int
    outcome: str  # one of OUTCOMES
    after_events: int  # the user's events after the slate when it resolved
    ts: float | None  # event time of the event that resolved it (None: evicted by a new slate)
    item_id: str | None  # the accepting event's item
    rating: float | None  # the accepting event's weight, when it had one


def open_slate(n: int, ts: float, context: Sequence[int], clusters: Sequence[int], source: str,
               versions: dict[str, str], table: dict[str, dict[str, str]]) -> dict:
    """The state's entry for a slate just sent: every proposed cluster open, ranked in slate order; its
    versions go into the user's `table` (the state's `vs`) and the slate keeps their key."""
    return {"n": int(n), "ts": float(ts), "ctx": [int(c) for c in context], "src": source,
            "v": intern_versions(table, versions), "open": [[int(c), rank] for rank, c in enumerate(clusters, start=1)]}


def intern_versions(table: dict[str, dict[str, str]], versions: dict[str, str]) -> str:
    """The key of `versions` in `table`, added if new: 12 hex digits of their hash, so that equal versions
    share one entry whichever slate or worker made them."""
    key = hashlib.blake2b(json.dumps(sorted(versions.items())).encode(), digest_size=6).hexdigest()
    table.setdefault(key, dict(versions))
    return key


def slate_versions(slate: dict, table: dict[str, dict[str, str]]) -> dict[str, str]:
    """A slate's versions: from `table` by its key, or its own dict (a slate written before the table)."""
    v = slate["v"]
    return dict(v) if isinstance(v, dict) else dict(table.get(v, {}))


def drop_unused_versions(slates: Sequence[dict], table: dict[str, dict[str, str]]) -> None:
    """Remove from `table`, in place, the versions no open slate names any more (after resolving: the
    records of what was resolved already carry theirs)."""
    used = {s["v"] for s in slates if isinstance(s["v"], str)}
    for key in [k for k in table if k not in used]:
        del table[key]


def remember(slates: list[dict], slate: dict, max_open: int) -> list[Resolved]:
    """Add `slate` to the user's open slates in place; the oldest beyond `max_open` are resolved as
    evicted (bounded state: a user who keeps changing context would otherwise grow it forever)."""
    slates.append(slate)
    out: list[Resolved] = []
    while len(slates) > max_open:
        old = slates.pop(0)
        out += [Resolved(old, c, r, "evicted", slate["n"] - old["n"], None, None, None) for c, r in old["open"]]
    return out


def resolve(slates: list[dict], n: int, ts: float, cluster: int, item_id: str, rating: float | None,
            horizon: Horizon) -> list[Resolved]:
    """Resolve the user's open slates in place against its `n`-th event (cluster, event time `ts`).

    The time limit is checked first: an event past it closes the slate without counting. Otherwise
    the event accepts its cluster if open, and a slate that has now seen `horizon.events` events
    closes its other clusters; a slate with nothing open left is dropped.
    """
    out: list[Resolved] = []
    keep: list[dict] = []
    for slate in slates:
        after = n - slate["n"]
        if after <= 0:  # made after this event (cannot happen in order; kept rather than guessed)
            keep.append(slate)
            continue
        if horizon.seconds > 0 and ts - slate["ts"] > horizon.seconds:
            out += [Resolved(slate, c, r, "horizon", after, ts, None, None) for c, r in slate["open"]]
            continue
        still = []
        for c, r in slate["open"]:
            if c == cluster:
                out.append(Resolved(slate, c, r, "accepted", after, ts, item_id, rating))
            else:
                still.append([c, r])
        if horizon.events > 0 and after >= horizon.events:
            out += [Resolved(slate, c, r, "horizon", after, ts, None, None) for c, r in still]
            still = []
        if still:
            keep.append({**slate, "open": still})
    slates[:] = keep
    return out


@dataclass(frozen=True)
class FeedbackRecord:
    """One resolved proposal as written to `exploration-feedback` (keyed by user id).

    `feedback_id` (`user/slate/cluster`, the slate being its `events_applied` on `recommendations`)
    names the proposal: a consumer can join it to its slate, and drop a re-sent record after a
    crash (the topic is written at least once, like `recommendations`).
    """

    feedback_id: str
    user_id: str
    slate: int  # events_applied of the slate on `recommendations`
    slate_ts: float
    context: list[dict]  # [{"id", "description"}], most recent last
    cluster: dict  # {"id", "description"}
    rank: int  # 1-based place among the slate's novel clusters
    source: str  # "table" or "live"
    versions: dict[str, str]
    accepted: bool
    outcome: str  # accepted, horizon (not accepted), evicted or catalog (not accepted; the horizon had not passed)
    after_events: int
    resolved_ts: float | None
    item_id: str | None
    rating: float | None

    @property
    def key(self) -> bytes:
        return self.user_id.encode()

    def encode(self) -> bytes:
        """The record's JSON value. `vars`, not `dataclasses.asdict`: the same JSON without asdict's deep
        copy of every nested dict and list, which was ~3 % of a busy worker's CPU (py-spy, ~40 a batch)."""
        return json.dumps(vars(self)).encode()


def feedback_record(user: str, r: Resolved, descriptions: Sequence[str],
                    table: dict[str, dict[str, str]]) -> FeedbackRecord:
    """The topic's record of one resolved proposal, with the descriptions the prompt would use and the
    versions its slate names in the user's `table` (the state's `vs`)."""
    s = r.slate
    return FeedbackRecord(
        feedback_id=f"{user}/{s['n']}/{r.cluster}", user_id=user, slate=s["n"], slate_ts=s["ts"],
        context=[{"id": c, "description": descriptions[c]} for c in s["ctx"]],
        cluster={"id": r.cluster, "description": descriptions[r.cluster]}, rank=r.rank, source=s["src"],
        versions=slate_versions(s, table), accepted=r.outcome == "accepted", outcome=r.outcome,
        after_events=r.after_events, resolved_ts=r.ts, item_id=r.item_id, rating=r.rating)


def parse_feedback(value: bytes | str) -> FeedbackRecord:
    """A record of the topic (or a line of a file of them) back into a `FeedbackRecord`; ValueError if it is not one."""
    try:
        doc = json.loads(value)
        record = FeedbackRecord(**doc)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a feedback record: {exc}") from None
    if record.outcome not in OUTCOMES:
        raise ValueError(f"not a feedback record: outcome {record.outcome!r}")
    return record


def read_feedback_file(path: Path) -> list[FeedbackRecord]:
    """Records from a file of them, one JSON value per line (as `explore novelty align --feedback` takes)."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if line.strip():
            try:
                out.append(parse_feedback(line))
            except ValueError as exc:
                raise ValueError(f"{path}: line {n}: {exc}") from None
    return out


def acceptance(records: Iterable[FeedbackRecord], by: Callable[[FeedbackRecord], object]) -> dict[object, float]:
    """Accepted over accepted + not accepted per group (`by`: rank, source...), as `explore_feedback_total`
    gives it; evicted proposals (and those closed by a new catalog) have no label and count nowhere."""
    counts: dict[object, list[int]] = {}
    for r in records:
        if r.outcome not in UNLABELLED:
            c = counts.setdefault(by(r), [0, 0])
            c[0] += r.accepted
            c[1] += 1
    return {k: a / n for k, (a, n) in counts.items()}


def labelled_outcomes(records: Iterable[FeedbackRecord]) -> list[Outcome]:
    """The outcomes an alignment model learns from: each proposal once (the topic is written at least
    once: a repeat has the same `feedback_id`), evicted and catalog-closed ones left out (their horizon
    had not passed)."""
    seen: set[str] = set()
    out = []
    for r in records:
        if r.outcome in UNLABELLED or r.feedback_id in seen:
            continue
        seen.add(r.feedback_id)
        out.append(Outcome(tuple(c["id"] for c in r.context), tuple(c["description"] for c in r.context),
                           r.cluster["id"], r.cluster["description"], r.accepted, r.rank))
    return out


__all__ = ["OUTCOMES", "UNLABELLED", "FeedbackRecord", "Resolved", "acceptance", "drop_unused_versions",
           "feedback_record", "intern_versions", "labelled_outcomes", "open_slate", "parse_feedback",
           "read_feedback_file", "remember", "resolve", "slate_versions"]
