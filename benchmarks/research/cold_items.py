"""Can the sequence model rank items it never saw? SASRec with and without its text part (issue 27, item 2).

A time split: the cut is where the last --holdout share of interactions starts
(`interests.data.splits.held_out_start`, the cut of `explore demo --holdout`). Both SASRecs train on
the interactions before the cut, with the same recipe and seed; each user's last interaction before
the cut is the validation target of early stopping (nothing after the cut chooses anything).

- today's model: id embeddings only (`--text none`);
- the text model: id embedding + a projection of the item's text embedding (TF-IDF + SVD, the
  catalog build's encoder); an item with no training interaction is its text part alone;
- with --id-dropout P (each P > 0 of the list): the text model trained with DropoutNet's id dropout
  (`TrainConfig.id_dropout`: each batch leaves out a warm item's id embedding with chance P), rows
  "text drop P", with their differences to the plain text model too. Choose P a priori: nothing here
  may be tuned on the test period.
- "text map": today's model with a text part fitted after training (`interests.seqrec.sasrec.map_text`:
  ridge regression, penalty 1, fixed a priori, of the warm items' id embeddings on their texts), whose
  warm items keep today's vectors exactly; an item without training interactions is its mapped text.

The items' text is what was known at the cut: titles, genres, and only the tags (tags.csv) written
before it (a third of MovieLens' tags come later, many of them by the very users being tested).

Test: every interaction after the cut whose user has a history (all their earlier interactions,
those after the cut included). Cold targets: items whose first interaction in the whole data is
after the cut; warm: the others. Each target is ranked (1) among the items of its cluster, the
slate the engine serves (the catalog's finest level; cold items are put in the cluster whose warm
items' mean text vector is nearest theirs, since the catalog placed them with interactions from the
test period), and (2) among all items. The user's earlier items are left out of both rankings, as
the served slate leaves them out (MovieLens has no repeated ratings, so no target is ever left
out). Model ties count against the target (`interests.data.splits.ranks_of`); popularity within the
cluster (interactions before the cut) breaks its ties at random, seeded, so that cold items (count
0) land in random order after the warm ones.

Reported for random order (chance), popularity, today's and the text model: HR@10 and NDCG@10 with
95 % bootstrap intervals resampled by user, the paired differences of each text model - today, (cold
targets) - popularity and - random, and (id dropout) - text, one draw of users for both
(`interests.evaluation.stats`), and median ranks.
About 7 minutes on 2 CPU cores, and 3 to 4 more per id-dropout model (`--epochs` and `--patience` bound it).

Run: python benchmarks/research/cold_items.py --data data/ml-latest-small --catalog runs/judge/catalog
       --json runs/cold-items/results.json --save runs/cold-items
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from interests.clusters.catalog import Catalog, check_same_items
from interests.configs import TrainConfig
from interests.data.datasets import Dataset
from interests.data.loaders import load_dataset
from interests.data.splits import LeaveOneOut, held_out_start, pad_left, training_period, training_windows
from interests.evaluation.stats import bootstrap_difference, bootstrap_interval
from interests.seqrec.new_items import text_encoding
from interests.seqrec.sasrec import SASRec, map_text
from interests.seqrec.train import load_checkpoint, train

K = 10
COLD = np.zeros(0, bool)  # items first seen after the cut (set in main)
MAP_RIDGE = 1.0  # "text map"'s L2 penalty, fixed before any run (text rows are unit vectors)
T0 = time.perf_counter()


def say(line: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f} s] {line}", flush=True)


def text_at(ds: Dataset, root: Path, cut: float) -> Dataset:
    """`ds` with its tags cut to those written before `cut` (normalised as the loader does)."""
    import pandas as pd

    path = root / "tags.csv"
    if not path.is_file() or "tags" not in ds.item_text:
        return ds
    tags = pd.read_csv(path, dtype={"movieId": str, "tag": str})
    tags = tags[tags["timestamp"] < cut]
    by_item: dict[str, list[str]] = {}
    for item, tag in zip(tags["movieId"], tags["tag"].fillna("").str.strip().str.lower(), strict=True):
        if tag and tag not in by_item.setdefault(item, []):
            by_item[item].append(tag)
    text = [", ".join(by_item.get(str(i), [])) for i in ds.item_ids]
    return replace(ds, item_text={**ds.item_text, "tags": text})


def pre_cut_split(train_ds: Dataset) -> LeaveOneOut:
    """Train on every interaction before the cut but each user's last, which validates (early stopping)."""
    train_seqs, users, history, target = [], [], [], []
    for u, s in enumerate(train_ds.sequences()):
        s = s.astype(np.int64) + 1
        if len(s) >= 3:
            train_seqs.append(s[:-1])
            users.append(u)
            history.append(s[:-1])
            target.append(s[-1])
        else:
            train_seqs.append(s)
    t = np.array(target, np.int64)
    return LeaveOneOut(train_ds.n_items, train_seqs, np.array(users), history, t, history, t)


def clusters_with_cold(catalog: Catalog, text: np.ndarray, cold: np.ndarray) -> tuple[np.ndarray, float]:
    """(finest-level cluster per item, cold items by nearest warm-text centroid; share agreeing with the catalog)."""
    clusters = catalog.item_clusters(catalog.finest).astype(np.int64).copy()
    n = catalog.levels[catalog.finest]
    warm = ~cold
    centroid = np.zeros((n, text.shape[1]))
    np.add.at(centroid, clusters[warm], text[warm])
    centroid /= np.maximum(np.linalg.norm(centroid, axis=1, keepdims=True), 1e-12)
    unit = text[cold] / np.maximum(np.linalg.norm(text[cold], axis=1, keepdims=True), 1e-12)
    nearest = (unit @ centroid.T).argmax(1)
    agree = float((nearest == clusters[cold]).mean())
    clusters[cold] = nearest
    return clusters, agree


def test_moments(ds: Dataset, cut: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(histories 1-based, targets 0-based, users) of every interaction at or after `cut` with a history."""
    off = ds.offsets
    histories, targets, users = [], [], []
    for u in range(ds.n_users):
        for j in range(off[u], off[u + 1]):
            if ds.timestamps[j] >= cut and j > off[u]:
                histories.append(ds.items[off[u]:j].astype(np.int64) + 1)
                targets.append(int(ds.items[j]))
                users.append(u)
    return histories, np.array(targets), np.array(users)


def ranks(scores: np.ndarray, histories: list[np.ndarray], targets: np.ndarray,
          clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank in the target's cluster, rank among all items, rank in the target's cluster among the warm items only),
    the user's earlier items left out; ties count against. The third separates what a model does to the warm items'
    order from the slots its ranked cold items take (`COLD` holds the cold items)."""
    eligible = np.ones_like(scores, dtype=bool)
    for b, h in enumerate(histories):
        eligible[b, h - 1] = False
    rows = np.arange(len(targets))
    eligible[rows, targets] = True
    above = (scores >= scores[rows, targets][:, None]) & eligible
    same = clusters[None, :] == clusters[targets][:, None]
    return (above & same).sum(1), above.sum(1), (above & same & ~COLD[None, :]).sum(1)


@torch.no_grad()
def model_ranks(model: SASRec, histories: list[np.ndarray], targets: np.ndarray, clusters: np.ndarray,
                batch: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = []
    for s in range(0, len(targets), batch):
        x = torch.from_numpy(pad_left(histories[s:s + batch], model.cfg.max_len))
        out.append(ranks(model.last_scores(x).numpy(), histories[s:s + batch], targets[s:s + batch], clusters))
    return tuple(np.concatenate([o[i] for o in out]) for i in range(3))  # type: ignore[return-value]


def popularity_ranks(counts: np.ndarray, histories: list[np.ndarray], targets: np.ndarray, clusters: np.ndarray,
                     seed: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training counts, ties broken at random (a jitter below 1 never reorders different counts)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(0, len(targets), batch):
        t = targets[s:s + batch]
        scores = counts[None, :] + rng.random((len(t), len(counts))) * 0.5
        out.append(ranks(scores, histories[s:s + batch], t, clusters))
    return tuple(np.concatenate([o[i] for o in out]) for i in range(3))  # type: ignore[return-value]


def per_moment(rank: np.ndarray) -> dict[str, np.ndarray]:
    hit = rank <= K
    return {f"HR@{K}": hit.astype(np.float64), f"NDCG@{K}": hit / np.log2(rank + 1.0)}


def summarise(values: dict[str, np.ndarray], users: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """metric -> [mean, low, high] (bootstrap by user)."""
    return {m: [float(v.mean()), *bootstrap_interval(v, users, rounds)] for m, v in values.items()}


def difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], users: np.ndarray,
               rounds: int) -> dict[str, list[float]]:
    """metric -> [mean of a - b, low, high]: paired, one draw of users for both."""
    return {m: [float(a[m].mean() - b[m].mean()), *bootstrap_difference(a[m], users, b[m], users, rounds)]
            for m in a}


def train_all(split: LeaveOneOut, cfg: TrainConfig, text: np.ndarray, dropouts: list[float], save: Path | None,
              extra: dict, reuse: bool = False) -> tuple[dict[str, SASRec], dict]:
    """Today's model, the text model, and a text model per id dropout in `dropouts`: same recipe and seed; then
    "text map", today's model with a text part mapped onto it. `reuse`: load the checkpoints `save` holds."""
    runs = [("today", replace(cfg, text="none"), None), ("text", cfg, text)]
    runs += [(f"text drop {p:g}", replace(cfg, id_dropout=p), text) for p in dropouts]
    models, info = {}, {}
    for name, c, t in runs:
        say(f"training {name}'s SASRec (text {c.text}, id dropout {c.id_dropout:g}) on the interactions before "
            "the cut ...")
        path = None if save is None else save / f"{name.replace(' ', '-')}.pt"
        if reuse and path is not None and path.is_file():
            models[name], ckpt = load_checkpoint(path)
            info[name] = {"best_epoch": ckpt["best_epoch"], "epochs_run": len(ckpt["history"]), "valid": ckpt["valid"],
                          "reused": str(path)}
            say(f"  {name}: reused {path} (best epoch {ckpt['best_epoch']}, valid NDCG@10 "
                f"{ckpt['valid']['NDCG@10']:.4f})")
            continue
        model, result = train(split, c, progress=False, item_text=t, checkpoint=path, extra=extra)
        models[name] = model
        info[name] = {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                      "seconds": round(result.seconds, 1), "valid": result.valid}
        say(f"  {name}: best epoch {result.best_epoch} of {len(result.history)}, valid NDCG@10 "
            f"{result.valid['NDCG@10']:.4f}, {result.seconds:.0f} s")
    inputs, targets = training_windows(split.train, cfg.max_len)
    warm = np.zeros(split.n_items + 1, bool)
    warm[np.union1d(inputs, targets)] = True  # as `new_model` marks them: in a training window
    models["text map"] = map_text(models["today"], torch.from_numpy(text), torch.from_numpy(warm[1:]), MAP_RIDGE)
    info["text map"] = {"ridge": MAP_RIDGE, "warm_items": int(warm.sum())}
    return models, info


def evaluate_all(models: dict[str, SASRec], counts: np.ndarray, moments: tuple, clusters: np.ndarray,
                 cold_target: np.ndarray, seed: int, rounds: int) -> dict:
    histories, targets, users = moments
    ranked = {"random": popularity_ranks(np.zeros_like(counts), histories, targets, clusters, seed + 1),
              "popularity": popularity_ranks(counts, histories, targets, clusters, seed)}
    for name, model in models.items():
        say(f"ranking {len(targets):,} test moments with {name}'s SASRec ...")
        ranked[name] = model_ranks(model, histories, targets, clusters)
    results: dict = {}
    for group, mask in (("cold", cold_target), ("warm", ~cold_target)):
        u = users[mask]
        g: dict = {"moments": int(mask.sum()), "users": len(np.unique(u)),
                   "median_rank": {name: {"cluster": float(np.median(r[0][mask])), "all": float(np.median(r[1][mask]))}
                                   for name, r in ranked.items()}}
        for slate, i in (("cluster", 0), ("all", 1), *([("warm only", 2)] if group == "warm" else [])):
            vals = {name: per_moment(r[i][mask]) for name, r in ranked.items()}
            g[slate] = {name: summarise(v, u, rounds) for name, v in vals.items()}
            for name in (n for n in models if n.startswith("text")):
                others = ["today", *(["popularity", "random"] if group == "cold" else []),
                          *(["text"] if name != "text" else [])]
                for other in others:
                    g[slate][f"{name} - {other}"] = difference(vals[name], vals[other], u, rounds)
        results[group] = g
    return results


def print_table(results: dict) -> None:
    def cell(v: list[float], signed: bool) -> str:
        return f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]" if signed else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    head = f"{'':30}" + "".join(f"{s + ' ' + m:>28}" for s in ("cluster", "all") for m in (f"HR@{K}", f"NDCG@{K}"))
    for group in ("cold", "warm"):
        g = results[group]
        print(f"\n{group} targets: {g['moments']:,} test moments of {g['users']} users")
        print(head)
        for name in g["cluster"]:
            print(f"{name:30}" + "".join(f"{cell(g[s][name][m], ' - ' in name):>28}" for s in ("cluster", "all")
                                         for m in (f"HR@{K}", f"NDCG@{K}")))
        if "warm only" in g:
            print("ranked among the warm items of the cluster only: " + "; ".join(
                f"{name} {cell(v[f'HR@{K}'], ' - ' in name)}" for name, v in g["warm only"].items()))
        print("median rank (cluster / all): " + ", ".join(f"{name} {r['cluster']:.0f} / {r['all']:.0f}"
                                                           for name, r in g["median_rank"].items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/ml-latest-small"), help="a MovieLens directory")
    p.add_argument("--catalog", type=Path, default=Path("runs/judge/catalog"),
                   help="the cluster catalog of the same items (its finest level makes the slates)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of interactions (by time) after the cut")
    p.add_argument("--epochs", type=int, default=30, help="upper bound on epochs per model")
    p.add_argument("--patience", type=int, default=4, help="epochs without a better validation NDCG@10 before stopping")
    p.add_argument("--text", default="tfidf", choices=["tfidf", "minilm"], help="the text model's encoder")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: deterministic and comparable timings)")
    p.add_argument("--seed", type=int, default=0, help="seed of both models, the popularity ties and the bootstrap")
    p.add_argument("--id-dropout", type=lambda v: [float(x) for x in v.split(",") if x], default=[],
                   help="comma-separated id dropouts (e.g. 0.5): train and report one more text model per value > 0 "
                        "(`explore seqrec train --id-dropout`); pick them a priori, not on these results")
    p.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--save", type=Path, default=None,
                   help="write the checkpoints here (today.pt, text.pt, text-drop-P.pt; exportable with `explore "
                        "seqrec export --catalog` of the same catalog)")
    p.add_argument("--reuse", action="store_true",
                   help="load the checkpoints --save holds instead of training them again (training is deterministic "
                        "by seed: the same models)")
    args = p.parse_args()

    ds = load_dataset(args.data)
    cut = held_out_start(ds, args.holdout)
    first = np.full(ds.n_items, np.inf)
    np.minimum.at(first, ds.items, ds.timestamps)
    cold = first >= cut
    global COLD
    COLD = cold
    say(f"{ds.summary()}; cut {time.strftime('%Y-%m-%d', time.gmtime(cut))}: "
        f"{int((ds.timestamps < cut).sum()):,} interactions before, {int(cold.sum()):,} items first seen after")
    cfg = TrainConfig(epochs=args.epochs, patience=args.patience, threads=args.threads, seed=args.seed,
                      text=args.text)
    text = text_encoding(text_at(ds, args.data, cut), cfg)[0]
    assert text is not None
    catalog = Catalog.load(args.catalog)
    check_same_items(catalog, ds.item_ids)
    clusters, agree = clusters_with_cold(catalog, text, cold)
    say(f"text vectors {text.shape}; catalog {catalog.version} level {catalog.finest} "
        f"({catalog.levels[catalog.finest]} clusters); cold items' text cluster = catalog's for {agree:.0%}")
    train_ds = training_period(ds, cut)
    moments = test_moments(ds, cut)
    extra = {"catalog_version": catalog.version, "dataset": ds.name, "item_ids": [str(i) for i in ds.item_ids],
             "trained_until": cut, "sample_histories": pad_left(moments[0][:64], cfg.max_len)}
    dropouts = [p for p in args.id_dropout if p > 0]
    models, info = train_all(pre_cut_split(train_ds), cfg, text, dropouts, args.save, extra, args.reuse)
    counts = np.bincount(train_ds.items, minlength=ds.n_items).astype(np.float64)
    results = evaluate_all(models, counts, moments, clusters, cold[moments[1]], args.seed, args.rounds)
    print_table(results)
    say("done")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cut": cut,
                                         "cold_items": int(cold.sum()), "cold_cluster_agreement": agree,
                                         "train": info, "results": results,
                                         "seconds": round(time.perf_counter() - T0, 1)}, indent=1))


if __name__ == "__main__":
    main()
