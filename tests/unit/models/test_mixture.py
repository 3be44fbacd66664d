"""The mixture of experts and the cluster head on hand-made scores: known clusters, planted weights, exact forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interests.novelty.cluster_head import ClusterHead, HeadData, cluster_sums, head_log_scores, train_head
from interests.novelty.mixture import FLOOR, Mixture, fit_weights, known_mask, log_probabilities
from interests.novelty.rules import top_m


def planted(rng: np.random.Generator, moments: int, clusters: int, weights: dict[str, float]):  # type: ignore[no-untyped-def]
    """Expert scores and targets drawn from softmax(sum_e w_e * s_e) over the clusters not known."""
    experts = {name: rng.normal(size=(moments, clusters)) for name in weights}
    logits = sum(w * experts[n] for n, w in weights.items())
    known = rng.random((moments, clusters)) < 0.2
    known[:, 0] = False  # every moment keeps at least one unknown cluster
    logits = np.where(known, -np.inf, logits)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    targets = np.array([rng.choice(clusters, p=row) for row in p])
    return experts, targets, known


def test_fit_recovers_a_planted_weighting() -> None:
    rng = np.random.default_rng(0)
    truth = {"lm": 0.5, "sequence": 2.0, "popularity": 0.0}
    experts, targets, known = planted(rng, 6000, 12, truth)
    weights, loglik = fit_weights(experts, targets, known, l2=0.0)
    assert weights["sequence"] == pytest.approx(2.0, abs=0.15)
    assert weights["lm"] == pytest.approx(0.5, abs=0.1)
    assert weights["popularity"] < 0.08  # a useless expert gets (almost) nothing
    assert loglik > -np.log(12)  # better than uniform over the clusters


def test_fit_refuses_a_known_target() -> None:
    experts = {"lm": np.zeros((2, 3))}
    known = np.array([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match="known"):
        fit_weights(experts, np.array([0, 1]), known)


def test_the_mixture_never_proposes_a_known_cluster() -> None:
    rng = np.random.default_rng(1)
    n = 6
    # The experts love the known clusters: they are scored far above the others.
    known_sets = [frozenset(rng.choice(n, size=3, replace=False).tolist()) for _ in range(50)]
    mask = known_mask(known_sets, n)
    experts = {"lm": np.where(mask, 50.0, rng.normal(size=mask.shape)),
               "sequence": np.where(mask, 0.0, -np.inf)}  # and give the rest probability 0
    mix = Mixture({"lm": 1.0, "sequence": 3.0, "popularity": 0.0})
    proposals = top_m(mix.score(experts), known_sets, 3)
    for props, known in zip(proposals, known_sets, strict=True):
        assert len(props) == 3 and not set(props) & known


def test_mixture_scores_are_the_weighted_sum_floored() -> None:
    experts = {"lm": np.array([[-1.0, -np.inf]]), "sequence": log_probabilities(np.array([[0.25, 0.0]]))}
    mix = Mixture({"lm": 2.0, "sequence": 0.5})
    assert mix.score(experts) == pytest.approx(np.array([[-2.0 + 0.5 * np.log(0.25), 2 * FLOOR + 0.5 * FLOOR]]))
    assert mix.without("lm").score({"sequence": experts["sequence"]}) == pytest.approx(0.5 * experts["sequence"])
    with pytest.raises(KeyError, match="lm"):
        mix.score({"sequence": experts["sequence"]})


def test_mixture_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mix = Mixture({"lm": 0.3, "sequence": 1.2}, level=2, fitted_on={"moments": 10})
    back = Mixture.load(mix.save(tmp_path))
    assert back == mix
    (tmp_path / "mixture.json").write_text('{"weights": {"oracle": 1}}')
    with pytest.raises(ValueError, match="oracle"):
        Mixture.load(tmp_path)


def test_cluster_sums_equal_the_judges_exact_form() -> None:
    from interests.novelty.rules import seqrec_cluster_scores

    rng = np.random.default_rng(2)
    item_cluster = np.array([2, 0, 2, 1, 0, 2, 4])  # cluster 3 has no item
    probs = rng.dirichlet(np.ones(7), size=5)
    exact = seqrec_cluster_scores(lambda hs: probs[: len(hs)], [np.zeros(1)] * 5, item_cluster, 5)
    assert cluster_sums(torch.from_numpy(probs), torch.from_numpy(item_cluster), 5).numpy() == pytest.approx(exact)


def test_head_learns_novel_targets_and_masks_known() -> None:
    rng = np.random.default_rng(3)
    dim, n, moments = 4, 5, 400
    hidden = rng.normal(size=(moments, dim))
    targets = hidden[:, :n - 1].argmax(1)  # the target is readable from the hidden state
    known = torch.zeros(moments, n, dtype=torch.bool)
    known[:, n - 1] = True
    data = HeadData(torch.from_numpy(hidden[:50]), torch.full((50, n), 1.0 / n, dtype=torch.float64),
                    torch.from_numpy(hidden), torch.from_numpy(targets), known)
    head, info = train_head(data, n, distill_weight=0.1, epochs=80, patience=80, lr=0.05)
    assert info["novel_moments"] == moments
    scores = head_log_scores(head, hidden)
    assert np.exp(scores).sum(1) == pytest.approx(np.ones(moments))
    assert (scores[:, : n - 1].argmax(1) == targets).mean() > 0.9
    assert isinstance(head, ClusterHead)


def test_cli_mix_then_judge_the_served_mixture(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """seqrec train --until-novelty-valid / --until-novelty-test -> novelty train -> novelty mix (weights with and
    without the LM, the serving head) -> novelty eval --mixture: the mixture's rows and its paired comparisons."""
    import json

    from explore.cli import main
    from explore.commands.mix import level_dir
    from interests.clusters.build import build_catalog
    from interests.configs import BuildConfig
    from interests.data.synthetic import make_synthetic
    from interests.novelty.cluster_head import HEAD_FILE

    ds, _ = make_synthetic(n_clusters=8, n_users=400, seed=0)  # what --synthetic builds
    build_catalog(ds, BuildConfig(levels=(8,)), progress=False).save(tmp_path / "catalog")
    common = ["--synthetic", "--catalog", str(tmp_path / "catalog")]
    small = ["--epochs", "2", "--dim", "16", "--blocks", "1", "--max-len", "20", "--quiet"]
    valid, test = tmp_path / "valid.pt", tmp_path / "test.pt"
    assert main(["seqrec", "train", *common, *small, "--until-novelty-valid", "--out", str(valid)]) == 0
    assert main(["seqrec", "train", *common, *small, "--until-novelty-test", "--out", str(test)]) == 0
    # A teacher of another cut is refused: it saw interactions the student does not.
    assert main(["seqrec", "train", *common, *small, "--until-novelty-valid", "--teacher", str(test),
                 "--out", str(tmp_path / "student.pt")]) == 1
    lm = tmp_path / "lm"
    assert main(["novelty", "train", *common, "--out", str(lm), "--layers", "1", "--dim", "32", "--heads", "2",
                 "--epochs", "1", "--prior-alphas", "0,1", "--quiet"]) == 0
    mix = tmp_path / "mix"
    # The fitting SASRec must not have seen the validation moments.
    assert main(["novelty", "mix", *common, "--seqrec-valid", str(test), "--seqrec", str(test), "--model", str(lm),
                 "--out", str(mix)]) == 1
    assert "--until-novelty-valid" in capsys.readouterr().err
    assert main(["novelty", "mix", *common, "--seqrec-valid", str(valid), "--seqrec", str(test), "--model", str(lm),
                 "--prototypes", "4", "--out", str(mix)]) == 0
    fitted = json.loads((level_dir(mix, 0) / "mixture.json").read_text())
    assert set(fitted["weights"]) == {"popularity", "cooccurrence", "sequence", "lm", "transitions", "ease"}
    assert all(w >= 0 for w in fitted["weights"].values()) and fitted["fitted_on"]["seqrec_valid"] == [str(valid)]
    without = json.loads((level_dir(mix, 0) / "without-lm" / "mixture.json").read_text())
    assert "lm" not in without["weights"]
    from interests.novelty.cluster_head import load_head

    head, head_meta = load_head(level_dir(mix, 0) / HEAD_FILE)
    assert head.dims[1] == 4 and head_meta["seqrec"] == str(test) and head_meta["level"] == 0
    judged = tmp_path / "judge"
    assert main(["novelty", "eval", *common, "--model", str(lm), "--seqrec", str(test), "--mixture", str(mix),
                 "--text", "none", "--out", str(judged)]) == 0
    level = json.loads((judged / "judge.json").read_text())["levels"][0]
    assert {"mixture (served)", "mixture without the LM", "sequence expert (cluster head)",
            "SASRec explores"} <= set(level["methods"])
    pairs = {(p["method"], p["against"]): p for p in level["pairs"]["any"]}
    lm_part = pairs[("mixture (served)", "mixture without the LM")]
    assert lm_part["ci95"][0] <= lm_part["diff"] <= lm_part["ci95"][1] and 0 <= lm_part["p"] <= 1
    assert ("mixture (served)", "SASRec explores") in pairs
    # A judge that is not given the mixture's LM refuses rather than judging a different mixture.
    assert fitted["weights"]["lm"] > 0  # softplus weights are never exactly 0
    assert main(["novelty", "eval", *common, "--seqrec", str(test), "--mixture", str(mix), "--text", "none",
                 "--out", str(judged)]) == 1
    assert "--model" in capsys.readouterr().err

    # The level exported as the engine's `explorer`: its graph, fed the context part a worker computes from
    # the novelty table's rows, proposes what the offline mixture proposes at the judge's moments.
    repo = tmp_path / "repository"
    assert main(["novelty", "export-mixture", "--mixture", str(tmp_path / "nothing"), "--catalog",
                 str(tmp_path / "catalog"), "--repository", str(repo)]) == 1
    assert "explore novelty mix" in capsys.readouterr().err
    assert main(["novelty", "export-mixture", "--mixture", str(level_dir(mix, 0)), "--catalog",
                 str(tmp_path / "catalog"), "--repository", str(repo), "--m", "3"]) == 0
    meta = json.loads((repo / "explorer" / "1" / "meta.json").read_text())
    assert meta["weights"] == fitted["weights"] and len(meta["mixture"]) == 12 and meta["m"] == 3
    _served_mixture_is_the_offline_one(ds, tmp_path / "catalog", lm, test, level_dir(mix, 0), repo)


def _served_mixture_is_the_offline_one(ds, catalog_dir, lm_dir, checkpoint, level, repo) -> None:  # type: ignore[no-untyped-def]
    from interests.clusters.catalog import Catalog
    from interests.novelty.cluster_head import HEAD_FILE, load_head
    from interests.novelty.examples import novel_transitions, split_by_time
    from interests.novelty.fit_mixture import context_experts, sequence_expert
    from interests.novelty.lm import NoveltyLM
    from interests.novelty.mixture import ContextExperts, expert_scores, served_context_scores
    from interests.novelty.precompute import precompute, table_depth
    from interests.novelty.prior import description_scores, rows_of_contexts
    from interests.novelty.rules import context_similarity_scores, histories_at, top_m
    from interests.runtime.constrained import onnx_session
    from interests.seqrec.train import load_checkpoint
    from streams.inference.seqrec import pad_histories

    catalog = Catalog.load(catalog_dir)
    ic, n = catalog.item_clusters(0), catalog.levels[0]
    lm = NoveltyLM.load(lm_dir)
    split = split_by_time(novel_transitions(ds, ic, lm.meta["k"]))
    test = split.test.subset(np.arange(min(60, len(split.test))))
    mix = Mixture.load(level)
    context = ContextExperts.load(level)
    np.testing.assert_allclose(context.similarity, context_experts(ds, ic, n, split, lm).similarity)
    histories = histories_at(ds, test)
    model = load_checkpoint(checkpoint)[0]
    unique, inverse = rows_of_contexts(test.contexts)
    offline = mix.score(expert_scores(split.train, n, context_similarity_scores(context.similarity, test.contexts),
                                      sequence_expert("head", [model], ic, n, load_head(level / HEAD_FILE)[0])(
                                          histories), description_scores(lm, unique)[inverse],
                                      context.items, histories))
    rows = {tuple(r["context"]): (r["clusters"], r["scores"])
            for r in precompute(lm, unique.tolist(), table_depth(n, lm.meta["k"]), 8, progress=False)}
    known = np.zeros((len(test), n), bool)
    for i, k in enumerate(test.known):
        known[i, list(k)] = True
    assert context.items is not None and mix.weights["transitions"] > 0  # the item experts take part
    served = served_context_scores(mix, context, test.contexts, [rows[tuple(c)] for c in test.contexts.tolist()],
                                   histories)
    session = onnx_session(repo / "explorer" / "1" / "model.onnx", 1)
    clusters, scores, items, _ = session.run(None, {"history": pad_histories([h + 1 for h in histories],
                                                                             model.cfg.max_len),
                                                    "known": known, "context_scores": served})
    assert [[c for c in row if c >= 0] for row in clusters.tolist()] == top_m(offline, test.known, 3)
    real = clusters >= 0  # a user who knows all but two clusters gets two, then -1
    np.testing.assert_allclose(scores[real], np.take_along_axis(offline, np.maximum(clusters, 0), 1)[real], atol=2e-3)
    item_cluster = np.concatenate([[-1], ic])
    assert all(set(item_cluster[row[row > 0]]) <= set(c) for row, c in zip(items, clusters, strict=True))


def test_distillation_loss_is_half_hard_half_the_teachers_mean() -> None:
    """seqrec train --teacher: half the cross-entropy of the next item, half that of the teachers' mean
    next-item distribution, at the positions with a target."""
    import torch.nn.functional as F

    from interests.seqrec.sasrec import SASRec, SASRecConfig
    from interests.seqrec.train import loss_fn

    def model(seed: int) -> SASRec:
        torch.manual_seed(seed)
        return SASRec(SASRecConfig(n_items=12, max_len=6, dim=8, heads=2, blocks=1, dropout=0.0)).eval()

    student, teachers = model(0), [model(1), model(2)]
    x = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    y = torch.tensor([[0, 0, 4, 5, 6, 7], [2, 3, 4, 5, 6, 0]])
    gen = torch.Generator().manual_seed(0)
    mask = y > 0
    logp = student.item_scores(student(x)[mask]).log_softmax(-1)
    soft = sum(torch.softmax(t.item_scores(t(x)[mask]), -1) for t in teachers) / 2
    want = 0.5 * F.nll_loss(logp, y[mask] - 1) - 0.5 * (soft * logp).sum(-1).mean()
    got = loss_fn(student, x, y, "ce", gen, teachers)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(got) != pytest.approx(float(loss_fn(student, x, y, "ce", gen)), rel=1e-3)  # the teachers count



def test_served_context_scores_are_the_offline_context_part_from_table_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The engine's per-user context part (table row + context) equals `Mixture.context_part` on the judge's
    experts: the row's scores are turned back into the summed log P (prior taken off, the mean rule's
    division undone), clusters the row does not rank get FLOOR; and it survives its file."""
    from types import SimpleNamespace

    from interests.novelty.mixture import ContextExperts, cooccurrence_log_scores, served_context_scores
    from interests.novelty.rules import context_similarity_scores

    rng = np.random.default_rng(3)
    n, depth = 9, 5
    sim = rng.random((n, n))
    log_pop = np.log(rng.dirichlet(np.ones(n)))
    contexts = np.array([[0, 1], [2, 3], [4, 4], [-1, 5]])
    summed = -rng.random((len(contexts), n)) * 20  # the LM expert: summed log P of each description
    sequences = [[1] * int(k) for k in rng.integers(1, 6, n)]
    lm = SimpleNamespace(prior=0.7 * log_pop, length_norm=True, sequences=sequences)
    experts = ContextExperts.of_lm(sim, log_pop, lm)
    lengths = np.array([len(s) for s in sequences])
    rows = []
    for i in range(len(contexts)):
        ranked = np.argsort(-summed[i], kind="stable")[:depth]  # a row ranks its top clusters only
        rows.append((ranked.tolist(), (summed[i, ranked] / lengths[ranked] + lm.prior[ranked]).tolist()))
    lm_table = np.full_like(summed, FLOOR)
    for i, (ranked, _) in enumerate(rows):
        lm_table[i, ranked] = summed[i, ranked]
    offline = {"lm": lm_table, "popularity": np.broadcast_to(log_pop, summed.shape),
               "cooccurrence": cooccurrence_log_scores(context_similarity_scores(sim, contexts)),
               "sequence": np.zeros_like(summed)}
    mix = Mixture({"lm": 0.4, "sequence": 2.0, "cooccurrence": 0.8, "popularity": 0.3})
    served = served_context_scores(mix, ContextExperts.load(experts.save(tmp_path)), contexts, rows)
    assert served.dtype == np.float32
    np.testing.assert_allclose(served, mix.context_part(offline), rtol=1e-6, atol=1e-4)
    without = served_context_scores(mix.without("lm"), experts, contexts, rows)
    np.testing.assert_allclose(without, mix.without("lm").context_part(offline), rtol=1e-6, atol=1e-4)
