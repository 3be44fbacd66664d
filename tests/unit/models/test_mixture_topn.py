"""The served mixture graph: its cluster scores are the offline mixture's, it never proposes a known cluster,
its slate stays inside the clusters it proposes, and ONNX gives what PyTorch gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from exporters.seqrec_onnx import export_mixture_onnx
from interests.novelty.cluster_head import ClusterHead, head_log_scores
from interests.novelty.mixture import Mixture, known_mask
from interests.novelty.mixture_topn import MixtureTopN
from interests.runtime.constrained import EXCLUDED
from interests.seqrec.clustered_topn import ClusteredTopN
from interests.seqrec.sasrec import SASRec, SASRecConfig

N_ITEMS, N_CLUSTERS, M = 40, 7, 3


def _graph(seed: int = 0) -> tuple[MixtureTopN, np.ndarray, Mixture]:
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=N_ITEMS, max_len=10, dim=16, heads=2, blocks=1, dropout=0.0)).eval()
    item_cluster = np.arange(N_ITEMS) % (N_CLUSTERS - 1)  # the last cluster has no item
    head = ClusterHead(16, N_CLUSTERS, prototypes=3)
    with torch.no_grad():
        head.weight.normal_()
        head.bias.normal_()
    mix = Mixture({"lm": 0.4, "cooccurrence": 1.3, "popularity": 0.0, "sequence": 0.8})
    graph = MixtureTopN(model, torch.from_numpy(item_cluster), N_CLUSTERS, head, mix.weights["sequence"], M, top_n=5)
    return graph.eval(), item_cluster, mix


def _inputs(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    history = rng.integers(1, N_ITEMS + 1, size=(batch, 10)).astype(np.int64)
    history[0, :4] = 0  # left padding
    known = rng.random((batch, N_CLUSTERS)) < 0.4
    known[1] = True  # a user who knows everything: no cluster, no slate
    known[2] = True
    known[2, :2] = False  # fewer unknown clusters than M
    experts = {"lm": rng.normal(size=(batch, N_CLUSTERS)), "cooccurrence": np.log(rng.random((batch, N_CLUSTERS))),
               "popularity": np.zeros((batch, N_CLUSTERS))}
    return history, known, experts


def test_cluster_scores_equal_the_offline_mixture() -> None:
    graph, _, mix = _graph()
    history, known, experts = _inputs(np.random.default_rng(0), 8)
    with torch.no_grad():
        hidden = graph.hidden(torch.from_numpy(history))
        got = graph.cluster_scores(hidden, torch.from_numpy(known),
                                   torch.from_numpy(mix.context_part(experts)).float()).numpy()
    offline = mix.score({**experts, "sequence": head_log_scores(graph.head, hidden.double().numpy())})
    assert graph.head.weight.dtype == torch.float32  # scoring offline does not convert the graph's head
    free = ~known
    np.testing.assert_allclose(got[free], offline[free], rtol=1e-5, atol=1e-4)
    assert (got[known] == EXCLUDED).all()


def _run(module: torch.nn.Module, history: np.ndarray, known: np.ndarray, context: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in module(torch.from_numpy(history), torch.from_numpy(known),
                                          torch.from_numpy(context))]


def test_proposals_are_unknown_and_the_slate_stays_inside_them() -> None:
    graph, item_cluster, mix = _graph(1)
    history, known, experts = _inputs(np.random.default_rng(1), 16)
    context = mix.context_part(experts).astype(np.float32)
    clusters, cscores, items, scores = _run(graph, history, known, context)
    assert clusters.shape == (16, M)
    assert (clusters[1] == -1).all() and (cscores[1] == EXCLUDED).all() and (items[1] == 0).all()
    assert sorted(clusters[2][clusters[2] >= 0].tolist()) == [0, 1]
    for row in range(16):
        proposed = [int(c) for c in clusters[row] if c >= 0]
        assert not set(proposed) & set(np.flatnonzero(known[row]).tolist())
        assert len(proposed) == min(M, int((~known[row]).sum()))
        assert list(cscores[row][: len(proposed)]) == sorted(cscores[row][: len(proposed)], reverse=True)
        real = items[row][items[row] > 0]
        assert set(item_cluster[real - 1].tolist()) <= set(proposed)
        assert not set(real.tolist()) & set(history[row].tolist())
    # The slate is exactly the clustered top-N restricted to the proposed clusters.
    allowed = np.zeros_like(known)
    for row in range(16):
        allowed[row, [c for c in clusters[row] if c >= 0]] = True
    plain = ClusteredTopN(graph.model, torch.from_numpy(item_cluster), N_CLUSTERS, top_n=5).eval()
    with torch.no_grad():
        want_items, want_scores = (t.numpy() for t in plain(torch.from_numpy(history), torch.from_numpy(allowed)))
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # And the known mask the graph reads is the offline one.
    assert (known_mask([frozenset(np.flatnonzero(k).tolist()) for k in known], N_CLUSTERS) == known).all()


def test_onnx_agrees_with_pytorch(tmp_path: Path) -> None:
    import onnxruntime as ort

    graph, _, mix = _graph(2)
    path = export_mixture_onnx(graph, tmp_path / "mixture.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    for batch in (3, 16):
        history, known, experts = _inputs(rng, batch)
        context = mix.context_part(experts).astype(np.float32)
        want = _run(graph, history, known, context)
        got = session.run(["clusters", "cluster_scores", "items", "scores"],
                          {"history": history, "known": known, "context_scores": context})
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], atol=1e-4)
        np.testing.assert_array_equal(got[2], want[2])
        np.testing.assert_allclose(got[3], want[3], atol=1e-4)
