"""The engine's proposals and their feedback, computed offline from a dataset: no Kafka, no Triton.

For each user, in time order, the events are applied to the engine's own state (`streams.core.state`:
`apply`, `needs_slate`), proposals are picked from a novelty table row as a worker picks them
(`streams.core.recommendation.novel_for_user`: the row's best M clusters the user does not know yet)
and remembered and resolved by `streams.core.feedback` (`open_slate`, `remember`, `resolve`), with the
engine's settings (`EngineConfig`: K, M, slate age, horizon, open slates). Nothing here decides
what a proposal's fate is; it only replays the engine's logic on a window of time.

What differs from the engine, on purpose: every event is its own micro-batch (a worker batches
events, so a slate may come a few events later there), only the novel clusters are proposed (no
seqrec items: feedback is about clusters), and proposals still open when the window ends are
dropped rather than resolved by later events, so that feedback from a window never reads past it
(the critics of `explore novelty critics` learn from a window before the test period and must not
see the test period through a horizon).

The acceptance is **off-policy**, as in the demo's replay: users did what the data set says
whatever was proposed, so "accepted" means the user went to the cluster anyway. The A/B protocol
of issue #16 item 4 runs the real engine; this is the cheap, offline twin used to train one critic
per novelty-table variant and to check generators on a later window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from interests.data.datasets import Dataset
from streams.config import EngineConfig
from streams.core.feedback import FeedbackRecord, drop_unused_versions, feedback_record, open_slate, remember, resolve
from streams.core.recommendation import novel_for_user
from streams.core.records import Interaction
from streams.core.state import apply, needs_slate, new_state

Row = tuple[Sequence[int], Sequence[float]]  # a table row's ranked clusters and their scores


@dataclass
class OfflineFeedback:
    """What a window produced: resolved proposals, the slates made, and what was left out."""

    records: list[FeedbackRecord] = field(default_factory=list)
    slates: list[dict] = field(default_factory=list)  # as on `recommendations`, novel clusters only
    open_at_end: int = 0  # proposals the window's end left unresolved (dropped: no label)
    no_row: int = 0  # slates due whose context the table lacks (the engine would ask the LM live)


def simulate_feedback(ds: Dataset, item_cluster: np.ndarray, rows: Mapping[tuple[int, ...], Row],
                      descriptions: Sequence[str], start_ts: float, end_ts: float, cfg: EngineConfig,
                      versions: Mapping[str, str] | None = None) -> OfflineFeedback:
    """Slates and feedback of the events in [`start_ts`, `end_ts`), with each user's state built
    from every earlier event (module docstring); `rows` maps a context to its table row."""
    out = OfflineFeedback()
    off = ds.offsets
    rated = bool(np.any(ds.weights != 1))  # all 1: the source had no ratings (`streams.wiring.replay` sends none then)
    for u in range(ds.n_users):
        _simulate_user(ds, int(off[u]), int(off[u + 1]), item_cluster, rows, descriptions, (start_ts, end_ts), cfg,
                       dict(versions or {}), rated, out)
    return out


def _simulate_user(ds: Dataset, lo: int, hi: int, item_cluster: np.ndarray, rows: Mapping[tuple[int, ...], Row],
                   descriptions: Sequence[str], window: tuple[float, float], cfg: EngineConfig,
                   versions: dict[str, str], rated: bool, out: OfflineFeedback) -> None:
    """One user's events through the engine's state, proposals and feedback (state per user, as in a worker)."""
    user = str(ds.user_ids[ds.users[lo]]) if hi > lo else ""
    start_ts, end_ts = window
    state = new_state()
    for j in range(lo, hi):
        ts = float(ds.timestamps[j])
        if ts >= end_ts:
            break
        cluster, item_id = int(item_cluster[ds.items[j]]), str(ds.item_ids[ds.items[j]])
        weight = float(ds.weights[j]) if rated else None
        apply(state, Interaction(user, item_id, cluster, ts, "interaction", None, weight), 0, j, cfg.k, 1, 0)
        if ts < start_ts:
            continue
        resolved = resolve(state["proposals"], state["n"], ts, cluster, item_id, weight, cfg.feedback_horizon())
        if resolved:  # as the engine does: records first, then the versions no open slate names
            out.records += [feedback_record(user, r, descriptions, state["vs"]) for r in resolved]
            drop_unused_versions(state["proposals"], state["vs"])
        if needs_slate(state, cfg.k, cfg.slate_max_age_s):
            _propose(user, state, rows, descriptions, cfg, versions, out)
    out.open_at_end += sum(len(s["open"]) for s in state["proposals"])


def _propose(user: str, state: dict, rows: Mapping[tuple[int, ...], Row], descriptions: Sequence[str],
             cfg: EngineConfig, versions: dict[str, str], out: OfflineFeedback) -> None:
    """A slate for a user whose context changed (or whose slate aged), as `Engine._recommend` makes it."""
    row = rows.get(tuple(state["context"]))
    if row is None:
        out.no_row += 1
        return
    novel = novel_for_user(row[0], row[1], state["known"], cfg.m)
    if not novel:
        return
    state["slate"] = {"context": list(state["context"]), "clusters": [c for c, _ in novel], "ts": state["ts"]}
    out.slates.append({"user_id": user, "context": list(state["context"]), "events_applied": state["n"],
                       "event_ts": state["ts"], "source": "table",
                       "novel_clusters": [{"id": c, "description": descriptions[c], "score": s} for c, s in novel]})
    slate = open_slate(state["n"], state["ts"], state["context"], [c for c, _ in novel], "table", versions,
                       state["vs"])
    evicted = remember(state["proposals"], slate, cfg.feedback_max_open)
    if evicted:
        out.records += [feedback_record(user, r, descriptions, state["vs"]) for r in evicted]
        drop_unused_versions(state["proposals"], state["vs"])


def table_rows(rows: Sequence[dict]) -> dict[tuple[int, ...], Row]:
    """A novelty table's rows (`{context, clusters, scores}`) as `simulate_feedback` looks them up."""
    return {tuple(int(c) for c in r["context"]): (list(r["clusters"]), list(r["scores"])) for r in rows}


__all__ = ["OfflineFeedback", "Row", "simulate_feedback", "table_rows"]
