"""`explore seqrec`: train, evaluate and export SASRec, the item policy."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from explore.commands.common import add_config_args, add_dataset_args, config_from_args, dataset_from_args

TRAIN_HELP = {
    "max_len": "history length the model reads: the last this many items of a user (longer histories are cut)",
    "dim": "width of the item and position embeddings and of every block; larger fits more, costs time",
    "heads": "attention heads per block (must divide --dim)",
    "blocks": "self-attention blocks (transformer layers)",
    "dropout": "dropout rate in [0, 1) on embeddings and blocks while training; raise it when the model overfits",
    "lr": "learning rate of Adam",
    "weight_decay": "L2 penalty of Adam on every weight (0: none)",
    "batch_size": "training windows (a user's history, up to --max-len items) per optimiser step",
    "epochs": "upper bound; early stopping usually ends sooner",
    "patience": "epochs without a better validation NDCG@10 before training stops (the best epoch is kept)",
    "loss": "ce: full-softmax cross-entropy; bce: one sampled negative per position",
    "threads": "CPU threads torch uses (0: torch's default, one per core); fix it for comparable timings",
    "seed": "random seed of the weights, batch order and sampled negatives; train several to average or distil",
    "text": "none: an item is its id embedding (items never seen in training cannot be ranked); tfidf or minilm: "
            "plus a learnt projection of the item's text embedding (the catalog build's encoders), and an item "
            "with no training interaction is its text part alone, so new items can enter a slate "
            "(docs/research/cold-items.md)",
    "id_dropout": "with --text only: the chance, per item and batch, that training leaves out a seen item's id "
                  "embedding so that it is its text part alone (DropoutNet), which trains the text part to rank "
                  "new items by itself; evaluation and serving never drop; 0: off",
}


def register(sub: argparse._SubParsersAction) -> None:
    seqrec = sub.add_parser("seqrec", help="the item policy: train, evaluate and export SASRec",
                            description="SASRec over item histories; served restricted to the novel clusters.")
    ssub = seqrec.add_subparsers(dest="seqrec_command", metavar="ACTION", required=True)
    t = ssub.add_parser("train", help="train with early stopping on validation NDCG@10; report test metrics",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(t)
    t.add_argument("--catalog", type=Path, default=Path("runs/catalog"),
                   help="the cluster catalog built from the same data (its version is recorded)")
    t.add_argument("--out", type=Path, default=Path("runs/seqrec/model.pt"),
                   help="checkpoint file to write (its test metrics go beside it, as .json)")
    until = t.add_mutually_exclusive_group()
    until.add_argument("--until-novelty-test", action="store_true",
                       help="train only on interactions before the novelty test period of every catalog level (with "
                            "--k), so that `explore novelty eval --seqrec` can use it as an exploration baseline")
    until.add_argument("--until-novelty-valid", action="store_true",
                       help="train only on interactions before the novelty validation period of every level: the "
                            "sequence expert whose validation scores fit the mixture's weights (`explore novelty "
                            "mix --seqrec-valid`) without having trained on those moments")
    t.add_argument("--k", type=int, default=2,
                   help="context length of the novelty split (--until-novelty-test / --until-novelty-valid)")
    t.add_argument("--teacher", type=Path, action="append", default=[],
                   help="a SASRec checkpoint of another seed trained on the same interactions (repeat): the loss "
                        "is half cross-entropy, half the teachers' mean next-item distribution (one model that "
                        "learns what the seeds agree on; training costs about one forward pass more per teacher)")
    from interests.configs import TrainConfig

    add_config_args(t, TrainConfig, TRAIN_HELP, {"loss": ["ce", "bce"], "text": ["none", "tfidf", "minilm"]})
    t.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines (for logs and scripts)")
    t.set_defaults(func=cmd_seqrec_train)
    e = ssub.add_parser("eval", help="HR/NDCG/MRR@10 of a checkpoint and of the popularity baseline")
    add_dataset_args(e)
    e.add_argument("--checkpoint", type=Path, default=Path("runs/seqrec/model.pt"),
                   help="SASRec checkpoint of `explore seqrec train --out`, trained on the items of the data given "
                        "(default: %(default)s)")
    e.set_defaults(func=cmd_seqrec_eval)
    x = ssub.add_parser("export", help="ONNX with the cluster-restricted top-N, checked against PyTorch, "
                                       "into a Triton model repository",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    x.add_argument("--checkpoint", type=Path, default=Path("runs/seqrec/model.pt"),
                   help="SASRec checkpoint of `explore seqrec train --out` to export")
    x.add_argument("--catalog", type=Path, default=Path("runs/catalog"),
                   help="the catalog whose clusters the exported top-N is restricted to (the one the checkpoint "
                        "was trained with)")
    x.add_argument("--repository", type=Path, default=Path("runs/triton"), help="Triton model repository to write")
    x.add_argument("--top-n", type=int, default=20,
                   help="candidate items the exported graph returns per request; the worker drops the user's "
                        "seen ones and keeps N (the slate length), so keep it above N")
    x.add_argument("--level", type=int, default=None, help="catalog level of the clusters (default: the finest)")
    x.add_argument("--check-tensorrt", action="store_true",
                   help="also build and check the TensorRT engine (needs the gpu extra and an NVIDIA GPU)")
    x.set_defaults(func=cmd_seqrec_export)


def cmd_seqrec_train(args: argparse.Namespace) -> int:
    import json

    from interests.clusters.catalog import Catalog, check_same_items
    from interests.configs import TrainConfig
    from interests.data.splits import leave_one_out, pad_left, popularity_ranks, ranking_metrics, training_period
    from interests.novelty.examples import novelty_period_start
    from interests.seqrec.new_items import text_encoding
    from interests.seqrec.train import evaluate, train

    ds = dataset_from_args(args)
    catalog = Catalog.load(args.catalog)
    check_same_items(catalog, ds.item_ids)
    until = None
    if args.until_novelty_test or args.until_novelty_valid:
        period = "test" if args.until_novelty_test else "valid"
        until = novelty_period_start(ds, [catalog.item_clusters(lv) for lv in range(len(catalog.levels))], args.k,
                                     period)
        ds = training_period(ds, until)
    split = leave_one_out(ds)
    print(ds.summary())
    print(f"protocol: {split.protocol()}")
    cfg = config_from_args(TrainConfig, args, TRAIN_HELP)
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(len(split.test_history), size=min(64, len(split.test_history)), replace=False)
    extra = {"catalog_version": catalog.version, "dataset": ds.name, "item_ids": [str(i) for i in ds.item_ids],
             "trained_until": until,
             "sample_histories": pad_left([split.test_history[i] for i in sample], cfg.max_len)}
    teachers = _teachers(args.teacher, ds, until)
    extra["teachers"] = [str(p) for p in args.teacher]
    text, encoder = text_encoding(ds, cfg, progress=not args.quiet)  # the encoder kept: items added later
    model, result = train(split, cfg, progress=not args.quiet, checkpoint=args.out, extra={**extra, **encoder},
                          teachers=teachers, item_text=text)
    test = evaluate(model, split.test_history, split.test_target)
    pop = ranking_metrics(popularity_ranks(split))
    print(f"best epoch {result.best_epoch} of {len(result.history)} ({result.seconds:.0f} s); checkpoint: {args.out}")
    _print_metrics({"SASRec (test)": test, "popularity (test)": pop})
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(
        {"protocol": split.protocol(), "test": test, "popularity_test": pop, "valid": result.valid,
         "best_epoch": result.best_epoch, "seconds": result.seconds, "config": vars(cfg)}, indent=1))
    return 0


def _teachers(paths: list[Path], ds, until: int | None) -> list:  # type: ignore[no-untyped-def]
    """The teacher checkpoints, refused unless they trained on the very interactions the student will."""
    from interests.clusters.catalog import CatalogError
    from interests.seqrec.train import load_checkpoint

    out = []
    for path in paths:
        model, ckpt = load_checkpoint(path)
        if ckpt.get("item_ids") != [str(i) for i in ds.item_ids] or ckpt.get("trained_until") != until:
            raise CatalogError(f"{path} was trained on other interactions (items or --until-novelty-* cut) than "
                               "this student: a teacher must have seen exactly what the student sees")
        out.append(model)
    return out


def _print_metrics(rows: dict[str, dict[str, float]]) -> None:
    keys = list(next(iter(rows.values())))
    print(f"  {'':20}" + "".join(f"{k:>10}" for k in keys))
    for name, m in rows.items():
        print(f"  {name:20}" + "".join(f"{m[k]:>10.4f}" for k in keys))


def cmd_seqrec_eval(args: argparse.Namespace) -> int:
    from interests.clusters.catalog import CatalogError
    from interests.data.splits import leave_one_out, popularity_ranks, ranking_metrics
    from interests.seqrec.train import evaluate, load_checkpoint

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
