"""Dataset -> item embeddings -> nested clusters -> descriptions -> a versioned catalog."""

from __future__ import annotations

import time

import numpy as np

from interests.clusters.catalog import Catalog, Cluster
from interests.clusters.clustering import cluster_levels
from interests.clusters.describe import describe_clusters, item_terms
from interests.clusters.embeddings import item_embeddings
from interests.configs import BuildConfig
from interests.data.datasets import Dataset


def _title(ds: Dataset, i: int) -> str:
    titles = ds.item_text.get("title")
    return titles[i] if titles and titles[i] else str(ds.item_ids[i])


def build_catalog(ds: Dataset, cfg: BuildConfig, progress: bool = True) -> Catalog:
    """Build the catalog; a progress bar follows the slow steps when `progress`."""
    from tqdm import tqdm

    steps = ["embeddings", *[f"clusters L{lv}" for lv in reversed(range(len(cfg.levels)))], "descriptions"]
    timings: dict[str, float] = {}
    bar = tqdm(total=len(steps), desc="catalog", unit="step", disable=not progress)
    t0 = time.perf_counter()
    bar.set_postfix_str("item embeddings")
    emb = item_embeddings(ds, cfg.dim, cfg.window, cfg.text_weight, cfg.text_encoder, cfg.seed, progress)
    timings["embeddings_s"] = time.perf_counter() - t0
    bar.update()
    traffic = ds.item_traffic()

    def level_done(level: int) -> None:
        bar.update()
        bar.set_postfix_str(f"level {level} done")

    t1 = time.perf_counter()
    hier = cluster_levels(emb.vectors, list(cfg.levels), traffic, cfg.mode, cfg.balance_factor, cfg.seed,
                          on_level=level_done)
    timings["clustering_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    terms = item_terms(ds)
    clusters = []
    for level, k in enumerate(cfg.levels):
        labels = hier.labels[level]
        keywords = describe_clusters(ds, labels, k, cfg.keywords, max(cfg.keywords, 6), terms)
        parents = hier.parents[level]
        row = []
        for c in range(k):
            members = np.flatnonzero(labels == c)
            top = members[np.argsort(-traffic[members], kind="stable")[:5]]
            row.append(Cluster(id=c, level=level, parent=None if parents is None else int(parents[c]),
                               description=", ".join(keywords[c]), keywords=keywords[c], size=len(members),
                               traffic=int(traffic[members].sum()), top_items=[_title(ds, i) for i in top]))
        clusters.append(row)
    timings["descriptions_s"] = time.perf_counter() - t2
    bar.update()
    bar.close()
    meta = {"dataset": ds.name, "n_items": ds.n_items, "n_users": ds.n_users, "n_interactions": ds.n_interactions,
            "embedding": emb.description, "text_encoder": emb.text_encoder, "mode": cfg.mode,
            "balance_factor": cfg.balance_factor if cfg.mode == "balanced" else None, "seed": cfg.seed,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "timings": {k: round(v, 2) for k, v in timings.items()}}
    return Catalog(list(cfg.levels), clusters, [str(i) for i in ds.item_ids],
                   [_title(ds, i) for i in range(ds.n_items)], np.stack(hier.labels).astype(np.int32), meta)


def format_catalog(catalog: Catalog, level: int | None = None, top: int = 3, width: int = 110) -> str:
    """A readable table: id, parent, items, traffic share, description, top items."""
    levels = range(len(catalog.levels)) if level is None else [level]
    total = sum(c.traffic for c in catalog.clusters[0]) or 1
    lines = [f"catalog {catalog.version}  {catalog.meta.get('dataset', '')}  levels {catalog.levels}  "
             f"{catalog.meta.get('embedding', '')}  mode {catalog.meta.get('mode', '')}"]
    for lv in levels:
        lines.append("")
        lines.append(f"level {lv}: {catalog.levels[lv]} clusters")
        lines.append(f"{'id':>4} {'parent':>6} {'items':>6} {'traffic':>8}  description  |  top items")
        for c in catalog.clusters[lv]:
            parent = "-" if c.parent is None else str(c.parent)
            row = (f"{c.id:>4} {parent:>6} {c.size:>6} {100 * c.traffic / total:>7.1f}%  {c.description}  |  "
                   f"{'; '.join(c.top_items[:top])}")
            lines.append(row if len(row) <= width else row[: width - 1] + "…")
    return "\n".join(lines)
