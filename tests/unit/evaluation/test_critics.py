"""`interests.alignment.critics`: the cross-critic matrix and coverage, on planted generators and critics."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest

from interests.alignment.critics import cell, coverage, critic_matrix, critic_table, entropy_bits, top_m

N, M = 6, 2
CONTEXTS = list(permutations(range(N), 2))


def agreeing(seed: int):  # type: ignore[no-untyped-def]
    """A critic of the planted truth (higher cluster id: taken up more) with its own context-dependent wobble."""
    return lambda ctx, c: c + 0.3 * ((c * 7 + ctx[0] * 3 + seed) % 4) / 4


def odd(ctx: tuple[int, ...], c: int) -> float:
    """An idiosyncratic critic: the truth backwards."""
    return -float(c)


def fitted(critic, m: int = M) -> dict:  # type: ignore[no-untyped-def]
    """A generator fitted to `critic`: its top M of every context (what best-of-n over the whole row picks)."""
    return {ctx: sorted((c for c in range(N) if c not in ctx), key=lambda c: -critic(ctx, c))[:m] for ctx in CONTEXTS}


@pytest.fixture(scope="module")
def matrix():  # type: ignore[no-untyped-def]
    critics = {"a": agreeing(0), "b": agreeing(1), "c": agreeing(2), "odd": odd}
    tables = {name: critic_table(f, CONTEXTS, N) for name, f in critics.items()}
    generators = {"fits odd": fitted(odd), "fits a": fitted(critics["a"]), "raw": fitted(agreeing(5))}
    return critic_matrix(generators, tables, {"fits odd": "odd", "fits a": "a", "raw": None})


def test_shape_and_diagonal(matrix) -> None:  # type: ignore[no-untyped-def]
    assert matrix.generators == ["fits odd", "fits a", "raw"] and matrix.critics == ["a", "b", "c", "odd"]
    assert set(matrix.cells) == {(g, c) for g in matrix.generators for c in matrix.critics}
    assert all(x.contexts == len(CONTEXTS) for x in matrix.cells.values())
    doc = matrix.to_json()
    assert doc["own"] == {"fits odd": "odd", "fits a": "a", "raw": None}
    assert set(doc["cells"]["raw"]) == set(matrix.critics)
    # a generator fitted to a critic is that critic's best: no other generator beats it on its own column
    for g in ("fits odd", "fits a"):
        own = matrix.own[g]
        assert all(matrix.cells[(g, own)].score >= matrix.cells[(h, own)].score for h in matrix.generators)


def test_a_generator_fitted_to_its_own_critic_wins_its_diagonal_not_the_others(matrix) -> None:  # type: ignore[no-untyped-def]
    """The point of the matrix: 'fits odd' tops the odd critic's column but loses under every other critic."""
    cells = matrix.cells
    assert cells[("fits odd", "odd")].lift > max(cells[("fits a", "odd")].lift, cells[("raw", "odd")].lift)
    own_odd, others_odd = matrix.cross("fits odd")
    own_a, others_a = matrix.cross("fits a")
    assert own_odd > 0 and others_odd < 0 < others_a < own_a
    assert all(cells[("fits odd", c)].lift < 0 < cells[("raw", c)].lift for c in "abc")
    assert math.isnan(matrix.cross("raw")[0])  # no own critic: nothing on the diagonal


def test_lift_is_zero_for_a_random_pick_whatever_the_critic_scale() -> None:
    """Picking every candidate is the random pick's expectation: lift 0 under a critic and under it scaled."""
    everything = fitted(odd, m=N)
    for critic in (agreeing(0), lambda ctx, c: 100 + 50 * agreeing(0)(ctx, c)):
        x = cell(everything, critic_table(critic, CONTEXTS, N))
        assert x.lift == pytest.approx(0, abs=1e-9) and x.contexts == len(CONTEXTS)
    scaled = cell(fitted(agreeing(0)), critic_table(lambda ctx, c: 10 * agreeing(0)(ctx, c), CONTEXTS, N)).lift
    assert scaled == pytest.approx(10 * cell(fitted(agreeing(0)), critic_table(agreeing(0), CONTEXTS, N)).lift)


def test_contexts_a_generator_does_not_answer_are_left_out() -> None:
    table = critic_table(agreeing(0), CONTEXTS, N)
    half = dict(list(fitted(agreeing(0)).items())[: len(CONTEXTS) // 2])
    assert cell(half, table).contexts == len(half)
    assert math.isnan(cell({}, table).score)
    with pytest.raises(ValueError, match="own critic"):
        critic_matrix({"g": half}, {"a": table}, {"g": "b"})


def test_coverage_counts_the_modes_reached() -> None:
    """Always the two highest clusters the context leaves: at most 4 clusters reached, the top two most."""
    narrow = coverage(fitted(agreeing(0)), N)
    assert narrow["reached"] < N and narrow["effective_clusters"] < narrow["reached"]
    even = coverage({(i,): [i] for i in range(N)}, N)
    assert even["reached"] == N and even["effective_clusters"] == pytest.approx(N)
    assert even["entropy_bits"] == pytest.approx(even["max_entropy_bits"])
    assert coverage({(0,): [3], (1,): [3]}, N)["effective_clusters"] == pytest.approx(1)
    assert entropy_bits([1, 1, 0, 2]) == pytest.approx(1.5)


def test_top_m_skips_empty_slots() -> None:
    rows = [{"context": [0, 1], "clusters": [4, -1, 2, 3], "scores": [0, 0, 0, 0]}]
    assert top_m(rows, 2) == {(0, 1): [4, 2]}


def test_bootstrap_difference_by_user() -> None:
    """The window-B check's interval (`interests.evaluation.stats.bootstrap_difference`): a planted gap is inside it
    and 0 is not; two draws of one rate straddle 0."""
    from interests.evaluation.stats import bootstrap_difference

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(200), 10)
    high, low, also_low = (rng.random(len(users)) < p for p in (0.7, 0.4, 0.4))
    lo, hi = bootstrap_difference(high, users, low, users)
    assert 0 < lo < 0.3 < hi
    lo, hi = bootstrap_difference(low, users, also_low, users[::-1])
    assert lo < 0 < hi
    assert bootstrap_difference(np.ones(4), np.arange(4), np.zeros(4), np.arange(4)) == (1.0, 1.0)
