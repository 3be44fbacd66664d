"""Derive this sample from MovieLens latest-small: the template for a user's own data.

Run from the repository root (the output is committed, so only to change the sample):

    .venv/bin/python examples/own-data/derive.py /path/to/ml-latest-small

It keeps the 300 most-rated movies and a seeded random set of users who rated at least 20 of
them, up to about 7,000 ratings, and writes the generic format with what real exports have and
MovieLens' own files lack: items keyed by IMDb id (leading zeros), the title in a column called
`name`, genres as `Crime|Drama|Thriller` and tags as `dark;twist ending` (a second separator).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

MOVIES, MIN_RATINGS, MAX_INTERACTIONS, SEED = 300, 20, 7000, 0


def main(source: Path, out: Path) -> None:
    ratings = pd.read_csv(source / "ratings.csv")
    movies = pd.read_csv(source / "movies.csv")
    links = pd.read_csv(source / "links.csv", dtype={"imdbId": str})
    tags = pd.read_csv(source / "tags.csv")
    top = ratings["movieId"].value_counts().index[:MOVIES]
    kept = ratings[ratings["movieId"].isin(top)]
    per_user = kept["userId"].value_counts()
    users = np.random.default_rng(SEED).permutation(np.sort(per_user.index[per_user >= MIN_RATINGS].to_numpy()))
    chosen, total = [], 0
    for u in users:
        if total + per_user[u] > MAX_INTERACTIONS:
            continue
        chosen.append(u)
        total += per_user[u]
    kept = kept[kept["userId"].isin(chosen)]
    imdb = dict(zip(links["movieId"], links["imdbId"], strict=True))

    by_movie: dict[int, list[str]] = {}
    for movie, tag in zip(tags["movieId"], tags["tag"].str.strip().str.lower(), strict=True):
        if movie in top and tag and not any(s in tag for s in "|;,") and tag not in by_movie.setdefault(movie, []):
            by_movie[movie].append(tag)
    items = movies[movies["movieId"].isin(kept["movieId"].unique())].sort_values("movieId")
    pd.DataFrame({"imdb_id": [imdb[m] for m in items["movieId"]], "name": items["title"],
                  "genres": items["genres"], "tags": [";".join(by_movie.get(m, [])[:5]) for m in items["movieId"]]}
                 ).to_csv(out / "items.csv", index=False)
    pd.DataFrame({"user_id": kept["userId"], "imdb_id": [imdb[m] for m in kept["movieId"]],
                  "rating": kept["rating"], "rated_at": kept["timestamp"]}
                 ).to_csv(out / "interactions.csv", index=False)
    print(f"{len(items)} items, {len(chosen)} users, {len(kept)} interactions written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parent)
