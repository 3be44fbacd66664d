"""SASRec's text part (issue 27): cold items are their text alone, folding keeps the scores, checkpoints keep it,
and id dropout (DropoutNet) makes warm items their text alone in training only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from interests.data.splits import leave_one_out, pad_left, training_windows
from interests.data.synthetic import make_synthetic
from interests.seqrec.clustered_topn import ClusteredTopN
from interests.seqrec.sasrec import SASRec, SASRecConfig, fold_text
from interests.seqrec.topn import RestrictedTopN
from interests.seqrec.train import (
    TrainConfig,
    id_dropout_mask,
    load_checkpoint,
    loss_fn,
    new_model,
    save_checkpoint,
    set_determinism,
    train,
)

TINY = TrainConfig(max_len=12, dim=16, heads=2, blocks=1, dropout=0.0, lr=5e-3, batch_size=64, epochs=2,
                   patience=2, seed=0, text="tfidf")
COLD = np.array([3, 7, 20, 33])  # 1-based ids kept out of training


@pytest.fixture(scope="module")
def split():
    """A synthetic leave-one-out split whose training sequences never name the COLD items."""
    ds, _ = make_synthetic(n_clusters=4, items_per_cluster=10, n_users=60, min_len=8, max_len=16, seed=1)
    s = leave_one_out(ds)
    return replace(s, train=[t[~np.isin(t, COLD)] for t in s.train])


@pytest.fixture(scope="module")
def text(split) -> np.ndarray:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(split.n_items, 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _text_model(n_items: int = 12, text_dim: int = 5, cold: tuple[int, ...] = (2, 9)) -> SASRec:
    torch.manual_seed(0)
    warm = torch.ones(n_items, dtype=torch.bool)
    warm[[c - 1 for c in cold]] = False
    cfg = SASRecConfig(n_items, max_len=6, dim=8, heads=2, blocks=1, dropout=0.0, text_dim=text_dim)
    return SASRec(cfg, torch.randn(n_items, text_dim), warm).eval()


def test_a_cold_item_is_its_text_projection_alone_even_with_an_id_embedding() -> None:
    model = _text_model()
    with torch.no_grad():
        model.item_emb.weight[2] = 100.0  # cold item 2: a large id embedding that must not count
        model.item_emb.weight[4] = 100.0  # warm item 4: counts
        table = model.item_vectors()
        projected = model.item_text @ model.text_proj.weight.T
    torch.testing.assert_close(table[2], projected[2], rtol=0, atol=0)
    torch.testing.assert_close(table[4], projected[4] + 100.0)
    assert torch.all(table[0] == 0)  # padding
    history = torch.tensor([[1, 4, 2]])
    with torch.no_grad():
        hidden = model(history)[:, -1]
        torch.testing.assert_close(model.last_scores(history)[0, 1], hidden[0] @ projected[2])


def test_training_never_moves_a_cold_items_id_embedding(split, text) -> None:
    """Warm = in a training window; a cold item's id row gets no gradient, so it keeps its initial value."""
    set_determinism(TINY.seed, TINY.threads)  # what `train` does before it builds the model
    start = new_model(split.n_items, TINY, text, np.union1d(*training_windows(split.train, TINY.max_len)))
    model, _ = train(split, TINY, progress=False, item_text=text)
    assert not model.warm[COLD].any() and model.warm[1:].sum() == split.n_items - len(COLD)
    torch.testing.assert_close(model.item_emb.weight[COLD], start.item_emb.weight[COLD], rtol=0, atol=0)
    warm = torch.from_numpy(np.setdiff1d(np.arange(1, split.n_items + 1), COLD))
    assert not torch.equal(model.item_emb.weight[warm], start.item_emb.weight[warm])  # training did run
    with torch.no_grad():
        torch.testing.assert_close(model.item_vectors()[COLD], model.text_proj(model.item_text[COLD]))


def test_the_folded_plain_model_scores_and_serves_as_the_text_model(split, text) -> None:
    model, _ = train(split, TINY, progress=False, item_text=text)
    plain = fold_text(model)
    assert plain.cfg.text_dim == 0 and not hasattr(plain, "text_proj")
    x = torch.from_numpy(pad_left(split.test_history[:20], TINY.max_len))
    with torch.no_grad():
        torch.testing.assert_close(plain.last_scores(x), model.last_scores(x), rtol=1e-5, atol=1e-5)
    item_cluster = torch.arange(split.n_items) % 4
    allowed = torch.zeros(len(x), 4, dtype=torch.int64)
    allowed[:, [0, 2]] = 1
    with torch.no_grad():
        ids_text, _ = RestrictedTopN(model, item_cluster, 4, top_n=5)(x, allowed)
        ids_served, _ = ClusteredTopN(plain, item_cluster, 4, top_n=5)(x, allowed)
    assert torch.equal(ids_text, ids_served)
    assert fold_text(plain) is plain


def test_a_checkpoint_keeps_the_text_part(split, text, tmp_path) -> None:
    model, result = train(split, TINY, progress=False, item_text=text)
    back, ckpt = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, TINY, result, {"catalog_version": "c"}))
    assert back.cfg.text_dim == 8 and ckpt["train_config"]["text"] == "tfidf"
    assert torch.equal(back.item_text, model.item_text) and torch.equal(back.warm, model.warm)
    assert torch.equal(back.text_proj.weight, model.text_proj.weight)
    x = torch.from_numpy(pad_left(split.test_history[:5], TINY.max_len))
    with torch.no_grad():
        torch.testing.assert_close(back.last_scores(x), model.last_scores(x))


def test_text_dim_0_is_todays_model(tmp_path) -> None:
    cfg = SASRecConfig(n_items=10, max_len=6, dim=8, heads=2, blocks=1, dropout=0.0)
    torch.manual_seed(3)
    plain = SASRec(cfg)
    assert sorted(plain.state_dict()) == sorted(
        ["item_emb.weight", "pos_emb.weight", "norm.weight", "norm.bias"]
        + [f"blocks.0.{k}" for k in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight",
                                     "attn.qkv.bias", "attn.out.weight", "attn.out.bias", "ffn.0.weight", "ffn.0.bias",
                                     "ffn.3.weight", "ffn.3.bias")])
    torch.manual_seed(3)  # the text part is built last: the same seed draws the same id-only weights
    text = SASRec(replace(cfg, text_dim=4), torch.randn(10, 4, generator=torch.Generator().manual_seed(1)))
    for key, value in plain.state_dict().items():
        assert torch.equal(text.state_dict()[key], value), key
    # A checkpoint written before the text part (no text_dim in its config) still loads.
    old_config = {k: v for k, v in cfg.to_dict().items() if k != "text_dim"}
    torch.save({"model": plain.state_dict(), "model_config": old_config}, tmp_path / "old.pt")
    back, _ = load_checkpoint(tmp_path / "old.pt")
    assert back.cfg.text_dim == 0 and torch.equal(back.item_emb.weight, plain.item_emb.weight)


def test_text_and_item_text_go_together(split, text) -> None:
    with pytest.raises(ValueError, match="item_text"):
        train(split, TINY, progress=False)
    with pytest.raises(ValueError, match="item_text"):
        train(split, replace(TINY, text="none"), progress=False, item_text=text)
    with pytest.raises(ValueError, match="item_text must be"):
        SASRec(SASRecConfig(5, text_dim=3), torch.zeros(4, 3))


def _batch(split, text):
    """An untrained text model in train mode (TINY: no other dropout) and one batch of its training windows."""
    torch.manual_seed(0)
    x, y = training_windows(split.train, TINY.max_len)
    model = new_model(split.n_items, TINY, text, np.union1d(x, y)).train()
    return model, torch.from_numpy(x[:64]), torch.from_numpy(y[:64])


def test_id_dropout_1_trains_every_warm_item_as_its_text_alone(split, text) -> None:
    """With p 1 the loss is that of the same model with zero id embeddings, and no gradient reaches them."""
    model, x, y = _batch(split, text)
    with torch.no_grad():
        model.item_emb.weight[1:] += 1.0  # large id embeddings, so that keeping any would change the loss
    dropped = id_dropout_mask(model, 1.0, torch.Generator().manual_seed(0))
    assert dropped is not None and dropped.all()
    with torch.no_grad():
        torch.testing.assert_close(model.item_vectors(dropped), model.text_proj(model.item_text), rtol=0, atol=0)
    loss = loss_fn(model, x, y, "ce", torch.Generator().manual_seed(0), id_dropout=1.0)
    loss.backward()
    assert torch.count_nonzero(model.item_emb.weight.grad) == 0
    no_ids = _batch(split, text)[0]
    no_ids.load_state_dict(model.state_dict())
    with torch.no_grad():
        no_ids.item_emb.weight.zero_()
        torch.testing.assert_close(loss, loss_fn(no_ids, x, y, "ce", torch.Generator().manual_seed(0)))
        assert not torch.isclose(loss, loss_fn(model, x, y, "ce", torch.Generator().manual_seed(0)))


def test_id_dropout_draws_nothing_in_eval_mode_at_0_or_without_text(split, text) -> None:
    model, x, y = _batch(split, text)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert id_dropout_mask(model.eval(), 1.0, gen) is None
    assert id_dropout_mask(model.train(), 0.0, gen) is None
    plain = new_model(split.n_items, replace(TINY, text="none"), None, np.arange(1, split.n_items + 1)).train()
    assert id_dropout_mask(plain, 1.0, gen) is None
    assert torch.equal(gen.get_state(), state)  # nothing drawn: the batch order after it is today's
    half = id_dropout_mask(model, 0.5, gen)
    assert half is not None and 0 < half.sum() < len(half)  # one draw per item
    with torch.no_grad():  # kept: id + text; dropped or cold (whatever was drawn for it): text alone
        keep = model.warm & ~half
        torch.testing.assert_close(model.item_vectors(half), model.item_emb.weight * keep[:, None]
                                   + model.text_proj(model.item_text), rtol=0, atol=0)
        assert keep.any() and (half & model.warm).any() and (half & ~model.warm)[1:].any()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loss_fn(model, x, y, "ce", gen, id_dropout=1.0), loss_fn(model, x, y, "ce", gen),
                                   rtol=0, atol=0)


def test_id_dropout_0_is_todays_text_model_and_0_5_trains_another(split, text) -> None:
    base, r0 = train(split, TINY, progress=False, item_text=text)
    same, r1 = train(split, replace(TINY, id_dropout=0.0), progress=False, item_text=text)
    other, r2 = train(split, replace(TINY, id_dropout=0.5), progress=False, item_text=text)
    for key, value in base.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key
    assert r1.history == r0.history
    assert not torch.equal(other.text_proj.weight, base.text_proj.weight)
    assert r2.history[0]["loss"] != r0.history[0]["loss"]


def test_id_dropout_needs_a_text_part() -> None:
    with pytest.raises(ValueError, match="needs a text part"):
        TrainConfig(id_dropout=0.5)
    with pytest.raises(ValueError, match="needs a text part"):
        replace(TINY, text="none", id_dropout=0.3)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        replace(TINY, id_dropout=1.5)
    assert replace(TINY, text="none").id_dropout == 0.0
