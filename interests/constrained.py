"""Constrained beam search over a token trie of the catalog's descriptions.

Every output is exactly one catalog cluster, by construction: the search only ever extends a
hypothesis with a token that keeps it on the path of some description that is still allowed,
and a hypothesis ends only on a description's end token. Excluded clusters (those the user
already knows) are removed from the trie for the request, so the known trap of constrained
decoding, a beam whose every next token is masked falling back to free text, cannot happen: a
node is only entered while at least one allowed description lies below it.

Scores are total log-probabilities of a description's tokens (end token included). They only
decrease as a hypothesis grows, so the search stops as soon as M finished clusters score at least
as well as every live hypothesis: with a beam as wide as the catalog it is exhaustive, which the
tests check against scoring every description.

numpy and the standard library only: Triton's `interest_generator` model runs this very file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

NextLogProbs = Callable[[list[list[int]]], np.ndarray]  # token sequences -> [n, vocab] log-probs
EXCLUDED = -1e9  # the score of a slot that no allowed cluster fills (its cluster is -1)


@dataclass
class Node:
    children: dict[int, Node] = field(default_factory=dict)
    clusters: frozenset[int] = frozenset()  # clusters whose description passes through this node
    cluster: int | None = None  # set on the node reached by a description's end token


class DescriptionTrie:
    """Token sequences (each ending with the end token) of every cluster description."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        self.root = Node()
        self.n_clusters = len(sequences)
        members: dict[int, set[int]] = {}
        for cluster, tokens in enumerate(sequences):
            if not tokens:
                raise ValueError(f"cluster {cluster} has an empty token sequence")
            node = self.root
            members.setdefault(id(node), set()).add(cluster)
            for tok in tokens:
                node = node.children.setdefault(int(tok), Node())
                members.setdefault(id(node), set()).add(cluster)
            if node.cluster is not None or node.children:
                raise ValueError(f"clusters {node.cluster} and {cluster} have the same token sequence "
                                 "(or one is another's prefix without an end token)")
            node.cluster = cluster
        self._freeze(self.root, members)

    def _freeze(self, node: Node, members: dict[int, set[int]]) -> None:
        node.clusters = frozenset(members[id(node)])
        for child in node.children.values():
            self._freeze(child, members)


@dataclass
class _Hyp:
    request: int
    score: float
    node: Node
    tokens: list[int]


def beam_search(next_logprobs: NextLogProbs, trie: DescriptionTrie, prompts: Sequence[Sequence[int]],
                excludes: Sequence[set[int] | frozenset[int]], top_m: int, beam: int) -> list[list[tuple[int, float]]]:
    """Top-M (cluster, log-probability) per prompt, best first; excluded clusters never appear.

    All hypotheses of all prompts go to `next_logprobs` together, one call per decoding step. The
    beam is at least M wide: every live hypothesis still leads to an allowed cluster, so M live
    ones guarantee M answers (or all the allowed clusters, when fewer).
    """
    beam = max(beam, top_m)
    results: list[list[tuple[int, float]]] = [[] for _ in prompts]
    live = [_Hyp(r, 0.0, trie.root, []) for r in range(len(prompts)) if trie.root.clusters - set(excludes[r])]
    while live:
        logprobs = next_logprobs([list(prompts[h.request]) + h.tokens for h in live])
        grown: dict[int, list[_Hyp]] = {}
        for h, row in zip(live, logprobs, strict=True):
            banned = excludes[h.request]
            for tok, child in h.node.children.items():
                if not (child.clusters - banned):
                    continue  # every description below is excluded: never enter
                score = h.score + float(row[tok])
                if child.cluster is not None:
                    results[h.request].append((child.cluster, score))
                else:
                    grown.setdefault(h.request, []).append(_Hyp(h.request, score, child, [*h.tokens, tok]))
        live = []
        for request, hyps in grown.items():
            hyps.sort(key=lambda h: -h.score)
            done = sorted(results[request], key=lambda cs: -cs[1])[:top_m]
            if len(done) >= top_m:  # nothing live can still beat the M-th finished one
                hyps = [h for h in hyps if h.score > done[-1][1]]
            live += hyps[:beam]
    return [sorted(r, key=lambda cs: -cs[1])[:top_m] for r in results]


def exhaustive_scores(next_logprobs: NextLogProbs, prompt: Sequence[int],
                      sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Log-probability of every description after `prompt`, token by token (the reference)."""
    prefixes = [list(prompt) + list(s[:t]) for s in sequences for t in range(len(s))]
    logprobs = next_logprobs(prefixes)
    scores, row = np.zeros(len(sequences)), 0
    for c, s in enumerate(sequences):
        for t, tok in enumerate(s):
            scores[c] += logprobs[row + t, tok]
        row += len(s)
    return scores


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask) [n, longest], each sequence right-aligned."""
    length = max((len(s) for s in sequences), default=1)
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, length - len(s):] = s
            mask[i, length - len(s):] = 1
    return ids, mask


class Generator:
    """Novel clusters from an exported LM: what Triton's `interest_generator` and its twin run.

    `spec` is the exporter's decoder.json (pre-tokenised prompt pieces and description sequences);
    `run(ids, mask)` returns next-token log-probabilities [n, vocab] (an onnxruntime session).
    """

    def __init__(self, spec: dict, run: Callable[[np.ndarray, np.ndarray], np.ndarray], top_m: int,
                 beam: int) -> None:
        self.spec, self.run, self.top_m, self.beam = spec, run, top_m, beam
        self.trie = DescriptionTrie(spec["sequences"])
        self.n_clusters = len(spec["pieces"])

    def next_logprobs(self, sequences: list[list[int]]) -> np.ndarray:
        return self.run(*left_pad(sequences, self.spec["pad_id"]))

    def prompt(self, context: Sequence[int]) -> list[int]:
        ids = list(self.spec["head"])
        for i, c in enumerate(context):
            ids += (self.spec["sep"] if i else []) + self.spec["pieces"][int(c)]
        return ids + self.spec["tail"]

    def validate(self, contexts: np.ndarray, exclude: np.ndarray) -> None:
        """ValueError unless contexts [B, K] hold catalog ids and exclude is [B, n_clusters]."""
        if contexts.ndim != 2 or np.shape(exclude) != (len(contexts), self.n_clusters) or \
                (contexts.size and (contexts.min() < 0 or contexts.max() >= self.n_clusters)):
            raise ValueError(f"context ids must lie in [0, {self.n_clusters}) and exclude must have "
                             f"{self.n_clusters} flags per context")

    def propose(self, contexts: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(clusters [B, M], scores [B, M]) for contexts [B, K] and exclusion flags [B, C]."""
        contexts = np.asarray(contexts, dtype=np.int64)
        self.validate(contexts, exclude)
        excludes = [set(np.flatnonzero(m).tolist()) | set(c.tolist()) for c, m in zip(contexts, exclude, strict=True)]
        results = beam_search(self.next_logprobs, self.trie, [self.prompt(c.tolist()) for c in contexts], excludes,
                              self.top_m, self.beam)
        clusters = np.full((len(contexts), self.top_m), -1, dtype=np.int64)
        scores = np.full((len(contexts), self.top_m), EXCLUDED, dtype=np.float32)
        for i, r in enumerate(results):
            for j, (c, score) in enumerate(r):
                clusters[i, j], scores[i, j] = c, score
        return clusters, scores
