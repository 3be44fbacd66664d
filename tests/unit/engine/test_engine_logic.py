"""The engine's pure logic: record validation, user state, partition ordering, configuration."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.config import EngineConfig, describe
from streams.core.recommendation import novel_for_user, slate_items
from streams.core.records import Interaction, Limits, Rejection, parse_interaction
from streams.core.state import apply, copy_state, expired_users, is_duplicate, needs_slate, new_state
from streams.core.table import parse_row
from streams.inference.router import is_refusal, row_chunks
from streams.wiring.delivery import Gap, PartitionOrder
from streams.wiring.table_topic import keep_running

ITEMS = {"a": 4, "b": 1, "c": 2}  # item id -> its cluster
LIMITS = Limits(max_payload_bytes=200, min_ts=1.0, max_ts=2e9)


def record(**fields: object) -> bytes:
    return json.dumps({"user_id": "u1", "item_id": "a", "ts": 100, "event": "click", **fields}).encode()


def test_a_valid_record_parses() -> None:
    got = parse_interaction(b"u1", record(event_id=7, weight=2), ITEMS, LIMITS)
    assert got == Interaction("u1", "a", 4, 100.0, "click", "7", 2.0)


@pytest.mark.parametrize(("key", "value", "reason"), [
    (b"u1", b"x" * 300, "oversized"),
    (b"u1", b"{not json", "bad_json"),
    (b"u1", b"\xff\xfe", "bad_json"),
    (b"u1", None, "bad_json"),
    (b"u1", b"[1, 2]", "not_object"),
    (b"u1", json.dumps({"user_id": "u1", "ts": 1, "event": "e"}).encode(), "missing_field"),
    (b"u1", record(ts="100"), "wrong_type"),
    (b"u1", record(ts=True), "wrong_type"),
    (b"u1", record(ts=math.nan), "wrong_type"),
    (b"u1", record(user_id=1.5), "wrong_type"),
    (b"u1", record(event=""), "wrong_type"),
    (b"u1", record(weight="heavy"), "wrong_type"),
    (b"u2", record(), "key_mismatch"),
    (b"u1", record(item_id="zzz"), "unknown_item"),
    (b"u1", record(ts=0), "ts_out_of_range"),
    (b"u1", record(ts=3e9), "ts_out_of_range"),
])
def test_each_kind_of_bad_record_is_rejected_with_its_reason(key: bytes, value: bytes | None, reason: str) -> None:
    got = parse_interaction(key, value, ITEMS, LIMITS)
    assert isinstance(got, Rejection) and got.reason == reason and got.detail


def event(item: int, eid: str | None = None, cluster: int = 0) -> Interaction:
    return Interaction("u", str(item), cluster, 10.0 + item, "click", eid, 1.0)


def test_state_keeps_the_last_k_distinct_clusters_and_every_known_one() -> None:
    s = new_state()
    for offset, (item, cluster) in enumerate([(1, 5), (2, 6), (3, 5), (4, 7)]):
        assert apply(s, event(item, cluster=cluster), 0, offset, k=2, recent_items=3, dedupe_ids=4)
    assert s["context"] == [5, 7] and s["known"] == [5, 6, 7] and s["items"] == ["2", "3", "4"] and s["n"] == 4


def test_redelivered_and_repeated_events_change_nothing() -> None:
    s = new_state()
    assert apply(s, event(1, "e1"), 3, 10, 2, 10, 4)
    before = copy_state(s)
    assert not apply(s, event(1, "e1"), 3, 10, 2, 10, 4)  # same record again
    assert not apply(s, event(2, "e9"), 3, 9, 2, 10, 4)  # an older offset of the same partition
    assert not apply(s, event(2, "e1"), 3, 11, 2, 10, 4)  # the same event id sent twice
    assert s == before
    assert is_duplicate(s, 3, 10, None) and not is_duplicate(s, 4, 10, None)


def test_copy_state_does_not_share_lists() -> None:
    s = new_state()
    c = copy_state(s)
    c["items"].append("1")
    assert s["items"] == [] and copy_state(None) == new_state()


def test_a_slate_is_due_on_a_full_new_context_or_when_old() -> None:
    s = {**new_state(), "context": [1], "ts": 100.0}
    assert not needs_slate(s, 2, 60)
    s["context"] = [1, 2]
    assert needs_slate(s, 2, 60)
    s["slate"] = {"context": [1, 2], "ts": 100.0}
    assert not needs_slate(s, 2, 60)
    s["ts"] = 200.0
    assert needs_slate(s, 2, 60)


def test_novel_and_slate_filters() -> None:
    assert novel_for_user([3, 4, -1, 5], [-1, -2, -9, -3], known=[4], m=2) == [(3, -1.0), (5, -3.0)]
    assert slate_items([5, 2, 9], [1.0, 0.5, -1e9], seen=[1], n=5, floor=-5e8) == [(4, 1.0)]


@given(st.lists(st.integers(0, 30), min_size=1, max_size=60))
def test_partition_order_applies_each_offset_once_in_sequence(deliveries: list[int]) -> None:
    """Whatever order offsets arrive in (re-deliveries, gaps), what is applied is 0, 1, 2, ... without holes."""
    order = PartitionOrder(accept_gap_s=1e9)
    order.next[0] = 0
    applied = []
    for o in deliveries:
        verdicts, seeks, _ = order.classify([(0, o)], now=0.0)
        if verdicts[0] == order.APPLY:
            applied.append(o)
            order.advance([(0, o)])
        assert (verdicts[0] == order.WAIT) == bool(seeks)
    assert applied == list(range(len(applied)))


def test_partition_order_waits_then_seeks_and_steps_over_a_real_gap() -> None:
    order = PartitionOrder(accept_gap_s=5)
    order.next[1] = 10
    verdicts, seeks, _ = order.classify([(1, 9), (1, 10), (1, 12), (1, 13)], now=0.0)
    assert verdicts == ["duplicate", "apply", "wait", "wait"] and seeks == {1: 11}
    order.advance([(1, 10)])
    assert order.classify([(1, 12)], now=1.0)[0] == ["wait"]
    assert order.classify([(1, 12)], now=6.0)[:3:2] == (["apply"], [Gap(1, 11, 12)])


def test_config_layers_and_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "engine.toml"
    f.write_text('[engine]\nk = 3\nbatch_size = 50\n')
    cfg = EngineConfig.load(f, env={"EXPLORE_BATCH_SIZE": "70", "KAFKA_BOOTSTRAP": "h:1"}, n=7)
    assert (cfg.k, cfg.batch_size, cfg.bootstrap, cfg.n) == (3, 70, "h:1", 7)
    assert EngineConfig.load(env={}).as_env()["EXPLORE_BATCH_SIZE"] == "500"
    with pytest.raises(ValueError, match="unknown setting"):
        EngineConfig().with_values({"bogus": 1})
    with pytest.raises(ValueError, match="EXPLORE_K"):
        EngineConfig.load(env={"EXPLORE_K": "two"})
    with pytest.raises(ValueError, match="at least 1"):
        EngineConfig().with_values({"m": 0})
    assert "EXPLORE_SLATE_MAX_AGE_S" in describe()


def test_a_user_request_goes_to_the_one_worker_that_owns_the_key() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from streams.web.peers import partition_for, partition_owner, url_ident

    assert url_ident("http://h:1/") == url_ident("http://h:1") == ("h", 1)
    # murmur2 as the Java client, kafka-python and aiokafka (checked against aiokafka's own code) do it.
    aiokafka_partition = DefaultPartitioner()
    for user in ("u1", "u00250", "ß-user", "x" * 40):
        key = user.encode()
        assert partition_for(key, 8) == aiokafka_partition(key, list(range(8)), list(range(8)))
    assert partition_for(b"u1", 8, "crc32") == 1112514422 % 8  # zlib.crc32(b"u1"): librdkafka's default
    with pytest.raises(ValueError, match="murmur2 or crc32"):
        partition_for(b"u1", 8, "random")
    distribution = {"http://10.0.0.1:6066/": {"app-users-changelog": [0, 2], "app-positions-changelog": [0, 2]},
                    "http://10.0.0.2:6066": {"app-users-changelog": [1, 3]}}
    assert partition_owner(distribution, "app-users-changelog", 2) == "http://10.0.0.1:6066"
    assert partition_owner(distribution, "app-users-changelog", 3) == "http://10.0.0.2:6066"
    assert partition_owner(distribution, "app-users-changelog", 4) is None  # not assigned yet
    assert partition_owner(distribution, "other-topic", 0) is None


def test_the_web_token_is_checked_as_a_bearer_token() -> None:
    from streams.web.peers import auth_headers, bearer_ok

    assert bearer_ok(None, "") and bearer_ok("Bearer anything", "")  # no token set: open
    assert bearer_ok("Bearer s3cret", "s3cret") and bearer_ok("bearer s3cret", "s3cret")
    assert not bearer_ok(None, "s3cret")
    assert not bearer_ok("Bearer s3cre", "s3cret")
    assert not bearer_ok("Basic s3cret", "s3cret")
    assert bearer_ok(auth_headers("s3cret")["Authorization"], "s3cret") and auth_headers("") == {}


def test_the_advertised_url_is_dialable() -> None:
    assert EngineConfig(web_host="127.0.0.1", web_port=7000).canonical_url() == "http://127.0.0.1:7000"
    assert EngineConfig(advertised_url="http://worker-2:6066/").canonical_url() == "http://worker-2:6066"
    wildcard = EngineConfig(web_host="0.0.0.0", web_port=7000).canonical_url()
    assert wildcard.endswith(":7000") and "0.0.0.0" not in wildcard


def test_the_worker_consumer_waits_as_long_as_configured(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Faust hardcodes a 1.5 s fetch wait; the engine's transport replaces it (read by aiokafka's start())."""
    import asyncio
    import warnings

    from streams.wiring.faust_app import make_app

    async def fetch_wait() -> int:
        app = make_app("fetch-wait", "127.0.0.1:1", tmp_path, fetch_max_wait_ms=77)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            wait = consumer._fetch_max_wait_ms
            del consumer
        return wait

    assert asyncio.run(fetch_wait()) == 77


def test_an_unresolvable_wildcard_host_asks_for_the_advertised_url(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket

    def fail(name: str) -> str:
        raise socket.gaierror("Name or service not known")

    monkeypatch.setattr(socket, "gethostbyname", fail)
    with pytest.raises(ValueError, match="EXPLORE_ADVERTISED_URL"):
        EngineConfig(web_host="0.0.0.0").canonical_url()
    assert EngineConfig(web_host="0.0.0.0", advertised_url="http://w1:6066").canonical_url() == "http://w1:6066"


# -- hardening (issue 13): hostile input, limits, offsets, the follower ----------------------------

@pytest.mark.parametrize(("key", "value", "reason"), [
    (b"u1", b"[" * 2000 + b"]" * 2000, "bad_json"),  # RecursionError inside json.loads before
    (b"u1", b'{"user_id": "u1", "item_id": "a", "ts": ' + b"9" * 400 + b', "event": "click"}', "wrong_type"),
    (b"u1", record(weight=10**400), "wrong_type"),  # OverflowError in math.isfinite before
    (None, record(), "missing_key"),  # keyless: the user's events could land on any partition
    (b"", record(), "missing_key"),
    (b"u1", record(event_id=10**120), "wrong_type"),  # an int id longer than max_id_length characters
    (b"u" * 130, record(user_id="u" * 130), "oversized"),  # a key longer than max_key_bytes
    # Keys that are not the user id's UTF-8; decoded with "replace", both were taken for user "u\ufffd" before,
    # so one user's events could come on two keys, and two partitions.
    (b"u\xff", record(user_id="u\ufffd"), "key_mismatch"),
    (b"u\xfe", record(user_id="u\ufffd"), "key_mismatch"),
    (b"s\xed\xa0\x80", record(user_id="s\ud800"), "wrong_type"),  # a lone surrogate has no UTF-8: no key spells it
    # Kept in the state, these crashed a worker whose Faust wrote its state with orjson (installed beside it).
    (b"u1", record(event_id="e\ud800"), "wrong_type"),
    (b"u1", record(event="click\udfff"), "wrong_type"),
])
def test_hostile_records_are_rejected_with_a_reason_not_raised(key: bytes | None, value: bytes, reason: str) -> None:
    limits = Limits(max_payload_bytes=4096, min_ts=1.0, max_ts=2e9, max_id_length=100, max_key_bytes=128)
    got = parse_interaction(key, value, ITEMS, limits)
    assert isinstance(got, Rejection) and got.reason == reason and got.detail, got


def test_ids_within_the_length_limit_are_accepted() -> None:
    limits = Limits(max_payload_bytes=4096, min_ts=1.0, max_ts=2e9, max_id_length=100, max_key_bytes=128)
    got = parse_interaction(b"u" * 100, record(user_id="u" * 100, event_id=10**99), ITEMS, limits)
    assert isinstance(got, Interaction) and got.event_id == str(10**99)


def test_partition_order_moves_a_partition_only_once_its_records_are_written() -> None:
    """A batch that fails between classify and its writes is classified the same way again."""
    order = PartitionOrder(accept_gap_s=1e9)
    order.next[0] = 5
    verdicts, seeks, _ = order.classify([(0, 5), (0, 6)], now=0.0)
    assert verdicts == ["apply", "apply"] and not seeks
    assert order.classify([(0, 5), (0, 6)], now=0.0)[0] == ["apply", "apply"]  # not yet written: still due
    order.advance([(0, 5), (0, 6)])
    assert order.classify([(0, 5), (0, 6), (0, 7)], now=0.0)[0] == ["duplicate", "duplicate", "apply"]


def test_partition_order_reports_the_gap_it_steps_over() -> None:
    order = PartitionOrder(accept_gap_s=5)
    order.next[2] = 10
    assert order.classify([(2, 12)], now=0.0)[2] == []
    verdicts, _, gaps = order.classify([(2, 12)], now=6.0)
    assert verdicts == ["apply"] and gaps == [Gap(partition=2, expected=10, resumed_at=12)]


def test_users_expire_after_the_ttl_since_their_last_event_was_applied() -> None:
    fresh = {**new_state(), "pos": [1, 7], "seen": 1000.0, "ts": 10.0}
    old = {**new_state(), "pos": [2, 3], "seen": 100.0, "ts": 10.0}
    legacy = {**new_state(), "pos": [3, 1], "ts": 50.0}  # written before `seen` existed: its event time counts
    elsewhere = {**new_state(), "pos": [5, 1], "seen": 1.0}  # a partition this worker does not own now
    table = {"fresh": fresh, "old": old, "legacy": legacy, "elsewhere": elsewhere, "none": None}
    assert expired_users(table.items(), now=1000.0, ttl_s=500.0, partitions={1, 2, 3}) == [("old", 2), ("legacy", 3)]
    assert expired_users(table.items(), now=1000.0, ttl_s=0.0, partitions={1, 2, 3}) == []  # 0: never forget


@pytest.mark.parametrize(("key", "value", "reason"), [
    (b"1,2", {"clusters": [3, 4], "scores": [-1.0, -2.0], "catalog_version": "other"}, "stale"),
    (b"1,2", {"clusters": [3, 4], "scores": [-1.0, -2.0]}, "stale"),
    (b"1,2", {"clusters": [3, 99], "scores": [-1.0, -2.0], "catalog_version": "v1"}, "invalid"),
    (b"1,2", {"clusters": [3, -1], "scores": [-1.0, -2.0], "catalog_version": "v1"}, "invalid"),
    (b"1,2", {"clusters": [3, 4], "scores": [-1.0], "catalog_version": "v1"}, "invalid"),
    (b"1,2", {"clusters": list(range(9)), "scores": [0.0] * 9, "catalog_version": "v1"}, "invalid"),
    (b"1,2", {"clusters": [3, 3], "scores": [-1.0, -2.0], "catalog_version": "v1"}, "invalid"),
    (b"1,2", {"clusters": [3], "scores": ["x"], "catalog_version": "v1"}, "invalid"),
    (b"1,2,3", {"clusters": [4], "scores": [-1.0], "catalog_version": "v1"}, "invalid"),  # K = 2
    (b"1,99", {"clusters": [4], "scores": [-1.0], "catalog_version": "v1"}, "invalid"),
    (b"spam", {"clusters": [4], "scores": [-1.0], "catalog_version": "v1"}, "invalid"),
    (b"3,3", {"clusters": [4], "scores": [-1.0], "catalog_version": "v1"}, "invalid"),  # contexts are distinct
    (b"01,2", {"clusters": [4], "scores": [-1.0], "catalog_version": "v1"}, "invalid"),  # not as context_key spells it
    (b"1,2", [[[]]], "invalid"),
    # These raised (TypeError: unhashable; OverflowError) and crashed the table follower, again after each restart.
    (b"1,2", {"clusters": [[3]], "scores": [-1.0], "catalog_version": "v1"}, "invalid"),
    (b"1,2", {"clusters": [{"a": 3}], "scores": [-1.0], "catalog_version": "v1"}, "invalid"),
    (b"1,2", {"clusters": [3], "scores": [-10**400], "catalog_version": "v1"}, "invalid"),
])
def test_novelty_rows_from_elsewhere_are_refused_with_a_reason(key: bytes, value: object, reason: str) -> None:
    assert parse_row(key, json.dumps(value).encode(), "v1", k=2, n_clusters=8) == reason


def test_a_novelty_row_that_fits_the_catalog_is_used() -> None:
    value = json.dumps({"clusters": [3, 4], "scores": [-1.0, -2.5], "catalog_version": "v1"}).encode()
    assert parse_row(b"1,2", value, "v1", k=2, n_clusters=8) == ([3, 4], [-1.0, -2.5], {})
    assert parse_row(b"1,2", b"[" * 5000 + b"]" * 5000, "v1", k=2, n_clusters=8) == "invalid"


def _binary(clusters: list, scores: list, version: str = "v1", versions: bytes = b"", n: int | None = None) -> bytes:
    """A binary row as `row_value` lays it out, with any field wrong on purpose."""
    import struct

    import numpy as np

    from streams.core.table import ROW_MAGIC

    head = struct.pack("<4sHBBH", ROW_MAGIC, len(clusters) if n is None else n, len(version), 0, len(versions))
    return head + version.encode() + versions + np.asarray(clusters, "<i4").tobytes() + \
        np.asarray(scores, "<f8").tobytes()


BINARY_CASES = [
    (_binary([3, 4], [-1.0, -2.0], version="other"), "stale"),
    (_binary([3, 4], [-1.0, -2.0], version=""), "stale"),
    (_binary([3, 99], [-1.0, -2.0]), "invalid"),
    (_binary([3, 8], [-1.0, -2.0]), "invalid"),  # one past the last cluster
    (_binary([3, -1], [-1.0, -2.0]), "invalid"),
    (_binary([3, 4], [-1.0, -2.0], n=3), "invalid"),  # the length says more than there is
    (_binary([3, 4], [-1.0, -2.0])[:-1], "invalid"),  # cut short
    (_binary([3, 4], [-1.0, -2.0]) + b"\x00", "invalid"),
    (_binary(list(range(9)), [0.0] * 9), "invalid"),
    (_binary([3, 3], [-1.0, -2.0]), "invalid"),
    (_binary([3, 4], [-1.0, float("nan")]), "invalid"),
    (_binary([3, 4], [float("-inf"), -2.0]), "invalid"),
    (_binary([3], [-1.0], versions=b"{not json"), "invalid"),
    (_binary([3], [-1.0], versions=b"[1, 2]"), "invalid"),
    (_binary([3], [-1.0], versions=b'{"alignment": 3}'), "invalid"),
    (_binary([3], [-1.0], versions=b"\xff\xfe"), "invalid"),
    (_binary([3], [-1.0])[:7], "invalid"),  # not even a header
]


@pytest.mark.parametrize(("value", "reason"), BINARY_CASES)
def test_binary_novelty_rows_are_checked_as_json_ones(value: bytes, reason: str) -> None:
    from streams.core.table import parse_row_arrays

    assert parse_row(b"1,2", value, "v1", k=2, n_clusters=8) == reason
    assert parse_row_arrays(b"1,2", value, "v1", k=2, n_clusters=8) == reason


def test_a_fetch_of_rows_is_parsed_as_each_row_alone() -> None:
    """The follower parses a fetch at once (rows of one layout checked together): every record gets what it
    gets alone, whatever its neighbours, in order."""
    import random

    from streams.core.table import parse_rows, row_value

    good = [row_value([3, 4], [-1.0, -2.0], "v1"), row_value([5], [-0.5], "v1", source="live"),
            row_value([6, 7], [-0.1, -0.2], "v1", versions={"alignment": "a"}),
            row_value([7, 6], [-0.3, -0.4], "v1", versions={"alignment": "b"}), row_value([], [], "v1"),
            json.dumps({"clusters": [2], "scores": [-3.0], "catalog_version": "v1"}).encode()]
    records = [(b"1,2", v) for v, _ in BINARY_CASES] + [(b"1,2", v) for v in good] + \
        [(b"spam", good[0]), (None, good[1]), (b"3,3", good[0])]
    random.Random(0).shuffle(records)
    together = parse_rows(records, "v1", 2, 8)
    alone = [parse_rows([r], "v1", 2, 8)[0] for r in records]

    def plain(row: object) -> object:
        return row if isinstance(row, str) else (row[0].tolist(), row[1].tolist(), row[2])  # type: ignore[index]

    assert [plain(r) for r in together] == [plain(r) for r in alone]
    assert sum(not isinstance(r, str) for r in together) == len(good)


def test_the_topic_dump_keeps_the_newest_row_per_context_as_compaction_does() -> None:
    from streams.core.table import latest_rows, row_value

    records = [(b"1,2", row_value([3], [-1.0], "v1")), (b"2,1", row_value([4], [-2.0], "v1", source="live")),
               (b"1,2", row_value([5, 6], [-0.5, -0.7], "v2")), (b"2,1", None), (b"3,1", b"{not a row"),
               (None, row_value([1], [0.0], "v1")), (b"x,y", row_value([1], [0.0], "v1")),
               (b"4,1", json.dumps({"clusters": [2], "scores": [-3.0], "catalog_version": "v1"}).encode())]
    rows, unreadable = latest_rows(records)
    assert unreadable == 3
    assert [(r["context"], r["clusters"], r["scores"], r["catalog_version"]) for r in rows] == \
        [([1, 2], [5, 6], [-0.5, -0.7], "v2"), ([4, 1], [2], [-3.0], "v1")]


def test_a_published_row_reads_back_exactly_in_either_format() -> None:
    from streams.core.table import decode_row, row_value

    scores = [-0.1, -1 / 3, -2.5e-300, 0.0]
    value = row_value([7, 0, 3, 5], scores, "v1", source="precompute", versions={"alignment": "abc", "best_of": "4"})
    texts = len("v1precompute") + len(json.dumps({"alignment": "abc", "best_of": "4"}))
    assert value.startswith(b"\x00") and len(value) == 10 + texts + 12 * 4  # binary: 12 bytes a ranked cluster
    assert parse_row(b"1,2", value, "v1", k=2, n_clusters=8) == ([7, 0, 3, 5], scores,
                                                                  {"alignment": "abc", "best_of": "4"})
    assert decode_row(value) == {"clusters": [7, 0, 3, 5], "scores": scores, "catalog_version": "v1",
                                 "source": "precompute", "versions": {"alignment": "abc", "best_of": "4"}}
    empty = row_value([], [], "v1")
    assert parse_row(b"1,2", empty, "v1", k=2, n_clusters=8) == ([], [], {})
    assert decode_row(empty)["source"] is None and decode_row(b"\x00nt1") is None and decode_row(b"[]") is None
    legacy = json.dumps({"clusters": [7, 0], "scores": scores[:2], "catalog_version": "v1", "source": "x"}).encode()
    assert decode_row(legacy)["source"] == "x" and parse_row(b"1,2", legacy, "v1", 2, 8) == ([7, 0], scores[:2], {})
    for bad in (([1, 2], [0.0]), ([2**31], [0.0])):
        with pytest.raises(ValueError):
            row_value(*bad, "v1")


def test_model_calls_are_split_to_the_served_batch_limit() -> None:
    inputs = {"a": np.arange(10).reshape(5, 2), "b": np.arange(5)}
    chunks = row_chunks(inputs, 2)
    assert [len(c["b"]) for c in chunks] == [2, 2, 1] and np.concatenate([c["a"] for c in chunks]).tolist() == \
        inputs["a"].tolist()
    assert row_chunks(inputs, None) == [inputs] and len(row_chunks(inputs, 5)) == 1


def test_a_refused_request_is_told_apart_from_an_outage() -> None:
    from tritonclient.utils import InferenceServerException

    assert is_refusal(InferenceServerException("batch too large", status="StatusCode.INVALID_ARGUMENT"))
    assert not is_refusal(InferenceServerException("gone", status="StatusCode.UNAVAILABLE"))
    assert not is_refusal(TimeoutError())


def test_a_model_triton_cannot_serve_goes_to_its_twin_and_the_others_stay_on_triton() -> None:
    """Triton answering NOT_FOUND for seqrec (not loaded) took Triton down for interest_generator too."""
    from tritonclient.utils import InferenceServerException

    from streams.inference.router import ModelRouter

    calls: list[tuple[str, str]] = []
    router = ModelRouter("triton:8001", {"seqrec": lambda inputs: [np.zeros(1)], "interest_generator":
                                         lambda inputs: [np.ones(1)]}, retry_after_s=60.0)

    async def fake_triton(model: str, inputs: dict, outputs: list) -> list:
        calls.append(("triton", model))
        if model == "seqrec":
            raise InferenceServerException("unknown model", status="StatusCode.NOT_FOUND")
        return [np.full(1, 2.0)]

    router._triton = fake_triton  # type: ignore[method-assign]
    inputs = {"x": np.zeros((1, 1))}
    for _ in range(2):
        assert asyncio.run(router.infer("seqrec", inputs, ["y"]))[1] == "onnx"
        assert asyncio.run(router.infer("interest_generator", inputs, ["y"]))[1] == "triton"
    assert router.triton_up and calls.count(("triton", "seqrec")) == 1  # not asked again within retry_after_s


def test_a_crashed_task_is_started_again() -> None:
    runs: list[int] = []
    crashes: list[str] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise ConnectionError(f"broker gone {len(runs)}")

    asyncio.run(keep_running(flaky, lambda exc: crashes.append(str(exc)), backoff_s=0.0))
    assert runs == [0, 1, 2] and crashes == ["broker gone 1", "broker gone 2"]


def test_a_dead_letter_copy_keeps_the_record_up_to_a_bound_and_says_what_it_cut() -> None:
    """The copy of a record with a 1 MiB key failed to send (over the producer's request size), the agent
    crashed and the worker with it; the copy is now cut, and the headers point at the original."""
    from streams.core.records import DLQ_MAX_BYTES, DLQ_MAX_KEY_BYTES, dead_letter

    rejection = Rejection("oversized", "key of 1048576 bytes > 256")
    key, value, headers = dead_letter(b"k" * 2**20, b"v", rejection, "interactions/3/17")
    assert key == b"k" * DLQ_MAX_KEY_BYTES and value == b"v"
    assert dict(headers) == {"reason": b"oversized", "detail": b"key of 1048576 bytes > 256",
                             "source": b"interactions/3/17", "truncated": b"key 1048576 bytes"}
    # Each part has its own bound (a key is hashed to its partition: its bound is the smaller one).
    key, value, headers = dead_letter(b"k" * (DLQ_MAX_KEY_BYTES + 1), b"v" * (DLQ_MAX_BYTES + 2), rejection, "t/0/1")
    assert (len(key), len(value)) == (DLQ_MAX_KEY_BYTES, DLQ_MAX_BYTES)
    assert dict(headers)["truncated"] == f"key {DLQ_MAX_KEY_BYTES + 1} bytes, value {DLQ_MAX_BYTES + 2} bytes".encode()
    assert dead_letter(b"k" * DLQ_MAX_KEY_BYTES, b"v" * DLQ_MAX_BYTES, rejection, "t/0/1")[:2] == (
        b"k" * DLQ_MAX_KEY_BYTES, b"v" * DLQ_MAX_BYTES)
    assert dead_letter(None, b"x", Rejection("missing_key", "no key \ud800"), "t/0/1") == (
        None, b"x", [("reason", b"missing_key"), ("detail", b"no key \\ud800"), ("source", b"t/0/1")])
