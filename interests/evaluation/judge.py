"""The judge: does a language model name a user's next new interest better than simpler rules?

At every test moment (a user about to touch a cluster for the first time, after the novelty
split's test cut) each method proposes M clusters the user does not know; the moment is a hit
when the cluster the user went to is among them. The judge asks this for three kinds of target
at the very same moments (`target_masks`):

- *any*: the next new cluster, whatever came of it;
- *liked*: the user's first interaction in it is rated at or above that user's mean rating
  (the dataset's `weights`; "not available" when every weight is the same, i.e. no ratings);
- *sticky*: the user comes back to it at least twice within their next 10 interactions.

Methods are scorers: a score per (moment, cluster); the judge removes the clusters the user
knows and takes the top M (`top_m`), so no method can propose a known cluster. The baselines are
the ones a practitioner tries first: random, popular, transition counts (with back-off),
cluster co-occurrence (item-kNN lifted to clusters), text similarity of the descriptions, and
the item policy's own next-item probabilities summed per cluster ("let SASRec explore").

A language model is scored exactly: the log-probability of every description after each
distinct context (`interests.novelty.prior.description_scores`, a beam as wide as the catalog),
computed once per context, then filtered per moment. Its cost is flat in the number of moments,
and it equals a constrained beam search with the user's exclusions.

Statistics (`interests.evaluation.stats`): a bootstrap interval by user for every hit rate, and an exact
McNemar test of each LM variant against the best non-LM method of the same table. That best
method is picked on the test moments themselves, which favours the baseline: a conservative
comparison for the LM.

Pure numpy: models come in as callables or score matrices, so this module imports no runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from interests.data.datasets import Dataset
from interests.evaluation.proposals import context_frequency_buckets, diversity
from interests.evaluation.stats import best_method, bootstrap_difference, bootstrap_interval, paired
from interests.novelty.examples import NoveltyExamples, TimeSplit
from interests.novelty.item_experts import ItemExperts
from interests.novelty.mixture import Mixture, expert_scores
from interests.novelty.prior import rows_of_contexts
from interests.novelty.rules import (
    NextItemProbs,
    baseline_scores,
    context_similarity_scores,
    cooccurrence_similarity,
    histories_at,
    seqrec_cluster_scores,
    text_similarity,
    top_m,
)

TARGET_SETS = ("any", "liked", "sticky")
BUCKETS = ("unseen", "rare", "common")
STICKY_HORIZON, STICKY_RETURNS = 10, 2
MIN_TRAIN_PER_CLUSTER = 20  # fewer training transitions per cluster: a count table cannot be estimated
MIN_TEST_PER_CLUSTER = 2  # fewer test moments per cluster: most clusters are never a target

COOCCURRENCE, TEXT, SEQREC = "cluster co-occurrence", "text similarity (MiniLM)", "SASRec explores"
SEQREC_SEEDS = "SASRec explores ({n} seeds)"  # the exact sums of several seeds' mean next-item probabilities
MIXTURE, MIXTURE_NO_LM, HEAD = "mixture (served)", "mixture without the LM", "sequence expert (cluster head)"
# The item-level experts of the mixture, each judged alone too: {row name: expert}.
ITEM_EXPERT_NAMES = {"item transitions": "transitions", "EASE explores": "ease"}
SEQUENCE_EXACT = "sequence expert (exact sums)"  # the head's SASRec summed per cluster: what the head approximates
# The paired comparisons every table with a mixture carries: (method, against).
MIXTURE_PAIRS = ((MIXTURE, SEQREC), (MIXTURE, MIXTURE_NO_LM), (MIXTURE_NO_LM, SEQREC), (HEAD, SEQREC),
                 (HEAD, SEQUENCE_EXACT))
def target_masks(ds: Dataset, item_cluster: np.ndarray, test: NoveltyExamples) -> dict[str, np.ndarray | None]:
    """Which test moments count for each target set (None: the data cannot say, e.g. no ratings)."""
    return target_flags(ds, item_cluster, test.positions, test.users, test.targets)


def target_flags(ds: Dataset, item_cluster: np.ndarray, rows: np.ndarray, users: np.ndarray,
                 targets: np.ndarray) -> dict[str, np.ndarray | None]:
    """any / liked / sticky for new-cluster interactions at dataset rows `rows` (-1: no target, never counts).

    liked: the interaction's weight (rating) is at or above the user's mean weight over all their
    interactions; None when every weight is the same (the data has no ratings). sticky: at least
    STICKY_RETURNS of the user's next STICKY_HORIZON interactions are in the target cluster.
    """
    rows, users, targets = np.asarray(rows), np.asarray(users), np.asarray(targets)
    real = rows >= 0
    liked = None
    if np.unique(ds.weights).size > 1:
        sums = np.bincount(ds.users, weights=ds.weights.astype(np.float64), minlength=ds.n_users)
        means = sums / np.maximum(np.bincount(ds.users, minlength=ds.n_users), 1)
        liked = real & (ds.weights[np.where(real, rows, 0)] >= means[users] - 1e-9)
    off = ds.offsets
    sticky = np.zeros(len(rows), dtype=bool)
    for i in np.flatnonzero(real):
        nxt = ds.items[rows[i] + 1:min(rows[i] + 1 + STICKY_HORIZON, off[users[i] + 1])]
        sticky[i] = int((item_cluster[nxt] == targets[i]).sum()) >= STICKY_RETURNS
    return {"any": real, "liked": liked, "sticky": sticky}


@dataclass
class MethodResult:
    """One method at one level: its proposals per moment and how they did."""

    proposals: list[list[int]]
    hits: np.ndarray  # int8 [moments]: 1 hit, 0 miss
    is_lm: bool = False
    rows: dict[str, dict] = field(default_factory=dict)  # per target set


@dataclass
class LevelResult:
    level: int
    n_clusters: int
    moments: int
    counts: dict[str, int | None]  # moments per target set (None: not available)
    buckets: dict[str, int]
    train_transitions: int
    warnings: list[str]
    methods: dict[str, MethodResult]
    best: dict[str, str | None]  # best non-LM method per target set
    seconds: dict[str, float]
    pairs: dict[str, list[dict]] = field(default_factory=dict)  # per target set: `compare` of each pair asked
    target_entropy: dict[str, float] = field(default_factory=dict)  # bits, of the masked targets per target set


def judge_level(level: int, n_clusters: int, split: TimeSplit, masks: dict[str, np.ndarray | None],
                scores: dict[str, np.ndarray], lm_names: set[str], m: int, all_targets: np.ndarray,
                seed: int = 0, pairs: Sequence[tuple[str, str]] = ()) -> LevelResult:
    """Proposals, hits, intervals and paired tests of every method at one level.

    `scores[name]` is [test moments, n_clusters]; `lm_names` says which methods are language models
    (they are compared with the best of the others); `pairs` (method, against) are compared too,
    where both were scored (`compare`).
    """
    test = split.test
    excludes = [frozenset(k) for k in test.known]
    buckets = context_frequency_buckets(split.train, test.contexts)
    methods: dict[str, MethodResult] = {}
    for name, s in scores.items():
        props = top_m(s, excludes, m)
        hits = np.array([int(t) in p for p, t in zip(props, test.targets, strict=True)], dtype=np.int8)
        methods[name] = MethodResult(props, hits, name in lm_names)
    counts = {t: (None if mask is None else int(mask.sum())) for t, mask in masks.items()}
    best: dict[str, str | None] = {}
    for target, mask in masks.items():
        if mask is None:
            best[target] = None
            continue
        rates = {name: _rate(r.hits, mask) for name, r in methods.items()}
        best[target] = best_method(rates, {n for n, r in methods.items() if not r.is_lm})
        for r in methods.values():
            r.rows[target] = _row(r, mask, test, buckets, n_clusters, all_targets, seed)
            if r.is_lm and best[target]:
                r.rows[target]["vs_best"] = paired(np.where(mask, r.hits, -1),
                                                   np.where(mask, methods[best[target]].hits, -1))
    train_per_cluster = len(split.train) / n_clusters
    warnings = []
    if train_per_cluster < MIN_TRAIN_PER_CLUSTER:
        warnings.append(f"only {train_per_cluster:.1f} training transitions per cluster (< {MIN_TRAIN_PER_CLUSTER}): "
                        "transition counts and the LM see most contexts a handful of times at most")
    if len(test) / n_clusters < MIN_TEST_PER_CLUSTER:
        warnings.append(f"only {len(test) / n_clusters:.1f} test moments per cluster (< {MIN_TEST_PER_CLUSTER}): "
                        "hit rates rest on few targets per cluster")
    bucket_counts = {b: int((buckets == i).sum()) for i, b in enumerate(BUCKETS)}
    compared = {t: [compare(methods, a, b, mask, test.users, buckets, seed) for a, b in pairs
                    if a in methods and b in methods] for t, mask in masks.items() if mask is not None}
    entropy = {t: diversity([[int(c)] for c in test.targets[mask]], n_clusters, test.targets[mask])["entropy_bits"]
               for t, mask in masks.items() if mask is not None}
    return LevelResult(level, n_clusters, len(test), counts, bucket_counts, len(split.train), warnings, methods, best,
                       {}, compared, entropy)


def compare(methods: dict[str, MethodResult], name: str, against: str, mask: np.ndarray, users: np.ndarray,
            buckets: np.ndarray, seed: int = 0) -> dict:
    """`name` minus `against` on the masked moments: the difference of hit rates with its 95 % interval
    (bootstrap by user, both on the same draws), the exact McNemar test, and the difference per context
    bucket. What "the LM's contribution" is when `against` is the mixture without it."""
    a, b = methods[name].hits, methods[against].hits
    lo, hi = bootstrap_difference(a[mask], users[mask], b[mask], users[mask], seed=seed)
    return {"method": name, "against": against, "diff": _rate(a, mask) - _rate(b, mask), "ci95": [lo, hi],
            **paired(np.where(mask, a, -1), np.where(mask, b, -1)),
            "by_context": {bk: _rate(a, mask & (buckets == i)) - _rate(b, mask & (buckets == i))
                           for i, bk in enumerate(BUCKETS)}}


def pair_sentences(result: LevelResult, target: str) -> list[str]:
    """One sentence per paired comparison: who wins, by how much (interval), and the McNemar p."""
    out = []
    for c in result.pairs.get(target, []):
        verdict = ("wins against" if c["diff"] > 0 else "loses to") if c["p"] < 0.05 else "is level with"
        out.append(f"{c['method']} {verdict} {c['against']}: {c['diff']:+.3f} (95 % CI {c['ci95'][0]:+.3f} to "
                   f"{c['ci95'][1]:+.3f}; +{c['won']} / -{c['lost']} moments, p = {c['p']:.3g})")
    return out


def _rate(hits: np.ndarray, mask: np.ndarray) -> float:
    return float(hits[mask].mean()) if mask.any() else float("nan")


def _row(r: MethodResult, mask: np.ndarray, test: NoveltyExamples, buckets: np.ndarray, n_clusters: int,
         all_targets: np.ndarray, seed: int) -> dict:
    """Hit rate with its interval, by context frequency, and mode coverage, over the masked moments."""
    hits = r.hits[mask]
    lo, hi = bootstrap_interval(hits, test.users[mask], seed=seed)
    props = [p for p, keep in zip(r.proposals, mask, strict=True) if keep]
    offered: dict[int, set[int]] = {}
    for u, p in zip(test.users[mask].tolist(), props, strict=True):
        offered.setdefault(u, set()).update(p)
    return {"hit": _rate(r.hits, mask), "ci95": [lo, hi],
            "by_context": {b: _rate(r.hits, mask & (buckets == i)) for i, b in enumerate(BUCKETS)},
            **diversity(props, n_clusters, all_targets),
            "offered_per_user": float(np.mean([len(s) for s in offered.values()])) if offered else float("nan")}


def summary_sentences(result: LevelResult, target: str) -> list[str]:
    """Where each LM wins or loses against the best other method, by how much, and on which contexts."""
    best = result.best.get(target)
    if best is None:
        return []
    b = result.methods[best].rows[target]
    out = []
    for name, r in result.methods.items():
        if not r.is_lm or target not in r.rows:
            continue
        row, vs = r.rows[target], r.rows[target]["vs_best"]
        diff = row["hit"] - b["hit"]
        verdict = ("wins" if diff > 0 else "loses") if vs["p"] < 0.05 else "is level (not significant)"
        where = [f"{k} {row['by_context'][k] - b['by_context'][k]:+.3f}" for k in BUCKETS
                 if row["by_context"][k] == row["by_context"][k] and b["by_context"][k] == b["by_context"][k]]
        out.append(f"{name} {verdict} against the best other method, {best}: {row['hit']:.3f} vs {b['hit']:.3f} "
                   f"({diff:+.3f}; +{vs['won']} / -{vs['lost']} moments, p = {vs['p']:.3g}); by context "
                   f"(unseen / rare / common): {', '.join(where)}")
    return out


def sample_contexts(split: TimeSplit, max_contexts: int, seed: int = 0) -> TimeSplit:
    """The split with only the test moments of a seeded sample of `max_contexts` distinct contexts (0: all)."""
    unique, inverse = rows_of_contexts(split.test.contexts)
    if max_contexts <= 0 or len(unique) <= max_contexts:
        return split
    chosen = np.random.default_rng(seed).choice(len(unique), size=max_contexts, replace=False)
    return replace(split, test=split.test.subset(np.flatnonzero(np.isin(inverse, chosen))))


def variant_name(meta: dict) -> str:
    """How the judge's tables name a novelty LM: its `variant` if it has one, else how it was made
    (from scratch; or the base model's name and zero-shot / LoRA / fine-tuned, with the training
    sample when it was capped), read from the `lm_config` its directory records."""
    if meta.get("variant"):
        return str(meta["variant"])
    cfg = meta.get("lm_config") or {}
    base = cfg.get("base_model") or meta.get("base_model")
    if not base:
        return "from scratch"
    how = "zero-shot" if cfg.get("zero_shot") else "LoRA" if cfg.get("lora") else "fine-tuned"
    cap = cfg.get("max_train_examples") if how != "zero-shot" else 0
    return f"{Path(str(base)).name} {how}" + (f" ({cap:,} examples)" if cap else "")


@dataclass
class LMEntry:
    """A language model to judge at its level: its display name and the loaded model."""

    name: str
    lm: object  # NoveltyLM or anything with .meta, .prior and what description_scores needs


@dataclass
class MixtureEntry:
    """The served mixture of experts at one level (`interests.novelty.mixture`), as the judge scores it.

    `sequence` gives the sequence expert's log-scores [B, C] for histories (0-based items): the
    cluster head on the SASRec that serves; `lm` names the LMEntry whose table is the LM expert.
    """

    mixture: Mixture
    without_lm: Mixture  # fitted again without the LM expert (not the same weights with the LM's zeroed)
    sequence: Callable[[list[np.ndarray]], np.ndarray]
    lm: str | None = None
    until: int | None = None  # the end of the serving SASRec's training data (checked against the test cut)
    exact: Callable[[list[np.ndarray]], np.ndarray] | None = None  # that SASRec's exact cluster sums (log)
    items: ItemExperts | None = None  # the item experts it was served with (fitted before the test cut)


def judge(ds: Dataset, item_clusters: dict[int, np.ndarray], descriptions: dict[int, list[str]], k: int, m: int,
          lms: Sequence[LMEntry] = (), next_item_probs: NextItemProbs | None = None,
          seqrec_until: int | None = None, embed: Callable[[list[str]], np.ndarray] | None = None,
          seed: int = 0, log: Callable[[str], None] = print, max_contexts: int = 0,
          mixtures: dict[int, MixtureEntry] | None = None,
          more_seeds: Sequence[NextItemProbs] = ()) -> list[LevelResult]:
    """Every method at every level of `item_clusters` ({level: item -> cluster}), with times per phase.

    `max_contexts` > 0 keeps only the test moments of a seeded sample of that many distinct contexts,
    for every method alike: a language model's cost is per distinct context (a pretrained one costs
    seconds each on a CPU), and the paired comparison stays on the same moments.

    `next_item_probs` (the item policy) is used only when `seqrec_until` (the end of its training
    data) is at or before the level's test cut: a model that saw the test period is refused.
    `more_seeds`: the same recipe's other seeds (same cut): "SASRec explores (N seeds)" averages
    their next-item probabilities with the first's, a stronger baseline than any one seed.
    `embed` turns descriptions into vectors for the text-similarity baseline. `mixtures` ({level:
    entry}) adds the served mixture, the mixture without the LM and the sequence expert alone, each
    compared with SASRec explores (and the mixture with the one without its LM).
    """
    from interests.novelty.examples import novel_transitions, split_by_time
    from interests.novelty.prior import description_scores, rule_scores

    results = []
    for level, item_cluster in item_clusters.items():
        times: dict[str, float] = {}
        t = time.perf_counter()
        n = int(item_cluster.max()) + 1
        split = sample_contexts(split_by_time(novel_transitions(ds, item_cluster, k)), max_contexts, seed)
        test = split.test
        if not len(test):
            raise ValueError(f"level {level}: no test moments (too few novel transitions with K = {k})")
        masks = target_masks(ds, item_cluster, test)
        scores: dict[str, np.ndarray] = {
            **baseline_scores(split.train, n, test.contexts, seed),
            COOCCURRENCE: context_similarity_scores(
                cooccurrence_similarity(ds, item_cluster, n, split.cut_valid), test.contexts)}
        times["baselines"] = time.perf_counter() - t
        if embed is not None:
            t = time.perf_counter()
            scores[TEXT] = context_similarity_scores(text_similarity(embed(descriptions[level])), test.contexts)
            times["text"] = time.perf_counter() - t
        if next_item_probs is not None:
            if seqrec_until is None or seqrec_until > split.cut_test:
                raise ValueError(f"level {level}: the item policy was trained on data up to {seqrec_until}, after "
                                 f"the test cut {split.cut_test}: train it with `explore seqrec train "
                                 "--until-novelty-test`")
            t = time.perf_counter()
            histories = histories_at(ds, test)
            scores[SEQREC] = seqrec_cluster_scores(next_item_probs, histories, item_cluster, n)
            if more_seeds:
                total = scores[SEQREC] + sum(seqrec_cluster_scores(p, histories, item_cluster, n) for p in more_seeds)
                scores[SEQREC_SEEDS.format(n=1 + len(more_seeds))] = total / (1 + len(more_seeds))
            times["seqrec"] = time.perf_counter() - t
        lm_names, tables = set(), {}
        for entry in lms:
            if entry.lm.meta.get("level") != level:  # type: ignore[attr-defined]
                continue
            t = time.perf_counter()
            unique, inverse = rows_of_contexts(test.contexts)
            rule = "mean" if getattr(entry.lm, "length_norm", False) else "sum"  # the model's own score rule
            table = rule_scores(description_scores(entry.lm, unique), entry.lm, rule)[inverse]
            scores[entry.name] = tables[entry.name] = table
            lm_names.add(entry.name)
            prior = entry.lm.prior  # type: ignore[attr-defined]
            if prior is not None:
                alpha = entry.lm.meta["prior"]["alpha"]  # type: ignore[attr-defined]
                name = f"{entry.name} + prior a={alpha:g}"
                scores[name] = table + prior[None, :]
                lm_names.add(name)
            times[entry.name] = time.perf_counter() - t
            log(f"  level {level}: {entry.name} scored {len(unique):,} distinct contexts x {n} clusters "
                f"in {times[entry.name]:.1f} s")
        if mixtures and level in mixtures:
            t = time.perf_counter()
            mix = mixtures[level]
            if mix.until is None or mix.until > split.cut_test:
                raise ValueError(f"level {level}: the mixture's SASRec was trained on data up to {mix.until}, after "
                                 f"the test cut {split.cut_test}: train it with --until-novelty-test")
            if mix.lm is not None and mix.lm not in tables:
                raise ValueError(f"level {level}: the mixture's LM {mix.lm!r} was not given to the judge (--model)")
            if mix.items is not None and mix.items.until > split.cut_test:
                raise ValueError(f"level {level}: the mixture's item experts were fitted on data up to "
                                 f"{mix.items.until}, after the test cut {split.cut_test}")
            histories = histories_at(ds, test)
            experts = expert_scores(split.train, n, scores[COOCCURRENCE], mix.sequence(histories),
                                    tables.get(mix.lm) if mix.lm else None, mix.items, histories)
            scores[HEAD] = experts["sequence"]
            for name, expert in ITEM_EXPERT_NAMES.items():
                if expert in experts:
                    scores[name] = experts[expert]
            if mix.exact is not None:
                scores[SEQUENCE_EXACT] = mix.exact(histories)
            scores[MIXTURE_NO_LM] = mix.without_lm.score(experts)
            scores[MIXTURE] = mix.mixture.score(experts)
            lm_names.add(MIXTURE)
            times["mixture"] = time.perf_counter() - t
        t = time.perf_counter()
        pairs = list(MIXTURE_PAIRS)
        if more_seeds:
            pairs.append((MIXTURE, SEQREC_SEEDS.format(n=1 + len(more_seeds))))
        result = judge_level(level, n, split, masks, scores, lm_names, m, test.targets, seed, pairs)
        times["statistics"] = time.perf_counter() - t
        result.seconds = times
        results.append(result)
    return results
