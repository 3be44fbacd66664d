"""`explore novelty precompute --publish`: the table lands on a compacted topic of a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from streams.core.table import decode_row

pytestmark = pytest.mark.integration


def test_precompute_writes_and_publishes_the_table(tansu_bootstrap: str, novelty_artifacts, tmp_path: Path) -> None:
    art = novelty_artifacts
    model = art.lm.save(tmp_path / "lm")
    out = tmp_path / "table.jsonl"
    run = subprocess.run([sys.executable, "-m", "explore", "novelty", "precompute", "--model", str(model),
                          "--all-contexts", "--top", "4", "--out", str(out), "--publish", "--topic", "novel-test",
                          "--bootstrap", tansu_bootstrap, "--quiet"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    n = len(art.lm.descriptions)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == n * (n - 1)  # every ordered pair of distinct clusters
    for row in rows:
        assert len(row["clusters"]) == 4 and not set(row["clusters"]) & set(row["context"])
        assert row["scores"] == sorted(row["scores"], reverse=True)
    assert "contexts/s" in run.stdout and f"published {len(rows)}" in run.stdout
    consumer = KafkaConsumer("novel-test", bootstrap_servers=tansu_bootstrap, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=5000)
    got = {r.key.decode(): decode_row(r.value) for r in consumer}
    consumer.close()
    assert len(got) == len(rows)
    first = rows[0]
    assert got[",".join(map(str, first["context"]))]["clusters"] == first["clusters"]
    # The binary rows read back as people (and `rerank --table`) read them: every row, exactly.
    dumped = tmp_path / "dumped.jsonl"
    dump = subprocess.run([sys.executable, "-m", "explore", "novelty", "dump", "--bootstrap", tansu_bootstrap,
                           "--topic", "novel-test", "--out", str(dumped)], capture_output=True, text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    assert f"{len(rows):,} rows" in dump.stderr
    back = {tuple(r["context"]): r for r in map(json.loads, dumped.read_text().splitlines())}
    assert {c: (r["clusters"], r["scores"]) for c, r in back.items()} == \
        {tuple(r["context"]): (r["clusters"], r["scores"]) for r in rows}
    assert {r["source"] for r in back.values()} == {"precompute"}  # the writer, as live fills say "live"
