"""A popularity prior for decoding: score(c | ctx) = log P_LM(desc_c | ctx) + alpha * log P_pop(c).

In MovieLens the next novel cluster is mostly a popular one, and the LM (trained on capped,
diversified data, and noisy per context) ranks the popular clusters lower than popularity does. The
prior puts that signal back at decoding time, per cluster, added where a description ends
(interests/runtime/constrained.py keeps the beam's pruning exact under it). P_pop is the add-`smoothing`
frequency of novel-transition targets in the training split (uncapped: the same counts as the
popular baseline). alpha is chosen on the validation split only: every alpha is scored exactly
from one table of LM log-probabilities of every description after every validation context (the
search with a beam as wide as the catalog), so the curve costs one decoding pass whatever the
number of alphas.

A model may also leave its score rule to validation (`score_rules` ["sum", "mean"] in its meta: a
pretrained model's zero-shot scores favour short descriptions when summed): the mean per token is
the same table divided by each description's token count, so both rules cost the one pass too.
A base model's pass is costly on a CPU (~1-2 s per distinct context for SmolLM2-135M), so
`max_moments` can take a seeded sample of the validation moments; the curve says how many.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from interests.novelty.examples import NoveltyExamples
from interests.novelty.rules import hit_rate, popular_scores, popularity_log_prior, top_m
from interests.runtime.constrained import DescriptionTrie, beam_search_cached

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 50.0, 100.0, 200.0)


def description_scores(lm, contexts: np.ndarray, batch: int = 64) -> np.ndarray:  # type: ignore[no-untyped-def]
    """[n_contexts, n_clusters]: log P_LM(description | context) for every description, exactly
    (the cached search with a beam as wide as the catalog; the context's own clusters get -inf).
    Always the sum over tokens, whatever the model's rule: `rule_scores` derives the mean.
    A model that can teacher-force every description (`NoveltyLM.description_table`) does; the
    search remains for anything else that only offers the `CachedLM` calls."""
    if hasattr(lm, "description_table"):
        return lm.description_table(np.asarray(contexts))
    n = len(lm.sequences)
    trie = DescriptionTrie(lm.sequences)
    batch = lm.contexts_per_batch(n, batch)  # every description is a hypothesis: a base model's cache is big
    out = np.full((len(contexts), n), -np.inf)
    for start in range(0, len(contexts), batch):
        chunk = contexts[start:start + batch]
        results = beam_search_cached(lm, trie, [lm.prompt_ids(c) for c in chunk], [set(c.tolist()) for c in chunk],
                                     n, n, length_norm=False)
        for row, r in enumerate(results):
            for c, s in r:
                out[start + row, c] = s
    return out


def rows_of_contexts(contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct contexts, index of each moment's context among them)."""
    unique, inverse = np.unique(contexts, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)


def moment_scores(lm, contexts: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """[moments, clusters]: `description_scores` at each moment's context, computed once per distinct context
    (the LM expert of the mixture at those moments)."""
    unique, inverse = rows_of_contexts(contexts)
    return description_scores(lm, unique)[inverse]


def rule_scores(table: np.ndarray, lm, rule: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """`description_scores` under a score rule: "sum" as is, "mean" per token (the search's `length_norm`)."""
    if rule == "sum":
        return table
    if rule == "mean":
        return table / np.asarray([len(s) for s in lm.sequences], dtype=np.float64)[None, :]
    raise ValueError(f"unknown score rule {rule!r} (sum or mean)")


def top_m_with_prior(scores: np.ndarray, prior: np.ndarray, excludes: Sequence[set[int] | frozenset[int]],
                     m: int) -> list[list[int]]:
    """Top-M clusters per row of `scores` + `prior`, excluded ones removed (ties: lower id first)."""
    total = scores + prior[None, :]
    out = []
    for row, ex in zip(total, excludes, strict=True):
        order = np.argsort(-row, kind="stable")
        out.append([int(c) for c in order if c not in ex and np.isfinite(row[c])][:m])
    return out


def choose_alpha(lm, valid: NoveltyExamples, log_prior: np.ndarray, m: int,  # type: ignore[no-untyped-def]
                 alphas: Sequence[float] = DEFAULT_ALPHAS,
                 rules: Sequence[str] = ("sum",)) -> tuple[str, float, dict[str, dict[float, float]]]:
    """(best rule, best alpha, {rule: {alpha: validation hit rate@M}}); ties go to the first rule and
    the smaller alpha (closer to the LM)."""
    if not len(valid):
        raise ValueError("choosing alpha needs validation examples")
    contexts, inverse = np.unique(valid.contexts, axis=0, return_inverse=True)
    table = description_scores(lm, contexts)[np.ravel(inverse)]
    excludes = [set(k) for k in valid.known]
    curves: dict[str, dict[float, float]] = {}
    for rule in rules:
        scores = rule_scores(table, lm, rule)
        curves[rule] = {}
        for alpha in sorted(set(float(a) for a in alphas)):
            props = top_m_with_prior(scores, alpha * log_prior, excludes, m)
            curves[rule][alpha] = float(np.mean([int(t) in p for p, t in zip(props, valid.targets, strict=True)]))
    rule, alpha = max(((r, a) for r in rules for a in curves[r]),
                      key=lambda ra: (curves[ra[0]][ra[1]], -list(rules).index(ra[0]), -ra[1]))
    return rule, alpha, curves


def choose_prior(lm, split, n_clusters: int, m: int, alphas: Sequence[float],  # type: ignore[no-untyped-def]
                 log: Callable[[str], None] = print, max_moments: int = 0, seed: int = 0) -> float:
    """alpha (and the score rule, when the model leaves it open: meta["score_rules"]) by validation
    hit rate@M (never the test split), stored with the prior in `lm.meta`; reports the curve.
    `max_moments` > 0 scores a seeded sample of that many validation moments (a base model's cost)."""

    t0 = time.perf_counter()
    valid = split.valid
    if max_moments and len(valid) > max_moments:
        valid = valid.subset(np.sort(np.random.default_rng(seed).permutation(len(valid))[:max_moments]))
    rules = list(lm.meta.get("score_rules") or [lm.meta.get("score", "sum")])
    log_p = popularity_log_prior(split.train, n_clusters)
    rule, best, curves = choose_alpha(lm, valid, log_p, m, list(alphas), rules)
    sample = f" sampled of {len(split.valid):,}" if len(valid) < len(split.valid) else ""
    log(f"popularity prior: score = log P_LM(desc | ctx) + alpha * log P_pop(cluster); validation hit@{m} "
        f"({len(valid):,} moments{sample}, {time.perf_counter() - t0:.0f} s):")
    for r, curve in curves.items():
        if len(curves) > 1:
            log(f"  score rule {r!r}" + (" (log-prob per token)" if r == "mean" else " (log-prob summed)"))
        log("  alpha  " + "".join(f"{a:>7g}" for a in curve))
        log("  hit    " + "".join(f"{h:>7.3f}" for h in curve.values()))
    curve = curves[rule]
    pop = hit_rate(top_m(popular_scores(split.train, n_clusters, len(valid)), valid.known, m), valid.targets)
    chosen = f"score {rule!r}, alpha = {best:g}" if len(curves) > 1 else f"alpha = {best:g}"
    log(f"  chosen {chosen} (validation hit@{m} {curve[best]:.3f}, without the prior "
        f"{curve.get(0.0, float('nan')):.3f}; popular baseline on validation {pop:.3f})")
    lm.meta["score"] = rule
    lm.meta["prior"] = {"alpha": best, "log_p": log_p.tolist(), "smoothing": 1.0, "m": m,
                        "source": "novel targets of the training split (uncapped)",
                        "validation_curve": {f"{a:g}": h for a, h in curve.items()},
                        "validation_moments": len(valid),
                        **({"validation_curves": {r: {f"{a:g}": h for a, h in c.items()} for r, c in curves.items()}}
                           if len(curves) > 1 else {})}
    return best
