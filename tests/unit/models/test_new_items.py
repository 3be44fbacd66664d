"""Items added after training (issue 27): a text SASRec grown by cold rows, its checkpoint's text encoder, a catalog
grown by placed items, item experts grown by empty rows, and the staged set `explore items fold` writes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from exporters.grow_set import NewItem, grow_set
from interests.clusters.build import BuildConfig, build_catalog
from interests.clusters.catalog import Catalog, CatalogError
from interests.clusters.new_items import add_items
from interests.clusters.placement import fit_placer, save_placement
from interests.data.datasets import Dataset, build_dataset
from interests.data.splits import arriving_at, in_item_order, leave_one_out, newest_items, pad_left, without_items
from interests.data.synthetic import make_synthetic
from interests.novelty.item_experts import ItemExperts, SparseRows
from interests.seqrec.new_items import checkpoint_encoder, extend_checkpoint, text_encoding
from interests.seqrec.sasrec import SASRec, SASRecConfig, map_text, with_items
from interests.seqrec.train import TrainConfig, load_checkpoint, train

TINY = TrainConfig(max_len=12, dim=16, heads=2, blocks=1, dropout=0.0, lr=5e-3, batch_size=64, epochs=2,
                   patience=2, seed=0, text="tfidf")
HELD = 3  # the synthetic data's last items, kept out of the catalog and the model: they arrive later


@pytest.fixture(scope="module")
def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A catalog and a text SASRec over the synthetic items but the last HELD, and those HELD items' texts."""
    full, _ = make_synthetic(n_clusters=4, items_per_cluster=10, n_users=60, min_len=8, max_len=16, seed=1)
    keep = ~np.isin(full.items, np.arange(full.n_items - HELD, full.n_items))
    ds = replace(full, users=full.users[keep], items=full.items[keep], timestamps=full.timestamps[keep],
                 weights=full.weights[keep], events=None if full.events is None else full.events[keep],
                 item_ids=full.item_ids[:-HELD], item_text={f: t[:-HELD] for f, t in full.item_text.items()})
    root = tmp_path_factory.mktemp("world")
    catalog = build_catalog(ds, BuildConfig(levels=(2, 4), dim=8, text_weight=0.5), progress=False)
    catalog.save(root / "catalog")
    save_placement(root / "catalog", fit_placer(ds, catalog))
    text, encoder = text_encoding(ds, TINY)
    train(leave_one_out(ds), TINY, progress=False, checkpoint=root / "seqrec.pt", item_text=text,
          extra={"catalog_version": catalog.version, "item_ids": [str(i) for i in ds.item_ids],
                 "sample_histories": pad_left(leave_one_out(ds).test_history[:8], TINY.max_len), **encoder})
    new = [NewItem(str(full.item_ids[i]), f"new {i}", full.text_of(i))
           for i in range(full.n_items - HELD, full.n_items)]
    return {"ds": ds, "catalog": catalog, "root": root, "text": text, "new": new}


def _model(n_items: int = 6, text_dim: int = 4) -> SASRec:
    torch.manual_seed(0)
    cfg = SASRecConfig(n_items, max_len=5, dim=8, heads=2, blocks=1, dropout=0.0, text_dim=text_dim)
    return SASRec(cfg, torch.randn(n_items, text_dim), torch.tensor([True] * (n_items - 1) + [False])).eval()


def test_new_items_are_their_text_alone_and_the_old_items_keep_their_scores() -> None:
    model = _model()
    text = torch.randn(2, 4)
    bigger = with_items(model, text)
    assert bigger.cfg.n_items == 8 and not bigger.warm[7:].any()
    history = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 1]])
    with torch.no_grad():
        torch.testing.assert_close(bigger.last_scores(history)[:, :6], model.last_scores(history))
        torch.testing.assert_close(bigger.item_vectors()[7:], model.text_proj(text))
        # and a history naming a new item reads its text vector
        read = torch.stack([model.item_vectors()[1], model.text_proj(text[0])])[None]
        torch.testing.assert_close(bigger(torch.tensor([[1, 7]]))[0, -1],
                                   model.encode(read, torch.ones(1, 2, dtype=torch.bool))[0, -1])


def test_an_id_only_model_or_a_text_of_another_width_is_refused() -> None:
    with pytest.raises(ValueError, match="id-only"):
        with_items(SASRec(SASRecConfig(5, max_len=4, dim=8, heads=2, blocks=1)), torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"\[k, 4\]"):
        with_items(_model(), torch.randn(1, 3))


def test_the_checkpoint_keeps_the_encoder_that_reproduces_its_text_vectors(world) -> None:
    _, ckpt = load_checkpoint(world["root"] / "seqrec.pt")
    ds = world["ds"]
    again = checkpoint_encoder(ckpt).encode([ds.text_of(i) for i in range(ds.n_items)])
    usable = np.linalg.norm(world["text"], axis=1) > 0.5
    cos = (again * world["text"]).sum(1)[usable]
    assert usable.mean() > 0.9 and cos.min() > 0.98


def test_an_extended_checkpoint_appends_cold_items_and_keeps_every_old_score(world, tmp_path) -> None:
    root, new = world["root"], world["new"]
    out = extend_checkpoint(root / "seqrec.pt", [i.item_id for i in new], [i.text for i in new], "v2",
                            tmp_path / "x.pt")
    old, old_ckpt = load_checkpoint(root / "seqrec.pt")
    grown, ckpt = load_checkpoint(out)
    assert ckpt["item_ids"] == old_ckpt["item_ids"] + [i.item_id for i in new] and ckpt["catalog_version"] == "v2"
    assert ckpt["extends"]["catalog_version"] == old_ckpt["catalog_version"] and ckpt["extends"]["items_added"] == HELD
    x = torch.from_numpy(old_ckpt["sample_histories"])
    with torch.no_grad():
        torch.testing.assert_close(grown.last_scores(x)[:, :old.cfg.n_items], old.last_scores(x))
        assert grown.item_vectors()[-HELD:].abs().sum() > 0  # the texts gave them vectors
    with pytest.raises(ValueError, match="already in"):
        extend_checkpoint(root / "seqrec.pt", [old_ckpt["item_ids"][0]], ["x"], "v2", tmp_path / "y.pt")


def test_a_checkpoint_without_its_encoder_says_to_train_again(world, tmp_path) -> None:
    _, ckpt = load_checkpoint(world["root"] / "seqrec.pt")
    with pytest.raises(ValueError, match="train it again"):
        checkpoint_encoder({k: v for k, v in ckpt.items() if not k.startswith("text_")})
    with pytest.raises(ValueError, match="id-only"):
        checkpoint_encoder({**ckpt, "model_config": {**ckpt["model_config"], "text_dim": 0}})


def test_a_grown_catalog_keeps_its_clusters_and_places_the_new_items_at_every_level(world) -> None:
    catalog, new = world["catalog"], world["new"]
    from interests.clusters.placement import load_placement

    placer = load_placement(world["root"] / "catalog", catalog)
    fixed = {1: [3, 0, 2]}
    bigger, bigger_placer = add_items(catalog, placer, [i.item_id for i in new], [i.title for i in new],
                                      [i.text for i in new], fixed)
    assert bigger.version != catalog.version and bigger_placer.catalog_version == bigger.version
    assert bigger.item_ids[:-HELD] == catalog.item_ids and bigger.item_ids[-HELD:] == [i.item_id for i in new]
    assert bigger.descriptions(0) == catalog.descriptions(0) and bigger.descriptions(1) == catalog.descriptions(1)
    np.testing.assert_array_equal(bigger.assignments[:, :-HELD], catalog.assignments)
    assert bigger.item_clusters(1)[-HELD:].tolist() == [3, 0, 2]
    assert bigger.item_clusters(0)[-HELD:].tolist() == placer.place([i.text for i in new], 0)[0].tolist()
    assert sum(c.size for c in bigger.clusters[1]) == sum(c.size for c in catalog.clusters[1]) + HELD
    assert bigger.meta["extends"] == {"catalog_version": catalog.version, "items_added": HELD}
    with pytest.raises(CatalogError, match="already in"):
        add_items(catalog, placer, [catalog.item_ids[0]], ["t"], ["x"])
    with pytest.raises(CatalogError, match="outside"):
        add_items(catalog, placer, ["n1"], ["t"], ["x"], {1: [9]})


def test_grown_item_experts_give_the_new_items_no_rows_and_count_them_in_their_cluster() -> None:
    rows = SparseRows.of_padded(np.array([[1, -1], [0, 1]]), np.array([[0.5, 0.0], [0.2, 0.3]]))
    experts = ItemExperts(np.array([0, 1]), rows, SparseRows.of_padded(np.array([[1], [0]]), np.array([[0.4], [0.4]])),
                          7, 2)
    grown = experts.with_items(np.array([1, 1]))
    assert grown.item_cluster.tolist() == [0, 1, 1, 1] and grown.sizes.tolist() == [1.0, 3.0]
    assert grown.transitions.ptr.tolist() == [0, 1, 3, 3, 3] and grown.until == 7
    old = [np.array([0, 1])]
    np.testing.assert_allclose(grown.transition_scores(old), experts.transition_scores(old))
    assert grown.transition_scores([np.array([2, 3])]).max() == pytest.approx(np.log(1e-3))  # they lead nowhere
    with pytest.raises(ValueError, match=r"0\.\.1"):
        experts.with_items(np.array([2]))


def test_grow_set_stages_a_set_whose_catalog_models_and_lm_agree(world, tmp_path) -> None:
    root, new = world["root"], world["new"]
    generator = tmp_path / "served" / "interest_generator" / "1"
    generator.mkdir(parents=True)
    (generator / "decoder.json").write_text(json.dumps({"catalog_version": world["catalog"].version, "level": 1}))
    (generator / "model.onnx").write_bytes(b"the LM")
    items = [replace(i, cluster=c) for i, c in zip(new, (1, 2, 3), strict=True)]
    grown = grow_set(root / "catalog", items, root / "seqrec.pt", generator, tmp_path / "out")
    back = Catalog.load(grown.catalog_dir)
    assert back.version == grown.catalog.version and back.item_clusters(1)[-HELD:].tolist() == [1, 2, 3]
    assert grown.seqrec.parity.identical_ids and grown.seqrec.meta["catalog_version"] == back.version
    assert grown.seqrec.meta["n_items"] == len(back.item_ids) and grown.explorer is None
    spec = json.loads((grown.repository / "interest_generator" / "1" / "decoder.json").read_text())
    assert spec == {"catalog_version": back.version, "level": 1}
    assert (grown.repository / "interest_generator" / "1" / "model.onnx").read_bytes() == b"the LM"
    assert (grown.repository / "interest_generator" / "config.pbtxt").is_file()


def _five_items() -> Dataset:
    """Items a..e: a and b early and late, c only late (new), d early only, e mostly late."""
    rows = [("u1", "a", 1), ("u1", "d", 2), ("u2", "b", 3), ("u2", "e", 4), ("u1", "a", 11), ("u1", "c", 12),
            ("u2", "c", 13), ("u2", "e", 14), ("u2", "e", 15), ("u1", "b", 16)]
    return build_dataset("five", [r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows]),
                         item_text={"title": {i: f"title {i}" for i in "abcde"}})


def test_the_newest_items_are_the_new_ones_first_then_by_their_late_share() -> None:
    ds = _five_items()
    name = {i: str(x) for i, x in enumerate(ds.item_ids)}
    assert [name[i] for i in newest_items(ds, 10, 1)] == ["c"]  # only met after the cut
    assert sorted(name[i] for i in newest_items(ds, 10, 2)) == ["c", "e"]  # e: 2 of 3 late, the largest share
    assert "d" not in {name[i] for i in newest_items(ds, 10, 5)}  # nothing after the cut: never chosen


def test_items_arriving_later_and_a_dataset_without_them_or_in_another_order() -> None:
    ds = _five_items()
    e = int(np.flatnonzero(ds.item_ids == "e")[0])
    later = arriving_at(ds, np.array([e]), 10)
    assert later.n_interactions == ds.n_interactions - 1 and later.n_items == ds.n_items
    gone = without_items(later, np.array([e]))
    assert list(gone.item_ids) == ["a", "b", "c", "d"] and gone.item_text["title"] == ["title a", "title b",
                                                                                          "title c", "title d"]
    assert [str(gone.item_ids[i]) for i in gone.items] == [str(ds.item_ids[i]) for i in ds.items if i != e]
    assert without_items(ds, np.zeros(0, np.int64)) is ds
    moved = in_item_order(ds, ["e", "a", "b", "c", "d"])
    assert [str(moved.item_ids[i]) for i in moved.items] == [str(ds.item_ids[i]) for i in ds.items]
    assert moved.item_text["title"][0] == "title e"
    with pytest.raises(ValueError, match="not the dataset's"):
        in_item_order(ds, ["a", "b"])


def test_explore_items_fold_stages_a_file_of_new_items_and_says_what_to_run_next(world, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from explore.cli import main

    root, new = world["root"], world["new"]
    generator = tmp_path / "interest_generator" / "1"
    generator.mkdir(parents=True)
    (generator / "decoder.json").write_text(json.dumps({"catalog_version": world["catalog"].version}))
    items = tmp_path / "new.jsonl"
    items.write_text("".join(json.dumps({"item_id": i.item_id, "title": i.title, "keywords": i.text}) + "\n"
                             for i in [*new, NewItem(world["catalog"].item_ids[0], "known", "x")]))
    args = ["items", "fold", "--catalog", str(root / "catalog"), "--checkpoint", str(root / "seqrec.pt"),
            "--generator", str(generator), "--new-items", str(items), "--out", str(tmp_path / "staged")]
    assert main(args) == 0
    out = capsys.readouterr().out
    grown = Catalog.load(tmp_path / "staged" / "catalog")
    assert f"catalog {grown.version} = {world['catalog'].version} + {HELD} item(s)" in out  # the known one left out
    assert f"next: explore models publish --catalog {tmp_path / 'staged' / 'catalog'}" in out
    assert main([*args[:-1], str(tmp_path / "again"), "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "missing.pt" in capsys.readouterr().err


def test_a_mapped_text_part_keeps_every_warm_vector_and_maps_the_others() -> None:
    torch.manual_seed(1)
    plain = SASRec(SASRecConfig(6, max_len=5, dim=8, heads=2, blocks=1, dropout=0.0)).eval()
    text = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    warm = torch.tensor([True, True, True, True, False, True])
    mapped = map_text(plain, text, warm, ridge=0.5)
    with torch.no_grad():
        vectors = mapped.item_vectors()
        torch.testing.assert_close(vectors[1:][warm], plain.item_emb.weight[1:][warm])
        torch.testing.assert_close(vectors[5], mapped.text_proj(text[4]))  # item 5 (row 4) is not warm
    with pytest.raises(ValueError, match="id-only"):
        map_text(mapped, text, warm)
