"""`explore novelty critics` end to end on planted data: two tables, one that follows the users and one against them."""

from __future__ import annotations

import json
from itertools import permutations
from pathlib import Path

import numpy as np

from explore.cli import main
from interests.clusters.build import BuildConfig, build_catalog
from interests.data.synthetic import make_synthetic
from interests.novelty.examples import novel_transitions, split_by_time

N = 6


def _tables(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """The catalog of `--synthetic --synthetic-clusters 6`, and two tables ranked by the novel-transition counts
    of the training period (before window A): 'follows' best first, 'against' worst first."""
    ds, _ = make_synthetic(n_clusters=N, n_users=400, seed=0)  # what --synthetic loads
    catalog = build_catalog(ds, BuildConfig(levels=(N,)), progress=False)
    catalog.save(tmp_path / "catalog")
    train = split_by_time(novel_transitions(ds, catalog.item_clusters(), 2)).train
    counts = np.zeros((N, N))
    np.add.at(counts, (train.contexts[:, -1], train.targets), 1)
    paths = {}
    for name, sign in (("follows", -1), ("against", 1)):
        rows = []
        for ctx in permutations(range(N), 2):
            others = sorted((c for c in range(N) if c not in ctx), key=lambda c: sign * counts[ctx[-1], c])
            rows.append({"context": list(ctx), "clusters": others, "scores": [0.0] * len(others),
                         "catalog_version": catalog.version})
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "catalog", paths


def test_critics_command_on_planted_tables(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    catalog, tables = _tables(tmp_path)
    out = tmp_path / "critics"
    assert main(["novelty", "critics", "--synthetic", "--synthetic-clusters", str(N), "--catalog", str(catalog),
                 "--m", "2", "--min-events", "2", "--out", str(out)]
                + [f"--table={name}={path}" for name, path in tables.items()]) == 0
    report = json.loads((out / "critics.json").read_text())
    gens = report["matrix"]["generators"]
    assert gens == ["follows", "follows + critic follows", "follows + critic against",
                    "against", "against + critic follows", "against + critic against"]
    assert report["matrix"]["critics"] == ["follows", "against"] and report["contexts"] == N * (N - 1)
    assert report["matrix"]["own"]["against + critic follows"] == "follows"
    assert (out / "critics" / "against" / "alignment.json").exists()
    b = report["window_b"]
    assert b["follows"]["acceptance"] > b["against"]["acceptance"]  # the planted users' way wins on the test window
    assert "| against + critic follows |" in capsys.readouterr().out
    assert report["windows"]["A"][1] == report["windows"]["B"][0]  # A ends where the test window begins
