"""The alignment model: how likely users who share a context take up a proposed novel cluster.

The follow-up paper (Wang et al., ACL 2025 industry track) keeps the novelty LM as it is and picks
the best of its n candidates with a separate model trained *pointwise* on implicit feedback,
aggregated over users who share the cluster history. Here:

- **Labels** (`aggregate`): resolved proposals (accepted or not within the engine's horizon;
  `streams.core.feedback`) are grouped by (context, candidate cluster), i.e. over the users who had
  that context; groups with fewer than `min_events` outcomes are dropped (a rate of 1 of 2 says
  little); the acceptance rate is normalised by the highest rate among the kept groups (the
  horizon setting scales every rate alike, so labels from runs with other horizons stay
  comparable, in [0, 1]) and rounded to `steps` levels (small counts make noisy rates; coarse
  levels keep the model from fitting that noise). Each group is one example weighted by its count.
- **Inputs**: the novelty prompt's words (`interests.novelty.examples.prompt`, the same text the LM
  reads) and the candidate's description.
- **Model** (`AlignmentModel`): ridge regression on word features: every (prompt word, candidate
  word) pair plus the candidate's own words. Why this one: the labelled groups number hundreds
  to a few thousand, which a linear model fits in a second on a CPU without overfitting much;
  the pairs express "users who enjoyed *detective* take up *western*", and because descriptions
  share words a pair learnt on one context carries to contexts never seen in the feedback; the
  result is a dictionary of weights, scored with no dependency at all (the precompute and a
  worker could load it). The pretrained LM of #9 (SmolLM2-135M) would read the words better but
  costs seconds per pair on this CPU; it is not used here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from interests.novelty.examples import PROMPT, SEPARATOR


@dataclass(frozen=True, slots=True)
class Outcome:
    """One resolved proposal as the alignment model reads it (the topic's record: `streams.core.feedback`)."""

    context: tuple[int, ...]
    context_descriptions: tuple[str, ...]
    cluster: int
    description: str
    accepted: bool
    rank: int = 0  # its place among the slate's novel clusters (1: the novelty LM's first); 0: unknown


@dataclass(frozen=True, slots=True)
class AlignmentExample:
    """One (context, candidate) group: its words, its label and how many outcomes made it."""

    context: tuple[int, ...]
    cluster: int
    prompt: str
    description: str
    label: float
    events: int
    accepted: int
    rank: float = 0.0  # the mean rank the novelty LM gave the candidate in this context's slates


def aggregate(outcomes: Iterable[Outcome], min_events: int = 5, steps: int = 10) -> list[AlignmentExample]:
    """Pointwise examples from outcomes: per (context, candidate) group with at least `min_events`
    outcomes, the acceptance rate over the highest group's, rounded to 1/`steps` (module docstring)."""
    groups: dict[tuple[tuple[int, ...], int], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[(tuple(o.context), o.cluster)].append(o)
    kept = {key: g for key, g in groups.items() if len(g) >= min_events}
    rates = {key: sum(o.accepted for o in g) / len(g) for key, g in kept.items()}
    top = max(rates.values(), default=0.0)
    out = []
    for (context, cluster), g in sorted(kept.items()):
        label = round(rates[(context, cluster)] / top * steps) / steps if top > 0 else 0.0
        out.append(AlignmentExample(context, cluster, prompt_text(g[0].context_descriptions), g[0].description,
                                    label, len(g), sum(o.accepted for o in g), sum(o.rank for o in g) / len(g)))
    return out


def prompt_text(context_descriptions: Sequence[str]) -> str:
    """The novelty LM's prompt for a context given by its clusters' descriptions."""
    return PROMPT.format(context=SEPARATOR.join(context_descriptions))


def words(text: str) -> list[str]:
    """Lower-case word tokens, each once, in order of first appearance."""
    return list(dict.fromkeys(re.findall(r"[a-z0-9]+", text.lower())))


def features(prompt: str, description: str) -> list[str]:
    """The model's features of a (prompt, candidate) pair: the candidate's words, and each prompt word
    paired with each candidate word (the prompt's fixed words pair with every candidate alike)."""
    cand = words(description)
    return [f"d:{d}" for d in cand] + [f"x:{p}|{d}" for p in words(prompt) for d in cand]


@dataclass
class AlignmentModel:
    """A linear score over `features`; higher: more likely taken up by users with that context."""

    weights: dict[str, float]
    bias: float
    meta: dict

    def score(self, prompt: str, description: str) -> float:
        w = self.weights
        return self.bias + sum(w.get(f, 0.0) for f in features(prompt, description))

    def rank(self, context_descriptions: Sequence[str], candidates: Sequence[str]) -> list[int]:
        """Indices of `candidates` (descriptions), best first, for a context: the best-of-n pick."""
        prompt = prompt_text(context_descriptions)
        scores = [self.score(prompt, c) for c in candidates]
        return sorted(range(len(candidates)), key=lambda i: -scores[i])

    @property
    def version(self) -> str:
        """A digest of the weights: two models that score alike carry the same version, wherever they were saved."""
        doc = json.dumps({"bias": self.bias, "weights": self.weights}, sort_keys=True).encode()
        return hashlib.blake2b(doc, digest_size=8).hexdigest()

    def save(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "alignment.json"
        path.write_text(json.dumps({"kind": "ridge-word-pairs", "bias": self.bias, "meta": self.meta,
                                    "weights": self.weights}, indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: Path) -> AlignmentModel:
        path = Path(path)
        doc = json.loads((path / "alignment.json" if path.is_dir() else path).read_text())
        if doc.get("kind") != "ridge-word-pairs":
            raise ValueError(f"{path}: not an alignment model (kind {doc.get('kind')!r})")
        return cls({k: float(v) for k, v in doc["weights"].items()}, float(doc["bias"]), doc.get("meta", {}))


def train_alignment(examples: Sequence[AlignmentExample], alpha: float = 1.0, meta: dict | None = None,
                    ) -> AlignmentModel:
    """Fit ridge regression of the labels on the pairs' features, each group weighted by its outcome count."""
    if not examples:
        raise ValueError("no examples to train on: fewer outcomes per (context, candidate) than min_events?")
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import Ridge

    vec = DictVectorizer()
    x = vec.fit_transform([dict.fromkeys(features(e.prompt, e.description), 1.0) for e in examples])
    y = [e.label for e in examples]
    model = Ridge(alpha=alpha).fit(x, y, sample_weight=[e.events for e in examples])
    names = vec.get_feature_names_out()
    weights = {str(n): round(float(c), 6) for n, c in zip(names, model.coef_, strict=True) if abs(c) > 1e-9}
    return AlignmentModel(weights, float(model.intercept_), {"examples": len(examples), "alpha": alpha,
                                                              "features": len(names), **(meta or {})})


def pairwise_accuracy(score: Callable[[AlignmentExample], float],
                      examples: Sequence[AlignmentExample]) -> tuple[float, int]:
    """Within each context, the share of candidate pairs with different labels that `score` orders as the
    labels do (the best-of-n question), and how many pairs there were; a tie counts half."""
    by_context: dict[tuple[int, ...], list[AlignmentExample]] = defaultdict(list)
    for e in examples:
        by_context[e.context].append(e)
    right, total = 0.0, 0
    for group in by_context.values():
        scores = [score(e) for e in group]
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                if group[i].label != group[j].label:
                    total += 1
                    agree = (scores[i] - scores[j]) * (group[i].label - group[j].label)
                    right += 1.0 if agree > 0 else 0.5 if agree == 0 else 0.0
    return (right / total if total else float("nan")), total


def align(outcomes: Sequence[Outcome], min_events: int = 5, steps: int = 10, alpha: float = 1.0,
          holdout: float = 0.2, meta: dict | None = None) -> tuple[AlignmentModel, dict]:
    """`explore novelty align`: aggregate, check on held-out contexts, then train on all of them.

    A share `holdout` of the contexts (chosen by a hash of the context, so the same feedback always
    splits alike) is left out of a first fit and scored by `pairwise_accuracy` there: how often the
    model orders two candidates of a context it never saw as their labels do, beside how often the
    novelty LM's own order (the slates' ranks) does. The model returned is fitted on every example.
    """
    examples = aggregate(outcomes, min_events, steps)
    labels = sorted({e.label for e in examples})
    report: dict = {"outcomes": len(outcomes), "accepted": sum(o.accepted for o in outcomes),
                    "groups": len({(tuple(o.context), o.cluster) for o in outcomes}), "examples": len(examples),
                    "contexts": len({e.context for e in examples}), "min_events": min_events, "steps": steps,
                    "labels": {f"{v:g}": sum(e.label == v for e in examples) for v in labels}}
    held = [e for e in examples if _held_out(e.context, holdout)]
    fit = [e for e in examples if not _held_out(e.context, holdout)]
    if held and fit:
        first = train_alignment(fit, alpha)
        report["holdout_pairwise_accuracy"], report["holdout_pairs"] = pairwise_accuracy(
            lambda e: first.score(e.prompt, e.description), held)
        if all(e.rank > 0 for e in held):
            report["holdout_lm_rank_accuracy"] = pairwise_accuracy(lambda e: -e.rank, held)[0]
    model = train_alignment(examples, alpha, {**(meta or {}), **report})
    return model, report


def _held_out(context: tuple[int, ...], share: float) -> bool:
    """Whether a context is in the held-out share: a stable hash of its ids, not Python's salted one."""
    digest = hashlib.blake2b(",".join(map(str, context)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 2**32 < share


__all__ = ["AlignmentExample", "AlignmentModel", "Outcome", "aggregate", "align", "features", "pairwise_accuracy",
           "prompt_text", "train_alignment", "words"]
