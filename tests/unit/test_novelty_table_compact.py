"""Issue 15 item 2: the worker's novelty table in arrays answers exactly as the dict of Python rows did."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.novelty_table import CompactTable, context_key, parse_row, row_value

KEYS = [context_key([a, b]) for a in range(6) for b in range(6) if a != b]
ROWS = st.lists(st.tuples(st.integers(0, 299), st.floats(-50, 0, allow_nan=False)), max_size=70,
                unique_by=lambda x: x[0])
OPS = st.lists(st.one_of(st.tuples(st.just("set"), st.sampled_from(KEYS), ROWS),
                         st.tuples(st.just("pop"), st.sampled_from(KEYS), st.none()),
                         st.tuples(st.just("clear"), st.none(), st.none())), max_size=60)


@settings(max_examples=80, deadline=None)
@given(ops=OPS)
def test_compact_table_behaves_as_the_dict_it_replaces(ops: list) -> None:  # type: ignore[type-arg]
    """Writes, overwrites with longer or shorter rows, deletes (slots reused), clears; growth past the
    initial capacity and depth; scores come back exactly (float64), clusters as ints."""
    table, want = CompactTable(n_clusters=300, capacity=2), {}
    for op, key, row in ops:
        if op == "set":
            value = ([c for c, _ in row], [s for _, s in row])
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
    assert row == ([4, 2, 7], [-0.5, -1.25, -3.0000001192092896])
    table = CompactTable(n_clusters=8)
    table[b"1,3"] = row
    assert table[b"1,3"] == row and table.nbytes() > 0
