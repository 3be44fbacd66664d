"""Loaders: MovieLens 100K, 1M and latest(-small) in their native formats, and a generic format.

`load_dataset(path)` recognises a MovieLens directory by its files; anything else is read with
`load_generic` (an interactions file plus an items file, CSV or Parquet, column names configurable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interests.data.datasets import (
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

LIST_SEPARATORS = ("|", ";", ",")  # recognised in list-valued columns, in this order of preference
LIST_NAME_HINTS = ("genre", "tag", "keyword", "categor", "label", "topic")  # names that say "a list"
MAX_PHRASE_WORDS = 4


def split_list(text: str, sep: str) -> str:
    """'Crime|Drama|Thriller' -> 'Crime, Drama, Thriller': the one list form that descriptions read.

    Entries are trimmed, empty and repeated ones dropped; a comma inside an entry becomes a space so
    that the entry stays one phrase.
    """
    entries = (" ".join(e.replace(",", " ").split()) for e in text.split(sep))
    return ", ".join(dict.fromkeys(e for e in entries if e))


def _genres(text: str) -> str:
    """'Adventure|Children|Fantasy' -> 'Adventure, Children, Fantasy' (MovieLens' 'no genres' -> '')."""
    return "" if text.strip() in {"", "(no genres listed)"} else split_list(text, "|")


def _is_phrase(entry: str) -> bool:
    """A list entry: a few words with a letter in them (not a sentence, not half of '12,50')."""
    return any(ch.isalpha() for ch in entry) and len(entry.split()) <= MAX_PHRASE_WORDS


def detect_list_separator(name: str, values: Sequence[str]) -> str | None:
    """The separator of a column that clearly holds lists ('|', ';' or ','), or None.

    A separator qualifies when it cuts the values that hold it into short phrases and, unless the
    column's name says it holds lists (genres, tags, keywords, ...), when at least a fifth of the
    values hold it and its phrases recur across items (each twice on average): free text with
    commas ("A man, a plan") and decimal commas pass neither test. Of those that qualify, the one
    most values hold wins. Without this, `Comedy|Drama|Romance` was one keyword per item.
    """
    sample = [v for v in values[:5000] if v.strip()]
    hinted = any(h in name.lower() for h in LIST_NAME_HINTS)
    best, best_share = None, 0.0
    for sep in LIST_SEPARATORS:
        holding = [v for v in sample if sep in v]
        entries = [e.strip().lower() for v in holding for e in v.split(sep) if e.strip()]
        if not entries:
            continue
        share = len(holding) / len(sample)
        phrases = np.mean([_is_phrase(e) for e in entries]) >= 0.9
        recurring = len(entries) >= 2 * len(set(entries))
        if phrases and (hinted or (share >= 0.2 and recurring)) and share > best_share:
            best, best_share = sep, share
    return best


def _interactions(name: str, path: Path, df, first: int, items_known: set[str], text: dict) -> Dataset:  # type: ignore[no-untyped-def]
    """Validate parsed MovieLens-like columns user/item/rating/ts and build the Dataset."""
    check_not_blank(df["user"], path, first, "user id")
    check_known_items(df["item"], items_known, path, first)
    ratings = parse_numbers(df["rating"], path, first, "rating")
    ts = parse_timestamps(df["ts"], path, first)
    return build_dataset(name, df["user"].to_numpy(), df["item"].to_numpy(), ts, weights=ratings,
                         events=np.full(len(df), "rating"), item_text=text, list_fields=("genres", "tags"))


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
    title: str | None = None  # None: the column called "title", when there is one
    text: list[str] = field(default_factory=list)


def _item_text(idf, path: Path, first: int, cols: GenericColumns,  # type: ignore[no-untyped-def]
               list_separator: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """(field -> {item id -> text}, list fields) of the items file.

    The title column, whatever its name, becomes the field "title": the catalog, slates and
    reports show that field (with `title=name` they showed raw ids, and `name` was one more text
    field). List-valued columns are rewritten to ", "-joined phrases (see `detect_list_separator`).
    """
    title = cols.title or ("title" if "title" in idf.columns else None)
    others = cols.text or [c for c in idf.columns if c not in (cols.item_id, title)]
    require_columns(idf, path, [c for c in [title, *others] if c], first)
    ids = idf[cols.item_id]
    text = {"title": dict(zip(ids, idf[title].astype(str).str.strip(), strict=True))} if title else {}
    lists = []
    for column in (c for c in others if c != title):
        values = idf[column].astype(str).tolist()
        key = "title_column" if column == "title" else column  # "title" is the title's field
        if list_separator == "auto":
            sep = detect_list_separator(column, values)
        else:
            sep = None if list_separator == "none" else list_separator
        if sep is not None and any(sep in v for v in values):
            values = [split_list(v, sep) for v in values]
            lists.append(key)
        elif any(h in column.lower() for h in LIST_NAME_HINTS):
            lists.append(key)  # single-valued categories: each value is one phrase
        text[key] = dict(zip(ids, values, strict=True))
    return text, lists


def load_generic(interactions: Path, items: Path, columns: GenericColumns | None = None,
                 name: str | None = None, list_separator: str = "auto") -> Dataset:
    """An interactions file (user, item, timestamp[, event][, weight]) and an items file (item, title, text...).

    `list_separator`: "auto" finds list-valued text columns and their separator ('|', ';' or ',')
    per column; "none" splits nothing; any other string splits every text column but the title
    on it.
    """
    if not list_separator:
        raise ValueError("the list separator must be 'auto', 'none' or a character such as '|'")
    cols = columns or GenericColumns()
    items_path, inter_path = Path(items), Path(interactions)
    idf, first_i = read_table(items_path)
    require_columns(idf, items_path, [cols.item_id], first_i)
    check_not_blank(idf[cols.item_id], items_path, first_i, "item id")
    dup = idf[cols.item_id].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(items_path, first_i + i, f"item {idf[cols.item_id].iloc[i]!r} appears twice")
    text, lists = _item_text(idf, items_path, first_i, cols, list_separator)

    df, first = read_table(inter_path)
    require_columns(df, inter_path, [cols.user, cols.item, cols.timestamp], first)
    check_not_blank(df[cols.user], inter_path, first, "user id")
    check_known_items(df[cols.item], set(idf[cols.item_id]), inter_path, first)
    ts = parse_timestamps(df[cols.timestamp], inter_path, first)
    weights = parse_numbers(df[cols.weight], inter_path, first, "weight") if cols.weight in df.columns else None
    events = df[cols.event].to_numpy() if cols.event in df.columns else None
    return build_dataset(name or inter_path.stem, df[cols.user].to_numpy(), df[cols.item].to_numpy(), ts,
                         weights=weights, events=events, item_text=text, list_fields=lists)


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
