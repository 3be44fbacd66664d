"""The novelty policy as a product of experts: score(c | user) = sum_e w_e * log p_e(c | user).

Where language models help sequential recommenders in published work, they help as one expert
beside the collaborative model (D3, EMNLP 2024, mixes an LLM's and a collaborative model's
log-probabilities log-linearly), not instead of it. The judge showed why here: the item policy's
own cluster distribution ("SASRec explores") is the strongest single explorer. So the served
policy is a log-linear mixture over the clusters the user does not know, and each expert's weight
is fitted, not asserted; the language model earns its place only through its weight.

Experts (`EXPERTS`), each a score matrix [moments, clusters] of log-probabilities:
- `lm`: the novelty LM's log P(description | context), the table row of the user's context;
- `sequence`: the sequence model's cluster distribution (`interests.novelty.cluster_head`, or the exact
  sum of SASRec's next-item probabilities per cluster);
- `cooccurrence`: log of the context's mean co-occurrence similarity to each cluster;
- `popularity`: log P_pop(c), the prior, now one expert among the others;
- `transitions` and `ease`: two item-level collaborative experts read from the user's recent items
  (`interests.novelty.item_experts`): where users went next from those items, and EASE's item
  scores summed per cluster.

Per-row constants do not change a row's ranking or its softmax, so each expert need not be
normalised; only its scale matters, and the weight absorbs it (a weight is an inverse temperature).

The weights are fitted by a listwise softmax: maximise the mean log-likelihood of each validation
moment's target under softmax over the clusters the user does not know (convex in the weights),
weights kept non-negative and lightly L2-regularised. The scores they are fitted on must come
from experts that did not train on those validation moments (the caller's duty:
`explore novelty mix` uses a SASRec trained before the validation period), and the test split is
never used. Pure numpy and PyTorch (the fit); no runtime imports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from interests.novelty.examples import NoveltyExamples
from interests.novelty.item_experts import ItemExperts

EXPERTS = ("lm", "sequence", "cooccurrence", "popularity", "transitions", "ease")
ITEM_EXPERTS = ("transitions", "ease")  # what `ItemExperts.scores` gives, from the user's items
FLOOR = -30.0  # a log-score no allowed cluster goes below: an expert's zero must not veto a cluster (-inf)
COOC_EPS = 1e-3  # added to co-occurrence similarity before its log: a cluster nobody shared is rare, not impossible
MIXTURE_FILE = "mixture.json"
CONTEXT_FILE = "context_experts.npz"


def floor_scores(scores: np.ndarray) -> np.ndarray:
    """Expert log-scores with -inf and NaN raised to FLOOR (the known clusters are masked later anyway)."""
    out = np.asarray(scores, np.float64).copy()
    out[~np.isfinite(out)] = FLOOR
    return np.maximum(out, FLOOR)


def log_probabilities(probs: np.ndarray) -> np.ndarray:
    """log of probabilities (the sequence expert's exact sums, popularity), with zeros at FLOOR."""
    with np.errstate(divide="ignore"):
        return floor_scores(np.log(np.asarray(probs, np.float64)))


def cooccurrence_log_scores(similarity: np.ndarray) -> np.ndarray:
    """log(similarity + COOC_EPS): the co-occurrence baseline's mean cosine as a log-score."""
    return np.log(np.maximum(np.asarray(similarity, np.float64), 0.0) + COOC_EPS)


def known_mask(excludes: Sequence[frozenset[int] | set[int]], n_clusters: int) -> np.ndarray:
    """[moments, clusters] bool: True where the user already knows the cluster."""
    mask = np.zeros((len(excludes), n_clusters), dtype=bool)
    for i, ex in enumerate(excludes):
        if ex:
            mask[i, list(ex)] = True
    return mask


@dataclass
class Mixture:
    """Weights of the experts at one catalog level, and how they were fitted."""

    weights: dict[str, float]
    level: int = -1
    fitted_on: dict = field(default_factory=dict)  # moments, log-likelihood, which checkpoints, ...

    def score(self, experts: Mapping[str, np.ndarray]) -> np.ndarray:
        """[moments, clusters]: sum_e w_e * log p_e over the experts given (missing ones count 0).

        An expert with weight 0 is not needed at all (the ablation without the LM passes none).
        """
        total: np.ndarray | None = None
        for name, w in self.weights.items():
            if w == 0.0:
                continue
            if name not in experts:
                raise KeyError(f"the mixture weighs expert {name!r} ({w:g}) but it was not given")
            part = w * floor_scores(experts[name])
            total = part if total is None else total + part
        if total is None:
            raise ValueError("every weight of the mixture is 0")
        return total

    def context_part(self, experts: Mapping[str, np.ndarray]) -> np.ndarray:
        """The weighted sum over every expert but the sequence model: what depends on the user's context
        alone, so a table row can carry it and the seqrec graph adds the sequence part
        (`interests.novelty.mixture_topn`). score = context_part + w_sequence * floored sequence log-scores."""
        rest = {k: (0.0 if k == "sequence" else v) for k, v in self.weights.items()}
        if not any(rest.values()):
            return np.zeros_like(floor_scores(next(iter(experts.values()))))
        return Mixture(rest).score(experts)

    def without(self, name: str) -> Mixture:
        """The same mixture with one expert's weight set to 0 (the ablation: what that expert adds)."""
        return Mixture({k: (0.0 if k == name else v) for k, v in self.weights.items()}, self.level,
                       {**self.fitted_on, "without": name})

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MIXTURE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> Mixture:
        path = Path(path)
        if path.is_dir():
            path = path / MIXTURE_FILE
        doc = json.loads(path.read_text())
        unknown = set(doc["weights"]) - set(EXPERTS)
        if unknown:
            raise ValueError(f"{path}: unknown experts {sorted(unknown)} (known: {', '.join(EXPERTS)})")
        return cls({k: float(v) for k, v in doc["weights"].items()}, int(doc.get("level", -1)),
                   doc.get("fitted_on", {}))


@dataclass
class ContextExperts:
    """What the context experts need at serving time, fitted with the weights (`explore novelty mix`).

    `similarity` [C, C]: cluster co-occurrence before the validation cut; `log_pop` [C]: the popularity
    expert; `lm_prior` and `lm_scale` [C] turn a novelty-table row's score back into the LM expert the
    weights were fitted on: a row holds rule(log P) + prior (`interests.runtime.constrained`: the rule
    divides the summed log-probability by the description's length when the model scores by the mean),
    the expert is the summed log P, so expert = (row - lm_prior) * lm_scale. `items`: the item-level
    experts' tables (`item_experts.npz` beside), fitted on the serving period; None in a level fitted
    without them.
    """

    similarity: np.ndarray
    log_pop: np.ndarray
    lm_prior: np.ndarray
    lm_scale: np.ndarray
    items: ItemExperts | None = None

    @classmethod
    def of_lm(cls, similarity: np.ndarray, log_pop: np.ndarray, lm=None,  # type: ignore[no-untyped-def]
              items: ItemExperts | None = None) -> ContextExperts:
        """From the fit's matrices and the LM whose table rows the engine reads (None: no LM expert)."""
        n = len(log_pop)
        prior, scale = np.zeros(n), np.ones(n)
        if lm is not None:
            if lm.prior is not None:
                prior = np.asarray(lm.prior, np.float64)
            if getattr(lm, "length_norm", False):
                scale = np.array([len(seq) for seq in lm.sequences], np.float64)
        return cls(np.asarray(similarity, np.float64), np.asarray(log_pop, np.float64), prior, scale, items)

    def save(self, directory: Path) -> Path:
        """`context_experts.npz` in `directory`, and `item_experts.npz` when there are item experts."""
        path = Path(directory) / CONTEXT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, similarity=self.similarity, log_pop=self.log_pop, lm_prior=self.lm_prior,
                 lm_scale=self.lm_scale)
        if self.items is not None:
            self.items.save(path.parent)
        return path

    @classmethod
    def load(cls, directory: Path) -> ContextExperts:
        """From a directory `save` wrote (a level of `explore novelty mix`, or `explorer`'s version directory)."""
        from interests.novelty.item_experts import ITEM_EXPERTS_FILE

        directory = Path(directory)
        if directory.is_file():  # the npz itself
            directory = directory.parent
        with np.load(directory / CONTEXT_FILE) as f:
            arrays = (np.asarray(f[k], np.float64) for k in ("similarity", "log_pop", "lm_prior", "lm_scale"))
            items = ItemExperts.load(directory) if (directory / ITEM_EXPERTS_FILE).is_file() else None
            return cls(*arrays, items=items)


def served_context_scores(mixture: Mixture, experts: ContextExperts, contexts: np.ndarray,
                          rows: Sequence[tuple[Sequence[int], Sequence[float]]],
                          histories: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """[B, C] float32: the context part of the mixture (`Mixture.context_part`) as the engine computes it per
    user, from the context (co-occurrence, popularity), the novelty-table row of that context (the LM:
    `rows[i]` = (ranked clusters, scores)) and the user's recent items (`histories`, 0-based, oldest first:
    the item experts). Clusters a row does not rank get the LM's FLOOR: at more clusters than a row holds
    (64), the served LM expert is the row's top, not the whole catalog."""
    n = len(experts.log_pop)
    contexts = np.asarray(contexts, np.int64)
    w = mixture.weights
    out = np.zeros((len(contexts), n))
    weighed = [e for e in ITEM_EXPERTS if w.get(e, 0.0)]
    if weighed:
        if experts.items is None or histories is None:
            raise ValueError(f"the mixture weighs {', '.join(weighed)}: it needs the item experts' tables "
                             "(item_experts.npz) and the users' recent items")
        item_scores = experts.items.scores(histories)
        for e in weighed:
            out += w[e] * floor_scores(item_scores[e])
    if w.get("popularity", 0.0):
        out += w["popularity"] * floor_scores(experts.log_pop)[None, :]
    if w.get("cooccurrence", 0.0):  # each cluster's mean similarity to the context's clusters (-1 pads: none)
        real = contexts >= 0
        gathered = experts.similarity[np.where(real, contexts, 0)] * real[..., None]  # [B, K, C], one gather
        mean = gathered.sum(1) / np.maximum(real.sum(1), 1)[:, None]
        out += w["cooccurrence"] * floor_scores(cooccurrence_log_scores(mean))
    if w.get("lm", 0.0):
        lm = np.full((len(contexts), n), FLOOR)
        for i, (clusters, scores) in enumerate(rows):
            c = np.asarray(clusters, np.int64)
            lm[i, c] = (np.asarray(scores, np.float64) - experts.lm_prior[c]) * experts.lm_scale[c]
        out += w["lm"] * floor_scores(lm)
    return out.astype(np.float32)


def fit_weights(experts: Mapping[str, np.ndarray], targets: np.ndarray, known: np.ndarray, l2: float = 1e-3,
                steps: int = 200) -> tuple[dict[str, float], float]:
    """Non-negative weights maximising the mean listwise log-likelihood of the targets, and that mean.

    `experts[name]` [moments, clusters] log-scores; `known` [moments, clusters] bool (masked out of
    every softmax: the policy never proposes a known cluster, so it is not scored on them either).
    Weights are softplus-parametrised (non-negative: a product of experts does not invert one) and
    fitted by L-BFGS; the problem is convex in the weights, so the start does not matter.
    """
    import torch

    names = list(experts)
    if not names:
        raise ValueError("no experts to fit")
    targets = np.asarray(targets, np.int64)
    if known[np.arange(len(targets)), targets].any():
        raise ValueError("a target cluster is marked known: the moments and their known sets do not match")
    stack = torch.from_numpy(np.stack([floor_scores(experts[n]) for n in names], axis=-1))  # [M, C, E]
    mask = torch.from_numpy(np.asarray(known, dtype=bool))
    tgt = torch.from_numpy(targets)
    raw = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([raw], max_iter=steps, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        w = torch.nn.functional.softplus(raw)
        logits = (stack * w).sum(-1).masked_fill(mask, float("-inf"))
        return -logits.log_softmax(-1).gather(1, tgt[:, None]).mean() + l2 * (w ** 2).sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        w = torch.nn.functional.softplus(raw).numpy()
        loglik = -float(nll()) + l2 * float((w ** 2).sum())
    return {n: float(v) for n, v in zip(names, w, strict=True)}, loglik


def expert_scores(train: NoveltyExamples, n: int, cooc_similarity: np.ndarray, sequence: np.ndarray,
                  lm_table: np.ndarray | None, items: ItemExperts | None = None,
                  histories: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The experts' log-scores at some moments ([moments, clusters] each), from the context's mean
    co-occurrence similarity, the sequence expert's scores, the LM's table and the item experts at the
    moments' `histories`: the one definition `explore novelty mix` fits on (validation) and the judge
    scores with (test)."""
    from interests.novelty.rules import popularity_log_prior

    experts = {"popularity": np.broadcast_to(popularity_log_prior(train, n), (len(sequence), n)),
               "cooccurrence": cooccurrence_log_scores(cooc_similarity),
               "sequence": np.asarray(sequence, np.float64)}
    if lm_table is not None:
        experts["lm"] = lm_table
    if items is not None:
        if histories is None:
            raise ValueError("the item experts need the moments' histories")
        experts.update(items.scores(histories))
    return experts
