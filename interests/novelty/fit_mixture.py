"""Fitting the mixture of experts at one catalog level, without leakage (`explore novelty mix`).

Two SASRecs take part, both trained with the same recipe:
- the *fitting* one, trained on interactions before the novelty validation period
  (`explore seqrec train --until-novelty-valid`): its scores at the validation moments are what a
  served model's scores at unseen moments look like, so the weights fitted on them transfer. A SASRec
  trained up to the test cut has trained on those very moments (issue 26 measured 0.67 hit@5 there
  against 0.54 on test at 32 clusters) and would teach the mixture to over-trust it;
- the *serving* one (up to the test cut for the judge, everything for production): the fitted
  weights are applied to its scores, and its cluster head is trained here and saved beside them.

Each cluster head trains on its own SASRec's period only (`interests.novelty.cluster_head`), and the item
experts (`interests.novelty.item_experts`) are fitted twice the same way: on the fitting SASRec's period
for the weights, on the serving one's to serve. The LM's table
at the validation contexts is its usual one: the LM never trained on validation moments (it only
early-stopped and chose its prior there). The test split is not read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interests.data.datasets import Dataset
from interests.novelty.examples import NoveltyExamples, TimeSplit
from interests.novelty.item_experts import ItemExperts, fit_item_experts
from interests.novelty.mixture import ContextExperts, Mixture, fit_weights, known_mask, log_probabilities

SEQUENCE_KINDS = ("head", "exact")  # the sequence expert: the O(clusters) head, or the exact sum (O(catalog))
# The head's settings, chosen on the validation moments of ml-latest-small at 128 and 256 clusters (a head
# on the distilled SASRec against its own exact sums): 16 prototypes a cluster and distillation weighted 10
# matched the exact sums there (0.211 vs 0.205, 0.129 vs 0.128 hit@5); a linear head (1 prototype, weight 1)
# lost 0.027 and 0.014. 4 and 8 prototypes were as close there (0.211 and 0.206 at 128; 0.129 and 0.128 at
# 256) at a fraction of the cost at 1,000 clusters (README), but only 16 has been judged on test.
HEAD_PROTOTYPES, HEAD_DISTILL, HEAD_LR = 16, 10.0, 3e-3


def period_sequences(ds: Dataset, until: int) -> list[np.ndarray]:
    """Each user's items (0-based) before `until`, as the SASRec trained to `until` saw them."""
    keep = ds.timestamps < until
    off = ds.offsets
    return [ds.items[off[u]:off[u + 1]][keep[off[u]:off[u + 1]]] for u in range(ds.n_users)]


def moments_before(examples: NoveltyExamples, until: int) -> NoveltyExamples:
    """The novel moments before `until`, in time order (what a head trained to `until` may learn from)."""
    idx = np.flatnonzero(examples.timestamps < until)
    return examples.subset(idx[np.argsort(examples.timestamps[idx], kind="stable")])


def train_level_head(model, until: int, ds: Dataset, item_cluster: np.ndarray, n: int,  # type: ignore[no-untyped-def]
                     examples: NoveltyExamples, seed: int = 0, prototypes: int = 0):
    """(cluster head, training info) for `model`, trained on its own period (before `until`) only.

    `prototypes`: per cluster (0: HEAD_PROTOTYPES); the head's cost per user grows with it."""
    from interests.novelty.cluster_head import ClusterHead, head_data, train_head
    from interests.novelty.rules import histories_at
    from interests.seqrec.sasrec import fold_text

    t = time.perf_counter()
    novel = moments_before(examples, until)
    if len(novel) < 20:
        raise ValueError(f"only {len(novel)} novel moments before the SASRec's training cut: too few for a head")
    sequences = period_sequences(ds, until)
    data = head_data(model, sequences, item_cluster, n, histories_at(ds, novel), novel.targets, novel.known, seed=seed)
    head = ClusterHead(model.cfg.dim, n, prototypes or HEAD_PROTOTYPES)
    counts = np.bincount(np.concatenate(sequences), minlength=len(item_cluster)).astype(np.float64)
    # the item vectors the model scores with (a text model's cold items: their text part; `fold_text`)
    head.init_from_items(fold_text(model).item_emb.weight[1:].detach(), item_cluster, counts, seed)
    head, info = train_head(data, n, distill_weight=HEAD_DISTILL, lr=HEAD_LR, seed=seed, head=head)
    info["seconds"] = round(time.perf_counter() - t, 1)
    return head, info


def sequence_expert(kind: str, models: Sequence, item_cluster: np.ndarray, n: int,  # type: ignore[type-arg]
                    head=None) -> Callable[[list[np.ndarray]], np.ndarray]:  # type: ignore[no-untyped-def]
    """histories (0-based) -> [B, C] log-scores of the sequence expert.

    "head": the cluster head on the first model's last hidden state (O(clusters) per user);
    "exact": log of the next-item probabilities summed per cluster, averaged over `models` (seeds).
    """
    from interests.novelty.cluster_head import head_log_scores, last_hidden
    from interests.novelty.rules import seqrec_cluster_scores
    from interests.seqrec.train import next_item_probabilities

    if kind == "head":
        if head is None:
            raise ValueError("the head sequence expert needs a trained cluster head")
        return lambda histories: head_log_scores(head, last_hidden(models[0], histories))
    if kind != "exact":
        raise ValueError(f"sequence expert is one of {SEQUENCE_KINDS}, got {kind!r}")
    probs = [next_item_probabilities(m) for m in models]

    def exact(histories: list[np.ndarray]) -> np.ndarray:
        total = sum(seqrec_cluster_scores(p, histories, item_cluster, n) for p in probs)
        return log_probabilities(total / len(probs))

    return exact


def context_experts(ds: Dataset, item_cluster: np.ndarray, n: int, split: TimeSplit, lm=None,  # type: ignore[no-untyped-def]
                    items: ItemExperts | None = None) -> ContextExperts:
    """The context experts' matrices as the judge computes them (co-occurrence before the validation cut,
    popularity of the training moments), with the LM's row-to-expert terms and the item experts' tables:
    fitted once, served as is."""
    from interests.novelty.rules import cooccurrence_similarity, popularity_log_prior

    return ContextExperts.of_lm(cooccurrence_similarity(ds, item_cluster, n, split.cut_valid),
                                popularity_log_prior(split.train, n), lm, items)


def period_item_experts(ds: Dataset, item_cluster: np.ndarray, examples: NoveltyExamples, until: int,
                        n_clusters: int = 0) -> ItemExperts:
    """The item experts fitted on what lies before `until` only: its novel moments and its interactions
    (the same cut as the SASRec they sit beside, so the fitting ones never saw the validation moments)."""
    from interests.novelty.rules import histories_at

    novel = moments_before(examples, until)
    return fit_item_experts(ds, item_cluster, histories_at(ds, novel), novel.targets, until, n_clusters=n_clusters)


def valid_experts(ds: Dataset, split: TimeSplit, context: ContextExperts,
                  sequence: Callable[[list[np.ndarray]], np.ndarray], lm_table: np.ndarray | None,
                  items: ItemExperts | None = None) -> dict[str, np.ndarray]:
    """The experts' log-scores at the validation moments, computed as the judge computes them at test
    (`items`: the item experts fitted before the validation cut, not the served ones)."""
    from interests.novelty.mixture import expert_scores
    from interests.novelty.rules import context_similarity_scores, histories_at

    valid = split.valid
    histories = histories_at(ds, valid)
    return expert_scores(split.train, len(context.log_pop), context_similarity_scores(context.similarity,
                                                                                      valid.contexts),
                         sequence(histories), lm_table, items, histories)


@dataclass
class LevelFit:
    """What `fit_level` returns: both mixtures and how they did on the validation moments."""

    mixture: Mixture
    without_lm: Mixture
    valid_hits: dict[str, float]  # hit@M on the validation moments (the data they were fitted on)


def fit_level(level: int, split: TimeSplit, experts: dict[str, np.ndarray], m: int, info: dict) -> LevelFit:
    """The full mixture and the one without the LM, each fitted on the validation moments."""
    from interests.novelty.rules import top_m

    valid = split.valid
    n = experts["popularity"].shape[1]
    known = known_mask(valid.known, n)
    out, hits = {}, {}
    for name, chosen in (("mixture", list(experts)), ("without_lm", [e for e in experts if e != "lm"])):
        weights, loglik = fit_weights({e: experts[e] for e in chosen}, valid.targets, known)
        mix = Mixture(weights, level, {**info, "moments": len(valid), "mean_log_likelihood": round(loglik, 4)})
        props = top_m(mix.score(experts), [frozenset(k) for k in valid.known], m)
        hits[name] = float(np.mean([int(t) in p for p, t in zip(props, valid.targets, strict=True)]))
        mix.fitted_on["valid_hit"] = round(hits[name], 4)
        out[name] = mix
    return LevelFit(out["mixture"], out["without_lm"], hits)


def save_level(out: Path, mixture: Mixture, context: ContextExperts, head=None, head_meta: dict | None = None,  # type: ignore[no-untyped-def]
               without_lm: Mixture | None = None) -> Path:
    """A level directory as `explore novelty export-mixture` reads it: mixture.json, context_experts.npz,
    the serving cluster head (cluster_head.pt, with the SASRec it reads in `head_meta`) and, for the judge,
    the fit without the LM (without-lm/mixture.json)."""
    from interests.novelty.cluster_head import HEAD_FILE, save_head

    out = Path(out)
    mixture.save(out)
    context.save(out)
    if without_lm is not None:
        without_lm.save(out / "without-lm")
    if head is not None:
        save_head(out / HEAD_FILE, head, head_meta or {})
    return out


@dataclass
class Checkpoints:
    """SASRec checkpoints of one role for `mix_level`: the models, the end of their training data, and the
    path of the first (the serving head records which SASRec it reads)."""

    models: list
    until: int
    path: str


def mix_level(ds: Dataset, item_cluster: np.ndarray, n: int, examples: NoveltyExamples, fit: Checkpoints,  # type: ignore[no-untyped-def]
              serve: Checkpoints, lm, out: Path, info: dict, sequence: str = "head", m: int = 5, seed: int = 0,
              prototypes: int = 0, log: Callable[[str], None] = print, item_experts: bool = True) -> LevelFit:
    """One level of `explore novelty mix`, end to end, on the novelty split of `examples`: the fitting head (on
    `fit`, which must not have trained on the validation moments), the experts at the validation moments,
    both fits, the serving head (on `serve`) and the level directory `out` (`save_level`).

    `item_experts`: mix in the item-level experts too, fitted twice like the SASRecs (before `fit.until` for
    the weights, before `serve.until` to serve)."""
    from interests.novelty.examples import split_by_time
    from interests.novelty.prior import moment_scores

    split = split_by_time(examples)
    level = int(info.get("level", -1))
    if fit.until > split.cut_valid:
        raise ValueError(f"level {level}: the fitting SASRec trained on data up to {fit.until}, after the validation "
                         f"cut {split.cut_valid}: train it with `explore seqrec train --until-novelty-valid`")
    head = None
    if sequence == "head":
        head, head_info = train_level_head(fit.models[0], fit.until, ds, item_cluster, n, examples, seed, prototypes)
        log(f"level {level}: fitting head trained on {head_info['novel_moments']:,} novel moments "
            f"({head_info['epochs']} epochs, {head_info['seconds']} s)")
    fit_items = serve_items = None
    if item_experts:
        t = time.perf_counter()
        fit_items = period_item_experts(ds, item_cluster, examples, fit.until, n)
        serve_items = period_item_experts(ds, item_cluster, examples, serve.until, n)
        log(f"level {level}: item experts fitted twice in {time.perf_counter() - t:.1f} s"
            + ("" if fit_items.has_ease else " (EASE left out: more than MAX_EASE_ITEMS items)"))
    context = context_experts(ds, item_cluster, n, split, lm, serve_items)
    lm_table = None if lm is None else moment_scores(lm, split.valid.contexts)
    experts = valid_experts(ds, split, context, sequence_expert(sequence, fit.models, item_cluster, n, head), lm_table,
                            fit_items)
    result = fit_level(level, split, experts, m, info)
    serve_head, serve_info = None, {}
    if sequence == "head":
        serve_head, serve_info = train_level_head(serve.models[0], serve.until, ds, item_cluster, n, examples, seed,
                                                  prototypes)
    save_level(out, result.mixture, context, serve_head, {"level": level, "seqrec": serve.path, **serve_info},
               result.without_lm)
    return result
