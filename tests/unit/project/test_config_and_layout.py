"""Pure logic: environment parsing, broker configuration, the CLI surface (the layering: test_layout.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from explore.cli import build_parser
from streams.infra.apache_kafka import _cluster_id, _stored_cluster_id, server_properties
from streams.infra.stack import external_kafka, external_triton, strip_scheme

ROOT = Path(__file__).resolve().parents[3]


def test_strip_scheme() -> None:
    assert strip_scheme("grpc://triton:8001") == "triton:8001"
    assert strip_scheme("http://triton:8000/") == "triton:8000"
    assert strip_scheme("triton:8001") == "triton:8001"


def test_external_endpoints_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("TRITON_URL", raising=False)
    assert external_kafka() is None and external_triton() is None
    monkeypatch.setenv("KAFKA_BOOTSTRAP", " k1:9092,k2:9092 ")
    monkeypatch.setenv("TRITON_URL", "grpc://triton:8001")
    monkeypatch.setenv("TRITON_HTTP_URL", "http://triton:8000")
    monkeypatch.delenv("TRITON_METRICS_URL", raising=False)
    assert external_kafka() == "k1:9092,k2:9092"
    assert external_triton() == ("triton:8001", "triton:8000", None)


def test_kraft_properties_for_one_node(tmp_path: Path) -> None:
    props = dict(line.split("=", 1) for line in server_properties(tmp_path, 9092, 9093).splitlines() if line)
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["log.dirs"] == str(tmp_path / "data")


def test_cluster_id_is_a_base64_uuid() -> None:
    ids = {_cluster_id() for _ in range(10)}
    assert len(ids) == 10
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids)
    # 1 in 64 random ids starts with "-", which kafka-storage reads as an option: none may (without the
    # check, 1,000 draws include one with probability 1 - (63/64)^1000 > 0.9999998)
    assert not any(_cluster_id().startswith("-") for _ in range(1000))


def test_kept_storage_is_started_with_the_cluster_id_it_was_formatted_with(tmp_path: Path) -> None:
    assert _stored_cluster_id(tmp_path) is None  # nothing formatted: a new id
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.properties").write_text("#\nnode.id=1\nversion=1\ncluster.id=nbLgH8RQQeSiCFA9q8qxnw\n")
    assert _stored_cluster_id(tmp_path) == "nbLgH8RQQeSiCFA9q8qxnw"


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("infra", "demo", "KAFKA_BOOTSTRAP", "TRITON_URL"):
        assert command in out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["infra", "--help"])
    out = capsys.readouterr().out
    for action in ("up", "down", "status", "check"):
        assert action in out


def test_the_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "explore"
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "infra" in res.stdout


def test_tiny_onnx_model_is_x_w_plus_b(tmp_path: Path) -> None:
    import onnxruntime as ort

    from exporters.tiny import tiny_linear_weights, write_tiny_linear_onnx

    path = write_tiny_linear_onnx(tmp_path / "m.onnx", seed=3)
    w, b = tiny_linear_weights(3)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(y, x @ w + b, atol=1e-5)


def test_repository_writes_only_named_models(tmp_path: Path) -> None:
    from exporters.repository import write_tiny_repository

    repo = write_tiny_repository(tmp_path / "repo")
    assert sorted(p.name for p in repo.iterdir()) == ["tiny_linear"]
    assert (repo / "tiny_linear" / "config.pbtxt").is_file()
    assert (repo / "tiny_linear" / "1" / "model.py").is_file()
    assert (repo / "tiny_linear" / "1" / "model.onnx").stat().st_size > 0


# --- clear errors when a tool is missing ---------------------------------------------------


def test_no_java_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.infra.apache_kafka import ApacheKafka
    from streams.infra.process import InfraError

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java, no mvn
    with pytest.raises(InfraError, match=r"Java 17 or newer.*apt-get install"):
        ApacheKafka(tmp_path / "kafka")


def test_no_maven_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.infra.apache_kafka import kafka_libs
    from streams.infra.process import InfraError

    monkeypatch.setenv("EXPLORE_HOME", str(tmp_path / "home"))  # nothing cached yet
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InfraError, match=r"needs Maven.*apt-get install"):
        kafka_libs()


def test_missing_tansu_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.infra.process import InfraError
    from streams.infra.tansu import tansu_binary

    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-tansu"))
    with pytest.raises(InfraError, match="Tansu binary not found"):
        tansu_binary()


@pytest.mark.parametrize(("command", "config"), [(["clusters", "build"], "BuildConfig"),
                                                 (["seqrec", "train"], "TrainConfig"),
                                                 (["novelty", "train"], "LMConfig")])
def test_training_options_default_to_their_config_dataclass(command: list[str], config: str) -> None:
    """Every option named after a field of the config has the dataclass's default: one home for each default."""
    import dataclasses

    import interests.configs

    cls = getattr(interests.configs, config)
    args = build_parser().parse_args([*command, "--synthetic"])
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    shared = set(fields) & set(vars(args))
    assert len(shared) >= len(fields) - 1  # every field is an option (base_model's hub name aside)
    assert {name: getattr(args, name) for name in shared} == {name: fields[name] for name in shared}
