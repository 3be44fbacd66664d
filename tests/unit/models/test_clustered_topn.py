"""Issue 15 item 1: the clustered top-N graph gives exactly the full-scoring graph's answer.

Ids must be equal, scores equal to float tolerance (the clustered graph multiplies gathered rows,
the full one a whole matrix, so the last bits may differ), including items already seen, clusters
with no items, rows that allow nothing, and exact ties (items with a zero embedding score exactly
0 in any graph and runtime, and ties are ordered by id). The ONNX export must match PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exporters.seqrec_onnx import export_onnx, random_inputs
from interests.runtime.constrained import EXCLUDED
from interests.seqrec.clustered_topn import ClusteredTopN, cluster_layout
from interests.seqrec.sasrec import SASRec, SASRecConfig
from interests.seqrec.topn import RestrictedTopN

NEAR = 1e-5  # scores this close but not equal may be ordered either way by two graphs


def _model(n_items: int, seed: int, zero_every: int = 0) -> SASRec:
    """A random SASRec; with zero_every, every such item has a zero embedding (score exactly 0: ties)."""
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=n_items, max_len=10, dim=16, heads=2, blocks=1, dropout=0.0)).eval()
    if zero_every:
        with torch.no_grad():
            model.item_emb.weight[1::zero_every] = 0.0
    return model


def _run(module: torch.nn.Module, history: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        items, scores = module(torch.from_numpy(history), torch.from_numpy(allowed))
    return items.numpy(), scores.numpy()


def _reference(model: SASRec, item_cluster: np.ndarray, history: np.ndarray, allowed: np.ndarray,
               n: int) -> tuple[np.ndarray, np.ndarray]:
    """Full scoring written out in numpy: eligible items by (score desc, id asc); unfilled: (0, EXCLUDED)."""
    with torch.no_grad():
        scores = model.last_scores(torch.from_numpy(history)).numpy()
    items = np.zeros((len(history), n), np.int64)
    out = np.full((len(history), n), EXCLUDED, np.float32)
    for row in range(len(history)):
        ids = np.array([i for i in range(1, len(item_cluster) + 1)
                        if allowed[row, item_cluster[i - 1]] and i not in set(history[row].tolist())], np.int64)
        best = ids[np.lexsort((ids, -scores[row, ids - 1]))][:n]
        items[row, :len(best)], out[row, :len(best)] = best, scores[row, best - 1]
    return items, out


def _assert_same(items: np.ndarray, scores: np.ndarray, want_items: np.ndarray, want_scores: np.ndarray) -> None:
    """Scores to float tolerance; ids exactly, except inside a near tie (close, not equal) of want_scores."""
    np.testing.assert_allclose(scores, want_scores, atol=NEAR, rtol=0)
    gap = np.abs(np.diff(want_scores, axis=1))
    near = (gap > 0) & (gap <= NEAR)
    fuzzy = np.concatenate([near[:, :1], near[:, 1:] | near[:, :-1], near[:, -1:]], axis=1)
    assert np.array_equal(items[~fuzzy], want_items[~fuzzy]), (items, want_items)


def test_layout_puts_every_item_once_at_its_offset() -> None:
    item_cluster = np.array([2, 0, 2, 2, 0])  # cluster 1 is empty
    members, offset = cluster_layout(item_cluster, 3)
    assert members.tolist() == [[2, 5, 0], [0, 0, 0], [1, 3, 4]]
    assert all(members[c, o] == i + 1 for i, (c, o) in enumerate(zip(item_cluster, offset, strict=True)))


@settings(max_examples=60, deadline=None)
@given(n_items=st.integers(1, 80), n_clusters=st.integers(1, 10), top_n=st.integers(1, 25),
       batch=st.integers(1, 6), zero_every=st.sampled_from([0, 2, 3]), seed=st.integers(0, 10_000))
def test_clustered_equals_full_scoring(n_items: int, n_clusters: int, top_n: int, batch: int, zero_every: int,
                                       seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = _model(n_items, seed, zero_every)
    # Clusters beyond n_used stay empty; rows may allow only those, or nothing.
    n_used = int(rng.integers(1, n_clusters + 1))
    item_cluster = rng.integers(0, n_used, n_items)
    history, allowed = random_inputs(n_items, n_clusters, batch, 10, rng)
    allowed[rng.random(batch) < 0.15] = False
    clustered = ClusteredTopN(model, torch.from_numpy(item_cluster), n_clusters, top_n).eval()
    full = RestrictedTopN(model, torch.from_numpy(item_cluster), n_clusters, top_n).eval()
    items, scores = _run(clustered, history, allowed)
    f_items, f_scores = _run(full, history, allowed)
    assert items.shape == (batch, min(top_n, n_items))
    _assert_same(items, scores, f_items, f_scores)
    _assert_same(items, scores, *_reference(model, item_cluster, history, allowed, clustered.top_n))


def _tie_case() -> tuple[SASRec, np.ndarray, np.ndarray, np.ndarray]:
    """40 items in clusters (id - 1) % 4 (ids interleave across clusters), cluster 4 empty. Every item
    scores exactly 0 but 33 (cluster 0) and 35 (cluster 2), set to score above 0, 35 higher.
    Row 0 allows clusters 0 and 2 and has seen item 5; row 1 allows nothing; row 2 only the empty one."""
    model = _model(40, 0, zero_every=1)
    history = np.array([[0, 0, 2, 6, 5], [0, 0, 0, 0, 2], [0, 0, 0, 0, 2]], np.int64)
    with torch.no_grad():
        hidden = model(torch.from_numpy(history))[0, -1]
        model.item_emb.weight[33] = hidden / hidden.norm() ** 2  # score 1
        model.item_emb.weight[35] = 2 * hidden / hidden.norm() ** 2  # score 2
    allowed = np.zeros((3, 5), bool)
    allowed[0, [0, 2]] = True
    allowed[2, 4] = True
    return model, (np.arange(40) % 4), history, allowed


def test_ties_are_broken_by_lowest_id_in_both_graphs() -> None:
    model, item_cluster, history, allowed = _tie_case()
    for graph in (ClusteredTopN, RestrictedTopN):
        items, scores = _run(graph(model, torch.from_numpy(item_cluster), 5, top_n=5).eval(), history, allowed)
        assert items[0].tolist() == [35, 33, 1, 3, 7], graph  # 5 was seen; 1, 3, 7 are the lowest tied ids
        np.testing.assert_allclose(scores[0], [2, 1, 0, 0, 0], atol=1e-5)
        assert items[1:].tolist() == [[0] * 5] * 2 and np.all(scores[1:] == EXCLUDED), graph


def test_onnx_clustered_graph_matches_pytorch_and_the_full_graph(tmp_path: Path) -> None:
    """Dynamic K: one export answers batches allowing 0, 1, 3 or every cluster; ties exactly too."""
    rng = np.random.default_rng(0)
    model = _model(300, 1, zero_every=3)
    item_cluster = rng.integers(0, 12, 300)  # clusters 12..15 empty
    clustered = ClusteredTopN(model, torch.from_numpy(item_cluster), 16, top_n=20).eval()
    full = RestrictedTopN(model, torch.from_numpy(item_cluster), 16, top_n=20).eval()
    path = export_onnx(clustered, tmp_path / "clustered.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cases = [random_inputs(300, 16, b, length, rng) for b, length in ((1, 10), (9, 10), (4, 3), (64, 10))]
    three = np.zeros((8, 16), bool)
    for row in range(8):
        three[row, rng.choice(16, 3, replace=False)] = True
    cases += [(cases[1][0], np.ones((9, 16), bool)), (cases[1][0], np.zeros((9, 16), bool)),
              (random_inputs(300, 16, 8, 10, rng)[0], three)]
    tie_model, tie_clusters, tie_history, tie_allowed = _tie_case()
    for history, allowed in cases:
        items, scores = session.run(["items", "scores"], {"history": history, "allowed": allowed})
        _assert_same(items, scores, *_run(clustered, history, allowed))
        _assert_same(items, scores, *_run(full, history, allowed))
    tie = ClusteredTopN(tie_model, torch.from_numpy(tie_clusters), 5, top_n=5).eval()
    session = ort.InferenceSession(str(export_onnx(tie, tmp_path / "tie.onnx")), providers=["CPUExecutionProvider"])
    items, _ = session.run(["items", "scores"], {"history": tie_history, "allowed": tie_allowed})
    assert items.tolist() == [[35, 33, 1, 3, 7], [0] * 5, [0] * 5]
