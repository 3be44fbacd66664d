"""Loaders: MovieLens 100K, 1M and latest(-small) in their native formats, and a generic format.

`load_dataset(path)` recognises a MovieLens directory by its files; anything else is read with
`load_generic` (an interactions file plus an items file, CSV or Parquet, column names configurable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interests.datasets import (
    ML100K_GENRES,
    DataError,
    Dataset,
    build_dataset,
    check_known_items,
    check_not_blank,
    parse_numbers,
    parse_timestamps,
    read_table,
    require_columns,
)


def _genres(text: str) -> str:
    """'Adventure|Children|Fantasy' -> 'Adventure, Children, Fantasy' (MovieLens' 'no genres' -> '')."""
    return "" if text.strip() in {"", "(no genres listed)"} else ", ".join(g for g in text.split("|") if g)


def _interactions(name: str, path: Path, df, first: int, items_known: set[str], text: dict) -> Dataset:  # type: ignore[no-untyped-def]
    """Validate parsed MovieLens-like columns user/item/rating/ts and build the Dataset."""
    check_not_blank(df["user"], path, first, "user id")
    check_known_items(df["item"], items_known, path, first)
    ratings = parse_numbers(df["rating"], path, first, "rating")
    ts = parse_timestamps(df["ts"], path, first)
    return build_dataset(name, df["user"].to_numpy(), df["item"].to_numpy(), ts, weights=ratings,
                         events=np.full(len(df), "rating"), item_text=text)


def load_movielens_100k(root: Path) -> Dataset:
    """`u.data` (user, item, rating, time; tab-separated) and `u.item` (pipe-separated, Latin-1)."""
    root = Path(root)
    items, _ = read_table(root / "u.item", sep="|", header=False, encoding="latin-1",
                                names=["item", "title", "release", "video", "url", *ML100K_GENRES])
    flags = items[ML100K_GENRES].to_numpy() == "1"
    genres = [", ".join(g for g, on in zip(ML100K_GENRES, row, strict=True) if on and g != "unknown") for row in flags]
    text = {"title": dict(zip(items["item"], items["title"], strict=True)),
            "genres": dict(zip(items["item"], genres, strict=True))}
    path = root / "u.data"
    df, first = read_table(path, sep="\t", header=False, names=["user", "item", "rating", "ts"])
    return _interactions("movielens-100k", path, df, first, set(items["item"]), text)


def load_movielens_1m(root: Path) -> Dataset:
    """`ratings.dat` (UserID::MovieID::Rating::Timestamp) and `movies.dat` (MovieID::Title::Genres)."""
    root = Path(root)
    items, _ = read_table(root / "movies.dat", sep="::", header=False, encoding="latin-1",
                          names=["item", "title", "genres"])
    text = {"title": dict(zip(items["item"], items["title"], strict=True)),
            "genres": {i: _genres(g) for i, g in zip(items["item"], items["genres"], strict=True)}}
    path = root / "ratings.dat"
    df, first = read_table(path, sep="::", header=False, names=["user", "item", "rating", "ts"])
    return _interactions("movielens-1m", path, df, first, set(items["item"]), text)


def load_movielens_latest(root: Path) -> Dataset:
    """`ratings.csv`, `movies.csv` and, when present, `tags.csv` (ml-latest and ml-latest-small)."""
    root = Path(root)
    movies_path = root / "movies.csv"
    items, first_i = read_table(movies_path)
    require_columns(items, movies_path, ["movieId", "title", "genres"], first_i)
    text = {"title": dict(zip(items["movieId"], items["title"], strict=True)),
            "genres": {i: _genres(g) for i, g in zip(items["movieId"], items["genres"], strict=True)}}
    tags_path = root / "tags.csv"
    if tags_path.is_file():
        tags, first_t = read_table(tags_path)
        require_columns(tags, tags_path, ["movieId", "tag"], first_t)
        by_item: dict[str, list[str]] = {}
        for item, tag in zip(tags["movieId"], tags["tag"].str.strip().str.lower(), strict=True):
            if tag and tag not in by_item.setdefault(item, []):
                by_item[item].append(tag)
        text["tags"] = {i: ", ".join(t) for i, t in by_item.items()}
    path = root / "ratings.csv"
    df, first = read_table(path)
    require_columns(df, path, ["userId", "movieId", "rating", "timestamp"], first)
    df = df.rename(columns={"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "ts"})
    name = "movielens-latest-small" if "small" in root.name else "movielens-latest"
    return _interactions(name, path, df, first, set(items["movieId"]), text)


@dataclass
class GenericColumns:
    """Column names of the generic format; `text` empty means every other column of the items file."""

    user: str = "user"
    item: str = "item"
    timestamp: str = "timestamp"
    event: str | None = "event"  # optional: used when present
    weight: str | None = "weight"  # optional: used when present
    item_id: str = "item"
    title: str | None = "title"
    text: list[str] = field(default_factory=list)


def load_generic(interactions: Path, items: Path, columns: GenericColumns | None = None,
                 name: str | None = None) -> Dataset:
    """An interactions file (user, item, timestamp[, event][, weight]) and an items file (item, title, text...)."""
    cols = columns or GenericColumns()
    items_path, inter_path = Path(items), Path(interactions)
    idf, first_i = read_table(items_path)
    require_columns(idf, items_path, [cols.item_id], first_i)
    check_not_blank(idf[cols.item_id], items_path, first_i, "item id")
    dup = idf[cols.item_id].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(items_path, first_i + i, f"item {idf[cols.item_id].iloc[i]!r} appears twice")
    text_cols = cols.text or [c for c in idf.columns if c != cols.item_id]
    require_columns(idf, items_path, text_cols, first_i)
    if cols.title and cols.title in text_cols:  # the title first: descriptions read it first
        text_cols = [cols.title, *[c for c in text_cols if c != cols.title]]
    text = {c: dict(zip(idf[cols.item_id], idf[c].astype(str), strict=True)) for c in text_cols}

    df, first = read_table(inter_path)
    require_columns(df, inter_path, [cols.user, cols.item, cols.timestamp], first)
    check_not_blank(df[cols.user], inter_path, first, "user id")
    check_known_items(df[cols.item], set(idf[cols.item_id]), inter_path, first)
    ts = parse_timestamps(df[cols.timestamp], inter_path, first)
    weights = parse_numbers(df[cols.weight], inter_path, first, "weight") if cols.weight in df.columns else None
    events = df[cols.event].to_numpy() if cols.event in df.columns else None
    return build_dataset(name or inter_path.stem, df[cols.user].to_numpy(), df[cols.item].to_numpy(), ts,
                         weights=weights, events=events, item_text=text)


def detect_format(path: Path) -> str:
    """'movielens-100k', 'movielens-1m' or 'movielens-latest' for a MovieLens directory."""
    path = Path(path)
    if (path / "u.data").is_file():
        return "movielens-100k"
    if (path / "ratings.dat").is_file():
        return "movielens-1m"
    if (path / "ratings.csv").is_file() and (path / "movies.csv").is_file():
        return "movielens-latest"
    if not path.exists():
        raise DataError(path, None, "no such file or directory")
    raise DataError(path, None, "not a MovieLens directory (no u.data, ratings.dat or ratings.csv + movies.csv); "
                                "for other data pass an interactions file and an items file")


LOADERS = {"movielens-100k": load_movielens_100k, "movielens-1m": load_movielens_1m,
           "movielens-latest": load_movielens_latest}


def load_dataset(path: Path, fmt: str = "auto") -> Dataset:
    """Load a MovieLens directory in its native format (`fmt` 'auto' recognises which)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in LOADERS:
        raise ValueError(f"unknown format {fmt!r}; known: auto, {', '.join(LOADERS)}")
    return LOADERS[fmt](Path(path))
