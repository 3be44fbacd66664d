"""A user's state under a new catalog (issue 27, item 3): the pure rules on hand-made catalogs, and the
engine migrating a state written under an earlier catalog at the user's next event."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from interests.clusters.catalog import Catalog
from streams.config import EngineConfig
from streams.core.engine import Engine, RawRecord, user_view
from streams.core.feedback import labelled_outcomes, open_slate, parse_feedback, remember
from streams.core.migration import cluster_mapping, migrate, recent_clusters, upgrade_legacy
from streams.core.state import new_state

# Old catalog: items a..f in clusters 0, 0, 1, 1, 2, 2. The new one splits old 0 (a -> 3, b -> 4), keeps
# 1 whole as 0, moves e to 1 and f to 2 (old 2 ties between 1 and 2: the lowest id wins), drops nothing
# else; item g is new.
OLD_IDS = ["a", "b", "c", "d", "e", "f"]
OLD = [0, 0, 1, 1, 2, 2]
NEW = {"a": 3, "b": 4, "c": 0, "d": 0, "e": 1, "f": 2, "g": 5}


def test_an_old_cluster_maps_to_the_new_one_holding_most_of_its_items() -> None:
    assert cluster_mapping(OLD_IDS, OLD, NEW, 4) == [3, 0, 1, None]  # 0: tie 3/4 -> 3; 3: no items -> None
    assert cluster_mapping(OLD_IDS, OLD, {"c": 7}, 3) == [None, 7, None]
    assert cluster_mapping(OLD_IDS, OLD, {}, 3) == [None, None, None]


def test_recent_clusters_are_the_last_k_distinct_in_the_new_catalog() -> None:
    assert recent_clusters(["a", "c", "zzz", "d", "g"], NEW, 2) == [0, 5]
    assert recent_clusters(["c", "a", "d", "zzz"], NEW, 3) == [3, 0]  # "c" and "d" share cluster 0
    assert recent_clusters([], NEW, 2) == []


def _old_state() -> dict:
    """A user who had a, c, e (old clusters 0, 1, 2) long ago; the bounded history keeps only c, e."""
    s = {**new_state(), "items": ["c", "e"], "known": [0, 1, 2], "context": [1, 2], "n": 3, "ts": 50.0,
         "cv": "old", "slate": {"context": [1, 2], "clusters": [3], "items": [], "ts": 50.0}}
    remember(s["proposals"], open_slate(3, 50.0, [1, 2], [3, 0], "mixture", {"seqrec": "v1"}, s["vs"]), 5)
    return s


def test_migration_recomputes_context_and_known_and_maps_what_the_history_no_longer_holds() -> None:
    s = _old_state()
    closed = migrate(s, NEW, cluster_mapping(OLD_IDS, OLD, NEW, 4), "new", k=2)
    assert s["context"] == [0, 1]  # c (new 0) then e (new 1)
    assert s["known"] == [0, 1, 3]  # history: 0, 1; old known 0, 1, 2 mapped: 3, 0, 1
    assert s["cv"] == "new" and s["slate"] is None and s["proposals"] == [] and s["vs"] == {}
    assert [(r.cluster, r.rank, r.outcome) for r in closed] == [(3, 1, "catalog"), (0, 2, "catalog")]
    assert s["items"] == ["c", "e"] and s["n"] == 3  # the history and the counters are untouched


def test_a_short_history_takes_the_rest_of_its_context_from_the_mapped_old_one() -> None:
    s = {**_old_state(), "items": ["e"], "context": [0, 2]}
    migrate(s, NEW, cluster_mapping(OLD_IDS, OLD, NEW, 4), "new", k=3)
    assert s["context"] == [3, 1]  # e -> 1 from the history; old 0 -> 3 before it; old 2 -> 1 is there already


def test_without_the_old_catalog_only_the_history_counts() -> None:
    s = _old_state()
    migrate(s, NEW, None, "new", k=2)
    assert s["known"] == [0, 1] and s["context"] == [0, 1]


def test_a_state_from_before_catalog_versions_is_read_under_the_serving_catalog() -> None:
    s = {**new_state(), "items": [2, 0]}
    del s["cv"]
    assert upgrade_legacy(s, OLD_IDS, "v") and s["items"] == ["c", "a"] and s["cv"] == "v"
    fresh = new_state()
    assert not upgrade_legacy(fresh, OLD_IDS, "v") and fresh["cv"] == "v"


def test_catalog_closed_proposals_are_not_labels() -> None:
    s = _old_state()
    closed = migrate(s, NEW, None, "new", k=2)
    from streams.core.feedback import feedback_record

    records = [parse_feedback(feedback_record("u", r, ["x"] * 4, {"k": {}}).encode()) for r in closed]
    assert records and not labelled_outcomes(records)


# -- the engine ------------------------------------------------------------------------------
def _relabelled(catalog: Catalog, level: int, shift: int, drop: set[str]) -> Catalog:
    """The same catalog with `level`'s cluster ids rotated by `shift` and the items in `drop` left out:
    an "earlier" catalog whose mapping to `catalog` is known exactly."""
    n = len(catalog.clusters[level])
    keep = [i for i, item in enumerate(catalog.item_ids) if item not in drop]
    assign = catalog.assignments[:, keep].copy()
    assign[level] = (assign[level] + shift) % n
    clusters = [list(lv) for lv in catalog.clusters]
    clusters[level] = sorted((dataclasses.replace(c, id=(c.id + shift) % n) for c in clusters[level]),
                             key=lambda c: c.id)
    return Catalog(catalog.levels, clusters, [catalog.item_ids[i] for i in keep],
                   [catalog.item_titles[i] for i in keep], assign, catalog.meta)


def test_the_engine_migrates_a_user_written_under_an_earlier_catalog(seqrec_artifacts, novelty_artifacts,
                                                                     tiny_repository: Path,
                                                                     tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = EngineConfig().with_values({"catalog": str(Path(seqrec_artifacts.checkpoint).parent / "catalog"),
                                      "repository": str(tiny_repository), "triton_url": "", "recent_items": 4})
    engine = Engine(cfg)
    level = engine.level
    old = _relabelled(engine.catalog, level, 1, drop={engine.item_ids[0]})
    old.save(tmp_path / "catalogs" / "earlier")
    rng = np.random.default_rng(0)
    users = [f"u{j}" for j in range(6)]
    states, past = {}, {}
    for user in users:  # ten items each; the state keeps four, known reaches back to all ten
        items = [old.item_ids[i] for i in rng.choice(len(old.item_ids), 10, replace=False)]
        old_cluster = dict(zip(old.item_ids, old.item_clusters(level).tolist(), strict=True))
        s = {**new_state(), "items": items[-4:], "known": sorted({old_cluster[i] for i in items}),
             "context": recent_clusters(items, old_cluster, cfg.k), "n": 10, "ts": 100.0, "cv": old.version}
        states[user], past[user] = s, items
    states["u5"]["cv"] = "gone00000000"  # a catalog nobody kept
    for with_history in (False, True):
        engine._mappings.clear()
        engine.cfg = cfg.with_values({"catalogs": str(tmp_path / "catalogs") if with_history else ""})
        item = engine.item_ids[1]
        records = [RawRecord(u.encode(), json.dumps({"user_id": u, "item_id": item, "ts": 200.0 + j,
                                                     "event": "click"}).encode(), 0, j, 200.0)
                   for j, u in enumerate(users)]
        out = asyncio.run(engine.handle(records, {u: json.loads(json.dumps(s)) for u, s in states.items()}.get,
                                        now=1000.0))
        assert out.applied == len(users) and not out.dlq
        for user in users:
            got = out.states[user][0]
            history = [*past[user], item]
            direct = {engine.cluster_of[i] for i in history}  # every item the user ever had, in the new catalog
            remembered = with_history and user != "u5"
            expect = direct if remembered else {engine.cluster_of[i] for i in history[-5:]}
            assert got["cv"] == engine.catalog.version and set(got["known"]) == expect, user
            assert got["context"] == recent_clusters(history[-5:], engine.cluster_of, cfg.k), user
        kinds = {k: engine.metrics.migrations.labels(k)._value.get() for k in ("mapped", "history_only")}
        if not with_history:  # before its next event, /users/{id} shows the state without the old descriptions
            view = user_view(states["u0"], engine)
            assert view["catalog_version"] == old.version and view["recent_items"] == states["u0"]["items"][-20:]
            assert all(c["description"] is None for c in view["known_clusters"])
        # Cumulative over both passes: six users without the earlier catalogs, then u5 alone (its catalog is gone).
        assert kinds == ({"mapped": 5, "history_only": 7} if with_history else {"mapped": 0, "history_only": 6})


# -- items published while the engine runs (item 1) -------------------------------------------
def test_items_topic_records_are_parsed_or_left_out_with_their_reason() -> None:
    from streams.core.items import PublishedItem, parse_item

    item = PublishedItem("new-1", "A film", "drama", "cv1", 1, 3, 0.25, "tfidf", 10.0)
    assert parse_item(item.key, item.encode(), "cv1", 1, 6) == item
    assert parse_item(item.key, item.encode(), "cv2", 1, 6) == "stale"
    assert parse_item(item.key, item.encode(), "cv1", 0, 6) == "stale"
    assert parse_item(item.key, item.encode(), "cv1", 1, 3) == "invalid"  # cluster 3 of 3
    assert parse_item(b"other", item.encode(), "cv1", 1, 6) == "invalid"
    assert parse_item(item.key, b"{not json", "cv1", 1, 6) == "invalid"
    assert parse_item(item.key, b'{"item_id": "new-1"}', "cv1", 1, 6) == "invalid"


def test_a_waiting_event_is_applied_once_its_item_is_known_and_expires_after_the_wait() -> None:
    from streams.core.items import FIRST_SEEN, first_seen, retry_fate

    assert retry_fate(True, 0.0, 1e9, 60.0) == "applied"
    assert retry_fate(False, 100.0, 159.0, 60.0) == "again" and retry_fate(False, 100.0, 160.0, 60.0) == "expired"
    assert first_seen([("x", b"1"), (FIRST_SEEN, b"12.5")], 99.0) == 12.5
    assert first_seen({FIRST_SEEN: b"7"}, 99.0) == 7.0 and first_seen(None, 99.0) == 99.0
    assert first_seen([(FIRST_SEEN, b"soon")], 99.0) == 99.0


def test_a_long_wait_is_looked_at_less_often_on_later_retry_topics() -> None:
    from streams.core.items import retry_tier

    cfg = EngineConfig().with_values({"interactions_topic": "in"})
    assert cfg.retry_intervals == (5.0, 30.0, 300.0) and cfg.retry_topics == ["in-retry", "in-retry-1", "in-retry-2"]
    assert [retry_tier(w, cfg.retry_intervals) for w in (0, 29.9, 30, 299, 300, 1e6)] == [0, 0, 1, 1, 2, 2]
    # 600 s of waiting: 6 looks 5 s apart, then 9 looks 30 s apart, then one after 300 s (16, not 120)
    looks, waited = 0, 0.0
    while waited < 600:
        waited += cfg.retry_intervals[retry_tier(waited, cfg.retry_intervals)]
        looks += 1
    assert looks == 16
    flat = cfg.with_values({"retry_backoff_s": ""})
    assert flat.retry_intervals == (5.0,) and flat.retry_topics == ["in-retry"]
    for bad in ("30,10", "5", "soon"):
        with pytest.raises(ValueError, match="retry_backoff_s"):
            cfg.with_values({"retry_backoff_s": bad})


def test_the_engine_applies_events_on_published_items_and_sends_earlier_ones_to_wait(
        seqrec_artifacts, novelty_artifacts, tiny_repository: Path) -> None:  # type: ignore[no-untyped-def]
    from streams.core.items import PublishedItem

    cfg = EngineConfig().with_values({"catalog": str(Path(seqrec_artifacts.checkpoint).parent / "catalog"),
                                      "repository": str(tiny_repository), "triton_url": ""})
    engine = Engine(cfg)
    v, lv = engine.catalog.version, engine.level

    def rec(item: str, offset: int) -> RawRecord:
        return RawRecord(b"u", json.dumps({"user_id": "u", "item_id": item, "ts": 100.0 + offset,
                                           "event": "click"}).encode(), 0, offset, 100.0)

    legacy = {**new_state(), "items": [0, 1]}  # written before item ids: dense indices, no catalog version
    del legacy["cv"]
    assert user_view(legacy, engine)["recent_items"] == engine.item_ids[:2]
    states: dict[str, dict] = {}
    out = asyncio.run(engine.handle([rec("new-1", 0)], states.get, now=1000.0))
    assert [r.offset for r in out.retry] == [0] and not out.dlq and out.applied == 0
    engine.learn_items([(b"new-1", PublishedItem("new-1", "A", "t", v, lv, 2, 0.1, "tfidf", 1.0).encode()),
                        (b"new-2", PublishedItem("new-2", "B", "t", "elsewhere", lv, 2, 0.1, "tfidf", 1.0).encode()),
                        (engine.item_ids[0].encode(),
                         PublishedItem(engine.item_ids[0], "C", "t", v, lv, 5, 0.1, "tfidf", 1.0).encode())])
    assert engine.published == {"new-1"} and engine.cluster_of[engine.item_ids[0]] == engine.item_cluster[0]
    out = asyncio.run(engine.handle([rec("new-1", 1), rec("new-2", 2)], states.get, now=1000.0))
    state = out.states["u"][0]
    assert out.applied == 1 and state["items"] == ["new-1"] and state["known"] == [2]
    assert len(engine.history(state)) == 0  # the models do not know it: it is left out of their input
    assert [r.offset for r in out.retry] == [2]
    engine.learn_items([(b"new-1", None)])  # withdrawn
    assert "new-1" not in engine.cluster_of
    engine.cfg = cfg.with_values({"unknown_item_wait_s": 0})
    out = asyncio.run(engine.handle([rec("new-1", 3)], states.get, now=1000.0))
    assert [rej.reason for _, rej in out.dlq] == ["unknown_item"] and not out.retry
