"""The item-level experts of the mixture (`interests.novelty.item_experts`): their sparse served form equals
the dense definition, they read only their period, and the served context part carries them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from interests.novelty import item_experts as ie
from interests.novelty.item_experts import ItemExperts, SparseRows, ease_table, fit_item_experts, transition_table
from interests.novelty.mixture import ContextExperts, Mixture, served_context_scores


def _interactions(rng: np.random.Generator, n_users: int = 40, n_items: int = 30, per_user: int = 8):
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    return users, items


def test_ease_table_is_the_closed_form_with_each_rows_positive_entries() -> None:
    """B = I - P / diag(P), P = (X'X + lambda I)^-1, diagonal 0 (Steck 2019); the table keeps each row's
    positive entries (all of them when TOP exceeds the catalog); items without interactions have none."""
    rng = np.random.default_rng(0)
    users, items = _interactions(rng)
    n_items = 32  # items 30 and 31 never interacted with
    table = ease_table(users, items, 40, n_items, lam=5.0, top=64)
    x = np.zeros((40, 30))
    x[users, items] = 1.0
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(30))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    dense = np.zeros((n_items, n_items))
    for i in range(n_items):
        ids, w = table.gather(np.array([i]))
        dense[i, ids] = w
    np.testing.assert_allclose(dense[:30, :30], np.maximum(b, 0.0), rtol=1e-5, atol=1e-6)
    assert table.ptr[30] == table.ptr[32] and (dense[:, 30:] == 0).all()  # no entries for or towards them


def test_ease_row_is_each_clusters_softmax_mass_over_unseen_items(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The sparse computation (items outside the neighbourhood counted at s = 0) equals the dense one:
    softmax(beta * s) over the items the user has not had, summed per cluster, logged."""
    rng = np.random.default_rng(1)
    n_items, n = 25, 4
    item_cluster = rng.integers(0, n, n_items)
    item_cluster[:n] = np.arange(n)  # every cluster has an item
    b = np.where(rng.random((n_items, n_items)) < 0.3, rng.random((n_items, n_items)) * 0.1, 0.0)
    np.fill_diagonal(b, 0.0)
    experts = ItemExperts(item_cluster, SparseRows.empty(n_items), SparseRows.of_padded(*ie.sparse_top(b, n_items)))
    history = np.array([3, 7, 7, 11, 20])
    seen = np.unique(history)
    s = b[seen].sum(0)
    p = np.exp(ie.EASE_BETA * s)
    p[seen] = 0.0
    want = np.log(np.bincount(item_cluster, p, minlength=n) / p.sum())
    others = [np.array([0, 1]), np.array([], np.int64)]  # batched with other users: each row its own
    batched = experts.ease_scores([history, *others])
    np.testing.assert_allclose(batched[0], want, rtol=1e-5)
    monkeypatch.setattr(ie, "DENSE_ITEMS", 0)  # the large-catalog path: s = 0 items counted, not summed
    np.testing.assert_allclose(experts.ease_scores([history, *others]), batched, rtol=1e-5)


def test_transition_row_is_the_mean_next_cluster_distribution_of_the_last_items() -> None:
    """Hand-made: item 0 led to cluster 1 twice and cluster 2 once, item 1 to cluster 2; a user whose last
    items are 0 and 1 scores log(mean of the two rows + eps)."""
    histories = [np.array([5, 0]), np.array([0]), np.array([0, 4]), np.array([1])]
    table = transition_table(histories, np.array([1, 1, 2, 2]), n_items=6, n_clusters=3)
    assert table.entries == 5  # 0 -> 1 and 2, 1 -> 2, 4 -> 2, 5 -> 1: nothing stored for items 2 and 3
    assert table.ptr[2] == table.ptr[3] == table.ptr[4]  # rows 2 and 3 empty
    experts = ItemExperts(np.array([0, 0, 1, 1, 2, 2]), table, SparseRows.empty(6))
    row0 = np.array([0, 2 / 3, 1 / 3])
    row1 = np.array([0, 0, 1.0])
    np.testing.assert_allclose(experts.transition_scores([np.array([0, 1])])[0],
                               np.log((row0 + row1) / 2 + ie.TRANSITION_EPS), rtol=1e-6)
    long = np.array([1, 1, 1, 1, 1, 1, 0])  # only the last TRANSITION_ITEMS vote
    np.testing.assert_allclose(experts.transition_scores([long, np.array([], np.int64)]),
                               np.log([(row0 + 4 * row1) / 5 + ie.TRANSITION_EPS, np.full(3, ie.TRANSITION_EPS)]),
                               rtol=1e-6)  # batched, and a user without items gets eps everywhere
    assert set(experts.scores([np.array([0])])) == {"transitions"}  # no EASE table, no EASE expert


def test_fit_reads_only_its_period_and_survives_its_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Interactions at or after `until` change neither table; EASE is left out above MAX_EASE_ITEMS."""
    rng = np.random.default_rng(2)
    users, items = _interactions(rng)
    ts = np.tile(np.arange(8), 40)
    item_cluster = np.arange(30) % 5

    def dataset(items_: np.ndarray) -> SimpleNamespace:
        return SimpleNamespace(users=users, items=items_, timestamps=ts, n_users=40, n_items=30)

    histories, targets = [np.array([1, 2]), np.array([3])], np.array([4, 0])
    a = fit_item_experts(dataset(items), item_cluster, histories, targets, until=5)
    later = items.copy()
    later[ts >= 5] = rng.integers(0, 30, int((ts >= 5).sum()))
    b = fit_item_experts(dataset(later), item_cluster, histories, targets, until=5)
    for name in ("ptr", "ids", "values"):
        np.testing.assert_array_equal(getattr(a.ease, name), getattr(b.ease, name))
    loaded = ItemExperts.load(a.save(tmp_path))
    np.testing.assert_array_equal(loaded.item_cluster, a.item_cluster)
    for table in ("transitions", "ease"):
        for name in ("ptr", "ids", "values"):
            np.testing.assert_array_equal(getattr(getattr(loaded, table), name), getattr(getattr(a, table), name))
    assert loaded.until == 5 and loaded.has_ease
    monkeypatch.setattr(ie, "MAX_EASE_ITEMS", 10)
    assert not fit_item_experts(dataset(items), item_cluster, histories, targets, until=5).has_ease


def test_served_context_part_carries_the_item_experts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """served_context_scores with the users' recent items = Mixture.context_part of the offline experts, through
    the level's files; a mixture that weighs them refuses to serve without them."""
    rng = np.random.default_rng(4)
    users, items = _interactions(rng)
    ds = SimpleNamespace(users=users, items=items, timestamps=np.tile(np.arange(8), 40), n_users=40, n_items=30)
    item_cluster = np.arange(30) % 6
    histories = [rng.choice(30, int(k), replace=False) for k in rng.integers(1, 9, 12)]
    fitted = fit_item_experts(ds, item_cluster, histories, rng.integers(0, 6, 12), until=8)
    log_pop = np.log(rng.dirichlet(np.ones(6)))
    context = ContextExperts.of_lm(rng.random((6, 6)), log_pop, None, fitted)
    mix = Mixture({"sequence": 1.0, "popularity": 0.3, "transitions": 0.5, "ease": 0.2})
    contexts = rng.integers(0, 6, (12, 2))
    offline = {"popularity": np.broadcast_to(log_pop, (12, 6)), "sequence": np.zeros((12, 6)),
               **fitted.scores(histories)}
    served = served_context_scores(mix, ContextExperts.load(context.save(tmp_path)), contexts, [([], [])] * 12,
                                   histories)
    np.testing.assert_allclose(served, mix.context_part(offline), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"item_experts\.npz"):
        served_context_scores(mix, ContextExperts.of_lm(rng.random((6, 6)), log_pop), contexts, [([], [])] * 12,
                              histories)


def test_an_item_with_more_clusters_than_top_keeps_its_likeliest_and_every_cluster_has_a_column() -> None:
    """Item 0 led to cluster 2 three times, 1 twice, 0 once: with top 2 it keeps clusters 2 and 1; a level whose
    last cluster has no item still scores every cluster (n_clusters, not the highest id + 1)."""
    histories = [np.array([0])] * 6 + [np.array([1])]
    table = transition_table(histories, np.array([2, 2, 2, 1, 1, 0, 0]), n_items=2, n_clusters=4, top=2)
    ids, probs = table.gather(np.array([0]))
    assert dict(zip(ids.tolist(), np.round(probs, 6).tolist(), strict=True)) == {2: 0.5, 1: round(2 / 6, 6)}
    assert table.gather(np.array([1]))[0].tolist() == [0]  # a light row keeps all it has
    experts = ItemExperts(np.array([0, 1]), table, SparseRows.empty(2), n_clusters=4)
    assert experts.scores([np.array([0])])["transitions"].shape == (1, 4)
