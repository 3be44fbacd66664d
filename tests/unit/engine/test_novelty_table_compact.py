"""Issue 15 item 2: the worker's novelty table in arrays answers exactly as the dict of Python rows did;
issue 16 item 3: with each row's versions (interned, bounded)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.table import MAX_VERSION_CHARS, MAX_VERSIONS, CompactTable, context_key, parse_row, row_value

KEYS = [context_key([a, b]) for a in range(6) for b in range(6) if a != b]
ROWS = st.lists(st.tuples(st.integers(0, 299), st.floats(-50, 0, allow_nan=False)), max_size=70,
                unique_by=lambda x: x[0])
VERSIONS = st.sampled_from([{}, {"alignment": "a1", "best_of": "4"}, {"alignment": "b2", "best_of": "4"}])
OPS = st.lists(st.one_of(st.tuples(st.just("set"), st.sampled_from(KEYS), st.tuples(ROWS, VERSIONS)),
                         st.tuples(st.just("pop"), st.sampled_from(KEYS), st.none()),
                         st.tuples(st.just("clear"), st.none(), st.none())), max_size=60)


@settings(max_examples=80, deadline=None)
@given(ops=OPS)
def test_compact_table_behaves_as_the_dict_it_replaces(ops: list) -> None:  # type: ignore[type-arg]
    """Writes, overwrites with longer or shorter rows, deletes (slots reused), clears; growth past the
    initial capacity and depth; scores come back exactly (float64), clusters as ints, versions as written."""
    table, want = CompactTable(n_clusters=300, capacity=2), {}
    for op, key, arg in ops:
        if op == "set":
            row, versions = arg
            value = ([c for c, _ in row], [s for _, s in row], versions)
            table[key] = value
            want[key] = value
        elif op == "pop":
            assert table.pop(key, None) == want.pop(key, None)
        else:
            table.clear()
            want.clear()
        assert len(table) == len(want) and set(table) == set(want)
        assert all((k in table) == (k in want) for k in KEYS)
        assert {k: table[k] for k in table} == want
        assert all(type(c) is int for k in table for c in table[k][0])


def test_a_published_row_reads_back_into_the_compact_table() -> None:
    value = row_value([4, 2, 7], [-0.5, -1.25, -3.0000001192092896], "v1", source="live")
    row = parse_row(b"1,3", value, "v1", k=2, n_clusters=8)
    assert row == ([4, 2, 7], [-0.5, -1.25, -3.0000001192092896], {})
    table = CompactTable(n_clusters=8)
    table[b"1,3"] = row
    assert table[b"1,3"] == row and table.nbytes() > 0
    ranked = row_value([4, 2], [-1.25, -0.5], "v1", versions={"alignment": "ab12", "best_of": "2"})
    assert parse_row(b"1,3", ranked, "v1", k=2, n_clusters=8) == ([4, 2], [-1.25, -0.5],
                                                                   {"alignment": "ab12", "best_of": "2"})


@pytest.mark.parametrize("versions", [
    ["a"], {"alignment": 3}, {"alignment": None}, {"alignment": {"x": "y"}},
    {"alignment": "x" * (MAX_VERSION_CHARS + 1)}, {"y" * (MAX_VERSION_CHARS + 1): "x"},
    {f"k{i}": "v" for i in range(MAX_VERSIONS + 1)},
])
def test_row_versions_that_are_not_a_small_dict_of_short_strings_are_refused(versions: object) -> None:
    value = json.dumps({"clusters": [4], "scores": [-1.0], "catalog_version": "v1", "versions": versions}).encode()
    assert parse_row(b"1,3", value, "v1", k=2, n_clusters=8) == "invalid"


def test_versions_are_shared_between_rows_and_bounded_when_every_record_brings_new_ones() -> None:
    """One stored dict per distinct versions, however many rows carry it; a writer that sends a new dict
    with every record (the same few keys) leaves at most a bounded list behind, and the counts stay right."""
    table = CompactTable(n_clusters=8)
    for i, key in enumerate(KEYS):
        table[key] = ([i % 8], [0.0], {"alignment": "a1"} if i % 2 else {})
    assert len(table.versions) == 2
    assert table.version_counts() == [{"versions": {}, "rows": (len(KEYS) + 1) // 2},
                                      {"versions": {"alignment": "a1"}, "rows": len(KEYS) // 2}]
    for i in range(50 * len(KEYS)):
        table[KEYS[0]] = ([1], [0.0], {"alignment": f"spam{i}"})
    assert len(table.versions) <= max(64, 2 * len(table))
    assert table[KEYS[0]][2] == {"alignment": f"spam{50 * len(KEYS) - 1}"}
    assert {frozenset(c["versions"].items()): c["rows"] for c in table.version_counts(top=len(KEYS))} == {
        frozenset(): (len(KEYS) + 1) // 2 - 1, frozenset({("alignment", "a1")}): len(KEYS) // 2,
        frozenset({("alignment", f"spam{50 * len(KEYS) - 1}")}): 1}
