"""Best-of-n re-ranking of table rows by the alignment model (pure logic)."""

from __future__ import annotations

import pytest

from interests.alignment.best_of_n import WeakAlignment, best_of_n, best_of_n_rows, check_evidence, rerank_table
from interests.alignment.model import AlignmentModel

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


def _table() -> list[dict]:
    return [{"context": [0, 1], "clusters": [2, 3, 4], "scores": [-0.1, -0.5, -0.9], "catalog_version": "v"},
            {"context": [3, 4], "clusters": [0, 1, 2], "scores": [-0.2, -0.3, -0.4], "catalog_version": "v"}]


def test_a_table_is_reranked_and_the_rows_that_changed_order_are_counted() -> None:
    model = AlignmentModel({"d:comedy": 1.0}, 0.0, {"versions": [{"catalog": "v", "seqrec": "s"}], **CHECKED})
    rows, changed = rerank_table(_table(), model, DESCRIPTIONS, n=3, catalog_version="v")
    assert [r["clusters"] for r in rows] == [[3, 2, 4], [0, 1, 2]] and changed == 1  # no comedy in the second
    assert all(r["versions"]["alignment"] == model.version for r in rows)


CHECKED = {"holdout_pairs": 31, "holdout_pairwise_accuracy": 0.68, "holdout_lm_rank_accuracy": 0.42}


@pytest.mark.parametrize(("meta", "min_pairs", "error"), [
    ({}, 20, "checked on 0 held-out candidate pairs"),  # align had no held-out pair: no evidence at all
    ({**CHECKED, "holdout_pairs": 19}, 20, "fewer than --min-pairs 20"),
    ({**CHECKED, "holdout_pairwise_accuracy": 0.42}, 20, "does not beat"),  # no better than the LM's own order
    ({"holdout_pairs": 40, "holdout_pairwise_accuracy": 0.5}, 20, "a coin 0.500"),  # the LM's ranks unknown
    ({"holdout_pairs": 40, "holdout_pairwise_accuracy": 0.6, "holdout_lm_rank_accuracy": float("nan")}, 20, None),
    (CHECKED, 20, None),
    ({}, 0, None),  # --min-pairs 0: re-rank anyway
])
def test_a_model_must_beat_the_lm_order_on_held_out_pairs_before_it_reranks(meta: dict, min_pairs: int,
                                                                            error: str | None) -> None:
    model = AlignmentModel({"d:comedy": 1.0}, 0.0, meta)
    if error is None:
        check_evidence(model, min_pairs)
        rerank_table(_table(), model, DESCRIPTIONS, 3, "v", min_pairs)
        return
    with pytest.raises(WeakAlignment, match=error):
        rerank_table(_table(), model, DESCRIPTIONS, 3, "v", min_pairs)


@pytest.mark.parametrize(("table", "meta", "n", "error"), [
    (_table(), {"versions": [{"catalog": "other"}]}, 2, "feedback of catalog"),
    ([{**_table()[0], "catalog_version": "old"}], {}, 2, "of catalog old"),
    ([{**_table()[0], "clusters": [2, 3, len(DESCRIPTIONS)]}], {}, 2, "--level"),
    ([{**_table()[0], "versions": {"alignment": "abc"}}], {}, 2, "already re-ranked"),
    (_table(), {}, 0, "n >= 1"),
])
def test_reranking_refuses_what_would_rank_the_wrong_clusters(table: list[dict], meta: dict, n: int,
                                                              error: str) -> None:
    with pytest.raises(ValueError, match=error):
        rerank_table(table, AlignmentModel({}, 0.0, meta), DESCRIPTIONS, n, catalog_version="v")


@pytest.mark.parametrize(("argv", "error"), [
    (["rerank", "--align", "{tmp}/nothing", "--best-of", "3"], "no alignment model there"),
    (["rerank", "--align", "{tmp}/align", "--best-of", "0"], "n >= 1"),
    (["rerank", "--align", "{tmp}/align", "--best-of", "3"], "no table there"),
    (["precompute", "--align", "{tmp}/align"], "go together"),  # before the LM (none there) loads
])
def test_best_of_n_commands_say_what_is_missing_or_wrong(argv: list[str], error: str, tmp_path,  # type: ignore[no-untyped-def]
                                                         capsys) -> None:
    from explore.cli import main

    AlignmentModel({}, 0.0, {}).save(tmp_path / "align")
    files = ["--table", str(tmp_path / "none.jsonl")] if argv[0] == "rerank" else ["--model", str(tmp_path / "lm")]
    assert main(["novelty", *(a.format(tmp=tmp_path) for a in argv), *files]) == 1
    assert error in capsys.readouterr().err
