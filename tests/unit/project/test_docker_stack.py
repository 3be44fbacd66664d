"""The docker/ deployment, checked statically (no container runtime here).

The compose file parses and is consistent with itself (dependencies, volumes, build files), with
the engine's settings (the environment a worker gets) and with the Prometheus and Grafana
configuration (names and ports); `promtool` accepts the Prometheus config and every dashboard
query; every metric a query names is one the engine exports (read from `streams.core.metrics`) or a
Triton metric (checked against a live Triton in tests/integration/serving/test_docker_metrics.py).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.config import EngineConfig
from streams.core.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "engine.json"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards" / "engine.yaml"

# Triton's per-model metrics that the dashboard may use: none of them needs a GPU (the nv_gpu_*
# family exists only where Triton sees one, so the dashboard leaves it out). The integration
# test finds each of these in a live Triton's /metrics.
TRITON_METRICS = frozenset({
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
})

# The panels the deployment issue asks for, by title.
REQUIRED_PANELS = (
    "Event rate by outcome", "Event-to-slate latency", "DLQ rate by reason", "Novelty-table hit rate",
    "Novel-cluster share of slate items", "Consumer lag", "Triton up / fallback per worker",
    "Triton queue time per request", "Triton compute time per request",
)


# --- reading the files -----------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?)([-?])([^}]*))?\}")
REQUIRED = "<required>"  # what a `${NAME:?message}` variable, which has no default, reads as here


def interpolate(value: Any) -> Any:
    """Compose's `${NAME:-default}` interpolation with an empty environment (the defaults); a
    `${NAME:?message}` variable must be set by the user and reads as REQUIRED."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            if m.group(3) is None:
                raise AssertionError(f"{m.group(0)} in {COMPOSE.name} has no default")
            return REQUIRED if m.group(3) == "?" else m.group(4)
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of each volume entry, short or long syntax."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out.append((v["type"], str(v["source"]), v["target"]))
        else:
            source, target = v.split(":")[:2]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            out.append((kind, source, target))
    return out


def flag_values(service: dict[str, Any]) -> dict[str, str]:
    """`--name=value` flags of the service's command."""
    command = service.get("command") or []
    command = command.split() if isinstance(command, str) else command
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def container_ports(service: dict[str, Any]) -> set[int]:
    """Ports the service's container listens on, as the compose file declares them."""
    ports = {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports") or []}
    ports |= {int(str(p)) for p in service.get("expose") or []}
    for name, value in flag_values(service).items():
        if name.endswith("-port"):
            ports.add(int(value))
        elif name.endswith("listen-address"):
            ports.add(int(value.rsplit(":", 1)[1]))
    env = environment(service)
    for listener in env.get("KAFKA_LISTENERS", "").split(","):
        if listener:
            ports.add(int(listener.rsplit(":", 1)[1]))
    if "EXPLORE_WEB_PORT" in env:
        ports.add(int(env["EXPLORE_WEB_PORT"]))
    return ports


def host_port(address: str) -> tuple[str, int]:
    address = re.sub(r"^[a-z]+://", "", address).split("/")[0]
    host, port = address.rsplit(":", 1)
    return host, int(port)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return [p for p in out if p["type"] != "row"]


def expressions(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dash) for t in p.get("targets", [])]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords or numbers)."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery durations
    s = _GROUPING.sub(" ", s)
    s = re.sub(r"\$\w+", " ", s)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", s):
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def dashboard_metric_names() -> set[str]:
    return set().union(*(metric_names(e) for e in expressions(dashboard())))


def engine_metric_names() -> set[str]:
    """Every sample name the engine's registry exports, with the suffixes prometheus_client adds."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}
    names = set()
    for family in Metrics().registry.collect():
        names |= {family.name + s for s in suffixes[family.type]}
    return names


# --- compose -----------------------------------------------------------------------------------


def test_compose_defines_the_stack() -> None:
    svc = services()
    assert {"kafka", "models", "triton", "worker", "prometheus", "grafana"} <= set(svc)
    assert re.fullmatch(r"apache/kafka:4\.1\.\d+", svc["kafka"]["image"])
    assert environment(svc["kafka"])["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, one node
    assert svc["prometheus"]["image"].startswith("prom/prometheus:")
    assert svc["grafana"]["image"].startswith("grafana/grafana:")
    gpu = svc["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu and gpu[0]["driver"] == "nvidia" and "gpu" in gpu[0]["capabilities"]


def test_dependencies_name_defined_services_and_wait_for_the_models() -> None:
    svc = services()
    for name, service in svc.items():
        for dep, condition in depends_on(service).items():
            assert dep in svc, f"{name} depends on undefined service {dep}"
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                assert "healthcheck" in svc[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
    for consumer in ("triton", "worker"):
        assert depends_on(svc[consumer])["models"] == "service_completed_successfully"
    assert depends_on(svc["models"])["kafka"] == "service_healthy"  # it publishes the novelty table
    assert svc["models"].get("restart", "no") == "no"


def test_volumes_are_declared_and_bind_sources_exist() -> None:
    doc = compose()
    declared = set(doc.get("volumes") or {})
    used = set()
    for name, service in doc["services"].items():
        for kind, source, target in mounts(service):
            if kind == "volume":
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.add(source)
            else:
                create = any(isinstance(v, dict) and v.get("bind", {}).get("create_host_path")
                             and v["target"] == target for v in service["volumes"])
                assert create or (DOCKER / source).exists(), f"{name} mounts missing {source}"
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    # Triton and the workers read what the models job writes.
    models_mount = {t for k, s, t in mounts(doc["services"]["models"]) if s == "models"}
    for reader in ("triton", "worker"):
        assert {t for k, s, t in mounts(doc["services"][reader]) if s == "models"} == models_mount


def test_build_files_exist_and_define_the_targets() -> None:
    svc = services()
    for name, service in svc.items():
        build = service.get("build")
        if not build:
            continue
        context = (DOCKER / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: no {dockerfile}"
        stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)
        if "target" in build:
            assert build["target"] in stages, f"{name}: target {build['target']} not in {dockerfile.name}"
        for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+\S+$", dockerfile.read_text(), re.M):
            assert (context / src).exists(), f"{dockerfile.name} copies missing {src}"
    # Images built once and reused by name.
    assert svc["replay"]["image"] == svc["models"]["image"]


def test_triton_image_is_the_ngc_image_with_the_python_models_dependencies() -> None:
    svc = services()
    text = (DOCKER / "triton.Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3" in text
    default = re.search(r"^ARG TRITON_VERSION=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"\d\d\.\d\d", default)
    assert svc["triton"]["build"]["args"]["TRITON_VERSION"] == default
    # What the Python-backend models import, beyond the standard library, is what the image adds.
    pins = dict(re.findall(r"^ARG (\w+)_PACKAGE=(\S+)$", text, re.M))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pins["NUMPY"] in pyproject and pins["ORT"] in pyproject
    sources = [ROOT / "triton_models" / m / "1" / "model.py" for m in ("seqrec", "interest_generator")]
    sources.append(ROOT / "interests" / "runtime" / "constrained.py")  # copied beside interest_generator's model.py
    third_party = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                third_party |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                third_party.add(node.module.split(".")[0])
    third_party -= set(sys.stdlib_module_names) | {"constrained", "triton_python_backend_utils"}
    assert third_party == {"numpy", "onnxruntime"}
    assert flag_values(svc["triton"])["model-repository"].startswith(
        next(t for k, s, t in mounts(svc["triton"]) if s == "models"))


def test_endpoints_in_the_environment_name_services_and_their_ports() -> None:
    svc = services()
    kafka_env = environment(svc["kafka"])
    advertised = dict(entry.split("://") for entry in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(entry.split("://") for entry in kafka_env["KAFKA_LISTENERS"].split(","))
    checked = 0
    for name, service in svc.items():
        env = environment(service)
        if "KAFKA_BOOTSTRAP" in env:
            for address in env["KAFKA_BOOTSTRAP"].split(","):
                host, port = host_port(address)
                assert host == "kafka", f"{name}: KAFKA_BOOTSTRAP names {host}"
                listener = next((n for n, a in advertised.items() if host_port(a) == (host, port)), None)
                assert listener, f"{name}: Kafka advertises no listener {address}"
                assert host_port(listeners[listener])[1] == port
                checked += 1
        if "TRITON_URL" in env:
            host, port = host_port(env["TRITON_URL"])
            assert host == "triton" and host in svc
            assert port == int(flag_values(svc["triton"])["grpc-port"])  # TRITON_URL is gRPC
            checked += 1
    assert checked >= 4  # models, worker, replay (Kafka) and worker (Triton)


def test_published_ports_listen_on_loopback_unless_asked() -> None:
    """A `docker compose up` on a host with a public address must not publish Kafka, Triton,
    Prometheus or Grafana to the network by default (PUBLISH_ADDRESS opens them on purpose)."""
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    published = 0
    for name, service in services().items():
        for port, spec in zip(service.get("ports") or [], raw[name].get("ports") or [], strict=True):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
            assert str(spec).startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name}: {spec}"
            published += 1
    assert published >= 6


def test_grafana_has_no_default_password_and_no_anonymous_viewers_unless_asked() -> None:
    env = environment(services()["grafana"])
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED  # compose refuses to start without one
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_workers_scale_and_their_settings_are_engine_settings() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker and "hostname" not in worker
    assert not worker.get("ports"), "a fixed host port would stop `--scale worker=N`"
    env = environment(worker)
    known = {EngineConfig.env_name(f) for f in EngineConfig.__dataclass_fields__}
    assert set(env) <= known, f"not engine settings: {sorted(set(env) - known)}"
    cfg = EngineConfig.load(env=env)
    assert cfg.web_host == "0.0.0.0" and cfg.web_port in container_ports(worker)
    assert (cfg.bootstrap, cfg.triton_url) == ("kafka:9092", "triton:8001")
    assert cfg.catalog.startswith("/models/") and cfg.repository.startswith("/models/")
    assert worker["command"][0] == "serve"


# --- Prometheus ----------------------------------------------------------------------------------


def test_prometheus_targets_are_services_on_their_ports() -> None:
    svc = services()
    prom = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert {"worker", "triton"} <= set(jobs)
    # Every worker replica, found through Docker's DNS.
    dns = jobs["worker"]["dns_sd_configs"]
    assert [(d["names"], d.get("type", "SRV")) for d in dns] == [(["worker"], "A")]
    assert dns[0]["port"] == EngineConfig.load(env=environment(svc["worker"])).web_port
    for job in prom["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = host_port(target)
                assert host in svc, f"job {job['job_name']}: {host} is no service"
                assert port in container_ports(svc[host]), f"job {job['job_name']}: {host} does not listen on {port}"
    assert int(flag_values(svc["triton"])["metrics-port"]) == host_port(jobs["triton"]["static_configs"][0]
                                                                          ["targets"][0])[1]
    # The compose file mounts this very file where the command reads it.
    prom_service = svc["prometheus"]
    config_path = flag_values(prom_service)["config.file"]
    assert ("bind", "./prometheus/prometheus.yml", config_path) in mounts(prom_service)


def _promtool() -> str:
    import shutil

    path = shutil.which("promtool")
    assert path, "promtool is needed: `make test` installs Debian's prometheus package (make system-deps)"
    return path


def test_promtool_accepts_the_prometheus_config() -> None:
    res = subprocess.run([_promtool(), "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel's PromQL as a recording rule: `promtool check rules` runs Prometheus's parser on it."""
    exprs = expressions(dashboard())
    rules = [{"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "1m")}
             for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout


# --- Grafana -------------------------------------------------------------------------------------


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    svc = services()
    grafana = svc["grafana"]
    targets = {source: target for kind, source, target in mounts(grafana) if kind == "bind"}
    for kind in ("datasources", "dashboards"):
        assert targets[f"./grafana/provisioning/{kind}"] == f"/etc/grafana/provisioning/{kind}"
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    host, port = host_port(sources[0]["url"])
    assert host == "prometheus" and port in container_ports(svc["prometheus"])
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == [targets["./grafana/dashboards"]]
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{targets['./grafana/dashboards']}/{DASHBOARD.name}"
    # Every panel queries the provisioned data source.
    for panel in panels(dashboard()):
        uids = {panel["datasource"]["uid"]} | {t["datasource"]["uid"] for t in panel["targets"]}
        assert uids == {sources[0]["uid"]}, panel["title"]


def test_dashboard_has_the_panels_the_deployment_needs() -> None:
    dash = dashboard()
    all_panels = panels(dash)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in all_panels}
    assert set(REQUIRED_PANELS) <= titles, f"missing: {sorted(set(REQUIRED_PANELS) - titles)}"
    assert all(p.get("targets") and all(t["expr"].strip() for t in p["targets"]) for p in all_panels)
    used = dashboard_metric_names()
    # The quantities the issue names, each queried somewhere.
    for name in ("explore_events_total", "explore_event_to_slate_seconds_bucket", "explore_dlq_records_total",
                 "explore_novelty_table_lookups_total", "explore_slate_novel_items_total", "explore_slate_items_total",
                 "explore_consumer_lag", "explore_triton_up", "nv_inference_queue_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_request_success"):
        assert name in used, name


def test_every_dashboard_metric_is_exported_by_the_engine_or_triton() -> None:
    engine = engine_metric_names()
    assert {"explore_events_total", "explore_event_to_slate_seconds_bucket", "explore_triton_up"} <= engine
    for expr in expressions(dashboard()):
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        unknown = names - engine - TRITON_METRICS
        assert not unknown, (f"{expr!r} names {sorted(unknown)}: neither the engine's (streams/core/metrics.py) "
                             "nor Triton's")


@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="w", x=~"y|z"}[5m])))', {"a_bucket"}),
    ('sum(rate(b_total{result="hit"}[$__rate_interval])) / sum(rate(b_total[1m]))', {"b_total"}),
    ("sum by (model) (rate(c[1m])) / on (model) group_left sum without (instance) (d)", {"c", "d"}),
    ("sum(1 - e) > bool 0.5 and f offset 5m", {"e", "f"}),
    ('count(g{le="+Inf"}) or vector(0)', {"g"}),
])
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# --- images and the models job -------------------------------------------------------------------


def _stage(dockerfile: str, target: str) -> str:
    stages = re.split(r"^FROM\s+", dockerfile, flags=re.M)
    return next(s for s in stages if re.match(rf"\S+\s+AS\s+{target}\s*$", s.splitlines()[0], re.I))


def test_worker_image_installs_the_runtime_set_and_serves_without_offline_packages() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert re.search(r"pip install \.(\s|$)", _stage(text, "worker")), "the worker installs the runtime set only"
    trainer = re.search(r'pip install .*"\.\[([\w,]+)\]"', _stage(text, "trainer")).group(1).split(",")
    assert set(trainer) == {"train", "data", "text"} and set(trainer) <= set(extras)
    # The runtime set must be enough for `explore serve`: import its path with the packages of
    # the offline extras made unimportable.
    blocked = {"torch", "pandas", "pyarrow", "scipy", "sklearn", "transformers", "sentence_transformers", "peft",
               "onnx", "gensim"}
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(blocked)!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from explore.cli import build_parser
from explore.commands.engine import cmd_serve
args = build_parser().parse_args(["serve"])
assert args.func is cmd_serve
import faust.worker, streams.wiring.worker, streams.core.engine, streams.inference.router, streams.infra.kafka_check
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def _explore_calls(script: str) -> list[tuple[list[str], list[str], bool]]:
    """(subcommand path, --flags, gets the data flags "$@") of every `explore ...` line of a shell script."""
    joined = re.sub(r"\\\n\s*", " ", script)
    calls = []
    for line in joined.splitlines():
        m = re.match(r"\s*(?:exec\s+)?explore\s+([a-z]+)(?:\s+([a-z][a-z-]*))?(.*)$", line)
        if m:
            calls.append(([m.group(1)] + ([m.group(2)] if m.group(2) else []), re.findall(r"--[a-z][\w-]*", m.group(3)),
                          '"$@"' in m.group(3)))
    return calls


def test_models_job_script_uses_real_commands_and_flags() -> None:
    import argparse

    from explore.cli import build_parser

    script = (DOCKER / "models.sh").read_text()
    res = subprocess.run(["sh", "-n", str(DOCKER / "models.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    calls = _explore_calls(script)
    build = [["clusters", "build"], ["seqrec", "train"], ["seqrec", "export"], ["novelty", "train"],
             ["novelty", "export"], ["seqrec", "train"], ["novelty", "mix"], ["novelty", "export-mixture"],
             ["novelty", "precompute"]]
    # rollback, new items published and folded into the next set, replay, a whole model set (`train_set`: the
    # models job's and the retrain profile's), published to running workers by the retrain profile
    assert [c[0] for c in calls] == [["models", "rollback"], ["items", "publish"], ["items", "fold"], ["replay"],
                                     *build, ["models", "publish"]]
    assert {"--catalog", "--checkpoint", "--generator", "--mixture", "--table", "--publish"} <= set(calls[2][1])
    # both SASRecs have a text part (a set must be foldable); the mixture's fitting one never sees the validation
    # moments it fits the weights on
    assert "--text" in calls[5][1] and {"--text", "--until-novelty-valid"} <= set(calls[9][1])
    # a new set's table goes onto the set's own topic through `models publish`; the models job's onto the served
    # one (`publish_table`), after the whole set was trained
    assert {"--catalog", "--staged", "--table"} <= set(calls[13][1])
    assert script.count('train_set "$') == 2 and 'publish_table "$STAGE/novelty/table.jsonl"' in script

    def subparser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
        for name in path:
            action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = action.choices[name]
        return parser

    root = build_parser()
    for path, flags, gets_data in calls:
        options = set(subparser(root, path)._option_string_actions)
        assert set(flags) <= options, f"explore {' '.join(path)}: unknown {sorted(set(flags) - options)}"
        if gets_data:
            assert {"--data", "--synthetic"} <= options
    # The switch to the native backend uses the committed GPU config.
    assert (ROOT / "triton_models" / "seqrec" / "config.gpu.pbtxt.example").is_file()
    assert 'backend: "onnxruntime"' in (ROOT / "triton_models" / "seqrec" / "config.gpu.pbtxt.example").read_text()
