"""Cluster descriptions in words: class-based TF-IDF over the items' text.

Each item's text becomes terms: list fields (`Dataset.list_fields`: genres, tags, keywords, as
the loaders found them, ", "-joined) give whole phrases ("sci-fi", "dark comedy"); free text
(titles) gives words without stop words, years and numbers. A cluster is one class: its term
frequencies (items weighted by log traffic, so popular items count more without drowning the
rest) are normalised and multiplied by
idf = log(1 + average class size / frequency of the term over all classes), as in BERTopic's
c-TF-IDF. The top terms, most distinctive first, make the description.

Descriptions are unique at a level by construction: where two clusters' keyword sets collide,
each takes its next-best term until they differ; what still collides gets a numeral.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from interests.data.datasets import Dataset

STOP_WORDS = frozenset([
    "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "from", "by", "with", "without",
    "into", "onto", "over", "under", "about", "after", "before", "is", "are", "was", "were", "be", "been",
    "being", "it", "its", "this", "that", "these", "those", "his", "her", "their", "our", "your", "my", "me",
    "we", "you", "he", "she", "they", "them", "him", "i", "ii", "iii", "iv", "v", "vi", "part", "la", "le",
    "les", "el", "de", "del", "der", "die", "das", "und", "et", "il", "lo", "los", "las", "un", "une",
])
_WORD = re.compile(r"[a-z][a-z'\-]+")


FREE_TEXT_WEIGHT = 0.25  # a title word says less about a cluster than a genre or a tag


def item_terms(ds: Dataset) -> list[dict[str, float]]:
    """The weighted terms of every item, from all its text fields.

    Phrases from list-like fields count 1 each, words of free text (titles) count
    FREE_TEXT_WEIGHT: on MovieLens, unweighted title words gave descriptions such as
    "how, kill, welcome, back".
    """
    fields = [(values, name in ds.list_fields) for name, values in ds.item_text.items()]
    out = []
    for i in range(ds.n_items):
        terms: dict[str, float] = {}
        for values, as_list in fields:
            text = values[i]
            if not text:
                continue
            if as_list:
                found, weight = [p.strip().lower() for p in text.split(",") if p.strip()], 1.0
            else:
                text = re.sub(r"\(\d{4}\)", " ", text.lower())  # "(1995)"
                found = [w.strip("'-") for w in _WORD.findall(text) if w not in STOP_WORDS and len(w) > 2]
                weight = FREE_TEXT_WEIGHT
            for term in found:
                terms[term] = terms.get(term, 0.0) + weight
        out.append(terms)
    return out


def class_tfidf(terms: list[dict[str, float]], labels: np.ndarray, k: int,
                item_weight: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(vocabulary, scores [k, V]) of c-TF-IDF."""
    vocab: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for i, item_terms_ in enumerate(terms):
        for term, n in item_terms_.items():
            rows.append(labels[i])
            cols.append(vocab.setdefault(term, len(vocab)))
            vals.append(n * item_weight[i])
    tf = np.zeros((k, max(len(vocab), 1)))
    np.add.at(tf, (np.asarray(rows, int), np.asarray(cols, int)), np.asarray(vals, float))
    class_size = tf.sum(1, keepdims=True)
    freq = tf.sum(0)
    idf = np.log(1 + class_size.mean() / np.maximum(freq, 1e-12))
    scores = tf / np.maximum(class_size, 1e-12) * idf
    return list(vocab), scores


def unique_descriptions(ranked: list[list[str]], n_terms: int, max_terms: int) -> list[list[str]]:
    """Take `n_terms` per cluster; extend colliding keyword sets with next-best terms up to `max_terms`."""
    chosen = [r[:n_terms] for r in ranked]
    for _ in range(max_terms - n_terms):
        groups: dict[frozenset[str], list[int]] = {}
        for c, terms in enumerate(chosen):
            groups.setdefault(frozenset(terms), []).append(c)
        clashes = [cs for cs in groups.values() if len(cs) > 1]
        if not clashes:
            break
        for cs in clashes:
            for c in cs:
                extra = [t for t in ranked[c] if t not in chosen[c]]
                if extra:
                    chosen[c].append(extra[0])
    seen: Counter[frozenset[str]] = Counter()
    for terms in chosen:
        key = frozenset(terms)
        seen[key] += 1
        if seen[key] > 1:  # nothing distinguishes them in their text: number them
            terms.append(f"({seen[key]})")
    return chosen


def describe_clusters(ds: Dataset, labels: np.ndarray, k: int, n_terms: int = 4, max_terms: int = 6,
                      terms: list[dict[str, float]] | None = None) -> list[list[str]]:
    """Keywords (most distinctive first) for each of `k` clusters; unique as sets across clusters."""
    if not 1 <= n_terms <= max_terms:
        raise ValueError(f"need 1 <= n_terms <= max_terms, got {n_terms}, {max_terms}")
    terms = terms if terms is not None else item_terms(ds)
    weight = 1.0 + np.log1p(ds.item_traffic())
    vocab, scores = class_tfidf(terms, labels, k, weight)
    ranked = []
    for c in range(k):
        order = np.argsort(-scores[c], kind="stable")
        ranked.append([vocab[j] for j in order[: max_terms * 3] if scores[c, j] > 0] if vocab else [])
    described = unique_descriptions(ranked, n_terms, max_terms)
    return [d if d else [f"cluster {c}"] for c, d in enumerate(described)]
