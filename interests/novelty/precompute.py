"""The precomputed novelty table (the paper's M^K table): top clusters for every context, in batches.

Each row is `{context, clusters, scores, catalog_version}`; contexts are decoded once, whichever
user is in them, so the streaming engine looks them up instead of running the LM per event.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from interests.novelty.rules import Proposals
from interests.runtime.constrained import DescriptionTrie, beam_search, beam_search_cached

TABLE_DEPTH_CAP = 64


def table_depth(n_clusters: int, k: int, cap: int = TABLE_DEPTH_CAP) -> int:
    """How many clusters a table row ranks: every one a context leaves, up to `cap`.

    A worker drops the user's known clusters from the row and needs M left; a short row (the
    top 10 of 32, say) runs dry for users who know most of them, and each such user then costs a
    live beam search with their exclusions, per batch (on an 8-cluster catalog, most users). A
    row that ranks every cluster, decoded with a beam as wide, is exhaustive, and since scores are
    plain log-probabilities, filtering it gives exactly what a live call with those exclusions
    would: the table then answers every user of a seen context.
    """
    return max(1, min(n_clusters - k, cap))


def precompute(lm, contexts: Sequence[Sequence[int]], top: int, beam: int, use_prior: bool = True,  # type: ignore[no-untyped-def]
               cache: bool = True, batch: int = 64, progress: bool = True) -> list[dict]:
    """Constrained beam search over every context (its own clusters excluded), `batch` at a time."""
    prior = lm.prior if use_prior else None
    trie = DescriptionTrie(lm.sequences)
    batch = lm.contexts_per_batch(max(beam, top), batch)  # a base model's key/value cache bounds the batch
    rows: list[dict] = []
    with tqdm(total=len(contexts), desc="contexts", unit="ctx", disable=not progress) as bar:
        for start in range(0, len(contexts), batch):
            chunk = [list(map(int, c)) for c in contexts[start:start + batch]]
            prompts, excludes = [lm.prompt_ids(c) for c in chunk], [set(c) for c in chunk]
            if cache:
                results = beam_search_cached(lm, trie, prompts, excludes, top, max(beam, top), prior)
            else:
                results = beam_search(lm.next_logprobs, trie, prompts, excludes, top, max(beam, top), prior)
            for ctx, r in zip(chunk, results, strict=True):
                rows.append({"context": ctx, "clusters": [c for c, _ in r], "scores": [round(s, 5) for _, s in r],
                             "catalog_version": lm.meta["catalog_version"]})
            bar.update(len(chunk))
    return rows


def lm_proposals(lm, contexts: np.ndarray, excludes: Sequence[set[int] | frozenset[int]], m: int,  # type: ignore[no-untyped-def]
                 beam: int = 8, batch: int = 64, prior: np.ndarray | None = None,
                 cache: bool = True) -> tuple[Proposals, list[list[float]]]:
    """The LM's top-M clusters (and scores) per context, by constrained beam search (over the LM's
    key/value cache unless `cache` is False), with an optional per-cluster prior added to the scores."""
    trie = DescriptionTrie(lm.sequences)
    prompt_of: dict[tuple[int, ...], list[int]] = {}
    ids, scores = [], []
    for start in range(0, len(contexts), batch):
        chunk = contexts[start:start + batch]
        prompts = []
        for c in chunk:
            key = tuple(int(v) for v in c)
            if key not in prompt_of:
                prompt_of[key] = lm.prompt_ids(c)
            prompts.append(prompt_of[key])
        if cache:
            results = beam_search_cached(lm, trie, prompts, excludes[start:start + batch], m, max(beam, m), prior)
        else:
            results = beam_search(lm.next_logprobs, trie, prompts, excludes[start:start + batch], m, max(beam, m),
                                  prior)
        for r in results:
            ids.append([c for c, _ in r])
            scores.append([s for _, s in r])
    return ids, scores
