"""Interaction datasets: one in-memory form for MovieLens (100K, 1M, latest) and a generic format.

Every loader ends in a `Dataset`: users and items mapped to dense integers, interactions sorted
by user, then timestamp, then position in the source file (the tie-break rule, stated because
leave-one-out splits depend on it), with the items' text kept per field for descriptions and
text embeddings. Items that no interaction names are dropped (nothing can be learnt about them).

Bad input raises `DataError` naming the file, the row and the problem. Rows are counted as a
person counts lines in the file: the first line is row 1 (the header, where there is one).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]


class DataError(ValueError):
    """Bad input: the message names the file, the row (when one is to blame) and the problem."""

    def __init__(self, path: Path | str, row: int | None, problem: str) -> None:
        where = f"{path}: row {row}" if row is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.row, self.problem = str(path), row, problem


@dataclass(frozen=True)
class Dataset:
    """Time-ordered interactions with dense ids; arrays are aligned, one entry per interaction."""

    name: str
    user_ids: np.ndarray  # external user id (str) per dense user
    item_ids: np.ndarray  # external item id (str) per dense item
    users: np.ndarray  # int32 [n]; sorted, so each user's interactions are contiguous
    items: np.ndarray  # int32 [n]
    timestamps: np.ndarray  # int64 [n], seconds since the epoch
    weights: np.ndarray  # float32 [n]; the rating for MovieLens, 1 when the source has none
    events: np.ndarray | None = None  # event type per interaction, when the source has one
    # field -> text per dense item; the field "title", when there is one, is what a person reads
    # for the item (catalog, slates, reports), whatever the source called its column
    item_text: dict[str, list[str]] = field(default_factory=dict)
    # Fields whose text is a list of phrases joined by ", " (genres, tags): descriptions take each
    # phrase whole ("science fiction") instead of splitting it into words.
    list_fields: tuple[str, ...] = ()

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.users)

    @property
    def offsets(self) -> np.ndarray:
        """CSR offsets: user u's interactions are [offsets[u], offsets[u + 1])."""
        return np.concatenate([[0], np.cumsum(np.bincount(self.users, minlength=self.n_users))]).astype(np.int64)

    def sequences(self) -> list[np.ndarray]:
        """Each user's items in time order."""
        off = self.offsets
        return [self.items[off[u]:off[u + 1]] for u in range(self.n_users)]

    def item_traffic(self) -> np.ndarray:
        """Interactions per item: the traffic that balanced clustering evens out."""
        return np.bincount(self.items, minlength=self.n_items).astype(np.float64)

    def text_of(self, item: int) -> str:
        """All text fields of one item, in one line."""
        return " | ".join(t[item] for t in self.item_text.values() if t[item])

    def summary(self) -> str:
        days = (self.timestamps.max() - self.timestamps.min()) / 86400 if self.n_interactions else 0
        return (f"{self.name}: {self.n_interactions:,} interactions, {self.n_users:,} users, {self.n_items:,} items, "
                f"{days:.0f} days, text fields: {', '.join(self.item_text) or 'none'}")


# --- building a Dataset from raw columns ---------------------------------------------------


def build_dataset(name: str, users: Sequence[str], items: Sequence[str], timestamps: np.ndarray,
                  weights: np.ndarray | None = None, events: Sequence[str] | None = None,
                  item_text: dict[str, dict[str, str]] | None = None,
                  list_fields: Sequence[str] = ()) -> Dataset:
    """Map ids to dense integers and sort by (user, timestamp, source order).

    `item_text` maps field -> {external item id -> text}; only items with interactions are kept.
    `list_fields` names the fields of `item_text` whose text is phrases joined by ", ".
    """
    user_ids, user_idx = np.unique(np.asarray(users, dtype=str), return_inverse=True)
    item_ids, item_idx = np.unique(np.asarray(items, dtype=str), return_inverse=True)
    ts = np.asarray(timestamps, dtype=np.int64)
    order = np.lexsort((np.arange(len(ts)), ts, user_idx))  # last key is primary
    w = np.ones(len(ts), np.float32) if weights is None else np.asarray(weights, np.float32)
    text = {f: [by_id.get(i, "") for i in item_ids] for f, by_id in (item_text or {}).items()}
    return Dataset(name=name, user_ids=user_ids, item_ids=item_ids,
                   users=user_idx[order].astype(np.int32), items=item_idx[order].astype(np.int32),
                   timestamps=ts[order], weights=w[order],
                   events=None if events is None else np.asarray(events, dtype=str)[order], item_text=text,
                   list_fields=tuple(f for f in list_fields if f in text))


# --- reading files with row-precise errors ---------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, None, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, None, "the file is empty")


def read_table(path: Path, sep: str = ",", header: bool = True, names: list[str] | None = None,
               encoding: str = "utf-8") -> tuple[object, int]:
    """Read a CSV/TSV/Parquet file as strings; returns (DataFrame, row number of the first data row)."""
    import pandas as pd

    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in {".parquet", ".pq"}:
        df = pd.read_parquet(path).astype(str)
        first = 1
    else:
        text = path.read_text(encoding=encoding, errors="replace")
        if len(sep) > 1:  # MovieLens '::': make it a one-character separator for the fast parser
            text, sep = text.replace(sep, "\x1f"), "\x1f"
        try:
            df = pd.read_csv(io.StringIO(text), sep=sep, header=0 if header else None, names=names, dtype=str,
                             keep_default_na=False, quoting=3 if sep == "\x1f" else 0, engine="c")
        except pd.errors.ParserError as e:
            raise DataError(path, _row_from_parser_error(str(e)), f"cannot parse: {e}") from e
        except pd.errors.EmptyDataError as e:
            raise DataError(path, None, "the file is empty") from e
        first = 2 if header else 1
    if len(df) == 0:
        raise DataError(path, None, "the file has no data rows")
    return df, first


def _row_from_parser_error(message: str) -> int | None:
    import re

    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def require_columns(df, path: Path, columns: Sequence[str], first_row: int) -> None:  # type: ignore[no-untyped-def]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(path, first_row - 1 if first_row > 1 else None,
                        f"missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, df.columns))}")


def parse_numbers(values, path: Path, first_row: int, what: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Numbers from strings; the first unparsable one is an error with its row."""
    import pandas as pd

    num = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero(num.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DataError(path, first_row + i, f"{what} {values.iloc[i]!r} is not a number")
    return num.to_numpy(dtype=np.float64)


def parse_timestamps(values, path: Path, first_row: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Seconds since the epoch from Unix seconds, Unix milliseconds or ISO-8601 dates.

    The column is numeric when most values are numbers; then any value that is not is an error
    (and the other way round), so a stray bad row is named instead of silently dropped.
    """
    import pandas as pd

    num = pd.to_numeric(values, errors="coerce")
    is_num = num.notna().to_numpy()
    if is_num.mean() >= 0.5:
        if not is_num.all():
            i = int(np.flatnonzero(~is_num)[0])
            raise DataError(path, first_row + i, f"timestamp {values.iloc[i]!r} is not a Unix time")
        secs = num.to_numpy(dtype=np.float64)
        if np.nanmedian(np.abs(secs)) > 1e11:  # milliseconds
            secs = secs / 1000.0
        return secs.astype(np.int64)
    dates = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DataError(path, first_row + i, f"timestamp {values.iloc[i]!r} is not a date or a Unix time")
    # Resolution-independent (pandas 3 infers s/ms/us/ns): whole seconds since the epoch.
    return ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def check_known_items(interaction_items, known: set[str], path: Path, first_row: int) -> None:  # type: ignore[no-untyped-def]
    """Every interaction must name an item of the items file."""
    mask = ~interaction_items.isin(known).to_numpy()
    if mask.any():
        i = int(np.flatnonzero(mask)[0])
        raise DataError(path, first_row + i, f"item {interaction_items.iloc[i]!r} is not in the items file "
                                             f"({int(mask.sum())} interaction(s) name unknown items)")


def check_not_blank(values, path: Path, first_row: int, what: str) -> None:  # type: ignore[no-untyped-def]
    mask = (values.str.strip() == "").to_numpy()
    if mask.any():
        i = int(np.flatnonzero(mask)[0])
        raise DataError(path, first_row + i, f"{what} is empty")
