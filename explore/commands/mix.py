"""`explore novelty mix`: fit the mixture of experts per catalog level, without leakage.

Registered inside the `novelty` group (`register` takes its subparsers). Writes, per level,
OUT/level-L/mixture.json (the weights, with and without the LM, and how they were fitted),
OUT/level-L/context_experts.npz and item_experts.npz (what the other experts need when served) and, for the head
sequence expert, OUT/level-L/cluster_head.pt (the head of the serving SASRec).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from explore.commands.common import add_dataset_args, holdout_dataset, load_lms


def level_dir(out: Path, level: int) -> Path:
    """Where a level's mixture lives: the one place the command and the judge agree on."""
    return Path(out) / f"level-{level}"


def register(nsub: argparse._SubParsersAction) -> None:
    p = nsub.add_parser(
        "mix", help="fit the mixture of experts (LM, sequence model, co-occurrence, popularity) per level on "
                    "validation moments, with a SASRec that never trained on them",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="score(c) = sum_e w_e log p_e(c) over the clusters the user does not know. The weights are "
                    "fitted per level by a listwise softmax on the novelty split's validation moments, using a "
                    "SASRec trained before the validation period (--seqrec-valid, from `explore seqrec train "
                    "--until-novelty-valid`); they are then applied to the serving SASRec (--seqrec). The mixture "
                    "is fitted twice, with and without the LM, so that the judge can say what the LM adds. The "
                    "test split is never read.")
    add_dataset_args(p)
    p.add_argument("--catalog", type=Path, default=Path("runs/catalog"),
                   help="the cluster catalog the models were trained with (its version is checked)")
    p.add_argument("--seqrec-valid", type=Path, action="append", required=True,
                   help="SASRec checkpoint(s) trained with --until-novelty-valid (repeat for seeds: the exact "
                        "expert averages them; the head reads the first)")
    p.add_argument("--seqrec", type=Path, action="append", required=True,
                   help="the serving SASRec checkpoint(s), same recipe and seeds as --seqrec-valid: trained with "
                        "--until-novelty-test for the judge, on everything for production")
    p.add_argument("--model", type=Path, action="append", default=[],
                   help="a novelty LM directory, one per level at most (a level without one mixes no LM)")
    p.add_argument("--levels", default="", help="catalog levels, e.g. 1,2,3 (default: the models' levels, or all)")
    p.add_argument("--sequence", choices=["head", "exact"], default="head",
                   help="the sequence expert: the cluster head (O(clusters) per user, what the engine can serve "
                        "at scale) or the exact sum of SASRec's next-item probabilities per cluster (O(catalog))")
    p.add_argument("--prototypes", type=int, default=0,
                   help="cluster head prototypes per cluster (0: the default, 16); its cost per user grows with it "
                        "(benchmarks/scale.py --prototypes)")
    p.add_argument("--k", type=int, default=2, help="context length when no --model gives one")
    p.add_argument("--m", type=int, default=5, help="M of the validation hit rate that is reported")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the cluster heads' fit (--sequence head)")
    p.add_argument("--no-item-experts", action="store_true",
                   help="leave out the item-level experts (item transitions, EASE), which read the user's recent "
                        "items; they are fitted like the SASRecs, on the period before each one's cut")
    p.add_argument("--out", type=Path, default=Path("runs/mixture"), help="directory of the level-L/ folders")
    p.set_defaults(func=cmd_novelty_mix)

    e = nsub.add_parser(
        "export-mixture", help="export a fitted mixture level as the `explorer` Triton model the engine serves",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Writes REPOSITORY/explorer: the serving SASRec with the level's cluster head and weights in one "
                    "ONNX graph (the top M unknown clusters by the mixture, and the slate inside them, in one "
                    "request), and the context experts the worker adds from the novelty-table row. A worker whose "
                    "repository holds `explorer` serves the mixture; checks onnxruntime against PyTorch.")
    e.add_argument("--mixture", type=Path, required=True,
                   help="a level directory of `explore novelty mix --sequence head` (e.g. runs/mixture/level-1)")
    e.add_argument("--catalog", type=Path, default=Path("runs/catalog"), help="the catalog the mixture was fitted with")
    e.add_argument("--repository", type=Path, default=Path("runs/model_repository"),
                   help="the Triton model repository the worker serves (its seqrec and interest_generator stay)")
    e.add_argument("--seqrec", type=Path, default=None,
                   help="the serving SASRec checkpoint (default: the one the level's head was trained on)")
    e.add_argument("--m", type=int, default=3, help="novel clusters per slate (the engine's M)")
    e.add_argument("--top-n", type=int, default=20, help="items the graph returns per slate")
    e.set_defaults(func=cmd_export_mixture)


def cmd_export_mixture(args: argparse.Namespace) -> int:
    from exporters.mixture_export import export_mixture

    result = export_mixture(args.mixture, args.catalog, args.repository, args.m, args.top_n, args.seqrec)
    p = result.parity
    print(f"explorer -> {result.onnx_path.parent} (mixture {result.meta['mixture']}, level {result.meta['level']}, "
          f"weights {', '.join(f'{k} {v:.3f}' for k, v in result.meta['weights'].items())})")
    print(f"onnxruntime vs PyTorch on {p.cases} batches: max |score diff| {p.max_abs_score_diff:.2e}, "
          f"same ids: {p.identical_ids}")
    if not p.ok():
        print("error: the exported graph disagrees with PyTorch", file=sys.stderr)
        return 1
    return 0


def load_seqrecs(paths: list[Path], ds) -> tuple[list, int]:  # type: ignore[no-untyped-def]
    """(models, the latest end of their training data; after every interaction when one trained on all)."""
    from interests.clusters.catalog import CatalogError
    from interests.seqrec.train import load_checkpoint

    models, untils = [], []
    for path in paths:
        model, ckpt = load_checkpoint(path)
        if ckpt.get("item_ids") != [str(i) for i in ds.item_ids]:
            raise CatalogError(f"{path} was trained on other items than {ds.name}")
        models.append(model)
        until = ckpt.get("trained_until")
        untils.append(int(until) if until is not None else int(ds.timestamps.max()) + 1)
    return models, max(untils)


def cmd_novelty_mix(args: argparse.Namespace) -> int:
    from interests.clusters.catalog import Catalog, CatalogError, check_same_items
    from interests.novelty.examples import novel_transitions
    from interests.novelty.fit_mixture import Checkpoints, mix_level

    t0 = time.perf_counter()
    ds = holdout_dataset(args)
    catalog = Catalog.load(args.catalog)
    check_same_items(catalog, ds.item_ids)
    entries = load_lms(args.model, catalog.version)
    lms = {e.lm.meta["level"]: e for e in entries}
    lm_dirs = {e.lm.meta["level"]: str(path) for e, path in zip(entries, args.model, strict=True)}
    if len(lms) < len(args.model):
        raise CatalogError("two --model directories are of the same level: a level mixes one LM")
    k = lms[next(iter(lms))].lm.meta["k"] if lms else args.k
    levels = [int(v) for v in args.levels.split(",") if v] or sorted(lms) or list(range(len(catalog.levels)))
    fit = Checkpoints(*load_seqrecs(args.seqrec_valid, ds), str(args.seqrec_valid[0]))
    serve = Checkpoints(*load_seqrecs(args.seqrec, ds), str(args.seqrec[0]))
    for lv in levels:
        ic, n = catalog.item_clusters(lv), catalog.levels[lv]
        info = {"sequence": args.sequence, "k": k, "level": lv, "seqrec_valid": [str(p) for p in args.seqrec_valid],
                "seqrec": [str(p) for p in args.seqrec], "lm": lms[lv].name if lv in lms else None,
                "lm_dir": lm_dirs.get(lv), "catalog_version": catalog.version, "clusters": n}
        result = mix_level(ds, ic, n, novel_transitions(ds, ic, k), fit, serve, lms[lv].lm if lv in lms else None,
                           level_dir(args.out, lv), info, args.sequence, args.m, args.seed, args.prototypes,
                           lambda line: print(line, flush=True), not args.no_item_experts)
        weights = ", ".join(f"{e} {w:.3f}" for e, w in result.mixture.weights.items())
        print(f"level {lv} ({n} clusters, {result.mixture.fitted_on['moments']:,} validation moments): weights "
              f"{weights}; validation hit@{args.m} {result.valid_hits['mixture']:.3f}, without the LM "
              f"{result.valid_hits['without_lm']:.3f} -> {level_dir(args.out, lv)}", flush=True)
    print(f"fitted {len(levels)} level(s) in {time.perf_counter() - t0:.0f} s")
    return 0


def load_mixtures(directory: Path, levels: list[int], lms: list, catalog, ds) -> dict:  # type: ignore[no-untyped-def]
    """{level: MixtureEntry} for the chosen levels that `directory` has a mixture for."""
    from interests.clusters.catalog import CatalogError
    from interests.evaluation.judge import MixtureEntry
    from interests.novelty.cluster_head import HEAD_FILE, load_head
    from interests.novelty.fit_mixture import sequence_expert
    from interests.novelty.mixture import ContextExperts, Mixture

    out = {}
    for lv in levels:
        path = level_dir(directory, lv)
        if not (path / "mixture.json").exists():
            continue
        mix, without = Mixture.load(path), Mixture.load(path / "without-lm")
        info = mix.fitted_on
        if info.get("catalog_version") != catalog.version:
            raise CatalogError(f"{path} was fitted with catalog {info.get('catalog_version')}, not {catalog.version}")
        models, until = load_seqrecs([Path(p) for p in info["seqrec"]], ds)
        ic, n = catalog.item_clusters(lv), catalog.levels[lv]
        head = load_head(path / HEAD_FILE)[0] if info["sequence"] == "head" else None
        lm = next((e.name for e in lms if e.lm.meta["level"] == lv), None)
        if mix.weights.get("lm", 0.0) and lm is None:
            raise CatalogError(f"{path} mixes the LM of {info.get('lm_dir')}: give it to the judge with --model")
        out[lv] = MixtureEntry(mix, without, sequence_expert(info["sequence"], models, ic, n, head),
                               lm if mix.weights.get("lm", 0.0) else None, until,
                               sequence_expert("exact", models, ic, n) if info["sequence"] == "head" else None,
                               ContextExperts.load(path).items)
    if not out:
        raise CatalogError(f"{directory} has no mixture for the levels judged ({levels}): run `explore novelty mix`")
    return out
