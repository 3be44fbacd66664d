"""A user's own data in the generic format: the sample in examples/own-data, as its tutorial runs it.

The sample has what real exports have and MovieLens' own files lack: ids with leading zeros, the
title in a column called `name`, genres written `Crime|Drama|Thriller` and tags written
`dark;twist ending`. What a person reads (titles, keywords) must come out right on it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from interests.clusters.build import build_catalog
from interests.clusters.catalog import Catalog
from interests.clusters.describe import item_terms
from interests.configs import BuildConfig
from interests.data.datasets import Dataset
from interests.data.loaders import GenericColumns, load_generic

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "examples" / "own-data"
COLUMNS = GenericColumns(user="user_id", item="imdb_id", timestamp="rated_at", weight="rating", item_id="imdb_id",
                         title="name")
CLI_COLUMNS = "user=user_id,item=imdb_id,timestamp=rated_at,weight=rating,item_id=imdb_id,title=name"
TOY_STORY = "0114709"


@pytest.fixture(scope="module")
def sample() -> Dataset:
    return load_generic(SAMPLE / "interactions.csv", SAMPLE / "items.csv", COLUMNS)


@pytest.fixture(scope="module")
def catalog(sample: Dataset) -> Catalog:
    return build_catalog(sample, BuildConfig(levels=(4, 16)), progress=False)


def test_the_sample_is_small_and_has_the_awkward_parts() -> None:
    assert sum(p.stat().st_size for p in SAMPLE.glob("*.csv")) < 300_000
    items = (SAMPLE / "items.csv").read_text().splitlines()
    assert items[0] == "imdb_id,name,genres,tags"
    assert any(line.startswith("0") for line in items[1:])  # leading zeros
    assert any(re.search(r",\w[\w -]*\|\w[\w -]*\|", line) for line in items[1:])  # genres as a|b|c


def test_ids_keep_their_leading_zeros_and_the_title_column_is_the_title(sample: Dataset) -> None:
    toy = list(sample.item_ids).index(TOY_STORY)
    assert sample.item_text["title"][toy] == "Toy Story (1995)"
    assert "name" not in sample.item_text  # the title column is the title, not one more text field
    assert "text fields: title, genres, tags" in sample.summary()


def test_list_valued_columns_are_split(sample: Dataset) -> None:
    toy = list(sample.item_ids).index(TOY_STORY)
    assert sample.item_text["genres"][toy] == "Adventure, Animation, Children, Comedy, Fantasy"  # '|'
    assert sample.item_text["tags"][toy] == "pixar, fun"  # ';'
    assert set(sample.list_fields) == {"genres", "tags"}
    terms = item_terms(sample)[toy]
    assert {"adventure", "animation", "children", "comedy", "fantasy", "pixar", "fun"} <= set(terms)
    assert not any("|" in t or ";" in t for t in terms)


def test_the_catalog_shows_titles(sample: Dataset, catalog: Catalog) -> None:
    titles = set(sample.item_text["title"])
    assert catalog.item_titles[catalog.item_ids.index(TOY_STORY)] == "Toy Story (1995)"
    shown = [t for level in catalog.clusters for c in level for t in c.top_items]
    assert shown and all(t in titles for t in shown)


def test_descriptions_are_readable_words_unique_per_level(sample: Dataset, catalog: Catalog) -> None:
    phrases = {p.strip().lower() for f in ("genres", "tags") for v in sample.item_text[f] for p in v.split(",")}
    title_words = {w for v in sample.item_text["title"] for w in re.findall(r"[a-z][a-z'\-]+", v.lower())}
    for level in catalog.clusters:
        keywords = [k for c in level for k in c.keywords]
        assert all(re.fullmatch(r"[a-z0-9][a-z0-9' .:&-]*", k) for k in keywords), keywords
        assert all(k in phrases or k.strip("'-") in title_words for k in keywords), keywords
        # most of a description is genres and tags shared by several items, not one item's label
        shared = [k for k in keywords if sum(k in item for item in item_terms(sample)) >= 3]
        assert len(shared) >= 0.75 * len(keywords), keywords
        assert len({frozenset(c.keywords) for c in level}) == len(level)


def readme_commands() -> list[list[str]]:
    """The commands of the "Bring your own data" tutorial's block, as a user pastes them."""
    section = (REPO / "docs" / "tutorials" / "own-data.md").read_text().split("# Bring your own data\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_commands_run_as_written_and_show_titles_and_words(tmp_path: Path) -> None:
    (build_cmd, show_cmd) = readme_commands()
    assert build_cmd[:3] == [".venv/bin/explore", "clusters", "build"] and build_cmd[-2:] == ["--columns", CLI_COLUMNS]
    assert show_cmd[:3] == [".venv/bin/explore", "clusters", "show"]
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the tutorial's relative paths, from a fresh directory
    env = {**os.environ, "COLUMNS": "400"}  # wide enough that no row is cut

    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "explore", *cmd[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, check=False)

    build = run(build_cmd)
    assert build.returncode == 0, build.stderr
    assert "text fields: title, genres, tags" in build.stdout
    show = run(show_cmd)
    assert show.returncode == 0, show.stderr
    rows = [line for line in show.stdout.splitlines() if re.match(r"\s+\d+\s+\d+\s", line)]
    assert len(rows) == 16
    for row in rows:
        description, top = row.split("%  ", 1)[1].split("  |  ")
        assert "|" not in description and ";" not in description, row
        assert re.fullmatch(r".+ \(\d{4}\)(; .+ \(\d{4}\))*", top), row  # titles with their year, no raw ids


def test_list_separator_option_reaches_the_loader(tmp_path: Path) -> None:
    from explore.cli import build_parser
    from explore.commands.common import dataset_from_args

    def genres(*extra: str) -> str:
        args = build_parser().parse_args(["clusters", "build", "--interactions", str(SAMPLE / "interactions.csv"),
                                          "--items", str(SAMPLE / "items.csv"), "--columns", CLI_COLUMNS,
                                          "--out", str(tmp_path), *extra])
        ds = dataset_from_args(args)
        return ds.item_text["genres"][list(ds.item_ids).index(TOY_STORY)]

    assert genres() == "Adventure, Animation, Children, Comedy, Fantasy"
    assert genres("--list-separator", "none") == "Adventure|Animation|Children|Comedy|Fantasy"


def test_the_live_view_shows_slates_by_title(catalog: Catalog) -> None:
    from explore.demo import LiveView

    view = LiveView("unused:9092", "recommendations", catalog, ["5"], start_ts=0.0)
    cluster = {"id": 0, "description": catalog.clusters[-1][0].description, "score": 1.0}
    record = {"user_id": "5", "event_ts": 1.0, "latency_ms": 12.0, "events_applied": 3, "source": "table",
              "context": [cluster], "novel_clusters": [cluster],
              "slate": [{"item_id": TOY_STORY}, {"item_id": "0113497"}]}
    view.records.append(record)
    view.latest["5"] = record
    assert "slate:           Toy Story (1995), Jumanji (1995)" in view.render()
