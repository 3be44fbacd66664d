"""Every loader on small files that the tests write, including each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from interests.data.datasets import DataError
from interests.data.loaders import GenericColumns, detect_format, detect_list_separator, load_dataset, load_generic


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


# --- MovieLens 100K -------------------------------------------------------------------------

U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
    "3|Café Society (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n"
)


def ml100k(root: Path, data: str) -> Path:
    write(root / "u.item", U_ITEM, encoding="latin-1")
    write(root / "u.data", data)
    return root


def test_movielens_100k(tmp_path: Path) -> None:
    root = ml100k(tmp_path, "7\t2\t4\t900\n7\t1\t5\t800\n9\t1\t3\t850\n")
    ds = load_dataset(root)
    assert detect_format(root) == "movielens-100k"
    assert ds.name == "movielens-100k" and (ds.n_users, ds.n_items, ds.n_interactions) == (2, 2, 3)
    seq7 = [ds.item_ids[i] for i in ds.sequences()[list(ds.user_ids).index("7")]]
    assert seq7 == ["1", "2"]  # time order, not file order
    toy = list(ds.item_ids).index("1")
    assert ds.item_text["genres"][toy] == "Animation, Children's, Comedy"
    assert ds.item_text["title"][toy] == "Toy Story (1995)"
    assert ds.weights.tolist() == [5.0, 4.0, 3.0]


def test_movielens_100k_unknown_item_names_the_row(tmp_path: Path) -> None:
    root = ml100k(tmp_path, "7\t2\t4\t900\n7\t99\t5\t800\n")
    with pytest.raises(DataError, match=r"u\.data: row 2: item '99' is not in the items file"):
        load_dataset(root)


def test_movielens_100k_bad_timestamp_names_the_row(tmp_path: Path) -> None:
    root = ml100k(tmp_path, "7\t2\t4\t900\n7\t1\t5\t800\n7\t3\t5\tnoon\n")
    with pytest.raises(DataError, match=r"u\.data: row 3: timestamp 'noon' is not a Unix time"):
        load_dataset(root)


def test_movielens_100k_empty_ratings_file(tmp_path: Path) -> None:
    root = ml100k(tmp_path, "")
    with pytest.raises(DataError, match=r"u\.data: the file is empty"):
        load_dataset(root)


# --- MovieLens 1M -------------------------------------------------------------------------


def ml1m(root: Path, ratings: str) -> Path:
    write(root / "movies.dat", "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Heat (1995)::Action|Crime\n",
          encoding="latin-1")
    write(root / "ratings.dat", ratings)
    return root


def test_movielens_1m(tmp_path: Path) -> None:
    ds = load_dataset(ml1m(tmp_path, "1::2::5::978300760\n1::1::3::978300700\n2::1::4::978300000\n"))
    assert ds.name == "movielens-1m" and ds.n_interactions == 3
    assert ds.item_text["genres"][list(ds.item_ids).index("2")] == "Action, Crime"
    assert ds.timestamps.tolist() == [978300700, 978300760, 978300000]  # user 1 first, in time order


def test_movielens_1m_bad_rating_names_the_row(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ratings\.dat: row 2: rating 'five' is not a number"):
        load_dataset(ml1m(tmp_path, "1::2::5::978300760\n1::1::five::978300700\n"))


# --- MovieLens latest(-small) ---------------------------------------------------------------


def ml_latest(root: Path, ratings: str, movies: str | None = None) -> Path:
    write(root / "movies.csv", movies or 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                                         '2,"Heat, The (1995)",Action|Crime\n3,Nothing (2001),(no genres listed)\n')
    write(root / "tags.csv", "userId,movieId,tag,timestamp\n1,1,Pixar,1\n2,1,pixar,2\n2,2,heist,3\n")
    write(root / "ratings.csv", ratings)
    return root


def test_movielens_latest_with_tags(tmp_path: Path) -> None:
    root = ml_latest(tmp_path / "ml-latest-small",
                     "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,3.5,100\n2,3,5.0,50\n")
    ds = load_dataset(root)
    assert ds.name == "movielens-latest-small" and ds.n_items == 3
    ids = list(ds.item_ids)
    assert ds.item_text["tags"][ids.index("1")] == "pixar"  # case-folded, deduplicated
    assert ds.item_text["title"][ids.index("2")] == "Heat, The (1995)"
    assert ds.item_text["genres"][ids.index("3")] == ""
    # Equal timestamps keep file order (the tie-break rule).
    assert [ds.item_ids[i] for i in ds.sequences()[list(ds.user_ids).index("1")]] == ["1", "2"]


def test_movielens_latest_missing_column(tmp_path: Path) -> None:
    root = ml_latest(tmp_path, "userId,movieId,timestamp\n1,1,100\n")
    with pytest.raises(DataError, match=r"ratings\.csv: row 1: missing column\(s\) 'rating'"):
        load_dataset(root)


def test_movielens_latest_header_only(tmp_path: Path) -> None:
    root = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n")
    with pytest.raises(DataError, match=r"ratings\.csv: the file has no data rows"):
        load_dataset(root)


def test_not_a_movielens_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a MovieLens directory"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(tmp_path / "missing")


# --- the generic format --------------------------------------------------------------------


def test_generic_csv_with_renamed_columns_and_iso_dates(tmp_path: Path) -> None:
    items = write(tmp_path / "catalog.csv", "sku,name,category,blurb\nA,Red Shoe,shoes,a shoe\nB,Blue Hat,hats,\n")
    inter = write(tmp_path / "clicks.csv", "who,sku,when,kind,w\n"
                                           "u1,B,2024-01-02T10:00:00Z,click,1\n"
                                           "u1,A,2024-01-01T10:00:00Z,buy,2.5\n"
                                           "u2,A,2024-01-03,click,1\n")
    cols = GenericColumns(user="who", item="sku", timestamp="when", event="kind", weight="w", item_id="sku",
                          title="name")
    ds = load_generic(inter, items, cols)
    assert ds.name == "clicks" and (ds.n_users, ds.n_items) == (2, 2)
    assert list(ds.item_text) == ["title", "category", "blurb"]  # the title column is the title, whatever its name
    assert ds.item_text["title"] == ["Red Shoe", "Blue Hat"] and ds.list_fields == ("category",)
    u1 = ds.sequences()[0]
    assert [ds.item_ids[i] for i in u1] == ["A", "B"]
    assert ds.events is not None and ds.events[:2].tolist() == ["buy", "click"]
    assert ds.weights[:2].tolist() == [2.5, 1.0]
    assert ds.timestamps[0] == 1704103200  # 2024-01-01T10:00:00Z


def test_generic_parquet_with_millisecond_timestamps(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"item": ["x", "y"], "title": ["X", "Y"]}).to_parquet(tmp_path / "items.parquet")
    pd.DataFrame({"user": ["a", "a"], "item": ["y", "x"], "timestamp": [1_700_000_001_000, 1_700_000_000_000]}
                 ).to_parquet(tmp_path / "inter.parquet")
    ds = load_generic(tmp_path / "inter.parquet", tmp_path / "items.parquet")
    assert ds.timestamps.tolist() == [1_700_000_000, 1_700_000_001]
    assert [ds.item_ids[i] for i in ds.items] == ["x", "y"]
    assert np.all(ds.weights == 1)


@pytest.mark.parametrize(("interactions", "items", "pattern"), [
    ("user,item\nu,A\n", "item\nA\n", r"inter\.csv: row 1: missing column\(s\) 'timestamp'"),
    ("user,item,timestamp\nu,A,1\nu,A,yesterday-ish\n", "item\nA\n",
     r"inter\.csv: row 3: timestamp 'yesterday-ish' is not a Unix time"),
    ("user,item,timestamp\nu,A,2024-01-01\nu,A,2024-13-45\n", "item\nA\n",
     r"inter\.csv: row 3: timestamp '2024-13-45' is not a date"),
    ("user,item,timestamp\nu,A,1\nu,Z,2\n", "item\nA\n", r"inter\.csv: row 3: item 'Z' is not in the items file"),
    ("user,item,timestamp\n,A,1\n", "item\nA\n", r"inter\.csv: row 2: user id is empty"),
    ("", "item\nA\n", r"inter\.csv: the file is empty"),
    ("user,item,timestamp\nu,A,1\n", "", r"items\.csv: the file is empty"),
    ("user,item,timestamp\nu,A,1\n", "item\nA\nA\n", r"items\.csv: row 3: item 'A' appears twice"),
    ("user,item,timestamp\nu,A,1\n", "sku\nA\n", r"items\.csv: row 1: missing column\(s\) 'item'"),
    ("user,item,timestamp,weight\nu,A,1,heavy\n", "item\nA\n", r"inter\.csv: row 2: weight 'heavy' is not a number"),
])
def test_generic_bad_input(tmp_path: Path, interactions: str, items: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_generic(write(tmp_path / "inter.csv", interactions), write(tmp_path / "items.csv", items))


def test_generic_missing_file(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item\nA\n")
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_generic(tmp_path / "nope.csv", items)


# --- list-valued text columns and the title column ----------------------------------------


GENRES = ["Crime|Drama|Thriller", "Comedy|Drama", "Comedy", "Drama|Romance", "Crime|Thriller"]


@pytest.mark.parametrize(("name", "values", "expected"), [
    ("genres", GENRES, "|"),
    ("cast", ["Tom Hanks;Meg Ryan", "Meg Ryan;Billy Crystal", "Tom Hanks;Billy Crystal", "Tom Hanks"], ";"),
    ("styles", ["rock, pop", "pop, soul", "rock", "soul, rock", "pop"], ","),
    ("genres", ["Comedy", "Drama", "Horror"], None),  # one value each: nothing to split
    ("blurb", ["A man, a plan, a canal: Panama, as told by his grandson in a hut", "Two friends, one summer",
               "Sharks, again", "Love, actually, is everywhere"], None),  # free text: phrases do not recur
    ("price", ["12,50", "3,99", "12,50", "3,99"], None),  # decimal commas are not lists
    ("tags", ["dark, gritty;twist ending", "twist ending;heist", "heist"], ";"),  # the one most values hold
])
def test_list_separator_is_found_only_where_a_column_clearly_holds_lists(
        name: str, values: list[str], expected: str | None) -> None:
    assert detect_list_separator(name, values) == expected


def items_with_lists(tmp_path: Path) -> tuple[Path, Path]:
    items = write(tmp_path / "items.csv",
                  'id,name,genres,cast,blurb\n'
                  '007,"Heat, The (1995)",Crime|Drama|Thriller,Al Pacino;Robert De Niro,"Cops, robbers"\n'
                  '010,Up|Down,Comedy|Drama,Robert De Niro;Meg Ryan,\n'
                  '011,Sleepless (1993),Comedy|Romance|Comedy,Meg Ryan;Al Pacino,A love story\n')
    inter = write(tmp_path / "inter.csv", "user,id,timestamp\nu1,007,1\nu1,010,2\nu2,011,3\n")
    return inter, items


def test_generic_lists_are_split_and_the_title_never_is(tmp_path: Path) -> None:
    inter, items = items_with_lists(tmp_path)
    ds = load_generic(inter, items, GenericColumns(item="id", item_id="id", title="name"))
    assert list(ds.item_ids) == ["007", "010", "011"]  # leading zeros kept
    assert ds.item_text["title"] == ["Heat, The (1995)", "Up|Down", "Sleepless (1993)"]
    assert ds.item_text["genres"] == ["Crime, Drama, Thriller", "Comedy, Drama", "Comedy, Romance"]  # repeats dropped
    assert ds.item_text["cast"][0] == "Al Pacino, Robert De Niro"
    assert ds.item_text["blurb"][0] == "Cops, robbers"  # free text stays as written
    assert ds.list_fields == ("genres", "cast")


def test_generic_list_separator_setting(tmp_path: Path) -> None:
    inter, items = items_with_lists(tmp_path)
    cols = GenericColumns(item="id", item_id="id", title="name")
    plain = load_generic(inter, items, cols, list_separator="none")
    assert plain.item_text["genres"][0] == "Crime|Drama|Thriller" and plain.list_fields == ("genres",)
    piped = load_generic(inter, items, cols, list_separator="|")
    assert piped.item_text["genres"][0] == "Crime, Drama, Thriller" and piped.list_fields == ("genres",)
    assert piped.item_text["title"][1] == "Up|Down"
    with pytest.raises(ValueError, match="list separator"):
        load_generic(inter, items, cols, list_separator="")


def test_generic_title_column_must_exist_when_named(tmp_path: Path) -> None:
    inter, items = items_with_lists(tmp_path)
    with pytest.raises(DataError, match=r"items\.csv: row 1: missing column\(s\) 'nme'"):
        load_generic(inter, items, GenericColumns(item="id", item_id="id", title="nme"))


def test_generic_other_column_called_title_is_kept_apart(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item,title,original\nA,Der Himmel,Wings of Desire\n")
    inter = write(tmp_path / "inter.csv", "user,item,timestamp\nu,A,1\n")
    ds = load_generic(inter, items, GenericColumns(title="original"))
    assert ds.item_text["title"] == ["Wings of Desire"] and ds.item_text["title_column"] == ["Der Himmel"]
