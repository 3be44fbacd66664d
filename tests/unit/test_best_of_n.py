"""Best-of-n re-ranking of table rows by the alignment model (pure logic)."""

from __future__ import annotations

import pytest

from interests.alignment import AlignmentModel
from interests.best_of_n import best_of_n, best_of_n_rows

DESCRIPTIONS = ["space opera", "detective noir", "western frontier", "romantic comedy", "war drama"]


def _model(weights: dict[str, float]) -> AlignmentModel:
    return AlignmentModel(weights, 0.0, {})


def test_the_first_n_are_reordered_by_the_alignment_model_and_the_rest_keep_the_lm_order() -> None:
    row = {"context": [0, 1], "clusters": [2, 3, 4], "scores": [-0.1, -0.5, -0.9], "catalog_version": "v"}
    model = _model({"d:comedy": 1.0, "d:western": 0.5})
    out = best_of_n(row, model, DESCRIPTIONS, n=2)
    assert out["clusters"] == [3, 2, 4]
    assert out["scores"] == [-0.5, -0.1, -0.9]  # each cluster keeps the LM's own score
    assert out["versions"] == {"alignment": model.version, "best_of": "2"}
    assert out["catalog_version"] == "v" and row["clusters"] == [2, 3, 4]  # the input row is not changed


def test_a_candidate_past_n_is_never_promoted_and_ties_keep_the_lm_order() -> None:
    row = {"context": [0, 1], "clusters": [2, 3, 4], "scores": [-0.1, -0.5, -0.9]}
    assert best_of_n(row, _model({"d:war": 9.0}), DESCRIPTIONS, n=2)["clusters"] == [2, 3, 4]
    assert best_of_n(row, _model({"d:war": 9.0}), DESCRIPTIONS, n=3)["clusters"] == [4, 2, 3]
    assert best_of_n_rows([row], _model({}), DESCRIPTIONS, n=3)[0]["clusters"] == [2, 3, 4]


def test_the_context_words_reach_the_model() -> None:
    row = {"context": [0, 1], "clusters": [2, 3], "scores": [-0.1, -0.5]}
    model = _model({"x:noir|comedy": 1.0})
    assert best_of_n(row, model, DESCRIPTIONS, n=2)["clusters"] == [3, 2]
    other = {"context": [0, 4], "clusters": [2, 3], "scores": [-0.1, -0.5]}
    assert best_of_n(other, model, DESCRIPTIONS, n=2)["clusters"] == [2, 3]


def test_versions_name_the_weights_and_n_must_be_positive() -> None:
    assert _model({"d:a": 1.0}).version == _model({"d:a": 1.0}).version != _model({"d:a": 2.0}).version
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n({"context": [0], "clusters": [1], "scores": [0.0]}, _model({}), DESCRIPTIONS, n=0)
