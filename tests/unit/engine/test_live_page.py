"""The live page's logic: what the feed keeps, the counters it reads, the HTML it renders."""

from __future__ import annotations

import json

from streams.core.metrics import Metrics
from streams.web.live_page import LiveFeed, counters, render_page

TITLES = {"0114709": "Toy Story (1995)", "0113497": "Jumanji (1995)"}


def _record(user: str, latency_ms: float = 12.0, **extra: object) -> dict:
    cluster = {"id": 3, "description": "animation, children, pixar", "score": 2.5}
    return {"user_id": user, "latency_ms": latency_ms, "events_applied": 7, "source": "table",
            "context": [{"id": 1, "description": "crime, drama"}, {"id": 2, "description": "sci-fi, space"}],
            "novel_clusters": [cluster], "slate": [{"item_id": "0114709"}, {"item_id": "0113497"}], **extra}


def test_the_feed_keeps_each_users_newest_record_most_recent_first() -> None:
    feed = LiveFeed(keep_users=2)
    feed.add(json.dumps(_record("a", 10)).encode())
    feed.add(_record("b", 20))
    feed.add(_record("a", 30, events_applied=8))
    feed.add(_record("c", 40))  # "b" is the least recently served: dropped
    assert [u for u, _ in feed.shown()] == ["c", "a"]
    assert feed.latest["a"]["events_applied"] == 8
    assert list(feed.latencies) == [10, 20, 30, 40]
    assert feed.shown(["a", "zz"]) == [("a", feed.latest["a"]), ("zz", None)]


def test_counters_sum_the_workers_registry_by_label() -> None:
    m = Metrics()
    m.events.labels("applied").inc(40)
    m.events.labels("invalid").inc(3)
    m.dlq.labels("not_json").inc(2)
    m.dlq.labels("unknown_item").inc()
    m.slates.labels("table").inc(5)
    m.no_slate.labels("no_items").inc(2)
    c = counters(m.registry)
    assert c.events == {"applied": 40, "invalid": 3}
    assert c.dlq == {"not_json": 2, "unknown_item": 1}
    assert c.slates == {"table": 5} and c.skipped == 2


def test_the_page_shows_clusters_titles_counters_latency_and_refreshes() -> None:
    feed, m = LiveFeed(), Metrics()
    for i, ms in enumerate([10.0, 20.0, 30.0]):
        feed.add(_record(f"u{i}", ms))
    feed.add(_record("<script>", 5.0))
    m.events.labels("applied").inc(1234)
    m.dlq.labels("not_json").inc(2)
    page = render_page(feed, counters(m.registry), TITLES, worker="http://w1:6066", refresh_s=3)
    assert '<meta http-equiv="refresh" content="3">' in page
    assert "<li>Toy Story (1995) <small>0114709</small></li>" in page
    assert "crime, drama</span> &rarr; <span class=\"cl\">sci-fi, space" in page
    assert "animation, children, pixar" in page and "after 7 interactions" in page
    assert "<th>events</th><td>1,234</td><td>applied 1,234</td>" in page
    assert "<th>to the DLQ</th><td>2</td><td>not_json 2</td>" in page
    assert "p50 15 ms" in page and "over the last 4 slates" in page
    assert "user &lt;script&gt;" in page and "<script>" not in page  # ids are text, not markup
    assert page.index("user &lt;script&gt;") < page.index("user u2") < page.index("user u0")  # newest first


def test_the_page_before_any_slate_and_for_a_pinned_user_without_one() -> None:
    page = render_page(LiveFeed(), counters(Metrics().registry), TITLES, pinned=["42"])
    assert "no slates yet" in page and "user 42</h2><p class=\"none\">no slate yet" in page
