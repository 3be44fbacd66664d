"""Constrained beam search over a token trie of the catalog's descriptions.

Every output is exactly one catalog cluster, by construction: the search only ever extends a
hypothesis with a token that keeps it on the path of some description that is still allowed,
and a hypothesis ends only on a description's end token. Excluded clusters (those the user
already knows) are removed from the trie for the request, so the known trap of constrained
decoding, a beam whose every next token is masked falling back to free text, cannot happen: a
node is only entered while at least one allowed description lies below it.

A cluster's score is the total log-probability of its description's tokens (end token included)
plus an optional per-cluster prior (`prior[c]`, e.g. alpha * log P_pop(c)), added at the leaf.
Log-probabilities only decrease as a hypothesis grows, so a live hypothesis can at best reach its
score plus the largest prior among the allowed clusters below it: the search ranks live
hypotheses by that bound and stops as soon as M finished clusters score at least as well as
every live bound. With a beam as wide as the catalog it is exhaustive, which the tests check
against scoring every description.

With `length_norm` a cluster's score is instead the *mean* log-probability per token of its
description (plus the prior): summed log-probabilities favour short descriptions, which a
pretrained model scoring zero-shot suffers from. The search stays exact: a live hypothesis with
summed log-probability S can at best end in cluster c at S / len(c) + prior[c] (what follows only
lowers S, and S <= 0), so its bound is the best of that over the allowed clusters below it, which
never grows along a path. A `CachedLM` declares the rule with a `length_norm` attribute (the
model directory's `score`, see `NoveltyLM.length_norm`), so every caller of `beam_search_cached`
scores a model the way it was chosen on validation.

Two ways to get next-token log-probabilities, same answers: `beam_search` re-reads every
sequence at every step (`next_logprobs`, the reference); `beam_search_cached` encodes each
prompt once (`lm.prefill`) and then feeds one token per hypothesis over the key/value cache of its
parent (`lm.step`), which is several times cheaper.

numpy and the standard library only (onnxruntime where a graph is loaded): Triton's
`interest_generator` model runs this very file. That makes it the home of what the engine, the
exporter and the Triton models must agree on: `EXCLUDED`, `left_pad`, `assemble_prompt`, and the
onnxruntime set-up of a `Generator` (`Generator.from_directory`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

NextLogProbs = Callable[[list[list[int]]], np.ndarray]  # token sequences -> [n, vocab] log-probs
# The score of an output slot that nothing allowed fills: a cluster -1 of interest_generator, an
# item of seqrec (interests.seqrec.topn). Finite, so that every runtime returns the same numbers.
EXCLUDED = -1e9


class CachedLM(Protocol):
    """Next-token log-probabilities with a key/value cache; the state is opaque to the search."""

    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, Any]:
        """Log-probs [n, vocab] after each prompt, and a state whose row i is prompt i."""

    def step(self, state: Any, parents: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, Any]:
        """Row i of the new state is row `parents[i]` of `state` followed by `tokens[i]`; its log-probs."""


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
        self.lengths = [len(s) for s in sequences]  # tokens per description, end token included
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
    score: float  # log-probability of the tokens so far
    bound: float  # the best score it can end with: score (or score / length) + prior, best allowed cluster below
    node: Node
    tokens: list[int]
    parent: int  # row of the parent hypothesis in the previous step's batch (-1 for a root)


def _search(first: Callable[[list[int]], np.ndarray], advance: Callable[[list[_Hyp]], np.ndarray],
            trie: DescriptionTrie, n_prompts: int, excludes: Sequence[set[int] | frozenset[int]], top_m: int,
            beam: int, prior: Sequence[float] | np.ndarray | None,
            length_norm: bool = False) -> list[list[tuple[int, float]]]:
    beam = max(beam, top_m)
    bonus = np.zeros(trie.n_clusters) if prior is None else np.asarray(prior, dtype=np.float64)
    if bonus.shape != (trie.n_clusters,):
        raise ValueError(f"the prior needs one value per cluster ({trie.n_clusters}), not {bonus.shape}")
    flat = not bonus.any() and not length_norm  # the bound is the score itself
    lengths = trie.lengths
    results: list[list[tuple[int, float]]] = [[] for _ in range(n_prompts)]
    roots = [r for r in range(n_prompts) if trie.root.clusters - set(excludes[r])]
    live = [_Hyp(r, 0.0, 0.0, trie.root, [], -1) for r in roots]
    logprobs = first(roots) if live else None
    while live:
        grown: dict[int, list[_Hyp]] = {}
        for row_index, (h, row) in enumerate(zip(live, logprobs, strict=True)):
            banned = excludes[h.request]
            for tok, child in h.node.children.items():
                allowed = child.clusters - banned
                if not allowed:
                    continue  # every description below is excluded: never enter
                score = h.score + float(row[tok])
                if child.cluster is not None:
                    final = score / lengths[child.cluster] if length_norm else score
                    results[h.request].append((child.cluster, final + float(bonus[child.cluster])))
                else:
                    if length_norm:
                        bound = max(score / lengths[c] + float(bonus[c]) for c in allowed)
                    else:
                        bound = score if flat else score + max(float(bonus[c]) for c in allowed)
                    grown.setdefault(h.request, []).append(
                        _Hyp(h.request, score, bound, child, [*h.tokens, tok], row_index))
        live = []
        for request, hyps in grown.items():
            hyps.sort(key=lambda h: -h.bound)
            done = sorted(results[request], key=lambda cs: -cs[1])[:top_m]
            if len(done) >= top_m:  # nothing live can still beat the M-th finished one
                hyps = [h for h in hyps if h.bound > done[-1][1]]
            live += hyps[:beam]
        if live:
            logprobs = advance(live)
    return [sorted(r, key=lambda cs: -cs[1])[:top_m] for r in results]


def beam_search(next_logprobs: NextLogProbs, trie: DescriptionTrie, prompts: Sequence[Sequence[int]],
                excludes: Sequence[set[int] | frozenset[int]], top_m: int, beam: int,
                prior: Sequence[float] | np.ndarray | None = None,
                length_norm: bool = False) -> list[list[tuple[int, float]]]:
    """Top-M (cluster, score) per prompt, best first; excluded clusters never appear (no cache).

    All hypotheses of all prompts go to `next_logprobs` together, one call per decoding step, each
    as its whole sequence (prompt + description so far). The beam is at least M wide: every live
    hypothesis still leads to an allowed cluster, so M live ones guarantee M answers (or all the
    allowed clusters, when fewer).
    """
    return _search(lambda roots: next_logprobs([list(prompts[r]) for r in roots]),
                   lambda live: next_logprobs([list(prompts[h.request]) + h.tokens for h in live]),
                   trie, len(prompts), excludes, top_m, beam, prior, length_norm)


def beam_search_cached(lm: CachedLM, trie: DescriptionTrie, prompts: Sequence[Sequence[int]],
                       excludes: Sequence[set[int] | frozenset[int]], top_m: int, beam: int,
                       prior: Sequence[float] | np.ndarray | None = None,
                       length_norm: bool | None = None) -> list[list[tuple[int, float]]]:
    """`beam_search` over a key/value cache: each prompt is encoded once, then every step feeds one
    token per hypothesis after the cached keys and values of its parent. Same answers. `length_norm`
    None: the LM's own rule (its `length_norm` attribute, else summed log-probabilities)."""
    state: list[Any] = [None]

    def first(roots: list[int]) -> np.ndarray:
        logprobs, state[0] = lm.prefill([list(prompts[r]) for r in roots])
        return logprobs

    def advance(live: list[_Hyp]) -> np.ndarray:
        logprobs, state[0] = lm.step(state[0], np.array([h.parent for h in live], dtype=np.int64),
                                     np.array([h.tokens[-1] for h in live], dtype=np.int64))
        return logprobs

    norm = bool(getattr(lm, "length_norm", False)) if length_norm is None else length_norm
    return _search(first, advance, trie, len(prompts), excludes, top_m, beam, prior, norm)


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


def assemble_prompt(head: Sequence[int], sep: Sequence[int], tail: Sequence[int],
                    pieces: Sequence[Sequence[int]], context: Sequence[int]) -> list[int]:
    """The prompt's tokens for a context (cluster ids, most recent last): head, the clusters' pieces
    joined by sep, tail.

    The one place a prompt is assembled: training (`NoveltyLM.prompt_ids`) and serving (`Generator`,
    from decoder.json's head/sep/tail/pieces) both call it, so they cannot drift apart. Assembling
    pre-tokenised pieces means serving never depends on how a tokenizer splits text at piece
    boundaries, and needs no tokenizer at all.
    """
    ids = list(head)
    for i, c in enumerate(context):
        ids += [*(sep if i else []), *pieces[int(c)]]
    return ids + list(tail)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask) [n, length], each sequence right-aligned (the newest last).

    `length` defaults to the longest sequence; a longer sequence keeps its newest `length` tokens.
    Both models are fed this way: prompts to the LM (the mask marks the real tokens) and item
    histories to seqrec (`streams.inference.seqrec.pad_histories`, 0 pads).
    """
    if length is None:
        length = max((len(s) for s in sequences), default=1)
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for i, s in enumerate(sequences):
        tail = np.asarray(s, dtype=np.int64)[len(s) - length:] if len(s) > length else s
        if len(tail):
            ids[i, length - len(tail):] = tail
            mask[i, length - len(tail):] = 1
    return ids, mask


SPINNING = "session.intra_op.allow_spinning"  # onnxruntime's session config key


def onnx_session(path: Path | str, threads: int, spinning: bool = False):  # type: ignore[no-untyped-def]
    """An onnxruntime CPU session: `threads` inside an operator, operators one after another.

    `spinning` off (the default): onnxruntime's pool threads otherwise spin after every call, waiting for
    the next one; a call every ~20 ms, as a serving model gets, then cost 2-4x the CPU (the seqrec
    graph at batch 16: 31-32 ms of CPU a call with spinning, 8-9 ms without, p50 5.2-5.8 ms either way),
    CPU that the worker and Kafka need on a shared machine. Back-to-back seqrec calls gain 0-13 % latency
    from it; the beam search, small calls with Python between them, is slower with it on 2 cores (56
    contexts: p50 70-96 ms with spinning, 41-54 ms without, at 2-3x the CPU). `benchmarks/onnx_spinning.py`
    measures both."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry(SPINNING, "1" if spinning else "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_logprobs(path: Path | str, threads: int,
                  spinning: bool = False) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`run(ids, mask) -> log-probs [n, vocab]` over the no-cache graph (model.onnx)."""
    session = onnx_session(path, threads, spinning)
    return lambda ids, mask: session.run(["logprobs"], {"input_ids": ids, "attention_mask": mask})[0]


def onnx_kv_cache(directory: Path | str, pad_id: int, threads: int, spinning: bool = False) -> KVCache:
    """`KVCache` over `directory`/prefill.onnx and step.onnx."""
    prefill = onnx_session(Path(directory) / "prefill.onnx", threads, spinning)
    step = onnx_session(Path(directory) / "step.onnx", threads, spinning)
    return KVCache(lambda ids, mask: tuple(prefill.run(None, {"input_ids": ids, "attention_mask": mask})),
                   lambda ids, mask, past: tuple(step.run(None, {"input_ids": ids, "attention_mask": mask,
                                                                  "past": past})), pad_id)


class KVCache:
    """`CachedLM` over two exported graphs (onnxruntime sessions, or anything with their signature).

    `prefill(ids [n, T], mask [n, T]) -> (logprobs [n, vocab], present [layers, 2, n, heads, T, dim])`
    over left-padded prompts; `step(ids [n, 1], mask [n, P + 1], past [layers, 2, n, heads, P, dim])
    -> (logprobs, present [.., P + 1, ..])`. The state is (past, mask); a step gathers the parents'
    rows and appends the new token to the mask (the padding stays masked out).
    """

    def __init__(self, prefill: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                 step: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                 pad_id: int) -> None:
        self._prefill, self._step, self.pad_id = prefill, step, pad_id

    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        ids, mask = left_pad(prompts, self.pad_id)
        logprobs, present = self._prefill(ids, mask)
        return logprobs, (present, mask)

    def step(self, state: tuple[np.ndarray, np.ndarray], parents: np.ndarray,
             tokens: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        past, mask = state
        past = np.ascontiguousarray(past[:, :, parents])
        mask = np.concatenate([mask[parents], np.ones((len(parents), 1), dtype=np.int64)], axis=1)
        logprobs, present = self._step(np.asarray(tokens, dtype=np.int64).reshape(-1, 1), mask, past)
        return logprobs, (present, mask)


class Generator:
    """Novel clusters from an exported LM: what Triton's `interest_generator` and its twin run.

    `spec` is the exporter's decoder.json (pre-tokenised prompt pieces, description sequences and
    the per-cluster prior, if any); `run(ids, mask)` returns next-token log-probabilities
    [n, vocab] (an onnxruntime session over model.onnx, no cache). With `cached` (a `KVCache` over
    prefill.onnx and step.onnx) the search runs over the key/value cache instead; same answers.
    """

    def __init__(self, spec: dict, run: Callable[[np.ndarray, np.ndarray], np.ndarray] | None, top_m: int,
                 beam: int, cached: CachedLM | None = None) -> None:
        if run is None and cached is None:
            raise ValueError("Generator needs `run` (no cache) or `cached` (a KV cache)")
        self.spec, self.run, self.top_m, self.beam, self.cached = spec, run, top_m, beam, cached
        self.trie = DescriptionTrie(spec["sequences"])
        self.n_clusters = len(spec["pieces"])
        self.prior = np.asarray(spec["prior"], dtype=np.float64) if spec.get("prior") else None
        self.length_norm = spec.get("score", "sum") == "mean"  # NoveltyLM.decoder_spec

    @classmethod
    def from_directory(cls, directory: Path | str, top_m: int, beam: int, threads: int,
                       kv_cache: bool = True, spinning: bool = False) -> Generator:
        """The generator of an exported model directory (repo/interest_generator/1: decoder.json and
        the graphs), over onnxruntime: what the Triton model, its in-process twin and the export
        check each run. `kv_cache` picks prefill.onnx + step.onnx, else model.onnx; `spinning`: see
        `onnx_session`."""
        directory = Path(directory)
        spec = json.loads((directory / "decoder.json").read_text())
        if kv_cache:
            return cls(spec, None, top_m, beam, cached=onnx_kv_cache(directory, spec["pad_id"], threads, spinning))
        return cls(spec, onnx_logprobs(directory / "model.onnx", threads, spinning), top_m, beam)

    def next_logprobs(self, sequences: list[list[int]]) -> np.ndarray:
        if self.run is None:
            raise RuntimeError("this Generator was built without the no-cache graph")
        return self.run(*left_pad(sequences, self.spec["pad_id"]))

    def prompt(self, context: Sequence[int]) -> list[int]:
        spec = self.spec
        return assemble_prompt(spec["head"], spec["sep"], spec["tail"], spec["pieces"], context)

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
        prompts = [self.prompt(c.tolist()) for c in contexts]
        if self.cached is not None:
            results = beam_search_cached(self.cached, self.trie, prompts, excludes, self.top_m, self.beam, self.prior,
                                         self.length_norm)
        else:
            results = beam_search(self.next_logprobs, self.trie, prompts, excludes, self.top_m, self.beam, self.prior,
                                  self.length_norm)
        clusters = np.full((len(contexts), self.top_m), -1, dtype=np.int64)
        scores = np.full((len(contexts), self.top_m), EXCLUDED, dtype=np.float32)
        for i, r in enumerate(results):
            for j, (c, score) in enumerate(r):
                clusters[i, j], scores[i, j] = c, score
        return clusters, scores
