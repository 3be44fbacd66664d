"""Synthetic interactions with planted structure: known clusters, known moves between them.

Items belong to planted clusters, each with its own theme words (so descriptions can be checked
by eye). Users wander between clusters by a known rule: stay in the current cluster with
probability `stay`, otherwise move to one of the cluster's `n_successors` planted successors
(a fixed, sparse transition matrix). Inside a cluster, items are drawn with Zipf popularity, so
traffic is skewed as in real data. Deterministic by seed; used by tests and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interests.data.datasets import Dataset, build_dataset

THEMES = [
    ["space", "alien", "planet", "rocket", "galaxy", "orbit"],
    ["pirate", "ship", "treasure", "island", "sailor", "storm"],
    ["detective", "murder", "clue", "suspect", "alibi", "inspector"],
    ["wizard", "dragon", "spell", "castle", "quest", "sword"],
    ["cowboy", "desert", "sheriff", "saloon", "horse", "outlaw"],
    ["robot", "android", "circuit", "factory", "laser", "cyborg"],
    ["wedding", "romance", "kiss", "bride", "letter", "love"],
    ["zombie", "ghost", "haunted", "curse", "crypt", "scream"],
    ["football", "coach", "stadium", "champion", "rookie", "league"],
    ["chef", "kitchen", "recipe", "bakery", "feast", "spice"],
    ["soldier", "battle", "trench", "general", "siege", "medal"],
    ["jazz", "piano", "singer", "concert", "rhythm", "stage"],
    ["heist", "vault", "casino", "getaway", "safecracker", "loot"],
    ["dinosaur", "fossil", "jungle", "volcano", "expedition", "swamp"],
    ["spy", "agent", "embassy", "cipher", "double", "mission"],
    ["courtroom", "lawyer", "verdict", "jury", "trial", "witness"],
    ["ocean", "whale", "reef", "diver", "submarine", "tide"],
    ["samurai", "ninja", "dojo", "shogun", "katana", "temple"],
    ["hacker", "virus", "network", "firewall", "password", "server"],
    ["puppy", "kitten", "farm", "pony", "barn", "meadow"],
    ["mountain", "climber", "glacier", "summit", "avalanche", "rope"],
    ["vampire", "castle-night", "fang", "count", "coffin", "moon"],
    ["teacher", "school", "exam", "classroom", "principal", "homework"],
    ["astronaut", "moonbase", "capsule", "launch", "mission-control", "crater"],
]
FILLER = ["story", "night", "return", "secret", "last", "city", "home", "journey", "day", "legend"]


@dataclass(frozen=True)
class SyntheticTruth:
    """What was planted: each item's cluster, the transition matrix, each cluster's theme words."""

    item_cluster: np.ndarray  # int [n_items], by dense item index of the Dataset
    transitions: np.ndarray  # float [K, K]: P(next cluster | cluster) when a user moves
    stay: float
    themes: list[list[str]]


def theme_words(cluster: int) -> list[str]:
    """The planted theme words of a cluster (made-up but unique words beyond the word list)."""
    if cluster < len(THEMES):
        return THEMES[cluster]
    base = THEMES[cluster % len(THEMES)]
    return [f"{w}{cluster // len(THEMES) + 1}" for w in base]


def planted_transitions(n_clusters: int, n_successors: int, rng: np.random.Generator) -> np.ndarray:
    """Each cluster moves to `n_successors` other clusters with decreasing probability.

    The clusters are put on a shuffled ring and cluster i moves to the ones 1, 2, ... places on,
    so the matrix is doubly stochastic: every cluster gets the same long-run traffic, and a
    balanced clustering can recover the planted one.
    """
    n_successors = min(n_successors, n_clusters - 1)
    t = np.zeros((n_clusters, n_clusters))
    probs = 1.0 / np.arange(1, n_successors + 1)
    probs /= probs.sum()
    ring = rng.permutation(n_clusters)
    for pos, c in enumerate(ring):
        for step, p in enumerate(probs, start=1):
            t[c, ring[(pos + step) % n_clusters]] = p
    return t


def make_synthetic(n_clusters: int = 8, items_per_cluster: int = 40, n_users: int = 400, min_len: int = 20,
                   max_len: int = 60, stay: float = 0.75, n_successors: int = 2, zipf: float = 1.1,
                   seed: int = 0) -> tuple[Dataset, SyntheticTruth]:
    """Generate a dataset and the truth it was generated from."""
    rng = np.random.default_rng(seed)
    k, m = n_clusters, items_per_cluster
    trans = planted_transitions(k, n_successors, rng)
    popularity = 1.0 / np.arange(1, m + 1) ** zipf
    popularity /= popularity.sum()
    item_names = [f"i{c:03d}-{j:03d}" for c in range(k) for j in range(m)]
    users, items, stamps = [], [], []
    for u in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        cluster = int(rng.integers(k))
        t = 1_600_000_000 + int(rng.integers(0, 86400 * 30))
        for _ in range(length):
            j = int(rng.choice(m, p=popularity))
            users.append(f"u{u:05d}")
            items.append(item_names[cluster * m + j])
            stamps.append(t)
            t += int(rng.integers(60, 7200))
            if rng.random() > stay:
                cluster = int(rng.choice(k, p=trans[cluster]))
    titles, texts = {}, {}
    for c in range(k):
        words = theme_words(c)
        for j in range(m):
            name = item_names[c * m + j]
            picked = rng.choice(words, size=2, replace=False)
            titles[name] = f"The {picked[0].title()} {rng.choice(FILLER).title()} {j + 1}"
            texts[name] = ", ".join([*picked, *rng.choice(words, size=2, replace=False), str(rng.choice(FILLER))])
    ds = build_dataset(f"synthetic-k{k}-s{seed}", users, items, np.asarray(stamps),
                       events=["view"] * len(users), item_text={"title": titles, "keywords": texts},
                       list_fields=("keywords",))
    cluster_of = {name: i // m for i, name in enumerate(item_names)}
    truth = SyntheticTruth(np.array([cluster_of[i] for i in ds.item_ids]), trans, stay,
                           [theme_words(c) for c in range(k)])
    return ds, truth
