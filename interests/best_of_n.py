"""Best-of-n: the novelty LM proposes, the alignment model picks (the follow-up paper's serving recipe).

Wang et al. (ACL 2025 industry track) found RL fine-tuning broke the LM's output format, and that
keeping the LM as it is and re-ranking its n best candidates per context with a separate alignment
model (`interests.alignment`) kept the format by construction: every candidate is still one of the
catalog's clusters, decoded by the constrained search. Here a precomputed table row (the LM's ranked
clusters for a context, `interests.novelty_precompute`) has its first n candidates re-ordered by the
alignment model; candidates past n keep the LM's order behind them, so a row stays as deep as before
and a worker that drops a user's known clusters still finds M left. Each cluster keeps the LM's own
log-probability as its score (the score says what the LM thought; the order says what is served).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from interests.alignment import AlignmentModel


def best_of_n(row: dict, model: AlignmentModel, descriptions: Sequence[str], n: int) -> dict:
    """The row with its first `n` clusters ordered by `model` (ties keep the LM's order), the rest after,
    and `versions["alignment"]` naming the model that chose (rows published so carry it to the slates)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    clusters, scores = list(row["clusters"]), list(row["scores"])
    head = min(n, len(clusters))
    order = model.rank([descriptions[c] for c in row["context"]], [descriptions[c] for c in clusters[:head]])
    idx = order + list(range(head, len(clusters)))
    versions = {**row.get("versions", {}), "alignment": model.version, "best_of": str(n)}
    return {**row, "clusters": [clusters[i] for i in idx], "scores": [scores[i] for i in idx], "versions": versions}


def best_of_n_rows(rows: Iterable[dict], model: AlignmentModel, descriptions: Sequence[str], n: int) -> list[dict]:
    """`best_of_n` over a table."""
    return [best_of_n(r, model, descriptions, n) for r in rows]


__all__ = ["best_of_n", "best_of_n_rows"]
