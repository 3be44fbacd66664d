"""Statistics a reviewer asks for when two recommenders are compared on the same moments.

- paired counts and the exact McNemar test: two methods judged on the very same moments differ
  only where one hits and the other misses; under "no difference" those discordant moments fall
  either way with probability 1/2;
- a bootstrap interval of a hit rate, resampled *by user*: moments of one user are not
  independent (a user who is easy to predict is easy at every moment), so resampling moments
  would give intervals that are too narrow.

Pure numpy; every function takes per-moment 0/1 hits, with -1 for "no target at this moment".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def mcnemar_p(won: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: discordant pairs against Binomial(won + lost, 1/2)."""
    n, k = won + lost, min(won, lost)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired(hits: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Moments hit only by `hits` (won), only by `other` (lost), and the exact McNemar p.

    Moments where either side has no target (-1) are left out.
    """
    hits, other = np.asarray(hits), np.asarray(other)
    both = (hits >= 0) & (other >= 0)
    won = int(((hits == 1) & (other == 0) & both).sum())
    lost = int(((hits == 0) & (other == 1) & both).sum())
    return {"won": won, "lost": lost, "p": mcnemar_p(won, lost)}


def bootstrap_interval(hits: np.ndarray, users: np.ndarray, rounds: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the hit rate, resampling users with replacement.

    Each round draws as many users as there are, takes all moments of each drawn user (a user
    drawn twice counts twice) and computes the hit rate over those moments. Moments with no
    target (-1) are left out. NaN bounds when there is no moment.
    """
    hits, users = np.asarray(hits), np.asarray(users)
    keep = hits >= 0
    hits, users = hits[keep].astype(np.float64), users[keep]
    if not len(hits):
        return float("nan"), float("nan")
    ids, inverse = np.unique(users, return_inverse=True)
    per_user_hits = np.bincount(inverse, weights=hits, minlength=len(ids))
    per_user_n = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(rounds, len(ids)))
    rates = per_user_hits[draws].sum(1) / per_user_n[draws].sum(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(rates, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_difference(a: np.ndarray, users_a: np.ndarray, b: np.ndarray, users_b: np.ndarray,
                         rounds: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of rate(a) - rate(b), resampling users with replacement, one draw of
    users for both: two methods measured on the same users but not on the same moments (their proposals
    differ, so their outcomes cannot be paired one to one as `paired` does)."""
    ids, inverse = np.unique(np.concatenate([users_a, users_b]), return_inverse=True)
    ia, ib = inverse[:len(users_a)], inverse[len(users_a):]
    sums = [np.bincount(i, weights=np.asarray(x, np.float64), minlength=len(ids)) for i, x in ((ia, a), (ib, b))]
    counts = [np.bincount(i, minlength=len(ids)).astype(np.float64) for i in (ia, ib)]
    if not len(ia) or not len(ib):
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(rounds, len(ids)))
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = sums[0][draws].sum(1) / counts[0][draws].sum(1) - sums[1][draws].sum(1) / counts[1][draws].sum(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(diff, [tail, 100 - tail])
    return float(lo), float(hi)


def best_method(rates: Mapping[str, float], candidates: set[str] | None = None) -> str | None:
    """The name with the highest rate among `candidates` (all by default); ties go to the first listed.

    NaN rates never win. None when no candidate has a rate.
    """
    best, best_rate = None, -math.inf
    for name, rate in rates.items():
        if (candidates is None or name in candidates) and rate == rate and rate > best_rate:
            best, best_rate = name, rate
    return best
