"""`explore loop ab`: the offline protocol of the feedback loop, on the real engine, in one command.

Time is cut in three: the **training period** (models are trained on it, or were: `--reuse`),
**period A** (the first part of the held-out time) and **period B** (the rest, the test). Nothing
is chosen on B: the alignment model's hyper-parameters and best-of-n are fixed options, and the
alignment model learns from A's feedback only.

1. data and the three periods; the models (built on the training period, or a run's, checked);
2. embedded Kafka and Triton (`streams.infra.stack.Stack`), as `explore demo` starts them;
3. arm A: a worker replays the training period fast (its users' state), then period A one event per
   micro-batch, so that every context change gets its slate (a fast replay coalesces a user's
   events into one slate per batch: the demo's 705 proposals); A's feedback is read back;
4. `align` on A's feedback; the table re-ranked by best-of-n (`interests.alignment.best_of_n`);
5. period B twice, each arm with its own topics, consumer group and fresh state, built the same
   way (training period and A fast, B one event per batch): once with the LM's table, once with
   the aligned one. One event per batch makes the slate moments a function of the events alone,
   so both arms propose at the very same moments and differ only in the table's order;
6. the report (`explore.loop_report`): acceptance on B per arm, overall and by rank, with bootstrap
   intervals over users, the same slates paired (exact McNemar), and the judge's hit rates of both
   tables on B's novel-cluster moments; JSON and markdown in the run directory.

Acceptance here is **off-policy**: the replayed users did what the data set says they did, whatever
the engine proposed. "Accepted" means the user went to the proposed cluster anyway.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from explore.demo import Steps, build_models, metric_count, parse_metrics
from interests.data.datasets import Dataset
from interests.data.splits import held_out_start, training_period

ARMS = ("lm", "aligned")  # period B's arms: the LM's table, the aligned one


@dataclass(frozen=True)
class Periods:
    """Where the training period ends (period A starts) and where period B starts (event time)."""

    a_start: float
    b_start: float


def periods(ds: Dataset, holdout: float, b_share: float) -> Periods:
    """The training period: all but the last `holdout` of time (interaction quantiles, as `explore demo`
    cuts it, so a demo run's models fit); B: the last `b_share` of the held-out time."""
    if not 0 < b_share < 1:
        raise ValueError(f"--b-share must lie in (0, 1), got {b_share}")
    return Periods(held_out_start(ds, holdout), held_out_start(ds, holdout * b_share))


def reused_models(run: Path, train_ds: Dataset) -> dict:
    """A demo's (or this command's) models from `run`, checked to be trained on this training period
    (the novelty LM's `dataset` names it, date included) and on this data's items."""
    from interests.clusters.catalog import Catalog, check_same_items

    need = [run / "catalog", run / "model_repository", run / "novelty" / "novelty.json", run / "novelty_table.jsonl"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise FileNotFoundError(f"--reuse {run}: not a run directory of `explore demo` or `explore loop ab` "
                                f"(missing {', '.join(missing)})")
    trained_on = json.loads((run / "novelty" / "novelty.json").read_text()).get("dataset")
    if trained_on != train_ds.name:
        raise ValueError(f"--reuse {run}: its models were trained on {trained_on!r}, not on this training period "
                         f"{train_ds.name!r} (same --holdout and data as the run?)")
    catalog = Catalog.load(run / "catalog")
    check_same_items(catalog, train_ds.item_ids)
    rows = [json.loads(line) for line in (run / "novelty_table.jsonl").read_text().splitlines() if line.strip()]
    return {"catalog": catalog, "catalog_dir": run / "catalog", "repository": run / "model_repository", "rows": rows}


def arm_config(base, name: str, run: Path, batch_size: int):  # type: ignore[no-untyped-def]
    """The engine's settings for one arm: topics, consumer group and state of its own, so arms never
    share a slate, a feedback record or a user's state."""
    from streams.infra.process import free_port

    return base.with_values({
        "app_id": f"loop-{name}", "interactions_topic": f"{name}-interactions", "dlq_topic": f"{name}-dlq",
        "recommendations_topic": f"{name}-recommendations", "feedback_topic": f"{name}-feedback",
        "novelty_topic": f"{name}-novel-interests", "data_dir": str(run / "workers" / name),
        "web_port": free_port(), "batch_size": batch_size})


def wait_applied(worker, n: int, timeout_s: float, desc: str, progress: bool) -> None:  # type: ignore[no-untyped-def]
    """Until the worker has applied `n` events (its own counter: a restarted worker starts at 0), with a bar."""
    from tqdm import tqdm

    from streams.infra.process import wait_until

    with tqdm(total=n, desc=desc, unit="ev", disable=not progress, mininterval=1.0) as bar:
        def applied() -> bool:
            done = int(metric_count(parse_metrics(worker.metrics_text()), "explore_events_total", outcome="applied"))
            bar.update(done - bar.n)
            return done >= n

        wait_until(applied, timeout_s, f"{desc}: the worker applied {n:,} events", worker.proc, interval_s=0.5)


def run_phase(cfg, run: Path, name: str, events: list, progress: bool,  # type: ignore[no-untyped-def]
              pids: list[int]) -> float:
    """Start a worker with `cfg`, replay `events` to its topic as fast as possible, wait until it applied
    them all, stop it (its state stays in the changelog for the next phase); returns the seconds. The
    worker's pid joins `pids` (the command checks at the end that nothing it started still runs)."""
    from streams.infra.worker_process import WorkerProcess
    from streams.wiring.replay import produce

    t0 = time.perf_counter()
    worker = WorkerProcess(cfg, run, name)
    worker.start(wait_s=180)
    pids.append(worker.proc.pid)
    try:
        produce(cfg.bootstrap, cfg.interactions_topic, [e.encode() for e in events], rate=0, progress=progress,
                desc=f"{name}: send")
        # one event per batch runs at tens of events a second on a loaded CPU: allow for it
        wait_applied(worker, len(events), max(300.0, len(events) / 5), f"{name}: applied", progress)
    finally:
        worker.stop()
    return time.perf_counter() - t0


def run_arm(base, run: Path, name: str, rows: list[dict], fast: list, slow: list,  # type: ignore[no-untyped-def]
            progress: bool, pids: list[int]) -> dict:
    """One arm on the running stack: its table published, `fast` replayed in the engine's usual batches
    (state only), then `slow` one event per batch; its slates and feedback read back from its topics."""
    from streams.wiring.table_topic import publish_table
    from streams.wiring.topic_reader import read_feedback_topic, read_topic_positions, read_topic_values
    from streams.wiring.worker import ensure_topics

    cfg = arm_config(base, name, run, base.batch_size)
    ensure_topics(cfg)
    publish_table(cfg.bootstrap, cfg.novelty_topic, rows)
    seconds = {"fast": run_phase(cfg, run, f"{name}-fast", fast, progress, pids)}
    seconds["slow"] = run_phase(arm_config(base, name, run, 1), run, f"{name}-slow", slow, progress, pids)
    slates = [json.loads(v) for v in read_topic_values(cfg.bootstrap, cfg.recommendations_topic)]
    feedback = read_feedback_topic(cfg.bootstrap, cfg.feedback_topic)
    # where each user's events sit on the input topic: a slate's count of applied events is checked against it
    inputs = [(p, o, json.loads(v)["user_id"]) for p, o, _, v in read_topic_positions(cfg.bootstrap,
                                                                                     cfg.interactions_topic) if v]
    with open(run / f"{name}-feedback.jsonl", "w") as f:
        f.writelines(r.encode().decode() + "\n" for r in feedback)
    with open(run / f"{name}-recommendations.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in slates)
    print(f"  {name}: {len(fast):,} events fast in {seconds['fast']:.0f} s, {len(slow):,} one per batch in "
          f"{seconds['slow']:.0f} s; {len(slates):,} slates, {len(feedback):,} feedback records", flush=True)
    return {"slates": slates, "feedback": feedback, "inputs": inputs, "seconds": seconds}


def align_on_a(feedback: list, since: float, rows: list[dict], descriptions: list[str], args: argparse.Namespace,
               out: Path) -> tuple[list[dict], dict]:
    """The alignment model from period A's resolved proposals (slates made in A), and the table re-ranked
    by best-of-n; both written under `out`."""
    from interests.alignment.best_of_n import WeakAlignment, best_of_n_rows, check_evidence
    from interests.alignment.model import align
    from streams.core.feedback import labelled_outcomes

    outcomes = labelled_outcomes(r for r in feedback if r.slate_ts >= since)
    model, report = align(outcomes, args.min_events, args.steps, args.alpha,
                          meta={"source": "explore loop ab, period A"})
    model.save(out / "alignment")
    try:  # the guard `explore novelty rerank` applies before it publishes: B would compare the LM with itself
        check_evidence(model, args.min_pairs)
    except WeakAlignment as e:
        raise SystemExit(f"error: not re-ranking: {e}. Period A's feedback and the alignment model are in {out}; "
                         "--min-pairs 0 measures the unguarded re-ranking on B.") from None
    aligned = best_of_n_rows(rows, model, descriptions, args.best_of)
    (out / "table-aligned.jsonl").write_text("".join(json.dumps(r) + "\n" for r in aligned))
    moved = sum(a["clusters"] != r["clusters"] for a, r in zip(aligned, rows, strict=True))
    report.update(version=model.version, rows_reordered=moved, rows=len(rows))
    print(f"  alignment on A: {report['outcomes']:,} labelled proposals ({report['accepted']:,} accepted), "
          f"{report['examples']:,} (context, candidate) groups with at least {args.min_events}; best-of-"
          f"{args.best_of} changed the order of {moved:,} of {len(rows):,} rows", flush=True)
    return aligned, report


LOOP_OWNS = ("bootstrap", "triton_url", "catalog", "repository", "partitions", "m", "n")  # set by the loop itself


def arm_settings(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """`--setting` pairs as engine settings, checked before anything runs (a typo fails now, not after
    the models are built); the loop's own (endpoints, models, partitions, --m) cannot be set this way."""
    from streams.config import EngineConfig

    settings = dict(pairs)
    owned = sorted(set(settings) & set(LOOP_OWNS))
    if owned:
        raise SystemExit(f"error: --setting cannot set {', '.join(owned)}: the loop sets them (use --m for m)")
    try:
        EngineConfig().with_values(settings)
    except ValueError as e:
        raise SystemExit(f"error: --setting: {e}") from None
    return settings


def run_loop_ab(args: argparse.Namespace) -> int:
    """`explore loop ab` (the module docstring says every step)."""
    from explore.commands.common import dataset_from_args
    from explore.loop_report import build_report, format_report, judge_tables
    from streams.config import EngineConfig
    from streams.infra.process import pid_alive
    from streams.infra.stack import Stack
    from streams.wiring.replay import dataset_events

    if not (args.data or args.interactions or args.items or args.synthetic):
        args.synthetic = True
    settings = arm_settings(getattr(args, "setting", []))
    t_all = time.perf_counter()
    run = Path(args.run_dir or f"runs/loop-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run.mkdir(parents=True, exist_ok=True)
    print(f"Run directory: {run}")
    steps = Steps(6 if args.reuse else 10)
    steps.start("data and periods")
    ds = dataset_from_args(args)
    cut = periods(ds, args.holdout, args.b_share)
    train_ds = training_period(ds, cut.a_start)
    events = dataset_events(ds)
    history = [e for e in events if e.ts < cut.a_start]
    period_a = [e for e in events if cut.a_start <= e.ts < cut.b_start]
    period_b = [e for e in events if e.ts >= cut.b_start]
    day = lambda ts: time.strftime("%Y-%m-%d", time.gmtime(ts))  # noqa: E731
    print(f"{ds.summary()}\ntraining period: {len(history):,} interactions before {day(cut.a_start)}; "
          f"A: {len(period_a):,} until {day(cut.b_start)}; B (the test): {len(period_b):,}")
    if args.reuse:
        models = reused_models(Path(args.reuse).resolve(), train_ds)
        print(f"models of {args.reuse} (trained on {train_ds.name})")
    else:
        small = args.model_size == "small" or (args.model_size == "auto" and args.synthetic)
        models = {**build_models(train_ds, run, small, steps, args.quiet, levels=args.levels),
                  "catalog_dir": run / "catalog"}
    catalog, rows = models["catalog"], models["rows"]
    level = catalog.finest
    steps.start("embedded Kafka and Triton; arm A: the training period fast, then A one event per batch")
    pids: list[int] = []
    with Stack(run, models["repository"], kafka=args.kafka) as stack:
        ends = stack.endpoints
        assert ends is not None
        pids += [r.pid for r in stack.records if r.pid]
        base = EngineConfig().with_values({**settings, "bootstrap": ends.kafka_bootstrap,
                                           "triton_url": ends.triton_grpc, "catalog": str(models["catalog_dir"]),
                                           "repository": str(models["repository"]), "partitions": 4,
                                           "policy": "lm",  # the arms differ by the table's order: the LM's
                                           "m": args.m, "n": 10})
        arm_a = run_arm(base, run, "a", rows, history, period_a, not args.quiet, pids)
        steps.start("align on A's feedback; best-of-n re-ranks the table")
        aligned_rows, alignment = align_on_a(arm_a["feedback"], cut.a_start, rows, catalog.descriptions(level),
                                             args, run)
        arms = {}
        for name, table in zip(ARMS, (rows, aligned_rows), strict=True):
            steps.start(f"period B with the {'LM' if name == 'lm' else 'aligned'} table (fresh state)")
            arms[name] = run_arm(base, run, f"b-{name}", table, history + period_a, period_b, not args.quiet,
                                 pids)
    steps.start("the report: acceptance on B per arm, paired; the judge on B's moments")
    judged = judge_tables(ds, catalog.item_clusters(level), base.k, args.m, cut,
                          {"LM table": rows, f"aligned (best-of-{args.best_of})": aligned_rows}, args.seed)
    report = build_report(arms, cut, judged, alignment, args.m, args.seed)
    report["settings"] = {"dataset": ds.name, "holdout": args.holdout, "b_share": args.b_share,
                          "best_of": args.best_of, "min_events": args.min_events, "steps": args.steps,
                          "min_pairs": args.min_pairs,
                          "alpha": args.alpha, "m": args.m, "reuse": str(args.reuse) if args.reuse else None,
                          "horizon_events": base.feedback_horizon_events, "horizon_s": base.feedback_horizon_s,
                          "max_open": base.feedback_max_open, "engine_settings": settings,
                          "events": {"training": len(history), "A": len(period_a), "B": len(period_b)}}
    steps.done()
    report["seconds"] = {**{k.split(":")[0].split(";")[0]: round(v, 1) for k, v in steps.times.items()},
                         "total": round(time.perf_counter() - t_all, 1)}
    text = format_report(report)
    (run / "ab.json").write_text(json.dumps(report, indent=1, default=float))
    (run / "ab.md").write_text(text + "\n")
    print("\n" + text)
    left = [p for p in pids if pid_alive(p)]
    print(f"\nreport: {run / 'ab.md'} and {run / 'ab.json'}; total {(time.perf_counter() - t_all) / 60:.1f} min")
    if left:
        print(f"error: processes still running after stop: {left}")
    return 1 if left else 0
