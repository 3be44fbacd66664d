"""The novelty policy: examples, time split, caps, constrained decoding (proved against exhaustive
scoring), the small LM on planted data, the --base-model path on a tiny model built here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interests.clusters.build import BuildConfig, build_catalog
from interests.data.datasets import build_dataset
from interests.data.synthetic import make_synthetic
from interests.evaluation.proposals import diversity
from interests.novelty.examples import context_transitions, diversify, novel_transitions, prompt, split_by_time
from interests.novelty.lm import LMConfig, NoveltyLM, train_novelty_lm, train_tokenizer
from interests.novelty.precompute import lm_proposals
from interests.novelty.prior import choose_alpha
from interests.novelty.rules import baseline_scores, hit_rate, popular_scores, popularity_log_prior, top_m
from interests.runtime.constrained import DescriptionTrie, beam_search, beam_search_cached, exhaustive_scores


def _by_hand():  # type: ignore[no-untyped-def]
    """One user; items named by cluster: a a b a c b d (clusters 0 0 1 0 2 1 3)."""
    ds = build_dataset("hand", ["u"] * 7, ["a1", "a2", "b1", "a1", "c1", "b2", "d1"], np.arange(7))
    return ds, np.array([{"a": 0, "b": 1, "c": 2, "d": 3}[i[0]] for i in ds.item_ids])


def test_novel_transitions_by_hand() -> None:
    ds, item_cluster = _by_hand()
    ex = novel_transitions(ds, item_cluster, k=2)
    # c is novel after distinct clusters [b, a] (most recent last); d after [c, b]
    assert ex.contexts.tolist() == [[1, 0], [2, 1]]
    assert ex.targets.tolist() == [2, 3]
    assert ex.known == [frozenset({0, 1}), frozenset({0, 1, 2})]
    assert ex.timestamps.tolist() == [4, 6]


def test_context_transitions_by_hand_count_every_move_before_the_cut() -> None:
    ds, item_cluster = _by_hand()  # every move to another cluster after 2 distinct ones
    ex = context_transitions(ds, item_cluster, k=2)
    # a (back, after [a, b]), c (after [b, a]), b (back, after [a, c]), d (after [c, b]); staying (a a) is no move
    assert ex.contexts.tolist() == [[0, 1], [1, 0], [0, 2], [2, 1]]
    assert ex.targets.tolist() == [0, 2, 1, 3] and ex.timestamps.tolist() == [3, 4, 5, 6]
    assert context_transitions(ds, item_cluster, k=2, until=5).targets.tolist() == [0, 2]


def test_pretraining_on_moves_runs_first_and_is_recorded(planted) -> None:
    ds, catalog, _, split = planted
    moves = context_transitions(ds, catalog.item_clusters(), 2, until=split.cut_valid)
    assert len(moves) > len(split.train) and moves.timestamps.max() < split.cut_valid
    cfg = LMConfig(layers=1, dim=32, heads=2, epochs=1, patience=1, batch_size=256)
    lm, info = train_novelty_lm(catalog.descriptions(), split.train, split.valid, cfg, {"k": 2}, progress=False,
                                pretrain=moves)
    assert info["pretrain"]["examples"] == len(moves) and len(info["pretrain"]["history"]) == 1
    assert lm.meta["pretrained_on_transitions"] == len(moves) and len(info["history"]) == 1
    plain, plain_info = train_novelty_lm(catalog.descriptions(), split.train, split.valid, cfg, {"k": 2},
                                         progress=False)
    assert "pretrain" not in plain_info and "pretrained_on_transitions" not in plain.meta


@pytest.fixture(scope="module")
def planted():
    ds, _truth = make_synthetic(n_clusters=8, items_per_cluster=20, n_users=500, seed=1)
    catalog = build_catalog(ds, BuildConfig(levels=(8,)), progress=False)
    examples = novel_transitions(ds, catalog.item_clusters(), 2)
    return ds, catalog, examples, split_by_time(examples)


def test_split_by_time_leaks_no_future(planted) -> None:
    _, _, examples, split = planted
    assert len(split.train) + len(split.valid) + len(split.test) == len(examples)
    assert split.train.timestamps.max() <= split.valid.timestamps.min()
    assert split.valid.timestamps.max() <= split.test.timestamps.min()


def test_diversify_caps_per_target_and_context(planted) -> None:
    _, _, _, split = planted
    capped = diversify(split.train, max_per_target=30, max_per_context=5, seed=0)
    assert np.bincount(capped.targets).max() <= 30
    _, per_ctx = np.unique(capped.contexts, axis=0, return_counts=True)
    assert per_ctx.max() <= 5
    again = diversify(split.train, 30, 5, seed=0)
    assert np.array_equal(capped.targets, again.targets)


def test_prompts_are_written_with_descriptions(planted) -> None:
    _, catalog, examples, _ = planted
    d = catalog.descriptions()
    text = prompt(examples.contexts[0], d)
    assert text.startswith("The user enjoyed: ") and text.endswith("A new interest for the user:")
    assert d[examples.contexts[0][0]] in text and d[examples.contexts[0][1]] in text


def test_tokenizer_covers_every_description(planted) -> None:
    _, catalog, _, _ = planted
    tok = train_tokenizer(catalog.descriptions())
    for d in catalog.descriptions():
        ids = tok(d, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids


# --- constrained decoding ----------------------------------------------------------------


def fake_lm(vocab: int, seed: int):
    """A deterministic pseudo-LM: log-probs from a hash of the whole sequence (pure logic, no model)."""
    def next_logprobs(seqs: list[list[int]]) -> np.ndarray:
        out = np.empty((len(seqs), vocab))
        for i, s in enumerate(seqs):
            digest = hashlib.sha256(f"{seed}:{s}".encode()).digest()
            logits = np.random.default_rng(int.from_bytes(digest[:8], "little")).normal(size=vocab) * 2
            out[i] = logits - np.log(np.exp(logits).sum())
        return out
    return next_logprobs


catalogs = st.integers(2, 9).flatmap(lambda n: st.lists(
    st.lists(st.integers(1, 7), min_size=1, max_size=4), min_size=n, max_size=n, unique_by=tuple))


@settings(max_examples=60, deadline=None)
@given(bodies=catalogs, seed=st.integers(0, 10_000), data=st.data())
def test_every_proposal_is_an_allowed_catalog_cluster(bodies, seed: int, data) -> None:
    eos = 0
    sequences = [[*b, eos] for b in bodies]
    n = len(sequences)
    trie = DescriptionTrie(sequences)
    context = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2, unique=True))
    known = set(context) | set(data.draw(st.lists(st.integers(0, n - 1), max_size=n)))
    m = data.draw(st.integers(1, n))
    beam = data.draw(st.integers(1, 4))
    lm = fake_lm(8, seed)
    prior = random_prior(n, seed, data.draw(priors))
    [result] = beam_search(lm, trie, [[5, 6]], [known], top_m=m, beam=beam, prior=prior)
    clusters = [c for c, _ in result]
    assert len(clusters) == len(set(clusters))
    assert all(0 <= c < n for c in clusters), "not a catalog cluster"
    assert not set(clusters) & known, "an excluded or context cluster was proposed"
    assert len(clusters) == min(m, n - len(known)), "allowed clusters went missing"
    scores = [s for _, s in result]
    assert scores == sorted(scores, reverse=True)


priors = st.one_of(st.none(), st.floats(0.05, 20.0))


def random_prior(n: int, seed: int, alpha: float | None) -> np.ndarray | None:
    """alpha * log of a random distribution over the clusters (None: no prior)."""
    if alpha is None:
        return None
    p = np.random.default_rng(seed).dirichlet(np.ones(n) * 0.5) + 1e-6
    return alpha * np.log(p / p.sum())


@settings(max_examples=80, deadline=None)
@given(bodies=catalogs, seed=st.integers(0, 10_000), alpha=priors, data=st.data())
def test_a_wide_beam_equals_exhaustive_scoring(bodies, seed: int, alpha: float | None, data) -> None:
    """With or without a per-cluster prior (added at the leaf), a beam as wide as the catalog is exact;
    so is a narrower top-M, whatever is excluded (the pruning by best reachable leaf loses nothing)."""
    sequences = [[*b, 0] for b in bodies]
    n = len(sequences)
    lm = fake_lm(8, seed)
    prior = random_prior(n, seed, alpha)
    exact = exhaustive_scores(lm, [3], sequences) + (0 if prior is None else prior)
    [result] = beam_search(lm, DescriptionTrie(sequences), [[3]], [set()], top_m=n, beam=n, prior=prior)
    assert [c for c, _ in result] == list(np.argsort(-exact, kind="stable"))
    np.testing.assert_allclose([s for _, s in result], np.sort(exact)[::-1], atol=1e-9)
    known = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n - 1)))
    m = data.draw(st.integers(1, n))
    [top] = beam_search(lm, DescriptionTrie(sequences), [[3]], [known], top_m=m, beam=n, prior=prior)
    allowed = [c for c in np.argsort(-exact, kind="stable") if c not in known]
    assert [c for c, _ in top] == allowed[:m]


def test_dead_ends_never_fall_back_to_free_text() -> None:
    """Two descriptions share a prefix; excluding one must leave only the other, whatever the LM prefers."""
    sequences = [[1, 2, 0], [1, 3, 0], [4, 0]]

    def loves_token_2(seqs: list[list[int]]) -> np.ndarray:  # strongly prefers the excluded branch
        out = np.full((len(seqs), 5), np.log(0.01))
        out[:, 2] = np.log(0.96)
        return out

    [result] = beam_search(loves_token_2, DescriptionTrie(sequences), [[9]], [{0}], top_m=3, beam=1)
    assert [c for c, _ in result] == [2, 1]  # scores: 2 x log 0.01 beats 3 x log 0.01; 0 never appears
    assert beam_search(loves_token_2, DescriptionTrie(sequences), [[9]], [{0, 1, 2}], 3, 2) == [[]]


def test_duplicate_descriptions_are_refused() -> None:
    with pytest.raises(ValueError, match="same token sequence"):
        DescriptionTrie([[1, 2, 0], [1, 2, 0]])


# --- the LM itself -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_lm(planted, tmp_path_factory):
    _, catalog, _, split = planted
    cfg = LMConfig(layers=1, dim=64, heads=2, epochs=8, patience=3, seed=0)
    lm, info = train_novelty_lm(catalog.descriptions(), split.train, split.valid, cfg,
                                {"catalog_version": catalog.version, "k": 2, "level": 0}, progress=False)
    path = lm.save(tmp_path_factory.mktemp("novelty") / "lm")
    return lm, info, path


def test_small_lm_learns_the_planted_transitions(planted, small_lm) -> None:
    _, _catalog, _examples, split = planted
    lm, info, _ = small_lm
    assert info["history"][-1]["loss"] < info["history"][0]["loss"]
    test = split.test
    excludes = [set(k) for k in test.known]
    ours = hit_rate(lm_proposals(lm, test.contexts, excludes, m=2)[0], test.targets)
    rand, pop, trans = (hit_rate(top_m(s, excludes, 2), test.targets)
                        for s in baseline_scores(split.train, 8, test.contexts, seed=0).values())
    assert ours > rand + 0.15 and ours > pop + 0.15, (ours, rand, pop)
    assert trans > rand  # the baseline itself works


def test_real_lm_beam_equals_exhaustive(planted, small_lm) -> None:
    _, _catalog, examples, _ = planted
    lm, _, _ = small_lm
    p = lm.prompt_ids(examples.contexts[0])
    exact = exhaustive_scores(lm.next_logprobs, p, lm.sequences)
    [result] = beam_search(lm.next_logprobs, DescriptionTrie(lm.sequences), [p], [set()], 8, 8)
    assert [c for c, _ in result] == list(np.argsort(-exact, kind="stable"))
    np.testing.assert_allclose([s for _, s in result], np.sort(exact)[::-1], atol=1e-4)


def test_a_full_depth_table_row_answers_every_user_as_a_live_call_would(planted, small_lm) -> None:
    """The worker filters a user's known clusters out of the row; at full depth that is exact."""
    from interests.novelty.precompute import precompute, table_depth
    from streams.core.recommendation import novel_for_user

    _, _, examples, _ = planted
    lm, _, _ = small_lm
    n = len(lm.descriptions)
    depth = table_depth(n, 2)
    assert depth == n - 2 and table_depth(500, 2) == 64
    contexts = [list(map(int, c)) for c in np.unique(examples.contexts, axis=0)[:6]]
    rows = precompute(lm, contexts, top=depth, beam=depth, progress=False)
    rng = np.random.default_rng(0)
    trie = DescriptionTrie(lm.sequences)
    for row, ctx in zip(rows, contexts, strict=True):
        assert len(row["clusters"]) == depth and not set(row["clusters"]) & set(ctx)
        known = set(ctx) | set(rng.choice(n, size=int(rng.integers(0, n - 2)), replace=False).tolist())
        [live] = beam_search_cached(lm, trie, [lm.prompt_ids(ctx)], [known], 3, n, lm.prior)
        from_row = novel_for_user(row["clusters"], row["scores"], sorted(known), 3)
        assert [c for c, _ in from_row] == [c for c, _ in live]
        np.testing.assert_allclose([s for _, s in from_row], [s for _, s in live], atol=1e-4)


def test_saved_lm_answers_the_same(planted, small_lm) -> None:
    _, _, examples, _ = planted
    lm, _, path = small_lm
    back = NoveltyLM.load(path)
    assert back.meta["k"] == 2 and back.descriptions == lm.descriptions
    seqs = [lm.prompt_ids(c) for c in examples.contexts[:5]]
    np.testing.assert_allclose(back.next_logprobs(seqs), lm.next_logprobs(seqs), atol=1e-5)


def test_batched_left_padding_scores_like_one_by_one(planted, small_lm) -> None:
    _, _, examples, _ = planted
    lm, _, _ = small_lm
    seqs = [lm.prompt_ids(examples.contexts[0]), lm.prompt_ids(examples.contexts[1])[:-3]]
    together = lm.next_logprobs(seqs)
    np.testing.assert_allclose(together[1], lm.next_logprobs([seqs[1]])[0], atol=1e-4)


def test_diversity_metrics() -> None:
    d = diversity([[0], [0], [1]], 4, np.array([0, 1, 2, 3]))
    assert d["coverage"] == 0.5
    assert d["entropy_bits"] == pytest.approx(-(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3)))
    assert 0 < d["jsd_bits"] <= 1
    assert diversity([[0], [1], [2], [3]], 4, np.array([0, 1, 2, 3]))["jsd_bits"] == pytest.approx(0)


def test_base_model_path_fine_tunes_a_local_model(planted, tmp_path: Path) -> None:
    """--base-model with a tiny randomly initialised Llama and its own tokenizer, built here: no download."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, catalog, _, split = planted
    tok = train_tokenizer(catalog.descriptions())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    lm, info = train_novelty_lm(catalog.descriptions(), split.train.subset(np.arange(200)), split.valid,
                                LMConfig(epochs=2, patience=2, base_model=str(tmp_path / "base")), progress=False)
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert len(info["history"]) == 2 and info["history"][1]["loss"] < info["history"][0]["loss"]
    [result] = beam_search(lm.next_logprobs, DescriptionTrie(lm.sequences), [lm.prompt_ids([0, 1])], [{0, 1}], 3, 3)
    assert len(result) == 3 and not {c for c, _ in result} & {0, 1}
    with pytest.raises(RuntimeError, match="needs --allow-download"):  # offline unless allowed
        train_novelty_lm(catalog.descriptions(), split.train, split.valid,
                         LMConfig(base_model="surely-not-on-disk/model"), progress=False)


def test_lora_fine_tunes_only_adapters_and_saves_merged(planted, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    _, catalog, _, split = planted
    tok = train_tokenizer(catalog.descriptions())
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128)
                    ).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    lm, _ = train_novelty_lm(catalog.descriptions(), split.train.subset(np.arange(100)), split.valid,
                             LMConfig(epochs=1, patience=1, base_model=str(tmp_path / "base"), lora=True),
                             {"k": 2}, progress=False)
    trainable = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    lm.save(tmp_path / "tuned")
    back = NoveltyLM.load(tmp_path / "tuned")  # merged: a plain causal LM again
    assert not any("lora" in n for n, _ in back.model.named_parameters())
    seq = [lm.prompt_ids([0, 1])]
    np.testing.assert_allclose(back.next_logprobs(seq), lm.next_logprobs(seq), atol=1e-4)


def test_a_delta_saves_only_the_adapter_and_loads_as_the_merged_model(planted, tmp_path: Path) -> None:
    """A LoRA model saved as a delta is its adapter alone (it travels), and loads merged into its base
    with the same scores; a zero-shot delta is no weights at all; a from-scratch model has no delta."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, catalog, _, split = planted
    tok = train_tokenizer(catalog.descriptions())
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128)
                    ).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    cfg = LMConfig(epochs=1, patience=1, base_model=str(tmp_path / "base"), lora=True, lr=0.05)
    lm, _ = train_novelty_lm(catalog.descriptions(), split.train.subset(np.arange(100)), split.valid, cfg,
                             {"k": 2}, progress=False)
    lm.save(tmp_path / "delta", delta=True)
    files = {f.name for f in (tmp_path / "delta").iterdir()}
    assert "adapter_model.safetensors" in files and "config.json" not in files and "model.safetensors" not in files
    back = NoveltyLM.load(tmp_path / "delta")
    assert not any("lora" in n for n, _ in back.model.named_parameters())
    seq = [lm.prompt_ids([0, 1])]
    base = NoveltyLM.load(tmp_path / "delta").model  # a second load: the same merged weights
    np.testing.assert_allclose(back.next_logprobs(seq), lm.next_logprobs(seq), atol=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(back.model.state_dict().values(),
                                                        GPT2LMHeadModel.from_pretrained(tmp_path / "base")
                                                        .state_dict().values(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), base.state_dict().values(),
                                                 strict=True))
    zero, _ = train_novelty_lm(catalog.descriptions(), split.train, split.valid,
                               LMConfig(base_model=str(tmp_path / "base"), zero_shot=True), {"k": 2}, progress=False)
    zero.save(tmp_path / "zero", delta=True)
    assert not list((tmp_path / "zero").glob("*.safetensors"))
    np.testing.assert_allclose(NoveltyLM.load(tmp_path / "zero").next_logprobs(seq), zero.next_logprobs(seq), atol=1e-6)
    scratch, _ = train_novelty_lm(catalog.descriptions(), split.train.subset(np.arange(50)), split.valid,
                                  LMConfig(epochs=1, dim=16, layers=1, heads=2), {"k": 2}, progress=False)
    with pytest.raises(ValueError, match="only a model fine-tuned from a base model"):
        scratch.save(tmp_path / "scratch", delta=True)


# --- the key/value cache and the popularity prior ----------------------------------------


class FakeCachedLM:
    """`CachedLM` over `fake_lm`: the state is the sequences themselves (tests the search's bookkeeping:
    each new row must continue its parent's row with the hypothesis's last token)."""

    def __init__(self, next_logprobs) -> None:  # type: ignore[no-untyped-def]
        self.next_logprobs, self.calls = next_logprobs, []

    def prefill(self, prompts):  # type: ignore[no-untyped-def]
        return self.next_logprobs(prompts), [list(p) for p in prompts]

    def step(self, state, parents, tokens):  # type: ignore[no-untyped-def]
        self.calls.append(len(parents))
        rows = [state[p] + [int(t)] for p, t in zip(parents.tolist(), tokens.tolist(), strict=True)]
        return self.next_logprobs(rows), rows


@settings(max_examples=60, deadline=None)
@given(bodies=catalogs, seed=st.integers(0, 10_000), alpha=priors, data=st.data())
def test_cached_search_equals_the_uncached_one(bodies, seed: int, alpha: float | None, data) -> None:
    sequences = [[*b, 0] for b in bodies]
    n = len(sequences)
    prompts = data.draw(st.lists(st.lists(st.integers(1, 7), min_size=1, max_size=5), min_size=1, max_size=4))
    excludes = [set(data.draw(st.lists(st.integers(0, n - 1), max_size=n))) for _ in prompts]
    m, beam = data.draw(st.integers(1, n)), data.draw(st.integers(1, n))
    lm, prior = fake_lm(8, seed), random_prior(n, seed, alpha)
    trie = DescriptionTrie(sequences)
    plain = beam_search(lm, trie, prompts, excludes, m, beam, prior)
    assert beam_search_cached(FakeCachedLM(lm), trie, prompts, excludes, m, beam, prior) == plain


def test_real_lm_cached_search_equals_uncached_and_exhaustive(planted, small_lm) -> None:
    """PyTorch's KV cache: same proposals and scores (1e-4) as re-reading whole sequences, with a prior."""
    _, _, examples, split = planted
    lm, _, _ = small_lm
    trie = DescriptionTrie(lm.sequences)
    contexts = examples.contexts[:40]
    prompts, excludes = [lm.prompt_ids(c) for c in contexts], [set(k) | set(c.tolist()) for c, k in
                                                              zip(contexts, examples.known[:40], strict=True)]
    prior = 0.7 * popularity_log_prior(split.train, 8)
    for p in (None, prior):
        plain = beam_search(lm.next_logprobs, trie, prompts, excludes, 3, 3, p)
        cached = beam_search_cached(lm, trie, prompts, excludes, 3, 3, p)
        assert [[c for c, _ in r] for r in cached] == [[c for c, _ in r] for r in plain]
        np.testing.assert_allclose([s for r in cached for _, s in r], [s for r in plain for _, s in r], atol=1e-4)
    exact = exhaustive_scores(lm.next_logprobs, prompts[0], lm.sequences) + prior
    [wide] = beam_search_cached(lm, trie, prompts[:1], [set()], 8, 8, prior)
    assert [c for c, _ in wide] == list(np.argsort(-exact, kind="stable"))


def test_teacher_forced_table_equals_the_exhaustive_search(planted, small_lm, tmp_path: Path) -> None:
    """`description_table` (every description forced after every prompt, in one pass) gives the trie
    search's exact scores (beam = catalog), for the GPT-2 and for a grouped-query Llama with titled
    prompts of different lengths, in batches of one and of many; a context's own clusters get -inf."""
    from interests.novelty.prior import description_scores

    _, catalog, examples, split = planted
    lm, _, _ = small_lm
    base, top_items = _titled_base(catalog, tmp_path)
    llama, _ = train_novelty_lm(catalog.descriptions(), split.train, split.valid,
                                LMConfig(base_model=base, zero_shot=True), {"k": 2}, progress=False,
                                top_items=top_items)
    contexts = np.unique(examples.contexts, axis=0)[:24]
    for model in (lm, llama):
        searched = description_scores(SearchOnly(model), contexts)
        forced = model.description_table(contexts)
        assert np.array_equal(np.isinf(forced), np.isinf(searched))
        assert all(np.isneginf(forced[i, c]).all() for i, c in enumerate(contexts))
        finite = np.isfinite(searched)
        np.testing.assert_allclose(forced[finite], searched[finite], atol=1e-4)
        one = np.concatenate([model.description_table(contexts[i:i + 1]) for i in range(3)])
        np.testing.assert_allclose(one[np.isfinite(one)], forced[:3][np.isfinite(forced[:3])], atol=1e-4)
        assert np.array_equal(description_scores(model, contexts), forced)  # the judge's path uses it


class SearchOnly:
    """A `NoveltyLM` seen only through the `CachedLM` calls: `description_scores` must search."""

    def __init__(self, lm) -> None:  # type: ignore[no-untyped-def]
        self.lm = lm
        self.sequences, self.meta = lm.sequences, lm.meta
        self.prefill, self.step, self.prompt_ids = lm.prefill, lm.step, lm.prompt_ids
        self.contexts_per_batch = lm.contexts_per_batch


def test_export_with_kv_cache_matches_pytorch_and_serves_the_same(planted, small_lm, tmp_path: Path) -> None:
    """prefill/step graphs at several batch and past lengths match PyTorch; the twin answers the same with and
    without the cache, prior from decoder.json included, as PyTorch's uncached search."""
    import json

    from exporters.novelty_onnx import check_lm_parity, export_generator
    from streams.inference.novelty import OnnxNovelty

    _, _, examples, split = planted
    lm, _, _ = small_lm
    lm.meta["prior"] = {"alpha": 0.7, "log_p": popularity_log_prior(split.train, 8).tolist()}
    try:
        onnx_path = export_generator(lm, tmp_path / "repo")
        spec = json.loads((onnx_path.parent / "decoder.json").read_text())
        np.testing.assert_allclose(spec["prior"], lm.prior)
        diffs = check_lm_parity(lm, onnx_path, examples.contexts[:16])
        assert set(diffs) == {"no_cache", "prefill", "step"} and max(diffs.values()) < 1e-4, diffs
        contexts = examples.contexts[:24].astype(np.int64)
        exclude = np.zeros((len(contexts), 8), bool)
        for row, known in enumerate(examples.known[:24]):
            exclude[row, list(known)] = True
        cached = OnnxNovelty(onnx_path.parent, 3, 3).propose(contexts, exclude)
        plain = OnnxNovelty(onnx_path.parent, 3, 3, kv_cache=False).propose(contexts, exclude)
        assert np.array_equal(cached[0], plain[0])
        np.testing.assert_allclose(cached[1], plain[1], atol=1e-4)
        excludes = [set(np.flatnonzero(m)) | set(c.tolist()) for c, m in zip(contexts, exclude, strict=True)]
        ref = beam_search(lm.next_logprobs, DescriptionTrie(lm.sequences), [lm.prompt_ids(c) for c in contexts],
                          excludes, 3, 3, lm.prior)
        for row, r in enumerate(ref):
            assert [int(c) for c in cached[0][row] if c >= 0] == [c for c, _ in r]
            np.testing.assert_allclose(cached[1][row][: len(r)], [s for _, s in r], atol=1e-4)
    finally:
        lm.meta.pop("prior")


def test_kv_export_of_a_grouped_query_llama(planted, tmp_path: Path) -> None:
    """The cache layout [layers, 2, B, kv heads, T, dim] holds for a --base-model with fewer KV heads (rotary
    positions after left padding included)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from exporters.novelty_onnx import check_lm_parity, export_generator

    _, catalog, examples, _ = planted
    tok = train_tokenizer(catalog.descriptions())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch_model = LlamaForCausalLM(cfg)
    torch_model.config._attn_implementation = "eager"
    lm = NoveltyLM(torch_model.eval(), tok, catalog.descriptions(), {"k": 2})
    onnx_path = export_generator(lm, tmp_path / "repo")
    diffs = check_lm_parity(lm, onnx_path, examples.contexts[:12])
    assert max(diffs.values()) < 1e-4, diffs


def test_popularity_prior_and_alpha_on_validation(planted, small_lm) -> None:
    _, _, _, split = planted
    lm, _, _ = small_lm
    log_p = popularity_log_prior(split.train, 8)
    assert np.exp(log_p).sum() == pytest.approx(1.0) and np.isfinite(log_p).all()
    counts = np.bincount(split.train.targets, minlength=8)
    assert list(np.argsort(-log_p, kind="stable")) == list(np.argsort(-counts, kind="stable"))
    valid = split.valid.subset(np.arange(min(60, len(split.valid))))
    rule, best, curves = choose_alpha(lm, valid, log_p, 2, alphas=(0.0, 1.0, 1000.0))
    assert rule == "sum" and list(curves) == ["sum"]
    curve = curves["sum"]
    assert best in curve and curve[best] == max(curve.values())
    excludes = [set(k) for k in valid.known]
    for alpha in (0.0, 1000.0):  # the exact table agrees with the (wide) search
        props, _ = lm_proposals(lm, valid.contexts, excludes, 2, beam=8, prior=alpha * log_p)
        assert curve[alpha] == pytest.approx(hit_rate(props, valid.targets))
    popular = top_m(popular_scores(split.train, 8, len(valid)), excludes, 2)
    assert curve[1000.0] == pytest.approx(hit_rate(popular, valid.targets))


def test_cli_train_chooses_the_prior_on_validation_and_eval_reports_both(tmp_path: Path, capsys) -> None:
    """explore novelty train -> (prior chosen on validation, stored) -> eval (LM and LM + prior rows, paired
    counts against the best other method) -> precompute with and without the cache (same table)."""
    import json

    from explore.cli import main

    ds, _ = make_synthetic(n_clusters=8, n_users=400, seed=0)  # what --synthetic builds
    build_catalog(ds, BuildConfig(levels=(8,)), progress=False).save(tmp_path / "catalog")
    common = ["--synthetic", "--catalog", str(tmp_path / "catalog")]
    model = tmp_path / "lm"
    assert main(["novelty", "train", *common, "--out", str(model), "--layers", "1", "--dim", "32", "--heads", "2",
                 "--epochs", "2", "--prior-alphas", "0,1,1000", "--quiet"]) == 0
    meta = json.loads((model / "novelty.json").read_text())
    assert meta["prior"]["alpha"] in (0, 1, 1000) and set(meta["prior"]["validation_curve"]) == {"0", "1", "1000"}
    assert "chosen alpha" in capsys.readouterr().out
    judged = tmp_path / "judge"
    assert main(["novelty", "eval", *common, "--model", str(model), "--text", "none", "--out", str(judged)]) == 0
    level = json.loads((judged / "judge.json").read_text())["levels"][0]
    report = level["methods"]
    assert "LM from scratch" in report and "popular" in report and "cluster co-occurrence" in report
    if meta["prior"]["alpha"]:
        assert f"LM from scratch + prior a={meta['prior']['alpha']:g}" in report
    assert level["best_non_lm"]["any"] in {"random", "popular", "transition counts", "cluster co-occurrence"}
    assert all("vs_best" in r["any"] for r in report.values() if r["is_lm"])
    page = (judged / "judge.html").read_text()  # HTML tables per level and target, the terminal text folded once
    assert page.count("<table") >= 3 and page.count("<pre>") == 1 and (judged / "hit_by_level.png").stat().st_size
    tables = []
    for flags in ([], ["--no-cache"]):
        out = tmp_path / f"table{len(flags)}.jsonl"
        assert main(["novelty", "precompute", *common, "--model", str(model), "--out", str(out), "--top", "4",
                     "--quiet", *flags]) == 0
        tables.append([json.loads(line) for line in out.read_text().splitlines()])
    assert [r["clusters"] for r in tables[0]] == [r["clusters"] for r in tables[1]]
    np.testing.assert_allclose([r["scores"] for r in tables[0]], [r["scores"] for r in tables[1]], atol=1e-4)


# --- a pretrained base model: mean per token, titles in the prompt, zero-shot, budgets ----


@settings(max_examples=80, deadline=None)
@given(bodies=catalogs, seed=st.integers(0, 10_000), alpha=priors, data=st.data())
def test_mean_per_token_search_is_exact(bodies, seed: int, alpha: float | None, data) -> None:
    """Scores by mean log-prob per token: a beam as wide as the catalog equals scoring every description,
    and top-M with exclusions is exact (the bound S / len + prior never grows along a path); a cached LM
    that declares `length_norm` is searched by that rule without being told."""
    sequences = [[*b, 0] for b in bodies]
    n = len(sequences)
    lm = fake_lm(8, seed)
    prior = random_prior(n, seed, alpha)
    exact = exhaustive_scores(lm, [3], sequences) / np.array([len(s) for s in sequences]) \
        + (0 if prior is None else prior)
    trie = DescriptionTrie(sequences)
    [result] = beam_search(lm, trie, [[3]], [set()], top_m=n, beam=n, prior=prior, length_norm=True)
    assert [c for c, _ in result] == list(np.argsort(-exact, kind="stable"))
    np.testing.assert_allclose([s for _, s in result], np.sort(exact)[::-1], atol=1e-9)
    known = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n - 1)))
    m = data.draw(st.integers(1, n))
    [top] = beam_search(lm, trie, [[3]], [known], top_m=m, beam=n, prior=prior, length_norm=True)
    assert [c for c, _ in top] == [c for c in np.argsort(-exact, kind="stable") if c not in known][:m]
    cached = FakeCachedLM(lm)
    cached.length_norm = True
    assert beam_search_cached(cached, trie, [[3]], [known], m, n, prior) == [top]


def _titled_base(catalog, tmp_path: Path) -> tuple[str, list[list[str]]]:  # type: ignore[no-untyped-def]
    """A tiny grouped-query Llama and a word-level tokenizer that knows the descriptions and the titles,
    saved as a local base model (no download); with the catalog's top items per cluster."""
    from transformers import LlamaConfig, LlamaForCausalLM

    top_items = [c.top_items for c in catalog.clusters[catalog.finest]]
    from interests.novelty.examples import context_texts

    tok = train_tokenizer(catalog.descriptions() + context_texts(catalog.descriptions(), top_items, 5))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    return str(tmp_path / "base"), top_items


def test_zero_shot_model_directory_with_titles_serves_the_same(planted, tmp_path: Path) -> None:
    """--zero-shot saves the base model untrained with its prompt (descriptions and two titles per context
    cluster; targets stay the bare descriptions) and the mean-per-token rule; load, the exported graphs and
    the twin decode it exactly as PyTorch does, all in-catalog and none known."""
    import json

    from exporters.novelty_onnx import check_lm_parity, export_generator
    from interests.novelty.examples import context_texts
    from streams.inference.novelty import OnnxNovelty

    _, catalog, examples, split = planted
    base, top_items = _titled_base(catalog, tmp_path)
    lm, info = train_novelty_lm(catalog.descriptions(), split.train, split.valid,
                                LMConfig(base_model=base, zero_shot=True, score="mean"), {"k": 2}, progress=False,
                                top_items=top_items)
    assert info["history"] == [] and lm.meta["titles"] == 2 and lm.length_norm
    texts = context_texts(catalog.descriptions(), top_items, 2)
    assert lm.meta["context_texts"] == texts and f'"{top_items[0][1]}"' in texts[0]
    assert lm.prompt_ids([0, 1]) == [*lm.head, *lm.encode(texts[0]), *lm.sep, *lm.encode(texts[1]), *lm.tail]
    assert lm.tokenizer.unk_token_id not in lm.prompt_ids([0, 1])
    assert lm.sequences[0] == [*lm.encode(" " + catalog.descriptions()[0]), lm.eos_id]
    lm.save(tmp_path / "zero")
    back = NoveltyLM.load(tmp_path / "zero")
    assert back.prompt_ids([3, 5]) == lm.prompt_ids([3, 5]) and back.length_norm
    assert back.contexts_per_batch(8) == 64 and back.contexts_per_batch(8, budget_bytes=1) == 1  # cache bound
    onnx_path = export_generator(back, tmp_path / "repo")
    spec = json.loads((onnx_path.parent / "decoder.json").read_text())
    assert spec["score"] == "mean"
    assert max(check_lm_parity(back, onnx_path, examples.contexts[:8]).values()) < 1e-4
    contexts = examples.contexts[:16].astype(np.int64)
    exclude = np.zeros((len(contexts), 8), bool)
    for row, known in enumerate(examples.known[:16]):
        exclude[row, list(known)] = True
    clusters, scores = OnnxNovelty(onnx_path.parent, 3, 8).propose(contexts, exclude)
    excludes = [set(np.flatnonzero(m)) | set(c.tolist()) for c, m in zip(contexts, exclude, strict=True)]
    ref = beam_search_cached(back, DescriptionTrie(back.sequences), [back.prompt_ids(c) for c in contexts],
                             excludes, 3, 8)
    for row, r in enumerate(ref):
        assert [int(c) for c in clusters[row] if c >= 0] == [c for c, _ in r]
        assert not {c for c, _ in r} & excludes[row] and all(0 <= c < 8 for c, _ in r)
        np.testing.assert_allclose(scores[row][: len(r)], [s for _, s in r], atol=1e-4)


def test_from_scratch_prompt_is_unchanged_by_the_title_option(planted) -> None:
    """Titles are for base models: the from-scratch model's prompt stays the descriptions alone."""
    _, catalog, _, split = planted
    top_items = [c.top_items for c in catalog.clusters[catalog.finest]]
    lm, _ = train_novelty_lm(catalog.descriptions(), split.train.subset(np.arange(50)), split.valid,
                             LMConfig(layers=1, dim=16, heads=2, epochs=1), {"k": 2}, progress=False,
                             top_items=top_items)
    assert "context_texts" not in lm.meta and lm.context_pieces == lm.pieces
    assert lm.prompt_ids([2, 0]) == lm.encode(prompt([2, 0], catalog.descriptions()))


def test_a_training_budget_caps_examples_and_time(planted, tmp_path: Path) -> None:
    from interests.novelty.examples import diversified_sample

    _, catalog, _, split = planted
    sample = diversified_sample(split.train, 40, seed=0)
    assert len(sample) == 40 and len(set(sample.targets.tolist())) == 8
    assert np.bincount(sample.targets).max() - np.bincount(sample.targets).min() <= 5
    assert diversified_sample(split.train, 0) is split.train
    base, top_items = _titled_base(catalog, tmp_path)
    _, info = train_novelty_lm(catalog.descriptions(), split.train, split.valid,
                               LMConfig(base_model=base, lora=True, epochs=5, batch_size=8, max_train_examples=24,
                                        max_valid_examples=10, max_train_seconds=1e-6), {"k": 2}, progress=False,
                               top_items=top_items)
    assert info["train_examples"] == 24 and info["valid_examples"] == 10
    assert len(info["history"]) == 1 and info["history"][0]["examples"] == 8  # one batch, then out of time


def test_the_score_rule_is_chosen_on_validation_with_the_prior(planted, tmp_path: Path) -> None:
    """score "auto": the alpha grid runs for the sum and the mean per token from one exact table; the
    curve of the chosen rule is what a wide search under that rule gives; the choice is stored."""
    from interests.novelty.prior import choose_prior

    _, catalog, _, split = planted
    base, top_items = _titled_base(catalog, tmp_path)
    lm, _ = train_novelty_lm(catalog.descriptions(), split.train, split.valid,
                             LMConfig(base_model=base, zero_shot=True, score="auto"), {"k": 2}, progress=False,
                             top_items=top_items)
    assert lm.meta["score_rules"] == ["sum", "mean"]
    lines: list[str] = []
    alpha = choose_prior(lm, split, 8, 2, [0.0, 1.0], log=lines.append, max_moments=40)
    curves = lm.meta["prior"]["validation_curves"]
    assert set(curves) == {"sum", "mean"} and lm.meta["prior"]["validation_moments"] == 40
    rule = lm.meta["score"]
    assert curves[rule][f"{alpha:g}"] == max(max(c.values()) for c in curves.values())
    valid = split.valid.subset(np.sort(np.random.default_rng(0).permutation(len(split.valid))[:40]))
    props, _ = lm_proposals(lm, valid.contexts, [set(k) for k in valid.known], 2, beam=8, prior=lm.prior)
    assert curves[rule][f"{alpha:g}"] == pytest.approx(hit_rate(props, valid.targets))
    assert any("score rule 'mean'" in line for line in lines)


def test_base_model_names_resolve_offline_with_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from interests.novelty import base_models

    assert base_models.resolve_base_model(str(tmp_path)) == str(tmp_path)
    assert base_models.resolve_base_model("org/model", allow_download=True) == "org/model"
    with pytest.raises(base_models.BaseModelError, match="needs --allow-download"):
        base_models.resolve_base_model("org/model")
    monkeypatch.setenv("EXPLORE_HOME", str(tmp_path / "home"))
    assert base_models.base_model_dir("smollm2-135m") == tmp_path / "home" / "base-models" / "smollm2-135m"
    monkeypatch.setitem(base_models.BASE_MODELS, "absent",
                        base_models.PackagedModel("surely_not_a_package_here", "surely-not==1", "m.gguf", "<e>"))
    with pytest.raises(base_models.BaseModelError, match="needs the surely-not package"):
        base_models.resolve_base_model("absent")
    with pytest.raises(base_models.BaseModelError, match="unknown base model"):
        base_models.ensure_base_model("no-such-model")


def test_the_demo_table_holds_every_ordered_pair_of_a_small_catalog() -> None:
    """No live fills on a small catalog (a pretrained model cannot afford them on a CPU); the seen
    contexts beyond the limit."""
    from explore.demo import table_contexts

    seen = np.array([[0, 1], [2, 3]])
    full = table_contexts(seen, 8)
    assert len(full) == 56 == len({tuple(c) for c in full}) and all(a != b for a, b in full)
    assert table_contexts(seen, 32) != [[0, 1], [2, 3]] and len(table_contexts(seen, 32)) == 992
    assert table_contexts(seen, 40) == [[0, 1], [2, 3]]
