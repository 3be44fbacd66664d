"""`explore report` and `explore demo`: the evaluation report, and the main job that ends with it."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from explore.commands.common import add_dataset_args, dataset_from_args


def register(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("report", help="evaluation report: the engine's slates of the held-out period against "
                                        "what users did next, beside the baselines (HTML + PNGs + metrics.json)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(rep)
    rep.add_argument("--catalog", type=Path, required=True,
                     help="catalog directory the engine served with (`explore clusters build --out`)")
    rep.add_argument("--repository", type=Path, required=True, help="model repository with seqrec/1/model.onnx")
    rep.add_argument("--recommendations", type=Path, required=True,
                     help="the engine's records (recommendations topic), one JSON object per line")
    when = rep.add_mutually_exclusive_group()
    when.add_argument("--start-ts", type=float, default=None, help="first timestamp of the held-out period")
    when.add_argument("--start-fraction", type=float, default=0.8,
                      help="or: the held-out period starts at this time quantile of the dataset")
    rep.add_argument("--out", type=Path, required=True, help="directory for report.html, the PNGs and metrics.json")
    rep.add_argument("--k", type=int, default=2, help="context length (last K distinct clusters)")
    rep.add_argument("--m", type=int, default=3, help="novel clusters proposed per moment (the engine's M)")
    rep.add_argument("--n", type=int, default=10, help="items per slate (the engine's N) that are evaluated")
    rep.add_argument("--seed", type=int, default=0, help="seed of the random baseline (and of --synthetic)")
    rep.add_argument("--seqrec", type=Path, default=None,
                     help="the SASRec checkpoint the engine served (e.g. RUN/seqrec/model.pt), trained before the "
                          "held-out period: adds 'SASRec explores' (its next-item probabilities summed per unknown "
                          "cluster) on the same moments")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    rep.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="the main job: data -> models -> embedded Kafka + Triton -> live engine "
                                       "-> report",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                          description="Train everything on the training period of a dataset (synthetic by "
                                      "default, MovieLens with --data, your own with --interactions/--items), "
                                      "start the embedded broker, Triton and an engine worker, replay the data "
                                      "(the held-out period live), write the evaluation report, and stop "
                                      "everything it started.")
    add_dataset_args(demo, synthetic_default=True)  # the same data options as every other command
    demo.add_argument("--users", dest="synthetic_users", type=int, default=400,
                      help="synthetic users (the same as --synthetic-users)")
    demo.add_argument("--model-size", choices=["auto", "small", "full"], default="auto",
                      help="small: the synthetic data's models (fast; for small data and tests), full: the "
                           "MovieLens ones; auto: small for synthetic data, full otherwise")
    demo.add_argument("--holdout", type=float, default=0.2,
                      help="share of time (the latest) held out and replayed live")
    demo.add_argument("--rate", type=float, default=400.0, help="held-out events per second")
    demo.add_argument("--refresh", type=float, default=4.0, help="seconds between live views")
    demo.add_argument("--bad-records", type=int, default=25,
                      help="invalid records mixed into the held-out stream (they go to the dead-letter topic)")
    demo.add_argument("--new-items", type=int, default=8,
                      help="items of the held-out period held out of training: published on the items topic when the "
                           "held-out replay starts, then folded into a second model set that the worker switches to, "
                           "so that they reach slates (0: none; needs item text)")
    demo.add_argument("--kafka", choices=["tansu", "apache"], default="tansu",
                      help="which embedded broker to start: tansu (starts in milliseconds) or apache (real Apache "
                           "Kafka in KRaft mode; needs Java)")
    demo.add_argument("--run-dir", default=None,
                      help="where every artifact and log goes (default: runs/demo-YYYYmmdd-HHMMSS)")
    demo.add_argument("--novelty-model", default=None,
                      help="a pretrained base model (smollm2-135m, or a directory) zero-shot behind the language "
                           "policy instead of the LM trained from scratch (slower: see the README)")
    demo.add_argument("--no-mixture", action="store_true",
                      help="serve the LM's table and seqrec (the engine without the mixture of experts; faster: "
                           "no second SASRec); --novelty-model always does")
    demo.add_argument("--seed", type=int, default=0,
                      help="random seed of --synthetic and of where the --bad-records fall (the models train with "
                           "their own fixed seeds)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)


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
                        seed=args.seed, progress=not args.quiet, seqrec_checkpoint=args.seqrec)
    print(format_table(json.loads((path.parent / "metrics.json").read_text())))
    print(f"report: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from explore.demo import run_demo

    return run_demo(args)
