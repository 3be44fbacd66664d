"""Cross-critic scoring of novelty generators, and the modes of the catalog they reach.

After Generative Adversarial Parallelization (Im et al., 2016): a generator can score well by
fitting the critic it was trained with, so each generator is judged by critics it was *not*
trained with too. Here a generator is a novelty table (the LM's ranked clusters per context), raw
or re-ranked best-of-n by an alignment model (`interests.alignment.best_of_n`), and a critic is an
alignment model trained on feedback from one table variant (`interests.alignment.model`). The matrix
has one cell per (generator, critic): the mean critic score of the generator's top M per context.

Raw scores of two critics are not on one scale (each is a ridge fit with its own bias), so each
cell also carries its **lift**: the score minus what a random choice of M of the context's
candidates scores under the same critic, averaged over the same contexts. 0 is chance under that
critic, whatever its scale; that is what the cross-critic summary averages. A generator's **own**
critic is the one that chose its order (the diagonal of the matrix: where a generator can win by
fitting); the summary sets its lift there beside its mean lift under every other critic.

Coverage asks which "modes" of the catalog a generator reaches: the distinct clusters in its
top M over the contexts, and the entropy of how often each is picked, with 2**entropy as the
effective number of clusters it spreads over. Pure: no models are loaded here (a critic is a
scoring function).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

Context = tuple[int, ...]
Critic = Callable[[Context, int], float]  # (context, candidate cluster) -> score; higher: more likely taken up
Picks = Mapping[Context, Sequence[int]]  # a generator's top M per context


def top_m(rows: Iterable[dict], m: int) -> dict[Context, list[int]]:
    """Each table row's first `m` clusters (empty slots, -1, skipped): what a user who knows only the
    context's clusters is shown (a row never holds its own context's clusters)."""
    return {tuple(int(c) for c in r["context"]): [int(c) for c in r["clusters"] if c >= 0][:m] for r in rows}


def critic_table(critic: Critic, contexts: Iterable[Context], n_clusters: int) -> dict[Context, dict[int, float]]:
    """The critic's score of every candidate of every context (the clusters the context leaves), once:
    every generator is then scored from it, and its random-pick baseline is its mean."""
    return {ctx: {c: float(critic(ctx, c)) for c in range(n_clusters) if c not in ctx} for ctx in contexts}


@dataclass(frozen=True)
class Cell:
    """One generator under one critic: mean score of its top M, and that minus a random pick's."""

    score: float
    lift: float
    contexts: int


def cell(picks: Picks, table: Mapping[Context, Mapping[int, float]]) -> Cell:
    """Mean over the table's contexts (those the generator answers) of the mean critic score of its
    picks, and the lift over the mean of all the context's candidates (a random pick's expectation)."""
    scores, chance = [], []
    for ctx, cands in table.items():
        chosen = [c for c in picks.get(ctx, ()) if c in cands]
        if chosen:
            scores.append(sum(cands[c] for c in chosen) / len(chosen))
            chance.append(sum(cands.values()) / len(cands))
    if not scores:
        return Cell(math.nan, math.nan, 0)
    mean, base = sum(scores) / len(scores), sum(chance) / len(chance)
    return Cell(mean, mean - base, len(scores))


@dataclass(frozen=True)
class CriticMatrix:
    """Rows: generators; columns: critics; `own[g]`: the critic that chose g's order, if any (its diagonal)."""

    generators: list[str]
    critics: list[str]
    cells: dict[tuple[str, str], Cell]
    own: dict[str, str | None]

    def cross(self, generator: str) -> tuple[float, float]:
        """(lift under its own critic, mean lift under every other critic): a generator that fits its own
        critic wins the first and not the second. NaN where it has no own critic or no other."""
        own = self.own.get(generator)
        others = [self.cells[(generator, c)].lift for c in self.critics if c != own]
        mine = self.cells[(generator, own)].lift if own else math.nan
        return mine, (sum(others) / len(others) if others else math.nan)

    def to_json(self) -> dict:
        """The matrix as plain data (critics.json)."""
        return {"generators": self.generators, "critics": self.critics, "own": self.own,
                "cells": {g: {c: vars(self.cells[(g, c)]) for c in self.critics} for g in self.generators},
                "cross": {g: dict(zip(("own_lift", "other_lift"), self.cross(g), strict=True))
                          for g in self.generators}}


def critic_matrix(generators: Mapping[str, Picks], critics: Mapping[str, Mapping[Context, Mapping[int, float]]],
                  own: Mapping[str, str | None] | None = None) -> CriticMatrix:
    """Every generator's `cell` under every critic (critics given as `critic_table`s over the same contexts)."""
    own = dict(own or {})
    for g, c in own.items():
        if c is not None and c not in critics:
            raise ValueError(f"generator {g!r}: its own critic {c!r} is not among the critics")
    cells = {(g, c): cell(picks, table) for g, picks in generators.items() for c, table in critics.items()}
    return CriticMatrix(list(generators), list(critics), cells, {g: own.get(g) for g in generators})


def entropy_bits(counts: Iterable[float]) -> float:
    """Shannon entropy (bits) of a distribution given by non-negative counts."""
    values = [float(v) for v in counts if v > 0]
    total = sum(values)
    return -sum(v / total * math.log2(v / total) for v in values) if total else 0.0


def coverage(picks: Picks, n_clusters: int) -> dict[str, float]:
    """Which modes a generator reaches over its contexts: distinct clusters in its top M (and their share
    of the catalog), the entropy of how often each is picked, and 2**entropy, the effective number of
    clusters it spreads its picks over (n_clusters when every cluster is picked equally often)."""
    counts = Counter(c for chosen in picks.values() for c in chosen)
    h = entropy_bits(counts.values())
    return {"reached": float(len(counts)), "reached_share": len(counts) / n_clusters, "entropy_bits": h,
            "effective_clusters": 2 ** h, "max_entropy_bits": math.log2(n_clusters)}


__all__ = ["Cell", "Context", "Critic", "CriticMatrix", "Picks", "cell", "coverage", "critic_matrix", "critic_table",
           "entropy_bits", "top_m"]
