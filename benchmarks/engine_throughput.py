"""The streaming engine against a pass-through Faust agent, in one run, on the same broker and Triton.

Both workers run as processes on real Apache Kafka (KRaft; the embedded broker does not wake a
waiting fetch, so its latencies would measure the fetch wait) and the engine talks to the embedded
Triton. Three measurements per worker:

- throughput: the worker starts, then a backlog of events is written as fast as the producer goes;
  events per second is the backlog over the time from its first to its last processed event
  (progress polled every `POLL_S`: the pass-through's output topic's end offsets, the engine's
  event counters in one /metrics scrape);
- CPU: user + system seconds of the worker, Triton and Kafka processes (and their children) over the
  throughput run, per 1,000 events: unlike latency on a shared 2-core machine, what a worker spends
  per event hardly moves with what else runs, so this is the figure to compare changes by;
- latency: events are produced at a fixed rate below capacity; event-to-output latency is the
  output record's Kafka timestamp minus the input record's (for the engine, the input is the event
  that triggered the slate).

Run: python benchmarks/engine_throughput.py [--backlog 20000] [--rate 600] [--seconds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.config import EngineConfig
from streams.infra.kafka_check import create_topic
from streams.infra.process import ManagedProcess, free_port, wait_until
from streams.infra.worker_process import WorkerProcess
from streams.wiring.replay import Event, produce
from streams.wiring.table_topic import publish_table
from streams.wiring.worker import ensure_topics

WARM_UP = 300  # events of separate users the engine processes before a run


def export_models(ds, catalog, work: Path, seqrec_epochs: int = 4, lm_epochs: int = 3):  # type: ignore[no-untyped-def]
    """Save `catalog` to work/catalog, train SASRec and the novelty LM on `ds` (small, fast) and export both
    to the Triton repository work/repo, as a worker serves them; returns the LM."""
    from exporters.novelty_onnx import export_generator
    from exporters.seqrec_export import export_seqrec
    from interests.data.splits import leave_one_out
    from interests.novelty.examples import novel_transitions, split_by_time
    from interests.novelty.lm import LMConfig, train_novelty_lm
    from interests.seqrec.train import TrainConfig, train

    catalog.save(work / "catalog")
    train(leave_one_out(ds), TrainConfig(max_len=50, dim=32, heads=2, blocks=1, epochs=seqrec_epochs,
                                         patience=seqrec_epochs, seed=0),
          progress=False, checkpoint=work / "model.pt", extra={"catalog_version": catalog.version})
    export_seqrec(work / "model.pt", work / "catalog", work / "repo", top_n=20)
    novel = split_by_time(novel_transitions(ds, catalog.item_clusters(), 2))
    lm, _ = train_novelty_lm(catalog.descriptions(), novel.train, novel.valid,
                             LMConfig(layers=1, dim=48, heads=2, epochs=lm_epochs, patience=lm_epochs),
                             {"catalog_version": catalog.version, "k": 2, "level": catalog.finest}, progress=False)
    export_generator(lm, work / "repo")
    return lm


def build_models(work: Path, users: int) -> tuple[Path, Path, object, list[dict], object]:
    """A catalog, SASRec and novelty LM on planted synthetic data, exported to a Triton repository,
    and the novelty table over every context (as `explore novelty precompute --all-contexts`); and the LM."""
    from interests.clusters.build import BuildConfig, build_catalog
    from interests.data.synthetic import make_synthetic
    from interests.novelty.precompute import precompute, table_depth

    ds, _ = make_synthetic(n_clusters=8, items_per_cluster=40, n_users=users, seed=1)
    catalog = build_catalog(ds, BuildConfig(levels=(4, 8)), progress=False)
    lm = export_models(ds, catalog, work)
    depth = table_depth(len(catalog.descriptions()), 2)
    rows = precompute(lm, [list(c) for c in itertools.permutations(range(len(catalog.descriptions())), 2)],
                      top=depth, beam=depth, progress=False)
    return work / "catalog", work / "repo", ds, rows, lm


def mixture_repository(work: Path, repo: Path, catalog_dir: Path, ds, lm, prototypes: int) -> Path:  # type: ignore[no-untyped-def]
    """A copy of `repo` with `explorer`: the mixture of experts with a cluster head trained on the bench's
    SASRec (`prototypes` per cluster), the item experts (transitions and EASE, read from each user's recent
    items by the worker) and fixed weights. What it costs a worker does not depend on the
    weights, so they are not fitted here (`explore novelty mix` fits them, on validation moments)."""
    import shutil

    from exporters.mixture_export import export_mixture
    from interests.clusters.catalog import Catalog
    from interests.novelty.examples import novel_transitions, split_by_time
    from interests.novelty.fit_mixture import context_experts, period_item_experts, save_level, train_level_head
    from interests.novelty.mixture import Mixture
    from interests.seqrec.train import load_checkpoint

    dest = work / "repo-mixture"
    shutil.copytree(repo, dest)
    catalog = Catalog.load(catalog_dir)
    ic, n = catalog.item_clusters(), catalog.levels[catalog.finest]
    examples = novel_transitions(ds, ic, 2)
    model = load_checkpoint(work / "model.pt")[0]
    head, info = train_level_head(model, int(ds.timestamps.max()) + 1, ds, ic, n, examples, prototypes=prototypes)
    mixture = Mixture({"lm": 0.3, "sequence": 1.0, "cooccurrence": 0.5, "popularity": 0.2, "transitions": 0.3,
                       "ease": 0.1}, catalog.finest,
                      {"sequence": "head", "catalog_version": catalog.version, "seqrec": [str(work / "model.pt")]})
    items = period_item_experts(ds, ic, examples, int(ds.timestamps.max()) + 1)  # both item experts, served
    level = save_level(work / "mixture", mixture, context_experts(ds, ic, n, split_by_time(examples), lm, items),
                       head, {"seqrec": str(work / "model.pt"), **info})
    result = export_mixture(level, catalog_dir, dest, m=EngineConfig().m, top_n=20)
    assert result.parity.ok(), result.parity
    return dest


def relabelled_set(work: Path, catalog_dir: Path, repo: Path, table: list[dict]) -> tuple[Path, Path, list[dict]]:
    """Another catalog version of the same clusters and items (one description changed), with the same models
    and table relabelled to it: a worker serving it migrates every state written under the first catalog at
    the user's next event, and computes exactly what the first one would (same clusters, same models)."""
    import dataclasses
    import shutil

    from interests.clusters.catalog import Catalog

    catalog = Catalog.load(catalog_dir)
    clusters = [list(level) for level in catalog.clusters]
    first = clusters[-1][0]
    clusters[-1][0] = dataclasses.replace(first, description=first.description + " (relabelled)")
    other = dataclasses.replace(catalog, clusters=clusters)
    other.save(work / "catalog-relabelled")
    dest = work / "repo-relabelled"
    shutil.copytree(repo, dest)
    for meta in (dest / "seqrec" / "1" / "meta.json", dest / "interest_generator" / "1" / "decoder.json"):
        doc = json.loads(meta.read_text())
        doc["catalog_version"] = other.version
        meta.write_text(json.dumps(doc))
    return work / "catalog-relabelled", dest, [{**row, "catalog_version": other.version} for row in table]


def living_run(bootstrap: str, work: Path, tag: str, sets: dict[str, tuple[tuple, str]], ds, records: list,  # type: ignore[no-untyped-def]
               fetch_max_wait_ms: int, items: int, others: dict[str, int]) -> dict:
    """The living-catalog arm's measurement: a worker on the first set applies one event of each user of `records`
    (a copy with its own event id, so that every user has a state), stops; `items` items are published under the
    measured set's catalog; a second worker of the same app on the measured set (`sets["measured"]`) takes
    `records`, whose CPU is measured: on another catalog, every user migrates at its first event."""
    from streams.core.items import PublishedItem
    from streams.wiring.items_topic import publish_items

    extra = {"catalogs": str(work / "catalogs")}
    (first_models, first_url), (models, url) = sets["first"], sets["measured"]
    before = engine(bootstrap, work, tag, first_models, ds, first_url, fetch_max_wait_ms, extra=extra,
                    name=f"engine-{tag}-before")
    before.start()
    first: dict[bytes, tuple[bytes, bytes]] = {}
    for key, value in records:
        if key not in first:
            doc = json.loads(value)
            first[key] = (key, json.dumps({**doc, "event_id": f"pre-{doc['event_id']}", "ts": doc["ts"] - 1}).encode())
    base = before.progress()
    produce(bootstrap, before.src, list(first.values()), progress=False)
    throughput(lambda: before.progress() - base, len(first))
    before.stop()
    if items:
        from interests.clusters.catalog import Catalog

        catalog = Catalog.load(models[0])
        n = len(catalog.descriptions())
        publish_items(bootstrap, f"items-{tag}", (PublishedItem(f"bench-new-{i}", "", "", catalog.version,
                                                                catalog.finest, i % n, 0.5, "bench", 0.0)
                                                  for i in range(items)))
    runner = engine(bootstrap, work, tag, models, ds, url, fetch_max_wait_ms, extra=extra)
    result = throughput_run(bootstrap, runner, records, others)
    text = result.pop("metrics")
    result["migrations"] = sum(counter_text(text, f'explore_state_migrations_total{{kind="{k}"}}')
                               for k in ("mapped", "history_only", "legacy"))
    return result


def counter_text(text: str, name: str) -> float:
    """The value of the sample `name` (with its labels) in Prometheus text; 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def spinning_repository(repo: Path, dest: Path) -> Path:
    """A copy of `repo` whose models let onnxruntime's threads spin between calls (`intra_op_spinning`)."""
    import shutil

    shutil.copytree(repo, dest)
    off, on = (f'key: "intra_op_spinning", value: {{ string_value: "{v}" }}' for v in ("false", "true"))
    changed = []
    for config in dest.glob("*/config.pbtxt"):
        text = config.read_text()
        if off in text:
            config.write_text(text.replace(off, on))
            changed.append(config.parent.name)
    if sorted(changed) != ["interest_generator", "seqrec"]:
        raise RuntimeError(f"expected both models' configs to say {off!r}; changed only {changed}")
    return dest


def events_of(ds, n: int, tag: str) -> list[tuple[bytes, bytes]]:  # type: ignore[no-untyped-def]
    """n events cycling over the dataset's users in time order, with fresh user ids per run."""
    order = np.argsort(ds.timestamps, kind="stable")
    out = []
    for i in range(n):
        j = order[i % len(order)]
        user = f"{tag}-{ds.user_ids[ds.users[j]]}-{i // len(order)}"
        out.append(Event(user, str(ds.item_ids[ds.items[j]]), int(ds.timestamps[j]), f"{user}-{i}").encode())
    return out


def counter(worker_url: str, *names: str) -> float:
    """The sum of the samples of `names` in one scrape of the worker's /metrics (a scrape costs the worker
    ~1.4 ms of CPU: one per poll, not one per name, or the poll itself loads the worker under test)."""
    import urllib.request

    with urllib.request.urlopen(worker_url + "/metrics", timeout=5) as r:
        total = 0.0
        for line in r.read().decode().splitlines():
            if any(line.startswith(name + "{") or line.startswith(name + " ") for name in names):
                total += float(line.split()[-1])
        return total


def topic_total(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]
        return sum(c.end_offsets(tps).values())
    finally:
        c.close()


def read_all(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list:
    from kafka import KafkaConsumer

    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                      consumer_timeout_ms=int(timeout_s * 1000))
    try:
        return list(c)
    finally:
        c.close()


POLL_S = 0.1  # progress polls; the engine's is a /metrics scrape (three a poll at 20/s took 11 % of its CPU)


def throughput(progress, total: int, timeout_s: float = 600) -> float:  # type: ignore[no-untyped-def]
    """Events per second from the first to the last processed event, polling `progress()`."""
    start = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = progress()
        if done > 0 and start is None:
            start = (time.monotonic(), done)
        if done >= total:
            return (done - start[1]) / max(time.monotonic() - start[0], 1e-9) if start else float("nan")
        time.sleep(POLL_S)
    raise TimeoutError(f"only {progress()} of {total} events processed in {timeout_s} s")


@dataclass
class Runner:
    """A worker under test: where its input goes and its output comes from, and how to drive it."""

    src: str
    dst: str
    start: Callable[[], None]
    stop: Callable[[], None]
    progress: Callable[[], float]
    pid: Callable[[], int]
    metrics: Callable[[], str] = lambda: ""  # the worker's /metrics text (the engine's only)
    log: Path | None = None  # a traced engine worker's log (--trace)


def passthrough(bootstrap: str, work: Path, tag: str, fetch_max_wait_ms: int) -> Runner:
    src, dst = f"pt-in-{tag}", f"pt-out-{tag}"
    for t in (src, dst):
        create_topic(bootstrap, t, partitions=8)
    env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "PASSTHROUGH_IN": src, "PASSTHROUGH_OUT": dst,
           "PASSTHROUGH_APP_ID": f"pt-{tag}", "PASSTHROUGH_DATA_DIR": str(work / f"pt-{tag}"),
           "PASSTHROUGH_WITHIN_MS": "10", "PASSTHROUGH_FETCH_MAX_WAIT_MS": str(fetch_max_wait_ms)}
    proc = ManagedProcess(f"pt-{tag}", [sys.executable, "-m", "streams.wiring.passthrough", "worker", "-l", "warn"],
                          work / f"pt-{tag}.log", env=env)

    def start() -> None:
        proc.start()
        produce(bootstrap, src, [(b"warm", b"{}")], progress=False)
        wait_until(lambda: topic_total(bootstrap, dst) >= 1, 120, "pass-through ready", proc)

    return Runner(src, dst, start, proc.stop, lambda: topic_total(bootstrap, dst), lambda: proc.pid)


def engine(bootstrap: str, work: Path, tag: str, models: tuple, ds, triton_url: str,  # type: ignore[no-untyped-def]
           fetch_max_wait_ms: int, batch_within_ms: int = EngineConfig().batch_within_ms,
           trace: bool = False, extra: dict | None = None, name: str = "") -> Runner:
    """An engine worker on its own topics (`extra`: more settings), its novelty table published as in production."""
    catalog, repo, table = models
    cfg = EngineConfig().with_values({"bootstrap": bootstrap, "app_id": f"bench-{tag}", "catalog": str(catalog),
                                      "repository": str(repo), "triton_url": triton_url,
                                      "interactions_topic": f"in-{tag}", "recommendations_topic": f"recs-{tag}",
                                      "dlq_topic": f"dlq-{tag}", "novelty_topic": f"novel-{tag}",
                                      "feedback_topic": f"fb-{tag}", "items_topic": f"items-{tag}",
                                      "models_topic": f"sets-{tag}", "web_port": free_port(),
                                      "fetch_max_wait_ms": fetch_max_wait_ms, "batch_within_ms": batch_within_ms,
                                      **(extra or {})})
    ensure_topics(cfg)
    publish_table(bootstrap, cfg.novelty_topic, table)
    worker = WorkerProcess(cfg, work, name or f"engine-{tag}",
                           extra_env={"EXPLORE_TRACE_BATCHES": "1"} if trace else None)

    def progress() -> float:
        return counter(worker.url, *(f'explore_events_total{{outcome="{o}"}}' for o in ("applied", "duplicate",
                                                                                          "invalid")))

    def start() -> None:
        # Warm-up users first, as the pass-through gets its warm record: the first batches after a
        # start wait for the first fetch, gRPC channel and model calls (~0.5 s of slates at 0.6-1 s
        # measured); the run measures steady state.
        worker.start()
        produce(bootstrap, cfg.interactions_topic, events_of(ds, WARM_UP, f"warm{tag}"), progress=False)
        wait_until(lambda: progress() >= WARM_UP, 120, "engine warm-up", worker.proc)

    return Runner(cfg.interactions_topic, cfg.recommendations_topic, start, worker.stop, progress,
                  lambda: worker.proc.pid, worker.metrics_text, work / f"engine-{tag}.log" if trace else None)


def traced_batches(log: Path) -> list[dict[str, float]]:
    """The batches a traced worker logged (`EXPLORE_TRACE_BATCHES=1`): events, slates, the slowest slate's
    latency and each stage's ms, in order."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if "batch acked: " not in line or " | " not in line:
            continue
        spans, fields = line.split("batch acked: ", 1)[1].split(" | ", 1)
        batch = {k: float(v) for k, v in (f.split("=", 1) for f in fields.split())}
        batch["events"] = sum(int(span.rsplit("(", 1)[1].rstrip(")")) for span in spans.split())
        out.append(batch)
    return out


def print_tail(batches: list[dict[str, float]], p99_ms: float) -> None:
    """Where the batches that sent a slate at or over p99 spent their time, beside all batches: which stage
    makes the tail."""
    tail = [b for b in batches if b.get("slowest_ms", 0.0) >= p99_ms]
    if not batches or not tail:
        print("  trace: no batch logged a slate at p99 (is the worker's log level info?)")
        return
    stages = [k for k in batches[0] if k.endswith("_ms") and k != "slowest_ms"]

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(r.get(key, 0.0) for r in rows) / len(rows)

    gaps = [b["sent_at"] - a["sent_at"] for a, b in itertools.pairwise(batches)]
    tail_gaps = [b["sent_at"] - a["sent_at"] for a, b in itertools.pairwise(batches) if b in tail]
    print(f"  trace: {len(tail)} of {len(batches)} batches sent a slate at or over p99 ({p99_ms:.0f} ms); mean ms, "
          "those batches / all: " + ", ".join(f"{k[:-3]} {mean(tail, k):.1f} / {mean(batches, k):.1f}" for k in stages)
          + f", events {mean(tail, 'events'):.0f} / {mean(batches, 'events'):.0f}, since the previous batch "
          f"{1000 * sum(tail_gaps) / max(len(tail_gaps), 1):.0f} / {1000 * sum(gaps) / max(len(gaps), 1):.0f}")


def pct(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values)
    return tuple(float(np.percentile(a, q)) for q in (50, 95, 99)) if len(a) else (float("nan"),) * 3  # type: ignore[return-value]


def stage_sums(metrics_text: str) -> dict[str, tuple[float, float]]:
    """label -> (seconds, observations) of the batch stages (`explore_batch_stage_seconds`, by stage) and
    the model calls (`explore_inference_seconds`, as "model/path") in a worker's /metrics text."""
    out: dict[str, list[float]] = {}
    for line in metrics_text.splitlines():
        for name in ("explore_batch_stage_seconds", "explore_inference_seconds"):
            for part, i in (("_sum{", 0), ("_count{", 1)):
                if line.startswith(name + part):
                    labels = dict(x.split("=") for x in line[line.index("{") + 1:line.index("}")].split(","))
                    key = labels['stage'] if "stage" in labels else f"{labels['model']}/{labels['path']}"
                    out.setdefault(key.replace('"', ""), [0.0, 0.0])[i] = float(line.split()[-1])
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_means(before: str, after: str) -> dict[str, float]:
    """Mean milliseconds per batch of each stage between two /metrics snapshots."""
    a, b = stage_sums(before), stage_sums(after)
    return {k: 1000 * (s - a.get(k, (0, 0))[0]) / max(n - a.get(k, (0, 0))[1], 1) for k, (s, n) in b.items()}


def latency_run(bootstrap: str, runner: Runner, records: list, rate: float, is_engine: bool) -> dict:
    """Events at a fixed rate; event-to-output latency percentiles and, for the engine, its stages."""
    runner.start()
    before, since = runner.metrics(), time.time()
    produce(bootstrap, runner.src, records, rate=rate, progress=False)
    time.sleep(3)
    after = runner.metrics()
    out = read_all(bootstrap, runner.dst)
    if is_engine:
        # The triggering event's Kafka timestamp to the slate record's (set when the worker's producer took
        # it), as for the pass-through: the slate's own latency_ms stops when the worker hands it over.
        lat = [r.timestamp - 1000 * d["sent_at"] + d["latency_ms"] for r, d in ((r, json.loads(r.value)) for r in out)
               if not d["user_id"].startswith("warm")]
    else:
        sent = {r.value: r.timestamp for r in read_all(bootstrap, runner.src)}
        lat = [r.timestamp - sent[r.value] for r in out if r.value in sent]
    runner.stop()
    result = {"latency_ms": pct(lat), "outputs": len(lat), "stages_ms": stage_means(before, after) if is_engine else {}}
    if runner.log is not None:
        print_tail([b for b in traced_batches(runner.log) if b["sent_at"] >= since], result["latency_ms"][2])
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and its live descendants, from Linux's /proc."""
    total, todo, tick = 0.0, [pid], os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime: the stat file's fields 14, 15
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
    return total


def throughput_run(bootstrap: str, runner: Runner, records: list, others: dict[str, int]) -> dict:
    """Events/s over a backlog, and CPU ms per 1,000 events of the worker and of `others` (name -> pid)."""
    runner.start()
    base = runner.progress()
    pids = {"worker": runner.pid(), **others}
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    produce(bootstrap, runner.src, records, progress=False)
    result = throughput(lambda: runner.progress() - base, len(records))
    spent = {name: 1e6 * (cpu_seconds(pid) - cpu[name]) / len(records) for name, pid in pids.items()}
    metrics = runner.metrics()
    runner.stop()
    return {"events/s": result, "cpu_ms_per_1k": spent, "metrics": metrics}


def print_stages(stages: dict[str, float]) -> None:
    order = ["queued", "admit", "handle", "write", "send", "ack"]
    print("  engine batch stages, mean ms per batch: "
          + ", ".join(f"{k} {stages[k]:.1f}" for k in order if k in stages)
          + "; model calls, mean ms per call: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if "/" in k))


def print_rows(rows: dict[str, dict], args: argparse.Namespace) -> None:
    """Throughput, latency and CPU per event of each worker, and the engine's against the pass-through's."""
    pt, en = rows["pass-through"], rows["engine"]
    print("\nApache Kafka (KRaft) + embedded Triton (CPU), one worker each, this machine:")
    print(f"{'worker':<18}{'events/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'outputs':>9}")
    for name, r in rows.items():
        p50, p95, p99 = r.get("latency_ms", (float("nan"),) * 3)
        print(f"{name:<18}{r['events/s']:>10.0f}{p50:>9.1f}{p95:>9.1f}{p99:>9.1f}{r.get('outputs', 0):>9}")
    print(f"engine / pass-through throughput: {en['events/s'] / pt['events/s']:.2f}; "
          + ("no latency runs" if args.throughput_only else
             f"latency run at {args.rate:.0f} events/s for {args.seconds:.0f} s after a warm-up of {WARM_UP} events")
          + f"; fetch wait {args.fetch_max_wait_ms} ms")
    for name, r in rows.items():
        if r.get("stages_ms"):
            print(f"{name}:")
            print_stages(r["stages_ms"])
    print("CPU ms per 1,000 events over the throughput run (user + system, each process and its children):")
    print(f"{'worker':<18}" + "".join(f"{k:>9}" for k in pt["cpu_ms_per_1k"]) + f"{'all':>9}")
    for name, r in rows.items():
        print(f"{name:<18}" + "".join(f"{v:>9.0f}" for v in r["cpu_ms_per_1k"].values())
              + f"{sum(r['cpu_ms_per_1k'].values()):>9.0f}")
    print(f"engine / pass-through, worker CPU per event: "
          f"{en['cpu_ms_per_1k']['worker'] / pt['cpu_ms_per_1k']['worker']:.2f}")
    same, living = rows.get("engine, same catalog"), rows.get("engine, living catalog")
    if same and living:
        worker = living["cpu_ms_per_1k"]["worker"] / same["cpu_ms_per_1k"]["worker"]
        every = sum(living["cpu_ms_per_1k"].values()) / sum(same["cpu_ms_per_1k"].values())
        print(f"living catalog / same catalog: worker CPU per event {worker:.2f}, all processes {every:.2f} (target: "
              f"within 1.10); {living['migrations']:.0f} states migrated (same catalog: {same['migrations']:.0f}), "
              f"{args.living_items:,} published items followed")
    mix = rows.get("engine, mixture")
    if mix:
        cpu = sum(mix["cpu_ms_per_1k"].values()) / sum(en["cpu_ms_per_1k"].values())
        p99 = f"{mix['latency_ms'][2] / en['latency_ms'][2]:.2f}" if "latency_ms" in mix else "not run"
        print(f"mixture / LM table + seqrec: CPU per event (all processes) {cpu:.2f}, p99 {p99} (target: within 1.10)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backlog", type=int, default=20000, help="events for the throughput run")
    ap.add_argument("--rate", type=float, default=600, help="events per second for the latency run")
    ap.add_argument("--seconds", type=float, default=20, help="length of the latency run")
    ap.add_argument("--throughput-only", action="store_true",
                    help="skip the latency runs (throughput and CPU per event only: a quick A/B of a change)")
    ap.add_argument("--users", type=int, default=600, help="synthetic users")
    ap.add_argument("--fetch-max-wait-ms", type=int, default=EngineConfig().fetch_max_wait_ms,
                    help="the consumers' fetch wait, for both workers (Faust's own is 1500)")
    ap.add_argument("--sweep", type=lambda t: [float(x) for x in t.split(",")], default=[],
                    help="also engine latency runs at these rates (events/s, comma-separated): the highest rate "
                         "with p99 under 250 ms")
    ap.add_argument("--within", type=lambda t: [int(x) for x in t.split(",")], default=[EngineConfig().batch_within_ms],
                    help="the sweep's batch_within_ms values (comma-separated; default: the setting's default), each "
                         "at every sweep rate, side by side")
    ap.add_argument("--spinning", action="store_true",
                    help="also every engine run against a second Triton whose models spin between calls "
                         "(intra_op_spinning true; the committed configs say false), side by side")
    ap.add_argument("--mixture", action="store_true",
                    help="also an engine serving the mixture of experts (`explorer`: novel clusters and slate in one "
                         "Triton call) beside the LM table + seqrec engine, side by side, with their ratios")
    ap.add_argument("--living", action="store_true",
                    help="also two engine arms of a living catalog (issue 27), side by side: users' states written "
                         "by a worker, then the second half of the backlog on a restarted worker of the same catalog, "
                         "or of another catalog version (every user migrates at its next event) with --living-items "
                         "items published on the items topic")
    ap.add_argument("--living-items", type=int, default=100_000, help="items on the items topic in the living arm")
    ap.add_argument("--prototypes", type=int, default=16, help="the mixture's cluster head prototypes per cluster")
    ap.add_argument("--trace", action="store_true", help="engine workers log every batch's stages "
                                                         "(EXPLORE_TRACE_BATCHES=1); each latency run then "
                                                         "says where the batches of its p99 slates spent their time")
    args = ap.parse_args()
    from streams.infra.apache_kafka import ApacheKafka
    from streams.infra.triton import EmbeddedTriton

    work = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    print(f"building models on synthetic data in {work} ...", flush=True)
    catalog, repo, ds, table, lm = build_models(work, args.users)
    rows: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        kafka = stack.enter_context(ApacheKafka(work / "kafka"))
        tritons = {"engine": stack.enter_context(EmbeddedTriton(repo, work / "triton"))}
        if args.spinning:
            tritons["engine, spinning"] = stack.enter_context(
                EmbeddedTriton(spinning_repository(repo, work / "repo-spinning"), work / "triton-spinning"))
        repos: dict[str, Path] = {}
        if args.mixture:
            repos["engine, mixture"] = mixture_repository(work, repo, catalog, ds, lm, args.prototypes)
            tritons["engine, mixture"] = stack.enter_context(EmbeddedTriton(repos["engine, mixture"],
                                                                            work / "triton-mixture"))
        b = kafka.bootstrap

        def runner(name: str, tag: str, within: int = EngineConfig().batch_within_ms) -> Runner:
            if name in tritons:
                return engine(b, work, tag, (catalog, repos.get(name, repo), table), ds, tritons[name].grpc_url,
                              args.fetch_max_wait_ms, within, args.trace)
            return passthrough(b, work, tag, args.fetch_max_wait_ms)

        for name in ("pass-through", *tritons):
            tag = f"{name[:2]}th{int(time.time())}"
            triton = tritons.get(name, tritons["engine"])
            result = throughput_run(b, runner(name, tag), events_of(ds, args.backlog, tag),
                                    {"Triton": triton.process.pid, "Kafka": kafka.process.pid})
            if not args.throughput_only:
                tag = f"{name[:2]}la{int(time.time())}"
                records = events_of(ds, int(args.rate * args.seconds), tag)
                result.update(latency_run(b, runner(name, tag), records, args.rate, name in tritons))
            result.pop("metrics", None)
            rows[name] = result
            print(f"{name}: {result}", flush=True)
        if args.living:
            import shutil

            relabelled, repo_b, table_b = relabelled_set(work, catalog, repo, table)
            shutil.copytree(catalog, work / "catalogs" / "first")
            triton_b = stack.enter_context(EmbeddedTriton(repo_b, work / "triton-relabelled"))
            first = ((catalog, repo, table), tritons["engine"].grpc_url)
            arms = {"engine, same catalog": (first, 0, tritons["engine"]),
                    "engine, living catalog": (((relabelled, repo_b, table_b), triton_b.grpc_url), args.living_items,
                                               triton_b)}
            for name, (measured, items, triton) in arms.items():
                tag = f"li{name[8:10]}{int(time.time())}"
                rows[name] = living_run(b, work, tag, {"first": first, "measured": measured}, ds,
                                        events_of(ds, args.backlog, tag), args.fetch_max_wait_ms, items,
                                        {"Triton": triton.process.pid, "Kafka": kafka.process.pid})
                print(f"{name}: {rows[name]}", flush=True)
        sweep = {}
        for rate in args.sweep:
            for within in args.within:
                for name in tritons:
                    tag = f"sw{int(rate)}w{within}{name[-2:]}x{int(time.time())}"
                    sweep[(rate, within, name)] = latency_run(b, runner(name, tag, within),
                                                              events_of(ds, int(rate * args.seconds), tag), rate, True)
                    print(f"{name} at {rate:.0f} events/s, within {within} ms: {sweep[(rate, within, name)]}",
                          flush=True)
    print_rows(rows, args)
    if sweep:
        print(f"\nengine latency by rate and batch_within_ms ({args.seconds:.0f} s each, fresh worker each):")
        print(f"{'events/s':>10}{'within':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'slates':>9}  worker")
        for (rate, within, name), r in sweep.items():
            print(f"{rate:>10.0f}{within:>8}" + "".join(f"{v:>9.1f}" for v in r["latency_ms"])
                  + f"{r['outputs']:>9}  {name}")
            print_stages(r["stages_ms"])
        for within, name in itertools.product(args.within, tritons):
            under = [rate for (rate, w, n), r in sweep.items() if (w, n) == (within, name) and r["latency_ms"][2] < 250]
            print(f"{name}, within {within} ms: highest rate tried with p99 under 250 ms: {max(under):.0f} events/s"
                  if under else f"{name}, within {within} ms: no rate tried kept p99 under 250 ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
