"""Where does a brand-new item land from its text alone? Text placement against the catalog's own clusters
(issue 27, item 1).

A random --holdout share of the items (seeded) plays the new items. The placer
(`interests.clusters.placement.fit_placer`) is fitted on the other items' text only: neither the
TF-IDF vocabulary, idf and SVD nor the clusters' text centroids see a held-out text. Each held-out
item is then placed at every level of the catalog (nearest text centroid by cosine; a text with
nothing usable goes to the most-trafficked cluster) and compared with the catalog's own assignment,
which saw the item's interactions as well as its text: agreement is the share of held-out items
placed in their catalog cluster.

Baselines, on the same items: the most-trafficked cluster (the rule's own fallback), and a random
cluster drawn with the clusters' size shares among the fitted items (its expected agreement
sum_c share_c x held-out share_c, about the sum of squared size shares, is printed too). One more
row, in-sample, fits the placer on every item (held-out texts included), to show how much a leak
of the new texts into the fit would flatter the rule. 95 % percentile bootstrap intervals resample
held-out items; the difference text - most-trafficked is paired (one draw of items for both).
Another rule for comparison: place at the finest level only and take that cluster's ancestors
(the catalog's levels nest, so a coarse cluster is a union of fine ones), with its paired difference
to the nearest-centroid rule at each level.
Below the table: texts with nothing usable, the median distance of right and wrong placements, and
how often a level's placement sits under the coarser level's placement (each level is placed on
its own).

Seconds on 2 CPU cores with TF-IDF; MiniLM (--encoder minilm) encodes every text once more (minutes).

Run: python benchmarks/research/placement.py --data data/ml-latest-small --catalog runs/judge/catalog
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from interests.clusters.catalog import Catalog, check_same_items
from interests.clusters.placement import TextPlacer, fit_placer
from interests.data.loaders import load_dataset
from interests.evaluation.stats import bootstrap_difference, bootstrap_interval

T0 = time.perf_counter()


def say(line: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f} s] {line}", flush=True)


def commit() -> str:
    """The commit this run belongs to, marked when the working tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def interval(hits: np.ndarray, rounds: int, seed: int) -> list[float]:
    """[mean, low, high]: each held-out item is its own unit of the bootstrap."""
    return [float(hits.mean()), *bootstrap_interval(hits, np.arange(len(hits)), rounds, seed=seed)]


def place_all(placer: TextPlacer, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(clusters, distances) per level, the texts encoded once."""
    vectors = placer.encode(texts)
    return [placer.place_vectors(vectors, level) for level in range(placer.n_levels)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/ml-latest-small"), help="a MovieLens directory")
    p.add_argument("--catalog", type=Path, default=Path("runs/judge/catalog"),
                   help="a catalog of the same items (`explore clusters build`); its levels are the ones measured")
    p.add_argument("--holdout", type=float, default=0.1, help="share of the items held out as new (random)")
    p.add_argument("--encoder", default=None, choices=["tfidf", "minilm", "auto"],
                   help="text encoder of the placer (default: the one the catalog's build recorded, else tfidf)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draw, the random draws, the bootstrap")
    p.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds")
    args = p.parse_args()

    ds = load_dataset(args.data)
    catalog = Catalog.load(args.catalog)
    check_same_items(catalog, ds.item_ids)
    say(f"{ds.summary()}")
    say(f"catalog {catalog.version}: levels {catalog.levels}, {catalog.meta.get('embedding', '?')}")
    rng = np.random.default_rng(args.seed)
    n_out = round(args.holdout * ds.n_items)
    held = np.sort(rng.choice(ds.n_items, size=n_out, replace=False))
    kept = np.setdiff1d(np.arange(ds.n_items), held)
    texts = [ds.text_of(int(i)) for i in held]
    say(f"holding out {len(held):,} items of {ds.n_items:,} (seed {args.seed}); fitting the placer on the other "
        f"{len(kept):,} items' text ...")
    placer = fit_placer(ds, catalog, encoder=args.encoder, items=kept, progress=True)
    say(f"placer: {placer.encoder}, dim {placer.dim}, seed {placer.seed}, {len(placer.vocabulary):,} terms")
    placed = place_all(placer, texts)
    say("fitting the in-sample placer on every item's text ...")
    in_sample = place_all(fit_placer(ds, catalog, encoder=args.encoder, dim=placer.dim, seed=placer.seed), texts)

    rows: dict[str, list[list[float] | None]] = {name: [] for name in (
        "text placement (held-out texts unseen)", "text placement, in-sample (leaky)", "most-trafficked cluster",
        "random cluster by size share", "  expected sum share x held-out share", "text - most-trafficked (paired)",
        "finest level's placement, its ancestor", "ancestor - text placement (paired)")}
    names = list(rows)
    notes = []
    ancestor = placed[-1][0]
    ancestors = [ancestor]
    for level in range(catalog.finest - 1, -1, -1):
        ancestor = np.array([catalog.clusters[level + 1][c].parent for c in ancestor])
        ancestors.insert(0, ancestor)
    for level, k in enumerate(catalog.levels):
        truth = catalog.item_clusters(level)[held]
        clusters, distances = placed[level]
        hit = (clusters == truth).astype(np.float64)
        top = (np.full(len(held), placer.fallback[level]) == truth).astype(np.float64)
        share = np.bincount(catalog.item_clusters(level)[kept], minlength=k) / len(kept)
        drawn = np.random.default_rng(args.seed + 1 + level).choice(k, size=len(held), p=share)
        ids = np.arange(len(held))
        rows[names[0]].append(interval(hit, args.rounds, args.seed))
        rows[names[1]].append(interval((in_sample[level][0] == truth).astype(np.float64), args.rounds, args.seed))
        rows[names[2]].append(interval(top, args.rounds, args.seed))
        rows[names[3]].append(interval((drawn == truth).astype(np.float64), args.rounds, args.seed))
        rows[names[4]].append([float(share @ (np.bincount(truth, minlength=k) / len(held)))])
        rows[names[5]].append([float(hit.mean() - top.mean()),
                               *bootstrap_difference(hit, ids, top, ids, args.rounds, seed=args.seed)])
        up = (ancestors[level] == truth).astype(np.float64)
        rows[names[6]].append(interval(up, args.rounds, args.seed))
        rows[names[7]].append([float(up.mean() - hit.mean()),
                               *bootstrap_difference(up, ids, hit, ids, args.rounds, seed=args.seed)])
        usable = distances < 1.0
        right, wrong = hit.astype(bool) & usable, ~hit.astype(bool) & usable
        nested = ""
        if level > 0:
            parents = np.array([c.parent for c in catalog.clusters[level]])
            nested = f", under the level-{level - 1} placement {np.mean(parents[clusters] == placed[level - 1][0]):.1%}"
        notes.append(f"level {level} ({k}): median distance right {np.median(distances[right]):.3f}, wrong "
                     f"{np.median(distances[wrong]):.3f}{nested}")

    print()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"commit: {commit()}; catalog {catalog.version} ({args.catalog}); placer {placer.encoder} dim {placer.dim} "
          f"seed {placer.seed}; {len(held):,} held-out items of {ds.n_items:,}; {args.rounds} bootstrap rounds")
    print("agreement with the catalog's own cluster of each held-out item, 95 % interval over items")
    print(f"{'':40}" + "".join(f"{f'level {lv}: {k} clusters':>26}" for lv, k in enumerate(catalog.levels)))
    for name, cells in rows.items():
        signed = " - " in name
        line = f"{name:40}"
        for v in cells:
            assert v is not None
            text = (f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]" if signed else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
                    ) if len(v) == 3 else f"{v[0]:.3f}"
            line += f"{text:>26}"
        print(line)
    unusable = int((placed[0][1] >= 1.0).sum())
    print(f"held-out texts with nothing usable (placed in the most-trafficked cluster, distance 1): {unusable}")
    for note in notes:
        print(note)
    say("done")


if __name__ == "__main__":
    main()
