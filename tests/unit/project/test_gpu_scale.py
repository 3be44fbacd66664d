"""Issue 15 item 5: `scripts/gpu_scale.py`, the prepared GPU run, checked on the CPU with --smoke.

The CPU stands in for the GPU (tiny sizes, ~10 s): every stage runs, writes its JSON as it goes, and
the "GPU" path agrees with onnxruntime's CPU answer (ids and table rows identical, scores within 1e-4).
A budget too short for any stage skips each one with its reason instead of starting it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "gpu_scale.py"


def run(out: Path, *extra: str) -> dict:
    subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *extra], check=True,
                   capture_output=True, text=True, timeout=240)
    return json.loads((out / "gpu_scale.json").read_text())


def test_smoke_run_measures_every_stage_with_parity(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert not result["errors"] and not result["skipped"]
    assert {(e["items"], e["batch"]) for e in result["seqrec"]} == {(20_000, 1), (20_000, 16), (2_000, 1), (2_000, 16)}
    assert [e["clusters"] for e in result["novelty"]] == [8, 24]
    for entry in result["seqrec"] + result["novelty"]:
        assert entry["parity"]["ok"], entry
    assert "parity: every measurement" in (tmp_path / "log.txt").read_text()


def test_a_short_budget_skips_stages_with_their_reason(tmp_path: Path) -> None:
    result = run(tmp_path, "--budget-s", "0")
    assert not result["seqrec"] and not result["novelty"]
    assert len(result["skipped"]) == 4 and all("needs" in s["reason"] for s in result["skipped"])
