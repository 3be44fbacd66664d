"""Triton's `interest_generator`: constrained novel clusters over gRPC, equal to PyTorch and the twin."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from interests.runtime.constrained import DescriptionTrie, beam_search
from streams.inference.novelty import OnnxNovelty, TritonNovelty

pytestmark = pytest.mark.integration


def _requests(art, n: int):
    test = art.split.test
    n_clusters = len(art.lm.descriptions)
    contexts = test.contexts[:n].astype(np.int64)
    exclude = np.zeros((len(contexts), n_clusters), bool)
    for row, known in enumerate(test.known[:n]):
        exclude[row, list(known)] = True
    return contexts, exclude


def test_triton_answers_like_pytorch_and_the_twin(triton, novelty_artifacts) -> None:
    art = novelty_artifacts
    contexts, exclude = _requests(art, 24)
    client = TritonNovelty(triton.grpc)
    try:
        clusters, scores = client.propose(contexts, exclude)
    finally:
        client.close()
    twin_clusters, twin_scores = OnnxNovelty(art.model_dir).propose(contexts, exclude)
    lm = art.lm
    excludes = [set(np.flatnonzero(m)) | set(c.tolist()) for c, m in zip(contexts, exclude, strict=True)]
    torch_results = beam_search(lm.next_logprobs, DescriptionTrie(lm.sequences), [lm.prompt_ids(c) for c in contexts],
                                excludes, 5, 8)
    assert np.array_equal(clusters, twin_clusters)
    np.testing.assert_allclose(scores, twin_scores, atol=1e-4)
    for row, result in enumerate(torch_results):
        got = [int(c) for c in clusters[row] if c >= 0]
        assert got == [c for c, _ in result]
        np.testing.assert_allclose(scores[row][: len(got)], [s for _, s in result], atol=1e-3)
        assert not set(got) & (set(np.flatnonzero(exclude[row])) | set(contexts[row].tolist()))
        assert all(0 <= c < len(lm.descriptions) for c in got)


def test_concurrent_requests_and_a_bad_one(triton, novelty_artifacts) -> None:
    art = novelty_artifacts
    contexts, exclude = _requests(art, 16)
    clients = [TritonNovelty(triton.grpc) for _ in range(4)]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda i: clients[i % 4].propose(contexts[i:i + 1], exclude[i:i + 1]), range(16)))
        whole, _ = clients[0].propose(contexts, exclude)
        for i, (c, _) in enumerate(answers):
            assert np.array_equal(c[0], whole[i])
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="context ids must lie in"):
            clients[0].propose(np.array([[0, 999]]), exclude[:1])
        assert np.array_equal(clients[0].propose(contexts[:2], exclude[:2])[0], whole[:2])  # still serving
    finally:
        for c in clients:
            c.close()
