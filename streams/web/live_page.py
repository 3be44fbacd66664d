"""The worker's live page (`GET /live`): the latest slates and the engine's counters, as HTML.

For people who would rather look than read: server-rendered, no script and no build step, and it
reloads itself every few seconds. It shows what the demo's live view prints: per user the recent
clusters, the novel clusters proposed and the slate (by title), with the events / DLQ / slate
counters and the event-to-slate latency of this worker's recent slates.

`LiveFeed` keeps what the page needs from the records the worker sends; `counters` reads the
worker's Prometheus registry; `render_page` is a pure function of both. No Faust here: the worker
registers the route (`?users=a,b` pins users; otherwise the most recently served ones).
"""

from __future__ import annotations

import html
import json
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry

REFRESH_S = 3
SHOWN = 6  # users on the page when none are pinned


class LiveFeed:
    """The newest record per user (the last `keep_users` users served) and the latest latencies."""

    def __init__(self, keep_users: int = 2000, keep_latencies: int = 5000) -> None:
        self.latest: OrderedDict[str, dict] = OrderedDict()
        self.latencies: deque[float] = deque(maxlen=keep_latencies)
        self.keep_users = keep_users

    def add(self, value: bytes | Mapping) -> None:
        """One record as sent to `recommendations` (its JSON value, or the decoded object)."""
        rec = json.loads(value) if isinstance(value, bytes | str) else dict(value)
        user = str(rec["user_id"])
        self.latest.pop(user, None)
        self.latest[user] = rec
        if len(self.latest) > self.keep_users:
            self.latest.popitem(last=False)
        self.latencies.append(float(rec["latency_ms"]))

    def shown(self, pinned: Sequence[str] = (), n: int = SHOWN) -> list[tuple[str, dict | None]]:
        """The pinned users (None where this worker has no slate for one), or the `n` most recent."""
        if pinned:
            return [(u, self.latest.get(u)) for u in pinned]
        return [(u, self.latest[u]) for u in reversed(list(self.latest)[-n:])]


@dataclass
class Counts:
    """The worker's counters, summed over their labels where a label is not shown."""

    events: dict[str, float] = field(default_factory=dict)  # outcome -> records
    dlq: dict[str, float] = field(default_factory=dict)  # reason -> records
    slates: dict[str, float] = field(default_factory=dict)  # source -> slates
    skipped: float = 0.0


def counters(registry: CollectorRegistry) -> Counts:
    out = Counts()
    by_name = {"explore_events_total": (out.events, "outcome"), "explore_dlq_records_total": (out.dlq, "reason"),
               "explore_slates_total": (out.slates, "source")}
    for family in registry.collect():
        for s in family.samples:
            if s.name in by_name:
                target, label = by_name[s.name]
                target[s.labels[label]] = target.get(s.labels[label], 0.0) + s.value
            elif s.name == "explore_slates_skipped_total":
                out.skipped += s.value
    return out


def _e(value: object) -> str:
    return html.escape(str(value))


def _user_block(user: str, rec: dict | None, titles: Mapping[str, str]) -> str:
    if rec is None:
        return f'<section class="user"><h2>user {_e(user)}</h2><p class="none">no slate yet</p></section>'
    recent = " &rarr; ".join(f'<span class="cl">{_e(c["description"])}</span>' for c in rec["context"])
    novel = "".join(f'<li><span class="cl novel">{_e(c["description"])}</span> <small>{c["score"]:.1f}</small></li>'
                    for c in rec["novel_clusters"])
    items = "".join(f'<li>{_e(titles.get(x["item_id"], x["item_id"]))} <small>{_e(x["item_id"])}</small></li>'
                    for x in rec["slate"])
    return (f'<section class="user"><h2>user {_e(user)} <small>after {rec["events_applied"]} interactions, '
            f'novel clusters from the {_e(rec["source"])}, {rec["latency_ms"]:.0f} ms</small></h2>'
            f'<p><b>recent clusters:</b> {recent}</p>'
            f'<div class="cols"><div><b>novel proposed:</b><ul>{novel}</ul></div>'
            f'<div><b>slate:</b><ol>{items}</ol></div></div></section>')


def _counter_row(name: str, values: Mapping[str, float]) -> str:
    total = sum(values.values())
    parts = ", ".join(f"{_e(k)} {v:,.0f}" for k, v in sorted(values.items()))
    return f"<tr><th>{name}</th><td>{total:,.0f}</td><td>{parts}</td></tr>"


def render_page(feed: LiveFeed, counts: Counts, titles: Mapping[str, str], pinned: Sequence[str] = (),
                worker: str = "", refresh_s: int = REFRESH_S, now: float | None = None) -> str:
    """The whole page: counters, latency, then one block per shown user."""
    lat = np.fromiter(feed.latencies, dtype=np.float64)
    latency = (f"p50 {np.median(lat):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms over the last {len(lat):,} slates"
               if len(lat) else "no slates yet")
    dlq = counts.dlq or {"none": 0.0}
    rows = (_counter_row("events", counts.events) + _counter_row("to the DLQ", dlq)
            + _counter_row("slates", counts.slates)
            + f"<tr><th>event-to-slate</th><td colspan=2>{latency}</td></tr>"
            + f"<tr><th>no slate</th><td>{counts.skipped:,.0f}</td><td>context changes without one</td></tr>")
    users = "".join(_user_block(u, rec, titles) for u, rec in feed.shown(pinned)) or "<p>no slates yet</p>"
    stamp = time.strftime("%H:%M:%S", time.localtime(time.time() if now is None else now))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{int(refresh_s)}">
<title>explore: live slates</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} th, td {{ text-align: left; padding: .2em .8em; }}
th {{ color: #555; font-weight: 600; }} small {{ color: #777; }}
.user {{ border-top: 1px solid #ddd; padding: .4em 0; }} .user h2 {{ font-size: 1.05em; margin: .3em 0; }}
.cols {{ display: flex; gap: 3em; }} ul, ol {{ margin: .2em 0; }}
.cl {{ background: #eef3fb; padding: 0 .3em; border-radius: 3px; }} .novel {{ background: #e6f6e6; }}
</style></head>
<body><h1>Live slates <small>{_e(worker)} &middot; {stamp} &middot; reloads every {int(refresh_s)} s</small></h1>
<table>{rows}</table>
{users}
</body></html>
"""


__all__ = ["Counts", "LiveFeed", "counters", "render_page"]
