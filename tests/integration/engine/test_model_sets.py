"""A model set published to a running worker and rolled back (issue 27, items 4 and 5), on Apache Kafka with a
real Triton in explicit model control and a worker process: the worker switches at a batch boundary, every
slate names one complete set and is made of that set's catalog alone, users' states move to the served
catalog at their next event (checked against a direct computation from their items), every event is
applied once, and an item published under the first catalog is placed again under the second."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from interests.clusters.catalog import Catalog
from streams.core.engine import Engine
from streams.core.items import PublishedItem
from streams.infra.process import wait_until
from streams.infra.triton import EXPLICIT_MODEL_CONTROL, EmbeddedTriton
from streams.infra.worker_process import WorkerProcess
from streams.wiring.items_topic import publish_items
from streams.wiring.model_sets import publish_set, read_sets, rollback
from streams.wiring.replay import produce
from streams.wiring.worker import ensure_topics
from tests.integration.engine_support import engine_config, metric, read_topic

pytestmark = pytest.mark.integration

USERS = [f"ms{u}" for u in range(8)]
PER_PHASE = 5  # events per user in each phase (served set 1, then 2, then 1 again)


@pytest.fixture(scope="module")
def second_set(seqrec_artifacts, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """Another catalog of the same items (5 clusters, not 6), a SASRec and a novelty LM trained for it and exported
    into a staging repository, and its text placement: (catalog dir, staged repository)."""
    from exporters.novelty_onnx import export_generator
    from exporters.seqrec_export import export_seqrec
    from interests.clusters.build import BuildConfig, build_catalog
    from interests.clusters.placement import fit_placer, save_placement
    from interests.data.splits import leave_one_out, pad_left
    from interests.novelty.examples import novel_transitions, split_by_time
    from interests.novelty.lm import LMConfig, train_novelty_lm
    from interests.seqrec.train import TrainConfig, train

    work = tmp_path_factory.mktemp("second_set")
    ds = seqrec_artifacts.dataset
    catalog = build_catalog(ds, BuildConfig(levels=(2, 5)), progress=False)
    catalog.save(work / "catalog")
    save_placement(work / "catalog", fit_placer(ds, catalog))
    split = leave_one_out(ds)
    train(split, TrainConfig(max_len=20, dim=32, heads=2, blocks=1, lr=5e-3, epochs=3, patience=3, seed=1),
          progress=False, checkpoint=work / "model.pt",
          extra={"catalog_version": catalog.version, "sample_histories": pad_left(split.test_history[:16], 20)})
    staged = work / "staged"
    export_seqrec(work / "model.pt", work / "catalog", staged, top_n=10)
    lm_split = split_by_time(novel_transitions(ds, catalog.item_clusters(), 2))
    lm, _ = train_novelty_lm(catalog.descriptions(), lm_split.train, lm_split.valid,
                             LMConfig(layers=1, dim=48, heads=2, epochs=2, patience=2),
                             {"catalog_version": catalog.version, "k": 2, "level": catalog.finest}, progress=False)
    export_generator(lm, staged)
    return work / "catalog", staged


@pytest.fixture(scope="module")
def text_seqrec(seqrec_artifacts, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A SASRec with a text part for the first catalog (retrained: the shared one is id-only), its checkpoint keeping
    the text encoder, so that items published later can be folded into a set (`exporters.grow_set`)."""
    from interests.data.splits import leave_one_out, pad_left
    from interests.seqrec.new_items import text_encoding
    from interests.seqrec.train import TrainConfig, train

    ds = seqrec_artifacts.dataset
    split = leave_one_out(ds)
    cfg = TrainConfig(max_len=20, dim=32, heads=2, blocks=1, lr=5e-3, epochs=4, patience=4, seed=2, text="tfidf",
                      id_dropout=0.5)
    text, encoder = text_encoding(ds, cfg)
    path = tmp_path_factory.mktemp("text_seqrec") / "model.pt"
    train(split, cfg, progress=False, checkpoint=path, item_text=text,
          extra={**encoder, "catalog_version": seqrec_artifacts.catalog.version,
                 "item_ids": [str(i) for i in ds.item_ids], "sample_histories": pad_left(split.test_history[:16], 20)})
    return path


def _event(user: str, item: str, n: int) -> tuple[bytes, bytes]:
    return user.encode(), json.dumps({"user_id": user, "item_id": item, "ts": 1_600_000_000 + n, "event": "click",
                                      "event_id": f"{user}-{n}"}).encode()


def _pool(first: Engine, cluster: dict[str, dict[str, int]]) -> list[str]:
    """The items of half the first catalog's clusters: users who keep to them always have novel clusters left
    (under either catalog), so that every phase has slates to check."""
    half = set(range(first.n_clusters // 2))
    return [i for i in first.item_ids if cluster["1"][i] in half and i in cluster["2"]]


def _last_distinct(clusters: list[int], k: int) -> list[int]:
    out: list[int] = []
    for c in reversed(clusters):
        if c not in out:
            out.append(c)
        if len(out) == k:
            break
    return out[::-1]


def test_a_published_set_is_served_at_a_batch_boundary_and_a_rollback_returns_to_the_one_before(
        apache_bootstrap: str, seqrec_artifacts, novelty_artifacts, tiny_repository: Path,  # type: ignore[no-untyped-def]
        second_set: tuple[Path, Path], tmp_path: Path) -> None:
    from interests.clusters.placement import fit_placer, save_placement

    repository, first_catalog = tmp_path / "repository", tmp_path / "catalog"
    shutil.copytree(tiny_repository, repository)
    shutil.copytree(Path(seqrec_artifacts.checkpoint).parent / "catalog", first_catalog)
    save_placement(first_catalog, fit_placer(seqrec_artifacts.dataset, seqrec_artifacts.catalog))  # for the rollback
    triton = EmbeddedTriton(repository, tmp_path / "triton",
                            extra_args=EXPLICIT_MODEL_CONTROL).start()
    try:
        cfg = engine_config(apache_bootstrap, seqrec_artifacts, repository, triton.grpc_url,
                            catalog=str(first_catalog), catalogs=str(tmp_path / "catalogs"),
                            models_topic=f"sets-{time.time_ns()}",
                            unknown_item_wait_s=60.0, retry_interval_s=1.0)
        ensure_topics(cfg)
        first = Engine(cfg)
        catalogs = {"1": Catalog.load(Path(cfg.catalog)), "2": Catalog.load(second_set[0])}
        levels = {"1": first.level, "2": catalogs["2"].finest}
        cluster = {v: dict(zip(c.item_ids, c.item_clusters(levels[v]).tolist(), strict=True))
                   for v, c in catalogs.items()}
        items = _pool(first, cluster)
        plan: dict[str, list[str]] = {u: [items[(7 * j + 13 * n) % len(items)] for j in range(3 * PER_PHASE)]
                                      for n, u in enumerate(USERS)}
        plan[USERS[0]][PER_PHASE + 1] = "new-1"  # published under catalog 1 only: placed again for set 2

        def phase(p: int) -> None:
            produce(apache_bootstrap, cfg.interactions_topic,
                    [_event(u, plan[u][j], j) for j in range(p * PER_PHASE, (p + 1) * PER_PHASE) for u in USERS],
                    progress=False)
            wait_until(lambda: all(worker.get(f"/users/{u}")[1].get("events_applied") == (p + 1) * PER_PHASE
                                   for u in USERS), 90, f"phase {p + 1}'s events applied", worker.proc,
                       interval_s=0.3)

        def serving(number: int) -> bool:
            """The worker serves set `number`; from that moment new-1 is placed under its catalog (a switch waits
            until the items follower has read the placements the publish or rollback wrote before it)."""
            ready = worker.get("/ready")[1]
            if ready.get("model_set") != number:
                return False
            assert ready.get("published_items") == 1, ready
            return True

        with WorkerProcess(cfg, tmp_path / "worker") as worker:
            publish_items(apache_bootstrap, cfg.items_topic,
                          [PublishedItem("new-1", "A new film", "drama", first.catalog.version, first.level, 0, 0.2,
                                         "tfidf", time.time())])
            phase(0)
            states_1 = {u: worker.get(f"/users/{u}")[1] for u in USERS}
            done = publish_set(cfg, second_set[0], second_set[1], None, triton.grpc_url, progress=lambda _: None)
            assert done.manifest is not None and done.manifest.number == 2 and done.items_placed == 1
            wait_until(lambda: serving(2), 60, "the worker serving set 2", worker.proc, interval_s=0.3)
            phase(1)
            states_2 = {u: worker.get(f"/users/{u}")[1] for u in USERS}
            back = rollback(cfg)
            assert back.serving.number == 1 and back.serving.history == ()
            wait_until(lambda: serving(1), 60, "the worker serving set 1 again", worker.proc, interval_s=0.3)
            phase(2)
            states_3 = {u: worker.get(f"/users/{u}")[1] for u in USERS}
            metrics = worker.metrics_text()
            assert worker.alive()
        view = read_sets(cfg)
        explore, env = str(Path(sys.executable).parent / "explore"), {**os.environ, **cfg.as_env()}
        listed = subprocess.run([explore, "models", "list"], capture_output=True, text=True, env=env, timeout=120)
        again = subprocess.run([explore, "models", "rollback"], capture_output=True, text=True, env=env, timeout=120)
        pruned = subprocess.run([explore, "models", "prune", "--keep", "1", "--triton-url", triton.grpc_url],
                                capture_output=True, text=True, env=env, timeout=180)
        client = grpcclient.InferenceServerClient(url=triton.grpc_url)
        triton_versions = {v: client.is_model_ready("seqrec", v) for v in ("1", "2")}
        client.close()
        after_prune = read_sets(cfg)
        sent = {line.split('"')[1]: float(line.split()[1]) for line in metrics.splitlines()
                if line.startswith("explore_set_slates_total{")}  # slates by set, as the worker counted them
        slates = read_topic(apache_bootstrap, cfg.recommendations_topic, lambda recs: len(recs) >= sum(sent.values()))
        dlq = read_topic(apache_bootstrap, cfg.dlq_topic, lambda recs: True, timeout_s=5)
        placed = read_topic(apache_bootstrap, cfg.items_topic, lambda recs: len(recs) >= 3)
    finally:
        triton.stop()
    for record in placed:  # new-1's last placement under each catalog: where the worker put it
        item = json.loads(record.value)
        for v, c in catalogs.items():
            if item["catalog"] == c.version:
                cluster[v]["new-1"] = item["cluster"]

    # Every slate names one complete set and is made of that set's catalog alone.
    by_set: Counter = Counter()
    paths: Counter = Counter()
    for record in slates:
        slate = json.loads(record.value)
        v = _assert_slate_matches_its_set(slate, plan[slate["user_id"]], cluster, catalogs, cfg.k)
        by_set[v] += 1
        paths[slate["seqrec_path"]] += 1
        n = slate["events_applied"]
        assert v == ("2" if PER_PHASE < n <= 2 * PER_PHASE else "1"), (n, v)  # made by the set served then
    assert by_set["1"] > 0 and by_set["2"] > 0 and by_set == {v: int(n) for v, n in sent.items()}
    assert {json.loads(r.value)["events_applied"] > 2 * PER_PHASE for r in slates} == {True, False}
    assert set(paths) == {"triton"}, paths  # Triton served each set's version: no fallback to the local twin
    # Each user's state was read under the catalog it was written in, and moved at the user's next event.
    for states, v in ((states_1, "1"), (states_2, "2"), (states_3, "1")):
        for u, state in states.items():
            assert state["catalog_version"] == catalogs[v].version
            applied = [i for i in plan[u][:state["events_applied"]] if i in cluster[v]]
            history = [cluster[v][i] for i in applied]
            assert [c["id"] for c in state["context"]] == _last_distinct(history, cfg.k), (u, v)
            assert set(history) <= {c["id"] for c in state["known_clusters"]}
            assert all(c["id"] < len(catalogs[v].descriptions(levels[v])) for c in state["known_clusters"])
    assert "new-1" in states_2[USERS[0]]["recent_items"] and not dlq  # applied under set 2, after its new placement
    produced = len(USERS) * 3 * PER_PHASE
    assert f'explore_events_total{{outcome="applied"}} {float(produced)}' in metrics
    assert 'explore_set_switches_total{reason="publish"} 1.0' in metrics
    assert 'explore_set_switches_total{reason="rollback"} 1.0' in metrics
    assert "explore_serving_set 1.0" in metrics
    assert view.wanted() == 1 and sorted(view.manifests) == [2]
    lines = listed.stdout.splitlines()
    assert listed.returncode == 0 and any(ln.split()[:2] == ["1", "(configured)"] and "<- served" in ln for ln in lines)
    assert any(ln.split()[:2] == ["2", catalogs["2"].version] for ln in lines), listed.stdout
    assert again.returncode != 0 and "nothing to roll back to" in again.stderr, again.stderr  # set 1 has no set before
    # Set 2 is neither served nor a rollback target any more: pruned, Triton serves set 1 alone.
    assert pruned.returncode == 0 and "removed set(s) [2]" in pruned.stdout, pruned.stdout + pruned.stderr
    assert triton_versions == {"1": True, "2": False} and not after_prune.manifests
    assert not (repository / "seqrec" / "2").exists() and not (tmp_path / "catalogs" / catalogs["2"].version).exists()
    migrations = {line.split()[0]: line.split()[1] for line in metrics.splitlines()
                  if line.startswith("explore_state_migrations_total")}
    print(f"{produced} events applied once; slates by set {dict(by_set)} (paths {dict(paths)}); "
          f"migrations {migrations}; "
          f"new-1 placed again under set 2's catalog and applied there")


def _assert_slate_matches_its_set(slate: dict, items: list[str], cluster: dict[str, dict[str, int]],
                                  catalogs: dict[str, Catalog], k: int) -> str:
    """A slate is made by one set: its catalog's clusters for every item, and the context of the user's first
    `events_applied` items read in that catalog (the state was read under the catalog it was written in)."""
    v = slate["versions"]["set"]
    assert slate["versions"]["catalog"] == catalogs[v].version, slate["versions"]
    assert all(cluster[v][x["item_id"]] == x["cluster"] for x in slate["slate"]), slate
    direct = _last_distinct([cluster[v][i] for i in items[:slate["events_applied"]] if i in cluster[v]], k)
    context = [c["id"] for c in slate["context"]]
    # A history with fewer than K distinct clusters under the new catalog is completed from the old context,
    # mapped (`streams.core.migration`): then only its own clusters are known directly.
    assert context == direct if len(direct) == k else context[-len(direct):] == direct, (slate, direct)
    return v


def test_three_workers_under_a_steady_replay_switch_sets_together_and_apply_every_event_once(
        apache_bootstrap: str, seqrec_artifacts, novelty_artifacts, tiny_repository: Path,  # type: ignore[no-untyped-def]
        second_set: tuple[Path, Path], text_seqrec: Path, tmp_path: Path) -> None:
    """Three workers under a steady replay: set 2 published mid-stream, then rolled back; then new items published
    mid-stream (events on them applied at once, under set 1) and folded into set 3, whose slates name them."""
    import random
    import threading

    from exporters.grow_set import NewItem, grow_set
    from interests.clusters.placement import fit_placer, load_placement, save_placement

    repository, first_catalog = tmp_path / "repository", tmp_path / "catalog"
    shutil.copytree(tiny_repository, repository)
    shutil.copytree(Path(seqrec_artifacts.checkpoint).parent / "catalog", first_catalog)
    save_placement(first_catalog, fit_placer(seqrec_artifacts.dataset, seqrec_artifacts.catalog))
    triton = EmbeddedTriton(repository, tmp_path / "triton",
                            extra_args=EXPLICIT_MODEL_CONTROL).start()
    try:
        cfg = engine_config(apache_bootstrap, seqrec_artifacts, repository, triton.grpc_url, catalog=str(first_catalog),
                            catalogs=str(tmp_path / "catalogs"), models_topic=f"sets-{time.time_ns()}",
                            unknown_item_wait_s=60.0, retry_interval_s=1.0)
        ensure_topics(cfg)
        first = Engine(cfg)
        catalogs = {"1": first.catalog, "2": Catalog.load(second_set[0])}
        levels = {"1": first.level, "2": catalogs["2"].finest}
        cluster = {v: dict(zip(c.item_ids, c.item_clusters(levels[v]).tolist(), strict=True))
                   for v, c in catalogs.items()}
        rng = random.Random(7)
        users = [f"rs{u}" for u in range(30)]
        pool = _pool(first, cluster)
        plan = {u: [rng.choice(pool) for _ in range(24)] for u in users}
        records = [_event(u, plan[u][j], j) for j in range(24) for u in users]
        fresh = _fresh_items(seqrec_artifacts.dataset, first, set(cluster["1"][i] for i in pool))
        # After the rollback: 12 more events a user; the first 10 users' every other one names a new item, the other
        # 20 keep to the pool, so the new items' clusters stay novel for them and can reach their slates.
        later = {u: [fresh[(n + j) % len(fresh)][0] if n < 10 and j % 2 else rng.choice(pool) for j in range(12)]
                 for n, u in enumerate(users)}
        workers = [WorkerProcess(cfg, tmp_path, f"w{i}") for i in range(3)]
        try:
            for w in workers:
                w.start()

            def applied() -> float:
                return sum(metric(w.metrics_text(), 'explore_events_total{outcome="applied"}') for w in workers)

            def all_serve(number: int) -> bool:
                return all(w.get("/ready")[1].get("model_set") == number for w in workers)

            def replay(events: list[tuple[bytes, bytes]]) -> threading.Thread:
                producer = threading.Thread(target=produce, args=(apache_bootstrap, cfg.interactions_topic, events),
                                            kwargs={"rate": 50, "progress": False}, daemon=True)
                producer.start()
                return producer

            producer = replay(records)
            wait_until(lambda: applied() > len(records) / 4, 90, "a quarter of the events applied", workers[0].proc)
            t0 = time.monotonic()
            publish_set(cfg, second_set[0], second_set[1], None, triton.grpc_url, progress=lambda _: None)
            t1 = time.monotonic()
            wait_until(lambda: all_serve(2), 60, "every worker serving set 2", workers[0].proc, interval_s=0.3)
            switched = {"publish": t1 - t0, "switch": time.monotonic() - t1}
            at_publish = applied()
            wait_until(lambda: applied() > at_publish + len(records) / 6, 90, "events applied under set 2",
                       workers[0].proc)
            t1 = time.monotonic()
            rollback(cfg)
            wait_until(lambda: all_serve(1), 60, "every worker serving set 1 again", workers[0].proc, interval_s=0.3)
            switched["rollback"] = time.monotonic() - t1
            producer.join(120)

            # New items arrive while the replay goes on: on the items topic first, then in set 3.
            placer = load_placement(first_catalog, first.catalog)
            assert placer is not None
            placed, distance = placer.place([text for _, text in fresh], first.level)
            items_at = time.time()
            publish_items(apache_bootstrap, cfg.items_topic,
                          [PublishedItem(i, f"Fresh {i}", text, first.catalog.version, first.level, int(c), float(d),
                                         placer.encoder, items_at)
                           for (i, text), c, d in zip(fresh, placed, distance, strict=True)])
            wait_until(lambda: all(w.get("/ready")[1].get("published_items") == len(fresh) for w in workers), 60,
                       "every worker following the new items", workers[0].proc, interval_s=0.2)
            more = [_event(u, later[u][j], 24 + j) for j in range(12) for u in users]
            producer = replay(more[:len(more) // 2])
            grown = grow_set(first_catalog, [NewItem(i, f"Fresh {i}", text, int(c))
                                             for (i, text), c in zip(fresh, placed, strict=True)],
                             text_seqrec, repository / "interest_generator" / "1", tmp_path / "set-3")
            publish_set(cfg, grown.catalog_dir, grown.repository, None, triton.grpc_url, progress=lambda _: None)
            wait_until(lambda: all_serve(3), 60, "every worker serving set 3", workers[0].proc, interval_s=0.3)
            switched["fold"] = time.time() - items_at
            producer.join(120)
            producer = replay(more[len(more) // 2:])
            producer.join(120)
            total = len(records) + len(more)
            wait_until(lambda: applied() >= total, 120, "every event applied", workers[0].proc)
            states = {u: workers[0].get(f"/users/{u}")[1] for u in users}  # from whichever worker holds the user
            texts = [w.metrics_text() for w in workers]
            assert all(w.alive() for w in workers)
        finally:
            for w in workers:
                w.stop()
        sent = sum(metric(t, f'explore_set_slates_total{{set="{v}"}}') for t in texts for v in ("1", "2", "3"))
        slates = read_topic(apache_bootstrap, cfg.recommendations_topic, lambda recs: len(recs) >= sent)
        dlq = read_topic(apache_bootstrap, cfg.dlq_topic, lambda recs: True, timeout_s=5)
    finally:
        triton.stop()
    catalogs["3"] = grown.catalog
    cluster["3"] = dict(zip(grown.catalog.item_ids, grown.catalog.item_clusters(first.level).tolist(), strict=True))
    cluster["1"].update({i: int(c) for (i, _), c in zip(fresh, placed, strict=True)})  # placed, under set 1
    full = {u: plan[u] + later[u] for u in users}
    by_set = Counter(_assert_slate_matches_its_set(json.loads(r.value), full[json.loads(r.value)["user_id"]],
                                                   cluster, catalogs, cfg.k) for r in slates)
    assert by_set["1"] > 0 and by_set["2"] > 0 and by_set["3"] > 0
    assert applied_total(texts) == total and not dlq  # once each, the new items' events too: none in the DLQ
    fresh_ids = {i for i, _ in fresh}
    naming = sorted((json.loads(r.value) for r in slates
                     if fresh_ids & {x["item_id"] for x in json.loads(r.value)["slate"]}), key=lambda r: r["sent_at"])
    assert naming and {r["versions"]["set"] for r in naming} == {"3"}, Counter(r["versions"]["set"] for r in naming)
    for u, state in states.items():
        assert state["events_applied"] == 36 and state["catalog_version"] == catalogs["3"].version, (u, state)
        assert [c["id"] for c in state["context"]] == _last_distinct([cluster["3"][i] for i in full[u]], cfg.k)
    for t in texts:  # every worker switched both ways, then to the set with the new items
        assert metric(t, 'explore_set_switches_total{reason="publish"}') == 2.0
        assert metric(t, 'explore_set_switches_total{reason="rollback"}') == 1.0
    migrations = sum(metric(t, 'explore_state_migrations_total{kind="mapped"}') for t in texts)
    duplicates = sum(metric(t, 'explore_events_total{outcome="duplicate"}') for t in texts)
    print(f"3 workers, {total} events of {len(users)} users at 50/s: each applied once ({duplicates:.0f} "
          f"redelivered as duplicates); slates by set {dict(by_set)}; {migrations:.0f} states migrated; publish "
          f"{switched['publish']:.1f} s, every worker on set 2 {switched['switch']:.1f} s after it, back on set 1 "
          f"{switched['rollback']:.1f} s after the rollback (polled every 0.3 s); {len(fresh)} new items: "
          f"{sum(i in fresh_ids for u in users for i in later[u])} events on them applied, every worker on set 3 "
          f"(folded with them) {switched['fold']:.1f} s after they were "
          f"published, {len(naming)} slates named one, the first {naming[0]['sent_at'] - items_at:.1f} s after")


def _fresh_items(ds, first: Engine, known: set[int]) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Four new items, (id, text): the texts of the most interacted-with items of the clusters the pool's users do not
    know, in turn, so that text placement puts them where those users' slates can reach them."""
    traffic = ds.item_traffic()
    labels = first.catalog.item_clusters(first.level)
    ranked = [sorted(np.flatnonzero(labels == c), key=lambda j: -traffic[j])
              for c in sorted(set(range(first.n_clusters)) - known)]
    return [(f"fresh-{n}", ds.text_of(int(ranked[n % len(ranked)][n // len(ranked)]))) for n in range(4)]


def applied_total(texts: list[str]) -> float:
    return sum(metric(t, 'explore_events_total{outcome="applied"}') for t in texts)
