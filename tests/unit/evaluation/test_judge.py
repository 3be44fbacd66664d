"""The judge on hand-made histories: target sets, every baseline, the statistics; numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from interests.data.datasets import build_dataset
from interests.evaluation.judge import COOCCURRENCE, judge_level, target_masks
from interests.evaluation.stats import best_method, bootstrap_interval, mcnemar_p, paired
from interests.novelty.examples import novel_transitions, split_by_time
from interests.novelty.rules import (
    POPULAR,
    RANDOM,
    TRANSITIONS,
    context_similarity_scores,
    cooccurrence_similarity,
    histories_at,
    popular_scores,
    random_scores,
    seqrec_cluster_scores,
    text_similarity,
    top_m,
    transition_scores,
)

# items a0 a1 (cluster 0), b0 b1 (cluster 1), c0 c1 (cluster 2), d0 (cluster 3); dense ids in sorted order
CLUSTER = np.array([0, 0, 1, 1, 2, 2, 3])


@pytest.fixture
def ds():  # type: ignore[no-untyped-def]
    # u1: a0 b0 c0 c1 b1 c0 ...: novel transitions (K=2) at c0 (ctx [a, b]) and nothing else new; then d0.
    # ratings: u1 mean = (4+2+5+5+2+5+1)/7 = 24/7 ~ 3.43; c0 rated 5 >= mean (liked); d0 rated 1 (not liked)
    rows = [("u1", "a0", 1, 4), ("u1", "b0", 2, 2), ("u1", "c0", 3, 5), ("u1", "c1", 4, 5), ("u1", "b1", 5, 2),
            ("u1", "c0", 6, 5), ("u1", "d0", 7, 1),
            # u2: a0 b0 d0 a1: novel at d0 (ctx [a, b]), rated 3 = mean (3+3+3+3)/4 -> liked; no return to d
            ("u2", "a0", 1, 3), ("u2", "b0", 2, 3), ("u2", "d0", 3, 3), ("u2", "a1", 4, 3)]
    users, items, ts, w = zip(*rows, strict=True)
    return build_dataset("hand", list(users), list(items), np.array(ts), weights=np.array(w, float))


def test_top_m_never_proposes_a_known_or_impossible_cluster() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [1.0, -np.inf, 0.5, 0.5]])
    assert top_m(scores, [frozenset({0}), frozenset()], 2) == [[1, 2], [0, 2]]  # ties: lower id first
    assert top_m(scores, [frozenset({0, 1, 2, 3}), frozenset({0, 2, 3})], 3) == [[], []]


def test_target_sets_any_liked_sticky(ds) -> None:  # type: ignore[no-untyped-def]
    ex = novel_transitions(ds, CLUSTER, k=2)
    # u1: c0 (ctx [0, 1]) and d0 (ctx [1, 2]: recent distinct clusters before d0 are c, b, c -> [b, c]... b then c)
    assert ex.targets.tolist() == [2, 3, 3]
    masks = target_masks(ds, CLUSTER, ex)
    assert masks["any"].tolist() == [True, True, True]
    assert masks["liked"].tolist() == [True, False, True]  # u1 c0: 5 >= 3.43; u1 d0: 1 < 3.43; u2 d0: 3 >= 3
    # sticky: u1 c0 is followed by c1, b1, c0: two returns to cluster 2 within 10; d0s are never revisited
    assert masks["sticky"].tolist() == [True, False, False]


def test_liked_is_not_available_without_ratings() -> None:
    rows = [("u", "a0", 1), ("u", "b0", 2), ("u", "c0", 3)]
    users, items, ts = zip(*rows, strict=True)
    plain = build_dataset("plain", list(users), list(items), np.array(ts))
    ex = novel_transitions(plain, np.array([0, 1, 2]), k=2)
    assert target_masks(plain, np.array([0, 1, 2]), ex)["liked"] is None


def test_popular_and_transition_scores_rank_as_their_rules(ds) -> None:  # type: ignore[no-untyped-def]
    ex = novel_transitions(ds, CLUSTER, k=2)
    pop = popular_scores(ex, 4, 2)
    assert pop.tolist() == [[0, 0, 1, 2]] * 2
    # after context [0, 1]: 2 once, 3 once (full context), so both outrank anything from back-off; the
    # tie goes to the lower tiers (3 is the more popular); ctx [1, 2] of u1's d0 makes 3 the last cluster 2's answer
    trans = transition_scores(ex, 4, np.array([[0, 1], [2, 0], [3, 3]]))
    assert top_m(trans, [frozenset({0, 1})] * 3, 2)[0] == [3, 2]
    assert top_m(transition_scores(ex, 4, np.array([[0, 2]])), [frozenset()], 2) == [[3, 2]]
    # [2, 0]: no full-context count; last cluster 0 was never a context's last -> popularity: 3 then 2
    assert top_m(trans, [frozenset({0, 1})] * 3, 2)[1] == [3, 2]
    assert random_scores(3, 4, seed=1).shape == (3, 4)


def test_cooccurrence_is_the_cosine_of_cluster_presence_over_users(ds) -> None:  # type: ignore[no-untyped-def]
    sim = cooccurrence_similarity(ds, CLUSTER, 4, until_ts=100)
    # presence: u1 has clusters {0,1,2,3}, u2 {0,1,3}: cos(0,2) = 1/sqrt(2*1), cos(0,3) = 2/sqrt(2*2) = 1
    assert sim[0, 2] == pytest.approx(1 / np.sqrt(2))
    assert sim[0, 3] == pytest.approx(1.0)
    early = cooccurrence_similarity(ds, CLUSTER, 4, until_ts=3)  # only a0 b0 of each user
    assert early[0, 1] == pytest.approx(1.0) and early[0, 2] == 0
    scores = context_similarity_scores(sim, np.array([[0, 2]]))
    assert scores[0, 3] == pytest.approx((1.0 + 1 / np.sqrt(2)) / 2)


def test_text_similarity_is_the_cosine_of_the_description_vectors() -> None:
    sim = text_similarity(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]))
    np.testing.assert_allclose(sim, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_seqrec_baseline_sums_exactly_the_probabilities_of_each_clusters_items(ds) -> None:  # type: ignore[no-untyped-def]
    ex = novel_transitions(ds, CLUSTER, k=2)
    histories = histories_at(ds, ex)
    assert [h.tolist() for h in histories] == [[0, 2], [0, 2, 4, 5, 3, 4], [0, 2]]  # items before each target
    probs = np.array([[0.1, 0.2, 0.05, 0.05, 0.3, 0.1, 0.2]])
    seen = []

    def fake(batch: list[np.ndarray]) -> np.ndarray:
        seen.append(len(batch))
        return np.repeat(probs, len(batch), axis=0)

    out = seqrec_cluster_scores(fake, histories, CLUSTER, 4, batch=2)
    assert seen == [2, 1]
    np.testing.assert_allclose(out[0], [0.3, 0.1, 0.4, 0.2], rtol=0, atol=1e-15)
    # the user knows clusters 0 and 1: SASRec sends them to 2 first
    assert top_m(out, [frozenset({0, 1})] * 3, 1) == [[2]] * 3


def test_judge_level_compares_lms_with_the_best_other_method(ds) -> None:  # type: ignore[no-untyped-def]
    ex = novel_transitions(ds, CLUSTER, k=2)
    split = split_by_time(ex, valid=0.0, test=1.0)  # every example is a test moment (hand-made)
    masks = target_masks(ds, CLUSTER, split.test)
    n = 4
    # the "LM" knows the answers; popular ranks 3 first; random is seeded
    lm = np.full((3, n), -10.0)
    lm[np.arange(3), split.test.targets] = 0.0
    ctx = split.test.contexts
    scores = {RANDOM: random_scores(3, n), POPULAR: popular_scores(ex, n, 3),
              TRANSITIONS: transition_scores(ex, n, ctx),
              COOCCURRENCE: context_similarity_scores(cooccurrence_similarity(ds, CLUSTER, n, 100), ctx),
              "LM oracle": lm}
    res = judge_level(1, n, split, masks, scores, {"LM oracle"}, 1, split.test.targets)
    for r in res.methods.values():
        for props, known in zip(r.proposals, split.test.known, strict=True):
            assert not set(props) & known and len(props) <= 1
    assert res.methods["LM oracle"].hits.tolist() == [1, 1, 1]
    assert res.best["any"] in {RANDOM, POPULAR, TRANSITIONS, COOCCURRENCE}
    best_hits = res.methods[res.best["any"]].hits
    vs = res.methods["LM oracle"].rows["any"]["vs_best"]
    assert vs["won"] == int((best_hits == 0).sum()) and vs["lost"] == 0
    assert res.counts == {"any": 3, "liked": 2, "sticky": 1}
    assert res.methods["LM oracle"].rows["liked"]["hit"] == 1.0
    assert res.methods["LM oracle"].rows["any"]["offered_per_user"] == 1.5  # u1 offered {2, 3}, u2 {3}


def test_mcnemar_and_paired_counts() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(2 / 32)  # two-sided exact: 2 * (1/2)^5
    assert mcnemar_p(3, 3) == 1.0
    out = paired(np.array([1, 1, 0, 0, -1, 1]), np.array([0, 1, 1, 0, 1, -1]))
    assert (out["won"], out["lost"]) == (1, 1)  # moments with no target on either side are left out


def test_bootstrap_resamples_users_not_moments() -> None:
    # one user with 99 hits and one with 1 miss: resampling users gives rates 0.99 (both), 1.0 or 0.0
    hits = np.array([1] * 99 + [0])
    users = np.array([0] * 99 + [1])
    lo, hi = bootstrap_interval(hits, users, rounds=2000, seed=0)
    assert lo == 0.0 and hi == 1.0  # a moment bootstrap would give about 0.97-1.0
    same = bootstrap_interval(np.array([1, 0] * 50), np.arange(100), rounds=2000, seed=0)
    assert 0.38 < same[0] < 0.45 and 0.55 < same[1] < 0.62
    assert np.isnan(bootstrap_interval(np.array([-1, -1]), np.array([0, 1]))[0])


def test_best_method_ignores_nan_and_lms() -> None:
    rates = {"LM": 0.9, "popular": 0.4, "co": 0.5, "empty": float("nan")}
    assert best_method(rates, {"popular", "co", "empty"}) == "co"
    assert best_method({"a": float("nan")}) is None
    assert best_method({"a": 0.5, "b": 0.5}) == "a"


class CountingLM:
    """A cached pseudo-LM (log-probs from a hash of the sequence) that counts the prompts it encodes."""

    def __init__(self, n_clusters: int, level: int) -> None:
        import hashlib

        def next_logprobs(seqs: list[list[int]]) -> np.ndarray:
            out = np.empty((len(seqs), 12))
            for i, s in enumerate(seqs):
                seed = int.from_bytes(hashlib.sha256(str(s).encode()).digest()[:8], "little")
                logits = np.random.default_rng(seed).normal(size=12) * 2
                out[i] = logits - np.log(np.exp(logits).sum())
            return out

        self.next_logprobs, self.prompts = next_logprobs, 0
        self.sequences = [[1 + c % 10, 1 + c // 10, 0] for c in range(n_clusters)]  # distinct token paths, eos 0
        self.meta, self.prior = {"level": level, "k": 2}, None

    def contexts_per_batch(self, rows_per_context: int, limit: int = 64) -> int:
        return limit

    def prompt_ids(self, context) -> list[int]:  # type: ignore[no-untyped-def]
        return [11, *[int(c) + 1 for c in context]]

    def prefill(self, prompts):  # type: ignore[no-untyped-def]
        self.prompts += len(prompts)
        return self.next_logprobs(prompts), [list(p) for p in prompts]

    def step(self, state, parents, tokens):  # type: ignore[no-untyped-def]
        rows = [state[p] + [int(t)] for p, t in zip(parents.tolist(), tokens.tolist(), strict=True)]
        return self.next_logprobs(rows), rows


def test_the_lm_is_scored_once_per_distinct_context_and_exactly() -> None:
    """Issue 18's slow eval: the cost must not grow with moments. Many moments share few contexts here."""
    from interests.data.synthetic import make_synthetic
    from interests.evaluation.judge import LMEntry, judge

    data, _ = make_synthetic(n_clusters=6, n_users=300, seed=1)
    items = np.arange(data.n_items) % 6
    lm = CountingLM(6, level=0)
    [result] = judge(data, {0: items}, {0: [f"d{c}" for c in range(6)]}, k=2, m=2, lms=[LMEntry("LM fake", lm)],
                     log=lambda _: None)
    split = split_by_time(novel_transitions(data, items, 2))
    distinct = len(np.unique(split.test.contexts, axis=0))
    assert result.moments == len(split.test) > 3 * distinct  # the shape that was slow
    assert lm.prompts == distinct
    # exact: the top-2 of scoring every description, minus what the user knows
    from interests.runtime.constrained import exhaustive_scores

    for props, ctx, known in zip(result.methods["LM fake"].proposals, split.test.contexts, split.test.known,
                                 strict=True):
        s = exhaustive_scores(lm.next_logprobs, lm.prompt_ids(ctx), lm.sequences)
        s[list(ctx)] = -np.inf
        assert props == top_m(s[None, :], [known], 2)[0]


def test_a_context_sample_keeps_every_moment_of_the_chosen_contexts_and_nothing_else() -> None:
    from interests.data.synthetic import make_synthetic
    from interests.evaluation.judge import sample_contexts

    data, _ = make_synthetic(n_clusters=6, n_users=300, seed=1)
    split = split_by_time(novel_transitions(data, np.arange(data.n_items) % 6, 2))
    sub = sample_contexts(split, 3, seed=0)
    kept = {tuple(c) for c in sub.test.contexts.tolist()}
    assert len(kept) == 3
    assert len(sub.test) == sum(tuple(c) in kept for c in split.test.contexts.tolist())
    assert sub.train is split.train and sample_contexts(split, 0) is split


def test_a_model_that_scores_by_mean_per_token_is_judged_by_that_rule() -> None:
    """A base model may choose the mean log-prob per token on validation; the judge must rank by it too."""
    from interests.data.synthetic import make_synthetic
    from interests.evaluation.judge import LMEntry, judge
    from interests.runtime.constrained import exhaustive_scores

    data, _ = make_synthetic(n_clusters=6, n_users=300, seed=1)
    items = np.arange(data.n_items) % 6
    lm = CountingLM(6, level=0)
    lm.sequences = [[1 + c] + [7] * c + [0] for c in range(6)]  # lengths 2..7: the rules rank differently
    lm.length_norm = True
    [result] = judge(data, {0: items}, {0: [f"d{c}" for c in range(6)]}, k=2, m=2, lms=[LMEntry("LM mean", lm)],
                     log=lambda _: None)
    split = split_by_time(novel_transitions(data, items, 2))
    lengths = np.array([len(s) for s in lm.sequences], float)
    for props, ctx, known in zip(result.methods["LM mean"].proposals, split.test.contexts, split.test.known,
                                 strict=True):
        s = exhaustive_scores(lm.next_logprobs, lm.prompt_ids(ctx), lm.sequences) / lengths
        s[list(ctx)] = -np.inf
        assert props == top_m(s[None, :], [known], 2)[0]


def test_seqrec_sums_stay_exact_with_empty_and_unordered_clusters() -> None:
    """Clusters without items get 0; items of a cluster need not be next to each other."""
    item_cluster = np.array([2, 0, 3, 2, 3, 0])  # clusters 1 and 4 (the last) have no item
    probs = np.array([[0.1, 0.2, 0.3, 0.1, 0.05, 0.25], [0.5, 0.0, 0.25, 0.2, 0.05, 0.0]])
    out = seqrec_cluster_scores(lambda h: probs[:len(h)], [np.zeros(1)] * 2, item_cluster, 5)
    np.testing.assert_allclose(out, [[0.45, 0, 0.2, 0.35, 0], [0.0, 0, 0.7, 0.3, 0]], rtol=0, atol=1e-15)


def test_variant_names_say_how_each_lm_was_made() -> None:
    """A pretrained model is never called "from scratch" (it once was: the name read a key that the
    model directories do not write); each way of using it has its own name."""
    from interests.evaluation.judge import variant_name

    assert variant_name({"lm_config": {"base_model": None}}) == "from scratch"
    assert variant_name({"lm_config": {"base_model": "smollm2-135m", "zero_shot": True,
                                       "max_train_examples": 448}}) == "smollm2-135m zero-shot"
    assert variant_name({"lm_config": {"base_model": "/x/smollm2-135m", "lora": True}}) == "smollm2-135m LoRA"
    assert variant_name({"lm_config": {"base_model": "b", "lora": True, "max_train_examples": 1500}}) \
        == "b LoRA (1,500 examples)"
    assert variant_name({"lm_config": {"base_model": "b"}}) == "b fine-tuned"
    assert variant_name({"variant": "mine", "lm_config": {"base_model": "b"}}) == "mine"
