"""Which item embedding should the clusters use? Measured side by side, in one run.

Variants: PPMI-SVD (ours) at two window sizes, SVD of raw co-occurrence counts, item2vec (gensim
skip-gram; needs `pip install gensim`), text only, and PPMI-SVD mixed with text. Each is clustered
by the same plain k-means, so only the embedding differs. Reported:

- planted ARI: adjusted Rand index against the planted clusters of the synthetic data (2 seeds);
- genre lift (MovieLens): mean genre-set Jaccard of item pairs inside a cluster / of random pairs;
- stay lift (MovieLens): share of a user's consecutive interactions that stay inside one cluster,
  divided by the share expected from the cluster sizes alone (behavioural coherence: what the
  novelty model learns from);
- seconds to embed.

Run: python benchmarks/embeddings.py --data data/ml-latest-small [--k 32]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from interests.clusters.clustering import adjusted_rand_index, kmeans
from interests.clusters.embeddings import cooccurrence, normalize_rows, ppmi, svd_embed, text_embeddings
from interests.data.datasets import Dataset
from interests.data.loaders import load_dataset
from interests.data.synthetic import make_synthetic


def item2vec(ds: Dataset, dim: int, window: int, seed: int) -> np.ndarray:
    from gensim.models import Word2Vec

    sentences = [[str(i) for i in seq] for seq in ds.sequences()]
    model = Word2Vec(sentences, vector_size=dim, window=window, sg=1, negative=5, min_count=1, epochs=10,
                     workers=1, seed=seed)
    return normalize_rows(np.stack([model.wv[str(i)] for i in range(ds.n_items)]))


def variants(dim: int, seed: int) -> dict[str, Callable[[Dataset], np.ndarray]]:
    def mix(w: float, enc: str) -> Callable[[Dataset], np.ndarray]:
        def f(ds: Dataset) -> np.ndarray:
            text, _ = text_embeddings(ds, enc, dim, seed, progress=False)
            return np.hstack([np.sqrt(1 - w) * svd_embed(ppmi(cooccurrence(ds, 5)), dim, seed), np.sqrt(w) * text])
        return f

    out: dict[str, Callable[[Dataset], np.ndarray]] = {
        "PPMI-SVD w=5": lambda ds: svd_embed(ppmi(cooccurrence(ds, 5)), dim, seed),
        "PPMI-SVD w=20": lambda ds: svd_embed(ppmi(cooccurrence(ds, 20)), dim, seed),
        "count-SVD w=5": lambda ds: svd_embed(np.log1p(cooccurrence(ds, 5)), dim, seed),
    }
    try:
        import gensim  # noqa: F401

        out["item2vec w=5"] = lambda ds: item2vec(ds, dim, 5, seed)
    except ImportError:
        print("(gensim not installed: item2vec left out)")
    out["text only (tfidf)"] = lambda ds: text_embeddings(ds, "tfidf", dim, seed, progress=False)[0]
    out["text only (minilm)"] = lambda ds: text_embeddings(ds, "minilm", dim, seed, progress=False)[0]
    for w in (0.3, 0.4, 0.5):
        out[f"PPMI w=5 + {w} tfidf"] = mix(w, "tfidf")
        out[f"PPMI w=5 + {w} minilm"] = mix(w, "minilm")
    return out


def genre_lift(ds: Dataset, labels: np.ndarray, rng: np.random.Generator, pairs: int = 40000) -> float:
    genres = [frozenset(g.split(", ")) if g else frozenset() for g in ds.item_text["genres"]]

    def jaccard(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([len(genres[i] & genres[j]) / max(len(genres[i] | genres[j]), 1)
                              for i, j in zip(a, b, strict=True)]))

    a, b = rng.integers(ds.n_items, size=pairs), rng.integers(ds.n_items, size=pairs)
    base = jaccard(a, b)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    ia = rng.integers(ds.n_items, size=pairs)
    ca = labels[ia]
    lo, hi = bounds[ca], bounds[ca + 1]
    ib = order[lo + (rng.random(pairs) * (hi - lo)).astype(int)]
    return jaccard(ia, ib) / base


def stay_lift(ds: Dataset, labels: np.ndarray) -> float:
    same_user = ds.users[1:] == ds.users[:-1]
    c = labels[ds.items]
    stay = float(np.mean(c[1:][same_user] == c[:-1][same_user]))
    share = np.bincount(c, minlength=labels.max() + 1) / len(c)
    return stay / float((share**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/ml-latest-small", help="a MovieLens directory")
    parser.add_argument("--k", type=int, default=32, help="clusters for the MovieLens measurement")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    synth = [make_synthetic(n_clusters=16, items_per_cluster=40, n_users=600, seed=s) for s in (0, 1)]
    ml = load_dataset(args.data)
    print(f"planted: 2 synthetic datasets, 16 clusters; MovieLens: {ml.summary()}; k-means k={args.k}\n")
    print(f"{'embedding':25} {'planted ARI':>11} {'genre lift':>10} {'stay lift':>9} {'embed s':>8}")
    for name, embed in variants(args.dim, args.seed).items():
        aris = [adjusted_rand_index(kmeans(embed(ds), 16, seed=args.seed)[0], truth.item_cluster)
                for ds, truth in synth]
        t0 = time.perf_counter()
        x = embed(ml)
        secs = time.perf_counter() - t0
        labels, _ = kmeans(x, args.k, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        print(f"{name:25} {np.mean(aris):>11.3f} {genre_lift(ml, labels, rng):>10.2f} {stay_lift(ml, labels):>9.2f} "
              f"{secs:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
