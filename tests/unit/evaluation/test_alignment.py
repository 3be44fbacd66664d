"""The alignment model (`interests.alignment.model`): label aggregation, and that it learns a planted preference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from interests.alignment.model import AlignmentModel, Outcome, aggregate, pairwise_accuracy, train_alignment

# Context clusters share words ("space"), so a preference learnt on some contexts carries to others.
DESCRIPTIONS = ["space, aliens, sci-fi", "space, robots, future", "love, romance, wedding",
                "crime, detective, murder", "horror, ghosts, haunted", "western, cowboys, saloon",
                "space, station, astronauts", "romance, paris, drama", "cooking, food, chefs"]
HORROR, WESTERN, COOKING = 4, 5, 8


def outcome(context: tuple[int, ...], cluster: int, accepted: bool) -> Outcome:
    return Outcome(context, tuple(DESCRIPTIONS[c] for c in context), cluster, DESCRIPTIONS[cluster], accepted)


def planted(contexts: list[tuple[int, int]], per_pair: int, seed: int) -> list[Outcome]:
    """Users with a 'space' cluster in their context take up horror 70 % of the time and westerns 10 %;
    everyone else the other way round; cooking 35 % whoever. Horror and westerns are equally popular
    overall, so only the (prompt word, candidate word) pairs can tell them apart."""
    rng = np.random.default_rng(seed)
    out = []
    for ctx in contexts:
        space = any("space" in DESCRIPTIONS[c] for c in ctx)
        for cand, p in ((HORROR, 0.7 if space else 0.1), (WESTERN, 0.1 if space else 0.7), (COOKING, 0.35)):
            out += [outcome(ctx, cand, bool(rng.random() < p)) for _ in range(per_pair)]
    return out


def test_groups_are_filtered_by_count_normalised_by_the_best_and_rounded_to_steps() -> None:
    ctx = (0, 2)
    outcomes = ([outcome(ctx, 4, True)] * 3 + [outcome(ctx, 4, False)]  # 3 of 4: the best rate, label 1.0
                + [outcome(ctx, 5, True)] + [outcome(ctx, 5, False)] * 4  # 1 of 5 = 0.2 / 0.75 = 0.267 -> 0.25
                + [outcome(ctx, 3, True)] * 3)  # 3 outcomes only: dropped
    examples = aggregate(outcomes, min_events=4, steps=4)
    assert [(e.cluster, e.label, e.events, e.accepted) for e in examples] == [(4, 1.0, 4, 3), (5, 0.25, 5, 1)]
    assert examples[0].prompt == ("The user enjoyed: space, aliens, sci-fi; love, romance, wedding. "
                                  "A new interest for the user:")
    assert examples[0].description == DESCRIPTIONS[4]
    assert aggregate([outcome(ctx, 4, False)] * 5)[0].label == 0.0  # nothing accepted anywhere: no division by 0
    ranked = aggregate([Outcome(ctx, ("a", "b"), 4, "c", True, rank=r) for r in (1, 1, 2, 2, 2)], min_events=5)
    assert ranked[0].rank == pytest.approx(1.6)  # the novelty LM's mean rank: the baseline the model is held to
    by_rank = pairwise_accuracy(lambda e: -e.rank, [replace(examples[0], rank=2.0), replace(examples[1], rank=1.0)])
    assert by_rank == (0.0, 1)  # the LM put the worse candidate first


def test_the_model_learns_a_planted_preference_and_carries_it_to_unseen_contexts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    train_contexts = [(0, 2), (0, 3), (1, 2), (2, 0), (3, 1), (2, 3), (3, 2), (7, 3), (0, 7)]
    examples = aggregate(planted(train_contexts, per_pair=40, seed=0), min_events=5, steps=10)
    model = train_alignment(examples, alpha=1.0)
    # Combinations of clusters the feedback never had together, with a space cluster and without:
    # every pair of candidates ordered as the planted rates order them (labels from 400 users a pair).
    held_out = aggregate(planted([(1, 7), (0, 1), (2, 7), (7, 2)], per_pair=400, seed=1), min_events=5)
    accuracy, pairs = pairwise_accuracy(lambda e: model.score(e.prompt, e.description), held_out)
    assert pairs == 12 and accuracy == 1.0, (accuracy, pairs)
    # A cluster the feedback never had ("space, station, astronauts"): only its word "space" is known,
    # and that is enough to put horror before westerns; a context without it puts westerns first.
    assert model.rank([DESCRIPTIONS[6], DESCRIPTIONS[2]], [DESCRIPTIONS[WESTERN], DESCRIPTIONS[HORROR]])[0] == 1
    assert model.rank([DESCRIPTIONS[7], DESCRIPTIONS[2]], [DESCRIPTIONS[HORROR], DESCRIPTIONS[WESTERN]])[0] == 1
    again = AlignmentModel.load(model.save(tmp_path / "align"))
    assert again.score(held_out[0].prompt, held_out[0].description) == \
        pytest.approx(model.score(held_out[0].prompt, held_out[0].description))


def test_without_a_preference_in_the_data_there_is_none_in_the_model() -> None:
    """The control: the same contexts with horror and westerns taken up alike; nothing to learn."""
    rng = np.random.default_rng(2)
    contexts = [(0, 2), (0, 3), (1, 2), (2, 0), (3, 1), (2, 3)]
    flat = [outcome(ctx, cand, bool(rng.random() < 0.4)) for ctx in contexts for cand in (HORROR, WESTERN)
            for _ in range(40)]
    model = train_alignment(aggregate(flat, min_events=5), alpha=1.0)
    prompt_space = [DESCRIPTIONS[6], DESCRIPTIONS[7]]
    gap = abs(model.score(*_pair(prompt_space, HORROR)) - model.score(*_pair(prompt_space, WESTERN)))
    assert gap < 0.15, gap


def _pair(context_descriptions: list[str], cluster: int) -> tuple[str, str]:
    from interests.alignment.model import prompt_text

    return prompt_text(context_descriptions), DESCRIPTIONS[cluster]


def test_no_examples_is_an_error_that_says_why() -> None:
    with pytest.raises(ValueError, match="min_events"):
        train_alignment([])


def test_explore_novelty_align_reads_feedback_records_from_a_file(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The command end to end on a file of topic records: repeats of a record (the topic is written at
    least once) and evicted ones do not count; the saved model holds the planted preference."""
    from explore.cli import main
    from streams.core.feedback import FeedbackRecord

    def record(i: int, o: Outcome, outcome: str) -> FeedbackRecord:
        return FeedbackRecord(
            f"u{i}/1/{o.cluster}", f"u{i}", 1, 100.0,
            [{"id": c, "description": d} for c, d in zip(o.context, o.context_descriptions, strict=True)],
            {"id": o.cluster, "description": o.description}, 1, "table", {"catalog": "c1"}, o.accepted, outcome,
            1, 101.0, None, None)

    outcomes = planted([(0, 2), (0, 3), (1, 2), (2, 3), (3, 2), (7, 3), (0, 7)], per_pair=30, seed=3)
    records = [record(i, o, "accepted" if o.accepted else "horizon") for i, o in enumerate(outcomes)]
    repeats = records[:50]  # sent twice
    evicted = [record(10**6 + i, outcome((1, 3), WESTERN, False), "evicted") for i in range(40)]
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(r.encode().decode() + "\n" for r in records + repeats + evicted))
    assert main(["novelty", "align", "--feedback", str(path), "--out", str(tmp_path / "align")]) == 0
    printed = capsys.readouterr().out
    assert f"{len(records) + 50 + 40:,} feedback records" in printed
    assert f"{len(records):,} labelled outcomes" in printed
    model = AlignmentModel.load(tmp_path / "align")
    assert model.meta["outcomes"] == len(records) and model.meta["versions"] == [{"catalog": "c1"}]
    assert model.rank([DESCRIPTIONS[1], DESCRIPTIONS[7]], [DESCRIPTIONS[WESTERN], DESCRIPTIONS[HORROR]])[0] == 1
    path.write_text(path.read_text() + "{not a record\n")
    assert main(["novelty", "align", "--feedback", str(path), "--out", str(tmp_path / "align")]) == 1
    assert f"line {len(records) + 91}: not a feedback record" in capsys.readouterr().err
