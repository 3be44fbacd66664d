"""The engine's core without a broker or Triton: `Engine.handle` over the in-process twins (the
exported test models), `ModelRouter`'s fallback, and `AckGuard` on a real Faust consumer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from streams.config import EngineConfig
from streams.core.engine import Engine, RawRecord
from streams.core.metrics import Metrics
from streams.core.table import context_key, row_value
from streams.inference.router import ModelRouter
from streams.wiring.delivery import AckGuard


def _counter(counter, *labels: str) -> float:  # type: ignore[no-untyped-def]
    return (counter.labels(*labels) if labels else counter)._value.get()


@pytest.fixture(scope="module")
def engine(seqrec_artifacts, novelty_artifacts, tiny_repository: Path) -> Engine:  # type: ignore[no-untyped-def]
    cfg = EngineConfig().with_values({"catalog": str(Path(seqrec_artifacts.checkpoint).parent / "catalog"),
                                      "repository": str(tiny_repository), "triton_url": ""})
    return Engine(cfg)


def _record(user: str, item: str, offset: int, ts: float, partition: int = 0) -> RawRecord:
    value = json.dumps({"user_id": user, "item_id": item, "ts": ts, "event": "click"}).encode()
    return RawRecord(user.encode(), value, partition, offset, ts)


def test_a_batch_updates_state_rejects_bad_records_and_recommends_novel_clusters(engine: Engine) -> None:
    by_cluster: dict[int, list[str]] = {}
    for item, c in zip(engine.item_ids, engine.item_cluster, strict=True):
        by_cluster.setdefault(c, []).append(item)
    a, b, c = sorted(by_cluster)[:3]
    records = [_record("u1", by_cluster[a][0], 0, 1000.0), _record("u1", by_cluster[b][0], 1, 1001.0),
               _record("u2", by_cluster[c][0], 2, 1002.0),
               RawRecord(b"u3", b"{not json", 0, 3, 1003.0),
               _record("u2", by_cluster[a][1], 4, 1004.0)]
    states: dict[str, dict] = {}
    engine.table.clear()
    out = asyncio.run(engine.handle(records, states.get, now=2000.0))

    assert out.applied == 4 and out.duplicates == 0
    assert [(rec.offset, rej.reason) for rec, rej in out.dlq] == [(3, "bad_json")]
    u1 = out.states["u1"][0]
    assert u1["context"] == [a, b] and u1["known"] == sorted([a, b]) and u1["n"] == 2 and u1["pos"] == [0, 1]
    # Both users have K = 2 distinct clusters: one table fill per context, one slate each.
    assert sorted(k for k, _ in out.table_fills) == sorted({f"{a},{b}".encode(), f"{c},{a}".encode()})
    assert set(engine.table) == {k for k, _ in out.table_fills}
    assert _counter(engine.metrics.table_lookups, "miss") == 2 and _counter(engine.metrics.table_lookups, "hit") == 0
    assert sorted(r.user_id for r in out.recommendations) == ["u1", "u2"]
    for r in out.recommendations:
        state = out.states[r.user_id][0]
        novel = {x["id"] for x in r.novel_clusters}
        assert novel and not novel & set(state["known"]) and len(novel) <= engine.cfg.m
        assert r.slate and all(x["cluster"] in novel for x in r.slate)
        assert r.seqrec_path == "onnx" and state["slate"]["context"] == state["context"]
        value = json.loads(r.encode(now=r.trigger_ts + 0.25))
        assert value["latency_ms"] == 250.0 and value["user_id"] == r.user_id and value["input"] == list(r.input)

    # The same records again (a re-delivery) change nothing and send nothing.
    written = {u: s for u, (s, _) in out.states.items()}
    again = asyncio.run(engine.handle(records, written.get, now=2000.0))
    assert again.applied == 0 and again.duplicates == 4 and not again.recommendations and not again.table_fills
    assert {u: s for u, (s, _) in again.states.items()} == written


def test_the_router_falls_back_to_the_twin_and_tries_triton_again_later() -> None:
    calls: list[tuple[str, str, bool]] = []
    states: list[bool] = []
    # Nothing listens on port 1: every Triton attempt fails fast.
    router = ModelRouter("127.0.0.1:1", {"double": lambda x: [x["a"] * 2]}, timeout_s=1.0, retries=1,
                         retry_after_s=60.0, on_call=lambda m, p, s, ok: calls.append((m, p, ok)),
                         on_state=states.append)

    async def run() -> None:
        arrays, path = await router.infer("double", {"a": np.arange(3)}, ["y"])
        assert path == "onnx" and arrays[0].tolist() == [0, 2, 4]
        assert calls == [("double", "triton", False)] * 2 + [("double", "onnx", True)] and states == [False]
        assert not router.triton_up and router.last_error
        await router.infer("double", {"a": np.arange(1)}, ["y"])  # within retry_after_s: no Triton attempt
        assert calls[3:] == [("double", "onnx", True)]
        router.down_until = 0.0  # retry_after_s has passed
        await router.infer("double", {"a": np.arange(1)}, ["y"])
        assert [p for _, p, _ in calls[4:]] == ["triton", "triton", "onnx"]
        with pytest.raises(RuntimeError, match="no local fallback"):
            await router.infer("unknown", {"a": np.arange(1)}, ["y"])
        await router.close()

    asyncio.run(run())
    assert ModelRouter("", {}).last_error == "no Triton URL configured"


def test_the_probe_brings_a_quiet_router_back_when_triton_is_ready() -> None:
    """After an outage the worker's timer probes Triton's readiness: the state returns to "up" with no
    model call, and the next call goes to Triton within its `retry_after_s`; a refused probe keeps the
    fallback and starts a fresh channel; an up router is not probed."""
    states: list[bool] = []
    router = ModelRouter("127.0.0.1:1", {"double": lambda x: [x["a"] * 2]}, timeout_s=1.0, retries=0,
                         retry_after_s=60.0, on_state=states.append)

    class Triton:  # the readiness answer of a server that came back, or of one still down
        def __init__(self, ready: bool | Exception) -> None:
            self.ready, self.asked = ready, 0

        async def is_server_ready(self, client_timeout: float) -> bool:
            self.asked += 1
            if isinstance(self.ready, Exception):
                raise self.ready
            return self.ready

        async def close(self) -> None:
            pass

    async def run() -> None:
        assert (await router.infer("double", {"a": np.arange(2)}, ["y"]))[1] == "onnx"
        assert states == [False] and not router.triton_up
        router.client = Triton(ConnectionError("refused"))
        assert await router.probe() is False and router.client is None and not router.triton_up
        router.client = down = Triton(False)
        assert await router.probe() is False and down.asked == 1 and states == [False] and not router.triton_up
        router.client = up = Triton(True)
        assert await router.probe() is True and states == [False, True] and router.triton_up
        assert await router.probe() is None and up.asked == 1  # up: nothing to ask

    asyncio.run(run())
    assert asyncio.run(ModelRouter("", {}).probe()) is None


def test_ack_guard_commits_only_what_the_engine_applied(tmp_path: Path) -> None:
    from faust.types import TP, Message

    from streams.wiring.faust_app import make_app

    async def run() -> None:
        app = make_app("ack-guard", "127.0.0.1:1", tmp_path)
        app.topics.add(app.topic("in"))
        app.topics.add(app.topic("other"))
        await app.topics._update_indices()  # acks are enabled for subscribed topics
        consumer, metrics = app.consumer, Metrics()
        guard = AckGuard("in", metrics)
        guard.install(consumer)
        guard.install(consumer)  # a second install does not wrap twice
        messages = [Message("in", 0, offset, 0.0, 0, None, b"k", b"v", None) for offset in range(3)]
        other = Message("other", 0, 0, 0.0, 0, None, b"k", b"v", None)
        consumer._unacked_messages.update([*messages, other])
        guard.applied.update({(0, 0), (0, 2)})
        assert [consumer.ack(m) for m in messages] == [True, False, True]
        assert consumer.ack(other)  # other topics are not guarded
        assert consumer._acked[TP("in", 0)] == [0, 2]  # offset 1 is never committed, so it is read again
        assert all(m.acked for m in messages) and not consumer._unacked_messages  # nothing waits on it
        assert not guard.applied and _counter(metrics.acks_withheld) == 1

    asyncio.run(run())


def test_a_record_whose_handling_raises_goes_to_the_dlq_and_the_rest_of_the_batch_is_applied(engine: Engine) -> None:
    """A state written by something else (here: without its fields) makes applying that user's record
    raise; before, the exception escaped `handle` and the whole batch was lost."""
    item = engine.item_ids[0]
    records = [_record("u1", item, 0, 1000.0), _record("broken", item, 1, 1001.0), _record("u2", item, 2, 1002.0)]
    states: dict[str, dict] = {"broken": {"items": "not a state"}}
    out = asyncio.run(engine.handle(records, states.get, now=2000.0))
    assert [(rec.offset, rej.reason) for rec, rej in out.dlq] == [(1, "internal_error")]
    assert out.dlq[0][1].detail.startswith("KeyError")
    assert out.applied == 2 and set(out.states) == {"u1", "u2"}
    assert out.states["u1"][0]["seen"] == 2000.0  # what user_ttl_s counts from


def test_foreign_novelty_rows_are_counted_and_ignored(engine: Engine) -> None:
    """Rows of another catalog, or with cluster ids past the catalog's, never reach a slate (before:
    an IndexError that dropped the batch, or clusters of another catalog served as novel)."""
    by_cluster: dict[int, list[str]] = {}
    for item, c in zip(engine.item_ids, engine.item_cluster, strict=True):
        by_cluster.setdefault(c, []).append(item)
    a, b = sorted(by_cluster)[:2]
    key = f"{a},{b}".encode()
    engine.table.clear()
    engine.learn(key, json.dumps({"clusters": [engine.n_clusters + 5], "scores": [0.0],
                                  "catalog_version": engine.catalog.version}).encode())
    engine.learn(key, json.dumps({"clusters": [b], "scores": [0.0], "catalog_version": "someone-else"}).encode())
    engine.learn(b"9999,1", json.dumps({"clusters": [a], "scores": [0.0],
                                        "catalog_version": engine.catalog.version}).encode())
    assert key not in engine.table and b"9999,1" not in engine.table
    assert _counter(engine.metrics.table_rows_ignored, "invalid") == 2
    assert _counter(engine.metrics.table_rows_ignored, "stale") == 1
    records = [_record("v1", by_cluster[a][0], 0, 1000.0), _record("v1", by_cluster[b][0], 1, 1001.0)]
    out = asyncio.run(engine.handle(records, {}.get, now=2000.0))
    assert out.applied == 2 and not out.dlq and [k for k, _ in out.table_fills] == [key]  # a miss, filled live
    assert all(0 <= c["id"] < engine.n_clusters for r in out.recommendations for c in r.novel_clusters)


def test_a_fetch_of_the_table_is_learnt_in_offset_order(engine: Engine) -> None:
    """Rows and tombstones of one fetch apply in order, as compaction would keep them: the last record
    of a context wins; an ignored row is counted and changes nothing."""
    version = engine.catalog.version
    engine.table.clear()
    before = _counter(engine.metrics.table_rows_ignored, "stale")
    engine.learn_many([(b"0,1", row_value([2], [-1.0], version)), (b"0,1", None),
                       (b"1,0", None), (b"1,0", row_value([3], [-2.0], version)),
                       (b"0,2", row_value([3], [-1.0], version)), (b"0,2", row_value([4, 5], [-0.5, -0.6], version)),
                       (b"2,0", row_value([1], [-1.0], version)), (b"2,0", row_value([4], [-1.0], "another")),
                       (None, row_value([1], [-1.0], version))])
    assert set(engine.table) == {b"1,0", b"0,2", b"2,0"}
    assert engine.table[b"1,0"][0] == [3] and engine.table[b"0,2"][:2] == ([4, 5], [-0.5, -0.6])
    assert engine.table[b"2,0"][0] == [1] and _counter(engine.metrics.table_rows_ignored, "stale") == before + 1


def test_a_slate_from_a_table_row_carries_the_rows_versions_and_a_live_one_the_workers_alone(engine: Engine) -> None:
    """Issue 16 item 3: a row re-ranked by an alignment model names it; the slate it makes, and the feedback
    records of that slate, carry the worker's model versions and the row's (which cannot relabel the worker's)."""
    by_cluster: dict[int, list[str]] = {}
    for item, c in zip(engine.item_ids, engine.item_cluster, strict=True):
        by_cluster.setdefault(c, []).append(item)
    a, b, *rest = sorted(by_cluster)
    ranked = rest[::-1]  # not the LM's order: the slate must follow the row as published
    row_versions = {"alignment": "feed0123", "best_of": str(len(ranked)), "catalog": "forged"}
    engine.table.clear()
    engine.learn(context_key([a, b]), row_value(ranked, [-1.0 - i for i in range(len(ranked))],
                                                engine.catalog.version, versions=row_versions))
    engine.learn(context_key([b, a]), row_value(ranked[:1], [-1.0], engine.catalog.version, versions=row_versions))
    records = [_record("t1", by_cluster[a][0], 0, 1000.0), _record("t1", by_cluster[b][0], 1, 1001.0),
               _record("t2", by_cluster[b][1], 2, 1002.0), _record("t2", by_cluster[a][1], 3, 1003.0)]
    out = asyncio.run(engine.handle(records, {}.get, now=2000.0))
    slates = {r.user_id: r for r in out.recommendations}
    assert slates["t1"].source == "table" and [c["id"] for c in slates["t1"].novel_clusters] == ranked[:engine.cfg.m]
    merged = {**engine.models.versions, "alignment": "feed0123", "best_of": str(len(ranked))}
    assert slates["t1"].versions == merged and json.loads(slates["t1"].encode(2000.0))["versions"] == merged
    assert slates["t2"].source == "live" and slates["t2"].versions == engine.models.versions  # the row ran dry
    states = {u: s for u, (s, _) in out.states.items()}
    taken = by_cluster[ranked[0]][0]
    later = asyncio.run(engine.handle([_record("t1", taken, 4, 1004.0)], states.get, now=2000.0))
    feedback = [f for f in later.feedback if f.user_id == "t1"]
    assert [(f.cluster["id"], f.outcome) for f in feedback] == [(ranked[0], "accepted")]
    assert feedback[0].versions == merged


def test_a_row_that_ranks_every_cluster_is_not_asked_again_live_when_the_user_knows_most_of_them(
        engine: Engine) -> None:
    """A row ranking every cluster its context leaves holds every novel cluster a user has: a user left
    with fewer than M gets them from the row, without a live call that could find no more; a shorter row
    still asks live."""
    by_cluster: dict[int, list[str]] = {}
    for item, c in zip(engine.item_ids, engine.item_cluster, strict=True):
        by_cluster.setdefault(c, []).append(item)
    clusters = sorted(by_cluster)
    assert len(clusters) == engine.n_clusters >= engine.cfg.m + 2
    a, b, *rest = clusters
    engine.table.clear()
    engine.learn(context_key([a, b]), row_value(rest, [-1.0 - i for i in range(len(rest))], engine.catalog.version))
    engine.learn(context_key([b, a]), row_value(rest[:-1], [-1.0 - i for i in range(len(rest) - 1)],
                                                engine.catalog.version))
    calls = engine.metrics.inference.labels("interest_generator", "onnx")

    def live_calls_for(user: str, first: int, last: int, offset: int) -> tuple[float, list[int], str]:
        # the user knows every cluster but the row's last one, and ends on the context (first, last)
        known = [*rest[:-1], first, last]
        records = [_record(user, by_cluster[c][0], offset + i, 1000.0 + i) for i, c in enumerate(known)]
        count = sum(b.get() for b in calls._buckets)
        out = asyncio.run(engine.handle(records, {}.get, now=2000.0))
        slate = next(r for r in out.recommendations if r.user_id == user)
        return sum(b.get() for b in calls._buckets) - count, [c["id"] for c in slate.novel_clusters], slate.source

    made, novel, source = live_calls_for("x1", a, b, 0)
    assert (made, novel, source) == (0, [rest[-1]], "table")
    made, novel, _ = live_calls_for("x2", b, a, 100)  # this row lacks rest[-1]: only a live call can find it
    assert made == 1 and novel == [rest[-1]]


def _repository_copy(tiny_repository: Path, tmp_path: Path) -> Path:
    import shutil

    repo = tmp_path / "repository"
    for name in ("seqrec", "interest_generator"):
        shutil.copytree(tiny_repository / name, repo / name)
    return repo


def test_model_files_refuse_a_novelty_model_of_another_catalog_k_or_level(seqrec_artifacts, novelty_artifacts,  # type: ignore[no-untyped-def]
                                                                          tiny_repository: Path,
                                                                          tmp_path: Path) -> None:
    from interests.clusters.catalog import CatalogError
    from streams.core.model_files import ModelFiles

    catalog = seqrec_artifacts.catalog
    repo = _repository_copy(tiny_repository, tmp_path)
    decoder = repo / "interest_generator" / "1" / "decoder.json"
    good = json.loads(decoder.read_text())
    assert ModelFiles(repo, catalog, k=2).novelty_meta["level"] == catalog.finest
    with pytest.raises(CatalogError, match="K = 2, the worker runs K = 3"):
        ModelFiles(repo, catalog, k=3)
    for change, message in (({"catalog_version": "0123456789ab"}, "catalog 0123456789ab"),
                            ({"level": 0}, "level 0"),
                            ({"sequences": good["sequences"][:-1]}, "clusters, seqrec uses level")):
        decoder.write_text(json.dumps({**good, **change}))
        with pytest.raises(CatalogError, match=message):
            ModelFiles(repo, catalog, k=2)


def test_model_files_read_the_batch_limits_triton_serves(seqrec_artifacts, novelty_artifacts,  # type: ignore[no-untyped-def]
                                                       tiny_repository: Path, tmp_path: Path) -> None:
    from streams.core.model_files import ModelFiles

    repo = _repository_copy(tiny_repository, tmp_path)
    assert ModelFiles(repo, seqrec_artifacts.catalog).max_batch == {"seqrec": 256, "interest_generator": 64}
    config = repo / "seqrec" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 256", "max_batch_size: 0"))
    assert ModelFiles(repo, seqrec_artifacts.catalog).max_batch["seqrec"] is None  # 0: Triton does not batch


def test_a_batch_larger_than_the_served_limits_is_answered_in_several_calls(engine: Engine) -> None:
    """The router splits a call to the model's limit: the twin sees no more rows at a time than Triton would."""
    seen: list[int] = []
    router = ModelRouter("", {"double": lambda x: (seen.append(len(x["a"])), [x["a"] * 2])[1]},
                         max_batch={"double": 4})
    arrays, path = asyncio.run(router.infer("double", {"a": np.arange(10)}, ["y"]))
    assert path == "onnx" and arrays[0].tolist() == list(range(0, 20, 2)) and seen == [4, 4, 2]
    assert engine.router.max_batch == engine.models.max_batch


def test_a_slate_round_that_fails_keeps_the_batch_applied(engine: Engine) -> None:
    """Model calls failing on both paths cost the batch's slates, not its state updates (before: the
    exception left `handle` and the batch was lost)."""
    by_cluster: dict[int, list[str]] = {}
    for item, c in zip(engine.item_ids, engine.item_cluster, strict=True):
        by_cluster.setdefault(c, []).append(item)
    a, b = sorted(by_cluster)[-2:]
    original, engine.router = engine.router, ModelRouter("", {})  # no Triton and no twin: every call raises
    engine.table.clear()
    try:
        out = asyncio.run(engine.handle([_record("w1", by_cluster[a][0], 0, 1000.0),
                                         _record("w1", by_cluster[b][0], 1, 1001.0)], {}.get, now=2000.0))
    finally:
        engine.router = original
    assert out.applied == 2 and not out.dlq and not out.recommendations
    assert out.states["w1"][0]["context"] == [a, b] and out.states["w1"][0]["slate"] is None  # due again next time
    assert _counter(engine.metrics.no_slate, "error") == 1


def test_the_mixture_names_the_offline_mixtures_clusters_and_makes_their_slates_in_one_call(  # type: ignore[no-untyped-def]
        seqrec_artifacts, mixture_artifacts) -> None:
    """With `explorer` in the repository (policy auto) a batch makes two model calls at most (the table fill,
    then explorer for every slate); each slate's clusters are the offline mixture's top M at that moment
    (`Mixture.score` of the table row's LM scores, co-occurrence, popularity and the head on SASRec's
    state), never known, the slate inside them, and the versions name the mixture."""
    from interests.novelty.cluster_head import HEAD_FILE, head_log_scores, last_hidden, load_head
    from interests.novelty.mixture import FLOOR, ContextExperts, Mixture, cooccurrence_log_scores
    from interests.novelty.rules import context_similarity_scores, top_m
    from interests.seqrec.train import load_checkpoint

    catalog_dir = Path(seqrec_artifacts.checkpoint).parent / "catalog"
    base = {"catalog": str(catalog_dir), "repository": str(mixture_artifacts.repository), "triton_url": ""}
    engine = Engine(EngineConfig().with_values(base))
    assert engine.mixture is not None and engine.models.versions["mixture"]
    assert Engine(EngineConfig().with_values({**base, "policy": "lm"})).mixture is None
    with pytest.raises(ValueError, match="--m 5"):
        Engine(EngineConfig().with_values({**base, "m": 5}))

    ds = seqrec_artifacts.dataset
    records, offset = [], 0
    for u in range(0, 40):
        for row in range(ds.offsets[u], min(ds.offsets[u + 1], ds.offsets[u] + 6)):
            records.append(_record(str(ds.user_ids[u]), str(ds.item_ids[ds.items[row]]), offset, 1000.0 + offset))
            offset += 1
    calls = []
    infer = engine.router.infer

    async def counted(model, inputs, outputs):  # type: ignore[no-untyped-def]
        calls.append(model)
        return await infer(model, inputs, outputs)

    engine.router.infer = counted  # type: ignore[method-assign]
    out = asyncio.run(engine.handle(records, {}.get, now=5000.0))
    assert out.recommendations and set(calls) <= {"interest_generator", "explorer"} and calls.count("explorer") == 1

    mix, experts = Mixture.load(mixture_artifacts.level_dir), ContextExperts.load(mixture_artifacts.level_dir)
    model = load_checkpoint(seqrec_artifacts.checkpoint)[0]
    head = load_head(mixture_artifacts.level_dir / HEAD_FILE)[0]
    n = engine.n_clusters
    for r in out.recommendations:
        state = out.states[r.user_id][0]
        ranked, scores, _ = engine.table[context_key(state["context"])]
        lm = np.full(n, FLOOR)
        lm[ranked] = (np.asarray(scores) - experts.lm_prior[ranked]) * experts.lm_scale[ranked]
        rows = engine.history(state)  # 0-based catalog rows of the item ids the state keeps
        history = [rows[-model.cfg.max_len:]]  # as the judge's
        offline = mix.score({"lm": lm[None], "popularity": experts.log_pop[None],
                             "cooccurrence": cooccurrence_log_scores(context_similarity_scores(
                                 experts.similarity, np.array([state["context"]]))),
                             "sequence": head_log_scores(head, last_hidden(model, history)),
                             **experts.items.scores([rows])})  # every item the state keeps
        clusters = [c["id"] for c in r.novel_clusters]
        assert clusters == top_m(offline, [frozenset(state["known"])], 3)[0]
        assert [c["score"] for c in r.novel_clusters] == pytest.approx(offline[0, clusters], abs=2e-3)
        assert r.source == "mixture" and r.versions["mixture"] == engine.models.versions["mixture"]
        assert r.slate and all(x["cluster"] in clusters for x in r.slate)
