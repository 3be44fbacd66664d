"""A new item placed in a catalog cluster on arrival, from its text alone (issue 27, item 1).

Why text: an item that has just arrived has no interactions, so the behaviour half of the catalog's
item embedding (PPMI-SVD of co-occurrence) says nothing about it; its text (title, genres, tags) is
known from the start. Why the catalog build's own text embedding: the clusters were cut from it (mixed
with behaviour), so a new item is compared with known items in the very space they were grouped in.

- `TextPlacer` keeps what the build's text part learnt: for TF-IDF, the vocabulary, the idf and the
  SVD's V^T and S, so that a new text is vectorised exactly as `TfidfVectorizer` would (same words,
  sublinear tf, idf, l2 norm) and embedded as normalize(x V^T / sqrt(S)), which is the build's
  U sqrt(S) row for a text of the fit (exactly when the randomised SVD is exact, as on small data; on
  MovieLens a training text re-encoded has cosine >= 0.98 with its build row, median 0.99997); for
  MiniLM, the mean the build subtracts. And per level, each cluster's text centroid: the
  L2-normalised mean of its members' text embeddings (the build's rows, not re-encoded ones).
- The rule (`TextPlacer.place`): the nearest centroid by cosine, distance = 1 - cosine, ties to the
  lowest cluster id. A text with nothing usable (blank, or no word of the vocabulary: a zero vector)
  goes to the level's most-trafficked cluster with distance 1.0: with no evidence, the cluster most
  interactions fall in is the least surprising home, and 1.0 (cosine 0) says that nothing matched.
  A cluster none of whose members has text gets a zero centroid, which never wins.
- On disk: one file, `placement.npz`, beside the catalog's `catalog.json` (numpy arrays and a JSON
  string of metadata, no pickle). It records the catalog version it was fitted for, and
  `load_placement(directory, catalog)` refuses another catalog's. The catalog's version hashes
  clusters and items only, so the extra file leaves it (and `Catalog.load`) untouched.

Each level is placed on its own: a placement at a fine level is not forced to sit under the coarse
level's placement (`benchmarks/research/placement.py` measures how often it does).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from interests.clusters.catalog import Catalog, CatalogError, check_same_items
from interests.clusters.embeddings import (
    TOKEN_PATTERN,
    minilm_embed,
    normalize_rows,
    resolve_text_encoder,
    tfidf_fit,
)
from interests.configs import BuildConfig
from interests.data.datasets import Dataset

PLACEMENT_FILE = "placement.npz"
FORMAT = 1
ENCODERS = ("tfidf", "minilm")
_TOKENS = re.compile(TOKEN_PATTERN)
# Rows of text embeddings are unit vectors or "nothing": exact zeros here, but the build's TF-IDF rows of
# a blank text are SVD rounding noise scaled up by `normalize_rows` (norms up to ~1e-4). Below this, nothing.
_USABLE_NORM = 1e-3


class PlacementError(CatalogError):
    """A placement file that is malformed, or was fitted for another catalog than the one it is used with."""


@dataclass(frozen=True, eq=False)
class TextPlacer:
    """Embeds a text as the catalog build would, and places it in the nearest cluster of a level."""

    encoder: str  # "tfidf" or "minilm"
    catalog_version: str  # the catalog whose clusters the centroids are
    dim: int  # TF-IDF: the SVD components asked for (as the build's --dim); MiniLM: the vector size
    seed: int  # the SVD's seed (the build's --seed)
    centroids: tuple[np.ndarray, ...]  # per level float32 [clusters, d]: unit rows, or zero rows (no text)
    fallback: tuple[int, ...]  # per level: the most-trafficked cluster, the home of a text with nothing usable
    n_fitted: int = 0  # items whose text the placer was fitted on
    vocabulary: tuple[str, ...] = ()  # TF-IDF terms, in column order
    idf: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float64 [n_terms]
    components: np.ndarray = field(default_factory=lambda: np.zeros((1, 0)))  # V^T, float64 [d, n_terms]
    singular_values: np.ndarray = field(default_factory=lambda: np.ones(1))  # S, float64 [d]
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))  # MiniLM: the mean the build subtracts

    @property
    def n_levels(self) -> int:
        return len(self.centroids)

    @cached_property
    def _columns(self) -> dict[str, int]:
        return {term: j for j, term in enumerate(self.vocabulary)}

    def tfidf(self, texts: Sequence[str]):  # type: ignore[no-untyped-def]
        """Sparse [n, n_terms] TF-IDF rows as the fitted `TfidfVectorizer` gives them: lower-cased, the build's
        token pattern, words outside the vocabulary dropped, tf -> 1 + log(tf), times idf, rows L2-normalised."""
        from scipy import sparse

        columns = self._columns
        rows: list[int] = []
        cols: list[int] = []
        counts: list[float] = []
        for r, text in enumerate(texts):
            found = Counter(columns[t] for t in _TOKENS.findall(text.lower()) if t in columns)
            rows += [r] * len(found)
            cols += list(found)
            counts += list(found.values())
        values = (1.0 + np.log(np.asarray(counts, np.float64))) * self.idf[np.asarray(cols, np.int64)]
        x = sparse.csr_matrix((values, (rows, cols)), shape=(len(texts), len(self.vocabulary)))
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        return sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ x

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [n, d] text embeddings as the catalog build's text part computes them; zero rows for texts
        with nothing usable (blank, or, for TF-IDF, no word of the vocabulary)."""
        texts = list(texts)
        d = self.centroids[0].shape[1] if self.centroids else \
            len(self.mean) if self.encoder == "minilm" else len(self.singular_values)  # an encoder without clusters
        out = np.zeros((len(texts), d), np.float32)
        if self.encoder == "minilm":
            # A blank text carries nothing: MiniLM's vector of an empty string would place it arbitrarily.
            keep = [i for i, t in enumerate(texts) if t.strip()]
            if keep:
                vectors = minilm_embed([texts[i] for i in keep], progress=False)
                out[keep] = normalize_rows(vectors - self.mean)
            return out
        if not self.vocabulary or not texts:
            return out
        x = self.tfidf(texts)
        return normalize_rows(np.asarray(x @ self.components.T) / np.sqrt(self.singular_values))

    def place_vectors(self, vectors: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """`place` for vectors already encoded (rows of `encode`)."""
        if not 0 <= level < self.n_levels:
            raise IndexError(f"level {level} out of range: the catalog has {self.n_levels} levels")
        centroids = self.centroids[level]
        v = np.asarray(vectors, np.float64)
        norms = np.linalg.norm(v, axis=1)
        has_text = np.linalg.norm(centroids, axis=1) > _USABLE_NORM
        cosine = (v / np.maximum(norms, 1e-12)[:, None]) @ centroids.T.astype(np.float64)
        cosine[:, ~has_text] = -np.inf  # a cluster without text never wins
        best = cosine.argmax(axis=1) if len(v) else np.zeros(0, np.int64)  # first maximum: the lowest id
        distance = np.clip(1.0 - cosine[np.arange(len(v)), best], 0.0, 2.0)
        unusable = (norms <= _USABLE_NORM) | (not has_text.any())
        best[unusable] = self.fallback[level]
        distance[unusable] = 1.0
        return best.astype(np.int64), distance

    def place(self, texts: Sequence[str], level: int) -> tuple[np.ndarray, np.ndarray]:
        """(cluster id int64 [n], distance float64 [n]) of each text at `level` (0 = coarsest).

        The rule: the cluster whose text centroid is nearest by cosine, distance = 1 - cosine (0: same
        direction, 2: opposite), ties to the lowest cluster id. A text with nothing usable (an all-zero
        embedding: blank, or no word of the TF-IDF vocabulary) gets the level's most-trafficked cluster
        (`Cluster.traffic`, ties to the lowest id) with distance 1.0, as does every text when no cluster
        of the level has text.
        """
        return self.place_vectors(self.encode(texts), level)


def _from_meta(catalog: Catalog) -> tuple[str | None, int | None, int | None]:
    """(text encoder, dim, seed) the catalog's build recorded, None where it did not.

    `build_catalog` records the encoder it used ('none' when the clusters had no text part) and the seed;
    the dim only inside the embedding's one-line description ("PPMI-SVD(window=5, dim=64) + ...")."""
    meta = catalog.meta or {}
    encoder = meta.get("text_encoder")
    found = re.search(r"\bdim=(\d+)", str(meta.get("embedding", "")))
    seed = meta.get("seed")
    return (encoder if encoder in ENCODERS else None, int(found.group(1)) if found else None,
            int(seed) if isinstance(seed, int) else None)


def fit_placer(ds: Dataset, catalog: Catalog, encoder: str | None = None, dim: int | None = None,
               seed: int | None = None, items: np.ndarray | None = None, progress: bool = False) -> TextPlacer:
    """Fit a placer for `catalog` on the text of `ds`'s items (the catalog's items, same order).

    `encoder` ('tfidf', 'minilm' or 'auto'), `dim` and `seed` default to what the catalog's build used
    (its `meta`), else to `BuildConfig`'s defaults ('tfidf' when the clusters had no text part), so
    that a new text lands in the space the clusters were cut from. `items`: the dense item indices
    whose text fits the encoder and the centroids (default: all); the others are as unseen, which is
    how `benchmarks/research/placement.py` holds items out.
    """
    check_same_items(catalog, ds.item_ids)
    recorded_encoder, recorded_dim, recorded_seed = _from_meta(catalog)
    used = resolve_text_encoder(encoder or recorded_encoder or "tfidf")
    dim = dim if dim is not None else recorded_dim if recorded_dim is not None else BuildConfig.dim
    seed = seed if seed is not None else recorded_seed if recorded_seed is not None else BuildConfig.seed
    fitted = np.arange(ds.n_items) if items is None else np.unique(np.asarray(items, np.int64))
    texts = [ds.text_of(int(i)) for i in fitted]
    pieces: dict = {}
    if used == "minilm":
        raw = minilm_embed(texts, progress=progress)
        mean = raw.mean(0)  # as `text_embeddings` centres them
        vectors = normalize_rows(raw - mean)
        pieces["mean"] = mean.astype(np.float32)
    else:
        fit = tfidf_fit(texts, dim, seed)
        vectors = fit.vectors
        pieces.update(vocabulary=tuple(fit.vocabulary), idf=fit.idf, components=fit.components,
                      singular_values=fit.singular_values)
    usable = np.array([bool(t.strip()) for t in texts], bool) & (np.linalg.norm(vectors, axis=1) > _USABLE_NORM)
    centroids, fallback = [], []
    for level, k in enumerate(catalog.levels):
        sums = np.zeros((k, vectors.shape[1]))
        np.add.at(sums, catalog.assignments[level][fitted][usable], vectors[usable])
        centroids.append(normalize_rows(sums))  # a cluster without text stays a zero row
        fallback.append(int(np.argmax([c.traffic for c in catalog.clusters[level]])))
    return TextPlacer(used, catalog.version, dim if used == "tfidf" else vectors.shape[1], seed, tuple(centroids),
                      tuple(fallback), len(fitted), **pieces)


def save_placement(directory: Path, placer: TextPlacer) -> Path:
    """Write `placer` to `directory/placement.npz` (beside the catalog), atomically; the path written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "encoder": placer.encoder, "catalog_version": placer.catalog_version,
            "dim": placer.dim, "seed": placer.seed, "n_fitted": placer.n_fitted,
            "levels": [len(c) for c in placer.centroids]}
    arrays = {f"centroids_{lv}": c for lv, c in enumerate(placer.centroids)}
    path = directory / PLACEMENT_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), fallback=np.array(placer.fallback, np.int64),
                 vocabulary=np.array(placer.vocabulary, dtype=str), idf=placer.idf, components=placer.components,
                 singular_values=placer.singular_values, mean=placer.mean, **arrays)
    os.replace(tmp, path)
    return path


def load_placement(directory: Path, catalog: Catalog | None = None) -> TextPlacer | None:
    """The placer saved in `directory`, or None when there is none (a catalog built before placement existed).

    With `catalog`, a placer fitted for another catalog version is refused (`PlacementError`): its centroids
    are another catalog's clusters, and its ids would name the wrong ones.
    """
    path = Path(directory) / PLACEMENT_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise PlacementError(f"{path}: placement format {meta.get('format')}, this code reads {FORMAT}")
            centroids = tuple(z[f"centroids_{lv}"].astype(np.float32) for lv in range(len(meta["levels"])))
            placer = TextPlacer(meta["encoder"], meta["catalog_version"], int(meta["dim"]), int(meta["seed"]),
                                centroids, tuple(int(c) for c in z["fallback"]), int(meta["n_fitted"]),
                                tuple(str(t) for t in z["vocabulary"]), z["idf"], z["components"],
                                z["singular_values"], z["mean"])
    except PlacementError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:  # a truncated or foreign file
        raise PlacementError(f"{path}: unreadable placement file: {e}") from e
    if placer.encoder not in ENCODERS:
        raise PlacementError(f"{path}: unknown text encoder {placer.encoder!r}")
    if catalog is not None and placer.catalog_version != catalog.version:
        raise PlacementError(f"{path} was fitted for catalog {placer.catalog_version}, not for catalog "
                             f"{catalog.version}: fit it again for this catalog (fit_placer, save_placement)")
    return placer
