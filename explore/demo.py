"""`explore demo`: the whole engine on embedded infrastructure, from data to report, in one command.

1. data: synthetic users with planted interest clusters, `--data` (MovieLens) or the generic
   `--interactions/--items/--columns` files every other command reads;
2. the training period (interactions before the held-out share of time) trains everything:
   the cluster catalog, SASRec, the novelty LM (with its popularity prior chosen on validation);
3. exports both models into a Triton model repository and precomputes the novelty table; then
   fits the mixture of experts (LM, SASRec's cluster head, co-occurrence, popularity) on the
   novelty split's validation moments with a second SASRec trained before them, and exports it as
   `explorer`, so that the engine serves it (`--no-mixture`, or `--novelty-model`: the LM's table
   and seqrec);
4. starts the embedded broker and Triton, publishes the table, starts an engine worker;
5. replays the training period fast (the worker builds each user's state), then the held-out
   period at `--rate`, showing a few users live: their recent clusters, the novel clusters the
   engine proposes, the slate (here, and as HTML on the worker's live page, whose address it prints);
6. collects every recommendation, writes the evaluation report, prints a summary, and stops
   everything it started (and checks that nothing is left running).

Every artifact and log lands in one run directory.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import numpy as np

from explore.demo_items import NewItems
from interests.data.datasets import Dataset
from interests.data.splits import arriving_at, held_out_start, newest_items, training_period, without_items
from streams.infra.triton import EXPLICIT_MODEL_CONTROL


class Steps:
    """Numbered steps with their durations, for the progress lines and the summary."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.times, self._t = total, 0, {}, time.perf_counter()
        self._name = ""

    def start(self, name: str) -> None:
        self.done()
        self.n += 1
        self._name, self._t = name, time.perf_counter()
        print(f"\n[{self.n}/{self.total}] {name}", flush=True)

    def done(self) -> None:
        if self._name:
            self.times[self._name] = time.perf_counter() - self._t
            self._name = ""


def build_models(train_ds: Dataset, run: Path, small: bool, steps: Steps, quiet: bool,
                 novelty_model: str | None = None, levels: tuple[int, ...] | None = None,
                 mixture: bool = False, text: bool = False) -> dict:
    """Catalog, SASRec, novelty LM (+ prior), both exported into run/model_repository; the table rows;
    with `mixture`, the mixture of experts fitted on the LM's validation moments and exported as `explorer`
    (`build_mixture`), which the engine then serves.

    `small` picks the synthetic data's sizes (levels 4,8, a one-block SASRec, a narrower LM).
    `novelty_model` (a --base-model name or directory) puts that pretrained model, zero-shot, behind
    the language policy instead of the LM trained from scratch. `levels` overrides the catalog's cluster
    counts (`explore loop ab --levels`: the small models over a finer catalog). `text` trains SASRec with a text
    part (TF-IDF, id dropout 0.5: `docs/research/cold-items.md`), so that items added later can be ranked; the
    catalog's text placement is saved beside it either way.
    """
    from exporters.novelty_onnx import export_generator
    from exporters.seqrec_export import export_seqrec
    from interests.clusters.build import BuildConfig, build_catalog, format_catalog
    from interests.clusters.placement import fit_placer, save_placement
    from interests.data.splits import leave_one_out, pad_left
    from interests.novelty.examples import auto_cap, diversify, novel_transitions, split_by_time
    from interests.novelty.lm import LMConfig, train_novelty_lm
    from interests.novelty.precompute import precompute, table_depth
    from interests.novelty.prior import choose_prior
    from interests.seqrec.new_items import text_encoding
    from interests.seqrec.train import TrainConfig, train

    steps.start("interest clusters from the training period")
    levels = levels or ((4, 8) if small else (8, 32))
    catalog = build_catalog(train_ds, BuildConfig(levels=levels), progress=not quiet)
    catalog.save(run / "catalog")
    if train_ds.item_text:  # where an item published later lands (`explore items publish`)
        save_placement(run / "catalog", fit_placer(train_ds, catalog))
    print(format_catalog(catalog, catalog.finest, top=2) if not quiet else f"catalog {catalog.version}")

    steps.start("SASRec, the item policy")
    split = leave_one_out(train_ds)
    cfg = TrainConfig(dim=48 if small else 64, blocks=1 if small else 2, epochs=40 if small else 60,
                      patience=5 if small else 8, lr=3e-3 if small else 2e-3,
                      **({"text": "tfidf", "id_dropout": 0.5} if text and train_ds.item_text else {}))
    item_text, encoder = text_encoding(train_ds, cfg)
    _, result = train(split, cfg, progress=not quiet, checkpoint=run / "seqrec" / "model.pt", item_text=item_text,
                      extra={**encoder, "catalog_version": catalog.version, "dataset": train_ds.name,
                             "item_ids": [str(i) for i in train_ds.item_ids],
                             "trained_until": int(train_ds.timestamps.max()) + 1,  # nothing of the held-out period
                             "sample_histories": pad_left(split.test_history[:16], cfg.max_len)})
    print(f"best epoch {result.best_epoch}: validation NDCG@10 {result.valid['NDCG@10']:.4f}, "
          f"HR@10 {result.valid['HR@10']:.4f} ({result.seconds:.0f} s)")

    steps.start("the novelty LM, the language policy")
    examples = novel_transitions(train_ds, catalog.item_clusters(), 2)
    nsplit = split_by_time(examples)
    n = catalog.levels[-1]
    train = diversify(nsplit.train, auto_cap(nsplit.train.targets, 1), auto_cap(nsplit.train.contexts, 5))
    lm_cfg = LMConfig(base_model=novelty_model, zero_shot=True, score="auto") if novelty_model else \
        LMConfig(layers=2, dim=64 if small else 128, heads=2 if small else 4, epochs=12 if small else 30)
    lm, info = train_novelty_lm(catalog.descriptions(), train, nsplit.valid, lm_cfg,
                                {"catalog_version": catalog.version, "level": catalog.finest, "k": 2,
                                 "dataset": train_ds.name}, progress=not quiet,
                                top_items=[c.top_items for c in catalog.clusters[catalog.finest]])
    print(f"{len(examples):,} novel transitions; " + (f"{novelty_model}, zero-shot" if novelty_model else
                                                      f"trained in {info['seconds']:.0f} s"))
    choose_prior(lm, nsplit, n, 3, [0.0, 0.5, 1.0, 2.0, 5.0, 20.0], max_moments=300 if novelty_model else 0)
    lm.save(run / "novelty")

    steps.start("export both models to a Triton repository, precompute the novelty table")
    repo = run / "model_repository"
    with warnings.catch_warnings():  # the tracer's notes on shapes; parity below is what counts
        warnings.simplefilter("ignore")
        seqrec = export_seqrec(run / "seqrec" / "model.pt", run / "catalog", repo, top_n=20)
        export_generator(lm, repo)
    print(f"seqrec ONNX vs PyTorch: max score difference {seqrec.parity.max_abs_score_diff:.1e}, "
          f"same top-N ids: {seqrec.parity.identical_ids}; interest_generator written to {repo}")
    contexts = table_contexts(np.unique(examples.contexts, axis=0), n)
    t0 = time.perf_counter()
    depth = table_depth(len(catalog.descriptions()), 2)
    rows = precompute(lm, contexts, top=depth, beam=depth, progress=not quiet)
    secs = time.perf_counter() - t0
    (run / "novelty_table.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rate = len(rows) / max(secs, 1e-9)
    print(f"novelty table: {len(rows):,} contexts, {depth} clusters ranked each, in {secs:.1f} s "
          f"({rate:.{1 if rate < 10 else 0}f} contexts/s)")
    if mixture:
        steps.start("the mixture of experts: a SASRec trained before the validation moments fits the weights")
        try:
            build_mixture(train_ds, catalog, lm, cfg, run, quiet, item_text)
        except ValueError as exc:  # too little data before the validation cut for a head or a fit
            print(f"no mixture: {exc}; the engine serves the LM's table and seqrec")
    return {"catalog": catalog, "repository": repo, "rows": rows}


def build_mixture(train_ds: Dataset, catalog, lm, cfg, run: Path, quiet: bool,  # type: ignore[no-untyped-def]
                  item_text: np.ndarray | None = None) -> None:
    """`explore novelty mix` and `export-mixture` at the catalog's finest level, as the demo runs them: a second
    SASRec (the serving one's settings) trained only before the novelty split's validation moments scores
    them, the weights are fitted there, the serving SASRec gets its cluster head, and the level goes into the
    repository as `explorer`."""
    from exporters.mixture_export import export_mixture
    from interests.data.splits import leave_one_out, training_period
    from interests.novelty.examples import novel_transitions, split_by_time
    from interests.novelty.fit_mixture import Checkpoints, mix_level
    from interests.seqrec.train import load_checkpoint, train

    level = catalog.finest
    ic, n = catalog.item_clusters(level), catalog.levels[level]
    examples = novel_transitions(train_ds, ic, 2)
    until = split_by_time(examples).cut_valid
    fit_path, serve_path = run / "seqrec-valid" / "model.pt", run / "seqrec" / "model.pt"
    fit_model, result = train(leave_one_out(training_period(train_ds, until)), cfg, progress=not quiet,
                              checkpoint=fit_path, item_text=item_text,
                              extra={"catalog_version": catalog.version, "trained_until": until,
                                     "item_ids": [str(i) for i in train_ds.item_ids]})
    print(f"fitting SASRec (data before {time.strftime('%Y-%m-%d', time.gmtime(until))}): best epoch "
          f"{result.best_epoch} ({result.seconds:.0f} s)")
    serve_model, ckpt = load_checkpoint(serve_path)
    info = {"sequence": "head", "k": 2, "level": level, "seqrec_valid": [str(fit_path)], "seqrec": [str(serve_path)],
            "lm": "demo", "catalog_version": catalog.version, "clusters": n}
    fit = mix_level(train_ds, ic, n, examples, Checkpoints([fit_model], until, str(fit_path)),
                    Checkpoints([serve_model], int(ckpt["trained_until"]), str(serve_path)), lm, run / "mixture",
                    info, m=3, log=(lambda line: None) if quiet else print)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = export_mixture(run / "mixture", run / "catalog", run / "model_repository", m=3, top_n=20)
    weights = ", ".join(f"{e} {w:.3f}" for e, w in fit.mixture.weights.items())
    print(f"weights on {fit.mixture.fitted_on['moments']:,} validation moments: {weights} (validation hit@3 "
          f"{fit.valid_hits['mixture']:.3f}, without the LM {fit.valid_hits['without_lm']:.3f}); explorer "
          f"exported (mixture {exported.meta['mixture']}; ONNX vs PyTorch max difference "
          f"{exported.parity.max_abs_score_diff:.1e}, same ids: {exported.parity.identical_ids})")


ALL_CONTEXTS_UP_TO = 1_000


def table_contexts(seen: np.ndarray, n_clusters: int, limit: int = ALL_CONTEXTS_UP_TO) -> list[list[int]]:
    """The contexts the demo's table holds: every ordered pair of clusters when there are at most
    `limit` (56 at 8 clusters, 992 at 32), else the ones seen in training. A full table leaves the
    worker no live fills, which a pretrained model cannot afford on a CPU: with only the 16 seen
    contexts of the synthetic data, SmolLM2's live calls (seconds each) missed Triton's deadline and
    the worker fell behind the replay by minutes."""
    if n_clusters * (n_clusters - 1) <= limit:
        return [[a, b] for a in range(n_clusters) for b in range(n_clusters) if a != b]
    return [list(map(int, c)) for c in seen]


class LiveView(threading.Thread):
    """Reads `recommendations` from the start, keeps every record, shows a few users now and then."""

    def __init__(self, bootstrap: str, topic: str, catalog, users: list[str], start_ts: float,  # type: ignore[no-untyped-def]
                 new_items: NewItems | None = None) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.catalog, self.users = bootstrap, topic, catalog, users
        self.start_ts = start_ts
        self.records: list[dict] = []
        self.latest: dict[str, dict] = {}
        self.stop_flag = threading.Event()
        self.title = {i: t for i, t in zip(catalog.item_ids, catalog.item_titles, strict=True)}
        self.new = {} if new_items is None else dict(zip(new_items.ids, new_items.titles, strict=True))
        self.title.update({i: f"NEW {t}" for i, t in self.new.items()})
        self.with_new: dict | None = None  # the latest slate that names a new item

    def run(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(self.topic, bootstrap_servers=self.bootstrap, group_id=None,
                                 auto_offset_reset="earliest", fetch_max_wait_ms=100)
        try:
            while not self.stop_flag.is_set():
                for batch in consumer.poll(timeout_ms=200).values():
                    for r in batch:
                        rec = json.loads(r.value)
                        self.records.append(rec)
                        if any(str(x["item_id"]) in self.new for x in rec["slate"]):
                            self.with_new = rec
                        if rec["user_id"] in self.users and rec["event_ts"] >= self.start_ts:
                            self.latest[rec["user_id"]] = rec
        finally:
            consumer.close()

    def render(self) -> str:
        held = [r for r in self.records if r["event_ts"] >= self.start_ts]
        lat = [r["latency_ms"] for r in held]
        head = (f"── live: {len(held):,} slates in the held-out period"
                + (f", event-to-slate p50 {np.median(lat):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms" if lat else "")
                + " ──")
        lines = [head]
        for user in self.users:
            rec = self.latest.get(user)
            if rec is None:
                lines.append(f"user {user}: no slate yet")
                continue
            ctx = "  →  ".join(c["description"] for c in rec["context"])
            novel = ";  ".join(f"{c['description']} ({c['score']:.1f})" for c in rec["novel_clusters"])
            slate = ", ".join(self.title.get(x["item_id"], x["item_id"])[:32] for x in rec["slate"][:4])
            lines += [f"user {user} (after {rec['events_applied']} interactions, {rec['source']}, "
                      f"{rec['latency_ms']:.0f} ms)",
                      f"   recent clusters: {ctx}", f"   novel proposed:  {novel}", f"   slate:           {slate}"]
        rec = self.with_new
        if rec is not None:
            named = ", ".join(f"{self.new[str(x['item_id'])][:40]} (rank {r})" for r, x in enumerate(rec["slate"], 1)
                              if str(x["item_id"]) in self.new)
            lines.append(f"a new item in a live slate: user {rec['user_id']} got {named} "
                         f"(model set {rec['versions'].get('set', '1')})")
        return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    from explore.commands.common import dataset_from_args
    from streams.config import EngineConfig
    from streams.infra.process import free_port, pid_alive
    from streams.infra.stack import Stack
    from streams.infra.worker_process import WorkerProcess
    from streams.wiring.replay import dataset_events, produce
    from streams.wiring.table_topic import publish_table
    from streams.wiring.worker import ensure_topics

    if not (args.data or args.interactions or args.items or args.synthetic):
        args.synthetic = True  # the demo's default data
    small = args.model_size == "small" or (args.model_size == "auto" and args.synthetic)
    t_all = time.perf_counter()
    run = Path(args.run_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run.mkdir(parents=True, exist_ok=True)
    print(f"Run directory: {run}")
    mixture = getattr(args, "novelty_model", None) is None and not getattr(args, "no_mixture", False)
    steps = Steps(9 if mixture else 8)

    steps.start("data")
    ds = dataset_from_args(args)
    start_ts = held_out_start(ds, args.holdout)
    held_items = newest_items(ds, start_ts, args.new_items) if ds.item_text else np.zeros(0, np.int64)
    removed = ds.n_interactions
    ds = arriving_at(ds, held_items, start_ts)  # what the replay sends, and what the report judges
    removed -= ds.n_interactions
    train_ds = without_items(training_period(ds, start_ts), held_items)
    new_items = NewItems.of(ds, held_items, start_ts) if len(held_items) else None
    print(ds.summary())
    print(f"held out: the last {args.holdout:.0%} of time ({int((ds.timestamps >= start_ts).sum()):,} interactions "
          f"from {time.strftime('%Y-%m-%d', time.gmtime(start_ts))}); training period: "
          f"{train_ds.n_interactions:,} interactions")
    if new_items:
        print(f"new items: {len(new_items.ids)} items of the held-out period held out of training (catalog and models "
              f"never see them; {new_items.events:,} held-out events on them, {removed:,} earlier ones left out of the "
              f"data), published while it replays: "
              + ", ".join(new_items.titles[:4]) + (" ..." if len(new_items.ids) > 4 else ""))
    elif args.new_items and not ds.item_text:
        print("new items: none held out (the data has no item text to place them by)")

    models = build_models(train_ds, run, small, steps, args.quiet, getattr(args, "novelty_model", None),
                          mixture=mixture, text=new_items is not None)
    catalog, repo = models["catalog"], models["repository"]

    steps.start("embedded Kafka and Triton, the novelty table, an engine worker")
    pids: list[int] = []
    # explicit model control: a model set published while it runs is loaded beside the served one
    with Stack(run, repo, kafka=args.kafka, triton_args=EXPLICIT_MODEL_CONTROL) as stack:
        ends = stack.endpoints
        assert ends is not None
        pids += [r.pid for r in stack.records if r.pid]
        for r in stack.records:
            print(f"  {r.name:7} {r.kind:9} {r.address}" + (f" (pid {r.pid}, log {r.log})" if r.pid else ""))
        cfg = EngineConfig().with_values({"bootstrap": ends.kafka_bootstrap, "triton_url": ends.triton_grpc,
                                          "catalog": str(run / "catalog"), "repository": str(repo),
                                          "catalogs": str(run / "catalogs"),
                                          "app_id": "demo", "partitions": 4, "web_port": free_port(),
                                          "data_dir": str(run / "worker" / "data"), "m": 3, "n": 10,
                                          # the demo's record on an unknown item waits 10 s for it, then the DLQ
                                          "unknown_item_wait_s": 10, "retry_interval_s": 2})
        ensure_topics(cfg)
        sent = publish_table(cfg.bootstrap, cfg.novelty_topic, models["rows"])
        print(f"  published {sent:,} novelty-table rows to {cfg.novelty_topic!r}")
        worker = WorkerProcess(cfg, run, "worker")
        worker.start(wait_s=120)
        pids.append(worker.proc.pid)
        print(f"  worker  faust     http://127.0.0.1:{cfg.web_port}/metrics (pid {worker.proc.pid}, "
              f"log {run}/worker.log)")
        try:
            summary = _replay_and_watch(ds, start_ts, cfg, worker, catalog, run, args, steps, dataset_events, produce,
                                        new_items, models["rows"])
        finally:
            worker.stop()
    steps.start("evaluation report")
    report = None
    try:
        from explore.report import build_report

        if new_items is None:
            report = build_report(ds, run / "catalog", repo, summary["records"], start_ts, run / "report",
                                  k=2, m=cfg.m, n=cfg.n, progress=not args.quiet,
                                  seqrec_checkpoint=run / "seqrec" / "model.pt")
        elif new_items.grown_catalog is not None:  # judged under the set that holds every item
            report = build_report(ds, new_items.grown_catalog,
                                  new_items.grown_repository, summary["records"], start_ts, run / "report", k=2,
                                  m=cfg.m, n=cfg.n, progress=not args.quiet,
                                  seqrec_checkpoint=new_items.grown_checkpoint,
                                  facts={"new items": new_items.summary(summary["records"], summary["new_items_dlq"])
                                         .removeprefix("  new items: ")})
        else:
            print("no report: the set holding the new items was not published, and set 1's catalog lacks them")
    except ImportError as e:  # pragma: no cover - the report module ships with the package
        print(f"no report: {e}")
    steps.done()
    left = [p for p in pids if pid_alive(p)]
    _print_summary(summary, steps, run, report, time.perf_counter() - t_all, len(pids), left)
    return 1 if left else 0


def _replay_and_watch(ds, start_ts, cfg, worker, catalog, run: Path, args, steps: Steps,  # type: ignore[no-untyped-def]
                      dataset_events, produce, new_items: NewItems | None = None, rows: list | None = None) -> dict:
    events = dataset_events(ds)
    warm = [e for e in events if e.ts < start_ts]
    held = [e for e in events if e.ts >= start_ts]
    active = Counter(e.user_id for e in held).most_common(3)
    view = LiveView(cfg.bootstrap, cfg.recommendations_topic, catalog, [u for u, _ in active], start_ts, new_items)
    view.start()
    pinned = quote(",".join(u for u, _ in active), safe=",")
    print(f"  live page: http://127.0.0.1:{cfg.web_port}/live?users={pinned} (while the worker runs)", flush=True)
    steps.start(f"replay: {len(warm):,} training-period interactions (fast), then {len(held):,} held-out ones "
                f"at {args.rate:.0f}/s, live")
    produce(cfg.bootstrap, cfg.interactions_topic, [e.encode() for e in warm], rate=0, progress=not args.quiet,
            desc="history")
    _wait_applied(worker, len(warm), 300)
    done = threading.Event()

    def show() -> None:
        while not done.wait(args.refresh):
            print("\n" + view.render(), flush=True)

    shower = threading.Thread(target=show, daemon=True)
    shower.start()
    if new_items:  # they arrive: on the items topic at once, in a model set as soon as it is folded and published
        placed = new_items.publish(cfg, run / "catalog", catalog.finest)
        print(f"  published {len(placed)} new items on {cfg.items_topic!r}; folding them into model set 2", flush=True)
        new_items.fold(cfg, run, placed, rows or [],
                       lambda: metric_count(parse_metrics(worker.metrics_text()), "explore_serving_set"))
        print(f"  {new_items.error}" if new_items.error else
              f"  the worker serves set {new_items.set_number} {new_items.served_at - new_items.published_at:.1f} s "
              "after the items were published", flush=True)
    t0 = time.perf_counter()
    records = _with_bad_records([e.encode() for e in held], args.bad_records, args.seed)
    produce(cfg.bootstrap, cfg.interactions_topic, records, rate=args.rate, progress=not args.quiet,
            desc="held-out")
    _wait_applied(worker, len(events) + args.bad_records, 300, (*HANDLED, "waiting"))  # each record seen once
    replay_s = time.perf_counter() - t0
    _wait_applied(worker, len(events) + args.bad_records, 300)  # and those on unknown items out of their wait
    _wait_slates(worker, view, 60)
    done.set()
    view.stop_flag.set()
    view.join(10)
    print("\n" + view.render())
    metrics = worker.metrics_text()
    (run / "worker_metrics.txt").write_text(metrics)
    with open(run / "recommendations.jsonl", "w") as f:
        for r in view.records:
            f.write(json.dumps(r) + "\n")
    from streams.wiring.topic_reader import read_feedback_topic

    feedback = read_feedback_topic(cfg.bootstrap, cfg.feedback_topic)  # `explore novelty align --feedback` reads it
    (run / "feedback.jsonl").write_text("".join(r.encode().decode() + "\n" for r in feedback))
    return {"records": view.records, "events": len(events), "held": len(held), "replay_s": replay_s,
            "start_ts": start_ts, "feedback": feedback, "new_items": new_items,
            "new_items_dlq": new_items.in_dlq(cfg) if new_items else 0,
            "metrics": parse_metrics(metrics)}


def _with_bad_records(records: list[tuple[bytes, bytes]], n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """`n` invalid records of several kinds spread through the stream: they must reach the DLQ."""
    rng = np.random.default_rng(seed)
    kinds = [b"{not json", b"[1, 2, 3]", b'{"user_id": "demo-bad", "ts": 1}',
             b'{"user_id": "demo-bad", "item_id": "no-such-item", "ts": 1600000000, "event": "click"}',
             b'{"user_id": "demo-bad", "item_id": "x", "ts": "yesterday", "event": "click"}']
    out = list(records)
    for i, pos in enumerate(sorted(rng.integers(0, len(out) + 1, n), reverse=True)):
        out.insert(int(pos), (b"demo-bad", kinds[i % len(kinds)]))
    return out


HANDLED = ("applied", "duplicate", "invalid")  # outcomes that finish a record (revoked ones go elsewhere)


def _wait_applied(worker, n: int, timeout_s: float,  # type: ignore[no-untyped-def]
                  outcomes: tuple[str, ...] = HANDLED) -> None:
    """Until the worker counted `n` events among `outcomes` (with "waiting": events on items not published
    yet count when they start to wait, not when they leave the retry topic)."""
    from streams.infra.process import wait_until

    def seen() -> bool:
        m = parse_metrics(worker.metrics_text())
        return sum(metric_count(m, "explore_events_total", outcome=o) for o in outcomes) >= n

    wait_until(seen, timeout_s, f"the worker processed {n:,} events", worker.proc, interval_s=0.5)


def _wait_slates(worker, view, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    """Until the live view has read every slate the worker counted (once the events are counted, the
    slate count is final: both grow inside one engine call, and every counted slate is sent)."""
    from streams.infra.process import wait_until

    def arrived() -> bool:
        m = parse_metrics(worker.metrics_text())
        return len(view.records) >= sum(metric_count(m, "explore_slates_total", source=s)
                                        for s in ("mixture", "table", "live"))

    wait_until(arrived, timeout_s, "the live view read every slate the worker sent", worker.proc, interval_s=0.2)


def parse_metrics(text: str) -> dict[str, float]:
    """A worker's /metrics text as {series with its labels: value} (what the demo and the loop wait on)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def metric_count(m: dict[str, float], name: str, **labels: str) -> float:
    """One series of `parse_metrics`' result, 0 when the worker has not counted it yet."""
    key = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else name
    return m.get(key, 0.0)


def _print_summary(s: dict, steps: Steps, run: Path, report: Path | None, total_s: float, n_procs: int,
                   left: list[int]) -> None:
    m = s["metrics"]
    held = [r for r in s["records"] if r["event_ts"] >= s["start_ts"]]
    lat = np.array([r["latency_ms"] for r in held]) if held else np.zeros(1)
    hits = metric_count(m, "explore_novelty_table_lookups_total", result="hit")
    misses = metric_count(m, "explore_novelty_table_lookups_total", result="miss")
    events = {o: metric_count(m, "explore_events_total", outcome=o) for o in HANDLED}
    waited = metric_count(m, "explore_events_total", outcome="waiting")
    slates = {src: metric_count(m, "explore_slates_total", source=src) for src in ("mixture", "table", "live")}
    print("\nSummary")
    dlq = {k.split('"')[1]: v for k, v in m.items() if k.startswith("explore_dlq_records_total{")}
    print(f"  events: {s['events']:,} replayed ({s['held']:,} held-out in {s['replay_s']:.1f} s); applied "
          f"{events['applied']:,.0f}, duplicates {events['duplicate']:,.0f}, to the DLQ {events['invalid']:,.0f}"
          + (" (" + ", ".join(f"{r} {v:.0f}" for r, v in sorted(dlq.items())) + ")" if dlq else "")
          + (f"; {waited:,.0f} waited for their item first" if waited else ""))
    sources = ", ".join(f"{src} {n:,.0f}" for src, n in slates.items() if n) or "none"
    print(f"  slates: {len(s['records']):,}, {len(held):,} in the held-out period (novel clusters from: {sources}); "
          f"novelty table hit rate "
          f"{hits / max(hits + misses, 1):.1%}; held-out event-to-slate p50 {np.median(lat):.0f} ms, "
          f"p99 {np.percentile(lat, 99):.0f} ms")
    from streams.core.feedback import OUTCOMES, acceptance

    fb = s["feedback"]
    outcomes = {o: sum(r.outcome == o for r in fb) for o in OUTCOMES}
    by_rank = acceptance(fb, lambda r: r.rank)
    print(f"  feedback: {len(fb):,} proposed clusters resolved (accepted {outcomes['accepted']:,}, not accepted "
          f"{outcomes['horizon']:,}, evicted {outcomes['evicted']:,}); acceptance by rank "
          + ", ".join(f"{k}: {v:.1%}" for k, v in sorted(by_rank.items())) + f"; {run}/feedback.jsonl")
    if s.get("new_items") is not None:
        print(s["new_items"].summary(s["records"], s["new_items_dlq"]))
    print("  steps: " + ", ".join(f"{k.split(',')[0].split(':')[0]} {v:.0f} s" for k, v in steps.times.items()))
    if report:
        print(f"  report: {report}")
    print(f"  every artifact and log: {run}")
    if left:
        print(f"error: processes still running after stop: {left}")
    else:
        print(f"Stopped everything it started ({n_procs} processes). Total {total_s / 60:.1f} min.")
