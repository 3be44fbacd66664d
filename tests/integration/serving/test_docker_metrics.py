"""The docker/ stack's parts that can run without containers, on real services.

- Every Triton metric the Grafana dashboard queries is in a live Triton's /metrics text, under
  the very name the query uses (Triton's counters carry no `_total`).
- The `models` job (docker/models.sh) loads a prebuilt catalog and repository into its output
  directory, switches seqrec between the Python and the native onnxruntime backend, publishes
  the novelty table to a real broker, and on a second run reuses what it built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from streams.infra.triton_check import infer_grpc
from tests.integration.engine_support import read_topic
from tests.unit.project.test_docker_stack import DOCKER, ROOT, TRITON_METRICS, dashboard_metric_names

pytestmark = pytest.mark.integration


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def sample_names(text: str, **labels: str) -> set[str]:
    """Names of the samples in Prometheus text whose labels include `labels`."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s", line)
        if m and all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
            names.add(m.group(1))
    return names


def test_triton_exports_every_metric_the_dashboard_uses(triton) -> None:  # type: ignore[no-untyped-def]
    assert triton.metrics, "this Triton has no metrics URL"
    infer_grpc(triton.grpc, "tiny_linear", np.ones((2, 4), dtype=np.float32))  # counters move on use
    text = metrics_text(triton.metrics)
    used = {n for n in dashboard_metric_names() if n.startswith("nv_")}
    assert used, "the dashboard queries no Triton metric"
    assert used <= TRITON_METRICS
    # Per model, by the exact sample name (no suffix added): what Prometheus stores and PromQL selects.
    per_model = sample_names(text, model="tiny_linear")
    assert per_model >= TRITON_METRICS, f"missing from Triton's /metrics: {sorted(TRITON_METRICS - per_model)}"
    assert not any(n.startswith("nv_gpu_") for n in used), "GPU metrics are absent where Triton has no GPU"


def _run_models_job(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(DOCKER / "models.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=240)


def test_models_job_loads_prebuilt_models_and_switches_the_seqrec_backend(  # type: ignore[no-untyped-def]
        apache_bootstrap: str, tiny_repository: Path, seqrec_artifacts, novelty_artifacts, tmp_path: Path) -> None:
    from interests.clusters.catalog import Catalog
    from streams.core.engine import ModelFiles

    catalog = seqrec_artifacts.catalog
    prebuilt = tmp_path / "prebuilt"
    prebuilt.mkdir()
    shutil.copytree(Path(seqrec_artifacts.checkpoint).parent / "catalog", prebuilt / "catalog")
    shutil.copytree(tiny_repository, prebuilt / "repository")
    rows = [{"context": [a, b], "clusters": [c], "scores": [-1.5], "catalog_version": catalog.version}
            for a, b, c in ((0, 1, 2), (1, 2, 3), (2, 3, 4))]
    (prebuilt / "novelty-table.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "data").mkdir()
    models = tmp_path / "models"
    topic = f"novel-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "KAFKA_BOOTSTRAP": apache_bootstrap, "MODELS_DIR": str(models), "DATA_DIR": str(tmp_path / "data"),
           "PREBUILT_DIR": str(prebuilt), "EXPLORE_TRITON_MODELS": str(ROOT / "triton_models"),
           "EXPLORE_NOVELTY_TOPIC": topic, "SEQREC_BACKEND": "onnxruntime"}
    sources = ROOT / "triton_models" / "seqrec"
    seqrec = models / "repository" / "seqrec"

    first = _run_models_job(env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (models / "COMPLETE").read_text().startswith(f"prebuilt from {prebuilt}")
    assert (seqrec / "config.pbtxt").read_text() == (sources / "config.gpu.pbtxt.example").read_text()
    assert not (seqrec / "1" / "model.py").exists()  # the native backend serves model.onnx itself
    assert not (models / ".staging").exists()
    # What a worker loads (EXPLORE_CATALOG, EXPLORE_REPOSITORY) is whole and consistent.
    files = ModelFiles(models / "repository", Catalog.load(models / "catalog"))
    assert files.versions["catalog"] == catalog.version
    records = read_topic(apache_bootstrap, topic, lambda r: len(r) >= len(rows), timeout_s=30)
    assert sorted(r.key for r in records) == [b"0,1", b"1,2", b"2,3"]

    env["SEQREC_BACKEND"] = "python"
    second = _run_models_job(env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reusing the models" in second.stdout
    assert (seqrec / "config.pbtxt").read_text() == (sources / "config.pbtxt").read_text()
    assert (seqrec / "1" / "model.py").read_text() == (sources / "1" / "model.py").read_text()
    records = read_topic(apache_bootstrap, topic, lambda r: len(r) >= 2 * len(rows), timeout_s=30)
    assert len(records) == 2 * len(rows)  # published again: a new broker volume gets the table too

    bad = _run_models_job(env, "train")
    assert bad.returncode == 2 and "unknown arguments" in bad.stdout
