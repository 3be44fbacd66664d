"""Clustering items at operator-set granularity: plain k-means, or balanced by traffic.

Levels are built bottom-up: the finest level clusters the items; each coarser level clusters the
finer clusters (their centroids, weighted by traffic), so every cluster has exactly one parent.

Balanced mode (as in Wang et al.: clusters of similar traffic, so no cluster is a catch-all for
popular items): every cluster's traffic lies within [mean / factor, mean * factor]. Assignment
uses per-cluster prices (a Lagrangian relaxation of the size constraints: items go to the
cluster minimising distance + price; prices rise on clusters that are too heavy) inside Lloyd
iterations, and a final repair pass moves the cheapest items until the bounds hold exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class BalanceError(ValueError):
    """The size bound cannot be met (for example a single item heavier than a cluster may be)."""


def kmeans_pp(x: np.ndarray, k: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding, with sampling proportional to weight x squared distance."""
    n = len(x)
    first = rng.choice(n, p=weights / weights.sum())
    centers = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        p = weights * d2
        idx = rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.integers(n)
        centers.append(x[idx])
        d2 = np.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    return np.array(centers)


def sq_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[n, k] squared Euclidean distances."""
    d = (x**2).sum(1)[:, None] - 2 * x @ centers.T + (centers**2).sum(1)[None, :]
    return np.maximum(d, 0.0)


def centroids(x: np.ndarray, labels: np.ndarray, weights: np.ndarray, k: int, old: np.ndarray) -> np.ndarray:
    """Weighted means; an empty cluster keeps its previous centre."""
    out = old.copy()
    for c in range(k):
        m = labels == c
        if m.any():
            out[c] = np.average(x[m], axis=0, weights=weights[m])
    return out


def kmeans(x: np.ndarray, k: int, weights: np.ndarray | None = None, seed: int = 0, n_init: int = 10,
           iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Lloyd k-means with k-means++ seeding; the best of `n_init` runs. Returns (labels, centres)."""
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centers = kmeans_pp(x, k, np.maximum(w, 1e-12), rng)
        labels = np.full(len(x), -1)
        for _ in range(iters):
            new = sq_distances(x, centers).argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            centers = centroids(x, labels, w, k, centers)
        inertia = float((w * sq_distances(x, centers)[np.arange(len(x)), labels]).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centers)
    assert best is not None
    return best[1], best[2]


def bounds(weights: np.ndarray, k: int, factor: float) -> tuple[float, float]:
    """(lowest, highest) traffic a cluster may carry."""
    mean = weights.sum() / k
    return mean / factor, mean * factor


def price_assign(d: np.ndarray, w: np.ndarray, lo: float, hi: float, rounds: int = 300) -> np.ndarray:
    """argmin(distance + price) with prices adjusted until loads lie in [lo, hi] (or rounds run out)."""
    k = d.shape[1]
    price = np.zeros(k)
    scale = float(np.median(np.abs(d - d.min(1, keepdims=True)))) or 1.0
    step = 0.05 * scale
    labels = d.argmin(1)
    for _ in range(rounds):
        labels = (d + price).argmin(1)
        load = np.bincount(labels, weights=w, minlength=k)
        over, under = load > hi, load < lo
        if not over.any() and not under.any():
            break
        price[over] += step
        price[under] -= step
        step *= 1.02
    return labels


def repair(d: np.ndarray, w: np.ndarray, labels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Move the cheapest items until every load lies in [lo, hi]; BalanceError if that is impossible."""
    labels = labels.copy()
    k = d.shape[1]
    load = np.bincount(labels, weights=w, minlength=k)
    own = d[np.arange(len(labels)), labels]
    for _ in range(4 * len(labels) + 10):
        heavy, light = int(load.argmax()), int(load.argmin())
        if load[heavy] > hi + 1e-9:  # move something out of the heaviest cluster
            members = np.flatnonzero(labels == heavy)
            cost = d[members] - own[members, None]
            room = load[None, :] + w[members, None] <= hi + 1e-9
            room[:, heavy] = False
        elif load[light] < lo - 1e-9:  # pull something into the lightest cluster
            members = np.flatnonzero((labels != light) & (load[labels] - w >= lo - 1e-9)
                                     & (load[light] + w <= hi + 1e-9))
            cost = np.full((len(members), k), np.inf)
            cost[:, light] = d[members, light] - own[members]
            room = np.isfinite(cost)
        else:
            return labels
        cost = np.where(room, cost, np.inf)
        if not len(members) or not np.isfinite(cost).any():
            raise BalanceError(f"cannot keep every cluster's traffic within [{lo:.4g}, {hi:.4g}]: no item can move "
                               f"(cluster loads {np.round(load, 1).tolist()}); raise the balance factor or use "
                               "fewer clusters")
        i, c = np.unravel_index(int(np.argmin(cost)), cost.shape)
        item = members[i]
        load[labels[item]] -= w[item]
        load[c] += w[item]
        labels[item] = c
        own[item] = d[item, c]
    raise BalanceError("balancing did not converge")


def balanced_kmeans(x: np.ndarray, k: int, traffic: np.ndarray, factor: float = 2.0, seed: int = 0,
                    iters: int = 25, mass: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means whose clusters' total traffic stays within `factor` of the mean. Returns (labels, centres).

    Geometry (seeding, centres) uses `mass` (default: one per point), the bound uses `traffic`:
    weighting centres by traffic lets a few blockbusters drag them and lands in worse optima
    (measured on the planted data: ARI 0.80 with traffic-weighted centres, 1.0 without).
    """
    if factor < 1:
        raise ValueError(f"the balance factor must be >= 1, got {factor}")
    w = np.asarray(traffic, np.float64)
    m = np.ones(len(x)) if mass is None else np.asarray(mass, np.float64)
    lo, hi = bounds(w, k, factor)
    if w.max() > hi:
        i = int(w.argmax())
        raise BalanceError(f"unit {i} alone carries {w[i]:.4g} of traffic, more than a cluster may ({hi:.4g}); "
                           "raise the balance factor or use fewer clusters")
    labels, centers = kmeans(x, k, m, seed=seed)
    for _ in range(iters):
        new = price_assign(sq_distances(x, centers), w, lo, hi)
        centers = centroids(x, new, m, k, centers)
        if np.array_equal(new, labels):
            break
        labels = new
    labels = repair(sq_distances(x, centers), w, labels, lo, hi)
    return labels, centroids(x, labels, m, k, centers)


@dataclass(frozen=True)
class Hierarchy:
    """Cluster labels per level, coarse to fine, and each cluster's parent one level up."""

    sizes: list[int]
    labels: list[np.ndarray]  # [level] -> int32 [n_items]
    parents: list[np.ndarray | None]  # [level] -> int32 [n_clusters at level], None for level 0


def cluster_levels(x: np.ndarray, sizes: list[int], traffic: np.ndarray, mode: str = "balanced",
                   factor: float = 2.0, seed: int = 0,
                   on_level: Callable[[int], None] | None = None) -> Hierarchy:
    """Cluster items into nested levels of the given sizes (coarse to fine), bottom-up."""
    if list(sizes) != sorted(set(sizes)) or not sizes or sizes[0] < 1:
        raise ValueError(f"levels must be strictly increasing positive cluster counts, got {sizes}")
    if sizes[-1] > len(x):
        raise ValueError(f"the finest level asks for {sizes[-1]} clusters but there are only {len(x)} items")
    if mode not in {"balanced", "kmeans"}:
        raise ValueError(f"mode must be 'balanced' or 'kmeans', got {mode!r}")
    w = np.maximum(np.asarray(traffic, np.float64), 1e-9)

    def fit(points: np.ndarray, k: int, unit_traffic: np.ndarray, unit_mass: np.ndarray):
        if mode == "balanced":
            return balanced_kmeans(points, k, unit_traffic, factor, seed, mass=unit_mass)
        return kmeans(points, k, unit_mass, seed=seed)

    labels_fine, centers = fit(x, sizes[-1], w, np.ones(len(x)))
    labels = [labels_fine.astype(np.int32)]
    parents: list[np.ndarray | None] = []
    unit_traffic = np.bincount(labels_fine, weights=w, minlength=sizes[-1])
    unit_mass = np.bincount(labels_fine, minlength=sizes[-1]).astype(np.float64)
    if on_level:
        on_level(len(sizes) - 1)
    for level in range(len(sizes) - 2, -1, -1):
        unit_labels, centers = fit(centers, sizes[level], unit_traffic, np.maximum(unit_mass, 1e-9))
        parents.insert(0, unit_labels.astype(np.int32))
        labels.insert(0, unit_labels[labels[0]].astype(np.int32))
        unit_traffic = np.bincount(unit_labels, weights=unit_traffic, minlength=sizes[level])
        unit_mass = np.bincount(unit_labels, weights=unit_mass, minlength=sizes[level])
        if on_level:
            on_level(level)
    return Hierarchy(list(sizes), labels, [None, *parents])


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """ARI of two labelings (Hubert & Arabie), for checking recovery of planted clusters."""
    from math import comb

    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), np.int64)
    np.add.at(table, (ai, bi), 1)
    pairs = sum(comb(int(v), 2) for v in table.ravel())
    rows = sum(comb(int(v), 2) for v in table.sum(1))
    cols = sum(comb(int(v), 2) for v in table.sum(0))
    total = comb(len(a), 2)
    expected = rows * cols / total if total else 0.0
    top = (rows + cols) / 2
    return 1.0 if top == expected else float((pairs - expected) / (top - expected))
