"""Best-of-n: the novelty LM proposes, the alignment model picks (the follow-up paper's serving recipe).

Wang et al. (ACL 2025 industry track) found RL fine-tuning broke the LM's output format, and that
keeping the LM as it is and re-ranking its n best candidates per context with a separate alignment
model (`interests.alignment.model`) kept the format by construction: every candidate is still one of the
catalog's clusters, decoded by the constrained search. Here a precomputed table row (the LM's ranked
clusters for a context, `interests.novelty.precompute`) has its first n candidates re-ordered by the
alignment model; candidates past n keep the LM's order behind them, so a row stays as deep as before
and a worker that drops a user's known clusters still finds M left. Each cluster keeps the LM's own
log-probability as its score (the score says what the LM thought; the order says what is served).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from interests.alignment.model import AlignmentModel


def best_of_n(row: dict, model: AlignmentModel, descriptions: Sequence[str], n: int) -> dict:
    """The row with its first `n` clusters ordered by `model` (ties keep the LM's order), the rest after,
    and `versions["alignment"]` naming the model that chose (rows published so carry it to the slates)."""
    check_n(n)
    clusters, scores = list(row["clusters"]), list(row["scores"])
    head = min(n, len(clusters))
    order = model.rank([descriptions[c] for c in row["context"]], [descriptions[c] for c in clusters[:head]])
    idx = order + list(range(head, len(clusters)))
    versions = {**row.get("versions", {}), "alignment": model.version, "best_of": str(n)}
    return {**row, "clusters": [clusters[i] for i in idx], "scores": [scores[i] for i in idx], "versions": versions}


def check_n(n: int) -> None:
    """n is how many of the LM's candidates the alignment model chooses among: one at least."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")


# Held-out candidate pairs an alignment model must have been checked on before it may replace the LM's order
# (`explore novelty align` leaves a share of the contexts out of a first fit and scores both orders there). With
# 20 pairs, 0.70 against a coin's 0.5 has a one-sided binomial p of about 0.06.
MIN_HELDOUT_PAIRS = 20


class WeakAlignment(ValueError):
    """The alignment model has no held-out evidence that its order beats the LM's: re-ranking would be a guess."""


def check_evidence(model: AlignmentModel, min_pairs: int = MIN_HELDOUT_PAIRS) -> None:
    """Refuse a model that was checked on fewer than `min_pairs` held-out candidate pairs, or that ordered
    them no better than the LM's own ranks did (than a coin, when the LM's ranks were not known); 0 skips.

    Why: at 32 clusters, `explore loop ab`'s period A gave feedback on 7 contexts; a model fitted on them
    was carried by shared words to all 992 rows and made slates worse (+130 / -202 taken up). Its
    held-out check had no pair at all, which nothing looked at."""
    if min_pairs <= 0:
        return
    meta = model.meta
    pairs = int(meta.get("holdout_pairs") or 0)
    acc, lm = meta.get("holdout_pairwise_accuracy"), meta.get("holdout_lm_rank_accuracy")
    hint = ("collect more feedback (contexts with at least --min-events outcomes) and align again, or pass "
            "--min-pairs 0 to re-rank anyway")
    if pairs < min_pairs or acc is None:
        raise WeakAlignment(f"alignment model {model.version} was checked on {pairs} held-out candidate pairs, "
                            f"fewer than --min-pairs {min_pairs}: no evidence that its order beats the LM's; {hint}")
    bar, against = (lm, "the LM's own ranks") if lm is not None and lm == lm else (0.5, "a coin")
    if not acc > bar:
        raise WeakAlignment(f"alignment model {model.version} orders {acc:.3f} of {pairs} held-out candidate pairs "
                            f"as their labels, {against} {bar:.3f}: it does not beat the order it would replace; "
                            f"{hint}")


def best_of_n_rows(rows: Iterable[dict], model: AlignmentModel, descriptions: Sequence[str], n: int) -> list[dict]:
    """`best_of_n` over a table."""
    return [best_of_n(r, model, descriptions, n) for r in rows]


def alignment_catalogs(model: AlignmentModel) -> set[str]:
    """The catalog versions of the feedback the model learnt from (`explore novelty align` keeps the records'
    versions in its meta); empty when it does not say."""
    return {str(v["catalog"]) for v in model.meta.get("versions", ()) if isinstance(v, dict) and "catalog" in v}


def check_table(rows: Sequence[dict], model: AlignmentModel, catalog_version: str, n_clusters: int) -> None:
    """Refuse what would re-rank the wrong clusters: rows of another catalog (or cluster ids past its
    `n_clusters`: another level), an alignment model whose feedback named other catalogs (its words
    were learnt for other clusters), and rows already re-ranked (their first n are another model's
    pick; re-rank the LM's own table, so that candidates past n keep the LM's order)."""
    from interests.clusters.catalog import CatalogError

    for r in rows:
        if r.get("catalog_version") != catalog_version:
            raise CatalogError(f"a table row for context {r['context']} is of catalog {r.get('catalog_version')}, "
                               f"the descriptions are of catalog {catalog_version}")
        if any(not 0 <= c < n_clusters for c in (*r["context"], *r["clusters"])):
            raise CatalogError(f"a table row for context {r['context']} names clusters past the {n_clusters} of "
                               "this catalog level: pass the novelty model's --level")
        if "alignment" in r.get("versions", {}):
            raise ValueError(f"the row for context {r['context']} is already re-ranked (alignment "
                             f"{r['versions']['alignment']}): re-rank the table `explore novelty precompute` wrote")
    catalogs = alignment_catalogs(model)
    if catalogs and catalog_version not in catalogs:
        raise CatalogError(f"the alignment model learnt from feedback of catalog(s) {sorted(catalogs)}, the table "
                           f"is of catalog {catalog_version}: train it on this catalog's feedback")


def rerank_table(rows: Sequence[dict], model: AlignmentModel, descriptions: Sequence[str], n: int,
                 catalog_version: str, min_pairs: int = MIN_HELDOUT_PAIRS) -> tuple[list[dict], int]:
    """The table re-ranked (`check_table`, `check_evidence`, then `best_of_n` per row) and how many rows
    changed order: cheap (no LM), so a new alignment model reaches running workers by republishing the result."""
    check_n(n)
    check_table(rows, model, catalog_version, len(descriptions))
    check_evidence(model, min_pairs)
    out = best_of_n_rows(rows, model, descriptions, n)
    return out, sum(a["clusters"] != b["clusters"] for a, b in zip(rows, out, strict=True))


__all__ = ["MIN_HELDOUT_PAIRS", "WeakAlignment", "alignment_catalogs", "best_of_n", "best_of_n_rows", "check_evidence",
           "check_table", "rerank_table"]
