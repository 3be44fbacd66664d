"""`make stack-test`: docker/compose.yaml, started for real under podman on local images, then torn down.

1. images: a Debian base made with debootstrap (once; no registry is needed), then the production
   Dockerfiles (docker/Dockerfile's worker and trainer targets, on a local Python base) and the
   local stand-ins for the images no registry serves here (docker/local/*.Dockerfile);
2. the stack up with 3 workers (docker/compose.yaml + docker/local/compose.local.yaml): the models
   job trains on the synthetic data set and publishes the novelty table;
3. the held-out interactions replayed by the compose `replay` service; recommendations must
   arrive on the topic, and Prometheus must scrape every worker and Triton;
4. one worker killed: one new event per user, and every user (those of the killed worker too)
   must be served with it by the remaining two, through any worker's GET /users/{id};
5. everything torn down: no container, network or volume of the project may remain.

Run from the repository root: `.venv/bin/python docker/local/stack_test.py` (as root: rootful podman).
Settings: CONTAINERS_CONF (default docker/local/containers.conf), STACK_WORK (default
/var/tmp/explore-stack: the Debian root file system and empty data directories).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "explore-stacktest"
WORKERS = 3
BASE = "localhost/debian:bookworm"
PYTHON = "localhost/explore-python:3.11"
WORK = Path(os.environ.get("STACK_WORK", "/var/tmp/explore-stack"))
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[stack-test {time.monotonic() - T0:6.0f} s] {msg}", flush=True)


def sh(*cmd: str, check: bool = True, capture: bool = False, env: dict | None = None,
       stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(cmd), text=True, capture_output=capture, env=env, input=stdin, check=False)
    if check and res.returncode != 0:
        out = (res.stdout or "")[-3000:] + (res.stderr or "")[-3000:] if capture else ""
        raise SystemExit(f"stack-test: failed ({res.returncode}): {' '.join(cmd)}\n{out}")
    return res


def wait(check, timeout_s: float, what: str, every_s: float = 2.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"stack-test: {what}: not after {timeout_s:.0f} s")
        time.sleep(every_s)


def compose_env() -> dict[str, str]:
    data, prebuilt = WORK / "empty-data", WORK / "empty-prebuilt"
    data.mkdir(parents=True, exist_ok=True)
    prebuilt.mkdir(parents=True, exist_ok=True)
    # Empty data: the models job trains on the synthetic data set; small settings keep it short.
    return {**os.environ, "EXPLORE_DATA": str(data), "EXPLORE_PREBUILT": str(prebuilt), "RETRAIN": "1",
            "CLUSTER_LEVELS": "4,8", "RETRAIN_LEVELS": "3,6", "SEQREC_TRAIN_ARGS": "--epochs 3",
            "NOVELTY_TRAIN_ARGS": "--epochs 2",
            "REPLAY_RATE": "2000", "EXPLORE_APP_ID": "stacktest",
            # Grafana is left out here, but compose reads the whole file and its password has no default.
            "GRAFANA_ADMIN_PASSWORD": os.environ.get("GRAFANA_ADMIN_PASSWORD") or secrets.token_urlsafe(16)}


def compose(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    return sh(exe, "-p", PROJECT, "-f", str(ROOT / "docker" / "compose.yaml"),
              "-f", str(ROOT / "docker" / "local" / "compose.local.yaml"), *args, check=check, capture=capture,
              env=compose_env())


HOST_CA = "/run/host-ca/ca.crt"  # where a build sees the host's CA bundle: never at the path a package installs


def build_mounts() -> list[str]:
    """A host whose pip trusts a proxy's CA (pip.conf `cert`, or PIP_CERT) lends that to the builds.

    The bundle is mounted at HOST_CA, with a pip.conf that names it there, not at its own path: the
    host's bundle is usually Debian's /etc/ssl/certs/ca-certificates.crt, and the Python base build's
    `apt-get install ca-certificates` failed to replace a read-only file mounted there ("mv: cannot
    move ... Device or resource busy"); cached images had hidden it."""
    cert = os.environ.get("PIP_CERT") or _pip_conf_cert(Path("/etc/pip.conf"))
    if not cert or not Path(cert).is_file():
        return []
    WORK.mkdir(parents=True, exist_ok=True)
    conf = WORK / "pip.conf"
    conf.write_text(f"[global]\ncert = {HOST_CA}\n")
    return ["-v", f"{conf}:/etc/pip.conf:ro", "-v", f"{cert}:{HOST_CA}:ro"]


def _pip_conf_cert(path: Path) -> str | None:
    """The `cert` of a pip.conf's [global] section, if any."""
    import configparser

    if not path.is_file():
        return None
    conf = configparser.ConfigParser()
    conf.read(path)
    return conf.get("global", "cert", fallback=None)


def image_exists(name: str) -> bool:
    return sh("podman", "image", "exists", name, check=False).returncode == 0


def build_images() -> None:
    if not image_exists(BASE):
        rootfs = WORK / "rootfs-bookworm"
        log(f"debootstrap a Debian bookworm root file system into {rootfs} (once)")
        shutil.rmtree(rootfs, ignore_errors=True)
        sh("debootstrap", "--variant=minbase", "bookworm", str(rootfs))
        tar = WORK / "bookworm.tar"
        sh("tar", "-C", str(rootfs), "-cf", str(tar), ".")
        sh("podman", "import", str(tar), BASE)
    local = ROOT / "docker" / "local"
    build = ["podman", "build", "--network", "host", *build_mounts()]
    log("images: Python base, worker, trainer, Triton, Kafka, Prometheus")
    sh(*build, "-f", str(local / "python.Dockerfile"), "-t", PYTHON, str(local))
    # podman 4.3 does not read <Dockerfile>.dockerignore by itself; without it, every __pycache__
    # in the checkout would invalidate the cached layers.
    py = ["--build-arg", f"PYTHON_IMAGE={PYTHON}", "--ignorefile", str(ROOT / "docker" / "Dockerfile.dockerignore")]
    sh(*build, *py, "-f", str(ROOT / "docker" / "Dockerfile"), "--target", "worker", "-t",
       "interest-explorer:worker", str(ROOT))
    # PyTorch's CPU wheel index is not reachable everywhere (not here); then PyPI's wheel it is.
    index = os.environ.get("TORCH_INDEX_URL")
    if index is None:
        try:
            socket.getaddrinfo("download.pytorch.org", 443)
        except OSError:
            log("download.pytorch.org does not resolve: the trainer takes PyTorch from PyPI (TORCH_INDEX_URL='')")
            index = ""
    torch = [] if index is None else ["--build-arg", f"TORCH_INDEX_URL={index}"]
    sh(*build, *py, *torch, "-f", str(ROOT / "docker" / "Dockerfile"), "--target", "trainer", "-t",
       "interest-explorer:trainer", str(ROOT))
    sh(*build, "--build-arg", f"PYTHON_IMAGE={PYTHON}", "--ignorefile", str(local / "triton.Dockerfile.dockerignore"),
       "-f", str(local / "triton.Dockerfile"), "-t", "interest-explorer:triton", str(ROOT))
    sys.path.insert(0, str(ROOT))
    from streams.infra.apache_kafka import kafka_libs

    with tempfile.TemporaryDirectory(prefix="kafka-image-") as ctx:
        shutil.copytree(kafka_libs(), Path(ctx) / "libs")
        shutil.copy(ROOT / "streams" / "infra" / "kafka-log4j2.properties", Path(ctx) / "log4j2.properties")
        shutil.copy(local / "kafka-entrypoint.sh", Path(ctx) / "kafka-entrypoint.sh")
        sh(*build, "-f", str(local / "kafka.Dockerfile"), "-t", "interest-explorer:kafka", ctx)
    sh(*build, "-f", str(local / "prometheus.Dockerfile"), "-t", "interest-explorer:prometheus", str(local))


def containers(service: str, running_only: bool = True) -> list[str]:
    args = ["podman", "ps", "--format", "{{.Names}}", "--filter", f"label=io.podman.compose.project={PROJECT}",
            "--filter", f"label=com.docker.compose.service={service}"]
    out = sh(*args, *([] if running_only else ["-a"]), capture=True).stdout
    return sorted(n for n in out.split() if n)


def inspect(name: str, fmt: str) -> str:
    return sh("podman", "inspect", "--format", fmt, name, capture=True, check=False).stdout.strip()


def users_view(worker: str, users: list[str]) -> dict[str, dict]:
    """GET /users/{id} for every user, asked of one worker (it answers or asks the owner)."""
    script = ("import json, sys, urllib.request, urllib.parse\n"
              "out = {}\n"
              "for u in json.load(sys.stdin):\n"
              "    try:\n"
              "        with urllib.request.urlopen('http://127.0.0.1:6066/users/' + urllib.parse.quote(u),"
              " timeout=10) as r:\n"
              "            out[u] = json.load(r)\n"
              "    except Exception as e:\n"
              "        out[u] = {'error': str(e)}\n"
              "print(json.dumps(out))\n")
    res = sh("podman", "exec", "-i", worker, "python", "-c", script, capture=True, stdin=json.dumps(users))
    return json.loads(res.stdout)


def prometheus_up() -> dict[str, list[float]]:
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": "up"})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            result = json.load(r)["data"]["result"]
    except OSError:
        return {}
    out: dict[str, list[float]] = {}
    for s in result:
        out.setdefault(s["metric"]["job"], []).append(float(s["value"][1]))
    return out


def read_recommendations() -> list[dict]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer("recommendations", bootstrap_servers="localhost:9094", group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    try:
        return [json.loads(r.value) for r in consumer]
    finally:
        consumer.close()


def healthy(name: str) -> bool:
    """The service's compose healthcheck, run once now. (podman 4.3 runs healthchecks from systemd
    timers; without systemd, as here, nothing runs them, so the test does.)"""
    return sh("podman", "healthcheck", "run", name, check=False, capture=True).returncode == 0


def up(*services: str, scale: int | None = None) -> None:
    # In compose's depends_on order, each step waited for here: podman 4.3 cannot start a container
    # created with --requires on containers that are already running ("not found in input list"),
    # so podman-compose starts each service without it (--no-deps).
    compose("up", "-d", "--no-deps", *(["--scale", f"{services[0]}={scale}"] if scale else []), *services)


def run() -> None:
    log(f"compose up in depends_on order: kafka + prometheus, models (synthetic data), triton, {WORKERS} workers")
    up("kafka", "prometheus")
    kafka = containers("kafka")[0]
    wait(lambda: healthy(kafka), 180, "kafka healthy", 3)
    up("models")
    models = wait(lambda: containers("models", running_only=False), 60, "the models job exists")[0]
    wait(lambda: inspect(models, "{{.State.Status}}") == "exited", 1200, "the models job finishes", 5)
    code = inspect(models, "{{.State.ExitCode}}")
    if code != "0":
        print(sh("podman", "logs", models, capture=True, check=False).stdout[-3000:])
        raise SystemExit(f"stack-test: the models job exited with {code}")
    log("models job done: " + sh("podman", "logs", "--tail", "1", models, capture=True).stdout.strip())
    up("triton")
    triton = containers("triton")[0]
    wait(lambda: healthy(triton), 300, "triton healthy", 5)
    log("triton healthy; starting the workers")
    up("worker", scale=WORKERS)
    workers = wait(lambda: (lambda n: n if len(n) == WORKERS and all(healthy(w) for w in n) else [])(
        containers("worker")), 600, f"{WORKERS} healthy workers", 5)
    log(f"up: {', '.join(workers)}; replaying the held-out interactions")
    compose("--profile", "replay", "run", "--rm", "--no-deps", "replay")  # with deps it would rerun the models job
    records = wait(read_recommendations, 300, "recommendations on the topic", 5)
    users = sorted({r["user_id"] for r in records})
    sources = sorted({r["source"] for r in records})
    log(f"{len(records):,} recommendations for {len(users)} users, novel clusters from {', '.join(sources)}")
    if sources != ["mixture"]:  # the models job fitted and exported the mixture: every slate must come from it
        raise SystemExit(f"stack-test: slates came from {sources}, not from the mixture of experts")
    targets = wait(lambda: (lambda u: u if u.get("worker") == [1.0] * WORKERS and u.get("triton") == [1.0] else None)(
        prometheus_up()), 120, f"Prometheus scrapes {WORKERS} workers and triton (up == 1)")
    log(f"Prometheus: up{{job=worker}} {targets['worker']}, up{{job=triton}} {targets['triton']}")

    before = users_view(workers[0], users)
    missing = [u for u, v in before.items() if "events_applied" not in v]
    if missing:
        raise SystemExit(f"stack-test: no worker answers for {len(missing)} users, e.g. {missing[:3]}: "
                         f"{before[missing[0]]}")
    victim = workers[-1]
    victim_url = f"http://{inspect(victim, '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')}:6066"
    owners = sorted({v["served_by"] for v in before.values()})
    theirs = [u for u, v in before.items() if v["served_by"] == victim_url]
    log(f"killing {victim} ({victim_url}: it holds {len(theirs)} of {len(users)} users; owners: {owners})")
    if not theirs:
        raise SystemExit(f"stack-test: {victim} ({victim_url}) holds no user; owners: {owners}")
    sh("podman", "kill", victim)

    from streams.wiring.replay import Event, produce

    fresh = [Event(u, v["recent_items"][-1], int(v["last_event_ts"]) + 1, f"stacktest-{u}-after-kill")
             for u, v in before.items()]
    produce("localhost:9094", "interactions", [e.encode() for e in fresh])
    survivors = [w for w in workers if w != victim]

    def served() -> dict | None:
        now = users_view(survivors[0], users)
        done = all(now[u].get("events_applied") == before[u]["events_applied"] + 1 for u in users)
        return now if done else None

    after = wait(served, 300, "every user served with the new event by the remaining workers", 5)
    log(f"after the rebalance: all {len(users)} users applied their new event; the killed worker's "
        f"{len(theirs)} users now served by {sorted({after[u]['served_by'] for u in theirs})}")
    if any(v["served_by"] == victim_url for v in after.values()):
        raise SystemExit("stack-test: users are still attributed to the killed worker")
    retrain(survivors, after)


def serving_set(worker: str) -> int:
    """The model set a worker serves, from its /ready."""
    script = ("import json, urllib.request\n"
              "try:\n"
              "    r = urllib.request.urlopen('http://127.0.0.1:6066/ready', timeout=5)\n"
              "except urllib.error.HTTPError as e:\n"
              "    r = e\n"
              "print(json.load(r).get('model_set', 0))\n")
    return int(sh("podman", "exec", worker, "python", "-c", script, capture=True, check=False).stdout.strip() or 0)


def retrain(workers: list[str], view: dict[str, dict]) -> None:
    """The `retrain` profile: a new model set (another catalog) trained and published while the workers run,
    every worker switching to it, users' next slates made by it; then `retrain rollback` back to set 1."""
    from streams.wiring.replay import Event, produce

    log("retrain profile: training a new model set and publishing it to the running workers")
    compose("--profile", "retrain", "run", "--rm", "--no-deps", "retrain")
    wait(lambda: all(serving_set(w) == 2 for w in workers), 300, "every worker serving model set 2", 5)
    step = [Event(u, v["recent_items"][-2 if len(v["recent_items"]) > 1 else -1], int(v["last_event_ts"]) + 2,
                  f"stacktest-{u}-set2") for u, v in view.items()]
    produce("localhost:9094", "interactions", [e.encode() for e in step])
    users = sorted(view)
    now = wait(lambda: (lambda n: n if all(n[u].get("events_applied") == view[u]["events_applied"] + 1
                                           for u in users) else None)(users_view(workers[0], users)),
               300, "every user's event applied under set 2", 5)
    catalogs = {v["catalog_version"] for v in now.values()}
    slates = [r for r in read_recommendations() if r["versions"].get("set") == "2"]
    log(f"set 2 served by {len(workers)} workers: {len(users)} users migrated to catalog {sorted(catalogs)}, "
        f"{len(slates)} slates made by set 2")
    if len(catalogs) != 1 or catalogs == {view[users[0]]["catalog_version"]} or not slates:
        raise SystemExit(f"stack-test: after the publish the states are under {catalogs} and {len(slates)} slates "
                         "came from set 2")
    compose("--profile", "retrain", "run", "--rm", "--no-deps", "retrain", "rollback")
    wait(lambda: all(serving_set(w) == 1 for w in workers), 300, "every worker serving model set 1 again", 5)
    log("rolled back: every worker serves model set 1 again")
    fold(workers, now)


def fold(workers: list[str], view: dict[str, dict]) -> None:
    """`retrain fold`: eight new items (one per planted theme of the synthetic data) published while the workers run
    and folded into set 3; every user's next event names one of them (applied, none in the DLQ) and set 3's slates
    name them."""
    from interests.data.synthetic import theme_words
    from streams.wiring.replay import Event, produce

    new = [{"item_id": f"stack-new-{c}", "title": f"A New {theme_words(c)[0].title()} Story",
            "keywords": ", ".join(theme_words(c)[:4])} for c in range(8)]
    log("retrain fold: publishing 8 new items and folding them into the next model set")
    t0 = time.monotonic()
    compose("--profile", "retrain", "run", "--rm", "--no-deps", "-e",
            "NEW_ITEMS=" + "\n".join(json.dumps(x) for x in new), "retrain", "fold")
    wait(lambda: all(serving_set(w) == 3 for w in workers), 300, "every worker serving model set 3", 5)
    served_s = time.monotonic() - t0
    users = sorted(view)
    step = [Event(u, new[n % len(new)]["item_id"], int(view[u]["last_event_ts"]) + 3, f"stacktest-{u}-new")
            for n, u in enumerate(users)]
    produce("localhost:9094", "interactions", [e.encode() for e in step])
    wait(lambda: all(v.get("events_applied") == view[u]["events_applied"] + 1
                     for u, v in users_view(workers[0], users).items()), 300, "every user's event on a new item", 5)
    ids = {x["item_id"] for x in new}
    slates = [r for r in read_recommendations() if r["versions"].get("set") == "3"]
    naming = [r for r in slates if ids & {x["item_id"] for x in r["slate"]}]
    log(f"set 3 (set 1 + 8 new items) served by every worker {served_s:.0f} s after `retrain fold` started (it "
        f"places, publishes and folds them); {len(users)} events on them applied; {len(naming)} of {len(slates)} "
        "slates of set 3 name one")
    if not naming:
        raise SystemExit(f"stack-test: none of set 3's {len(slates)} slates names a new item")


LISTS = {"container": ["ps", "-a", "--format", "{{.Names}}"], "volume": ["volume", "ls", "--format", "{{.Name}}"],
         "network": ["network", "ls", "--format", "{{.Name}}"]}
REMOVE = {"container": ["rm", "-f"], "volume": ["volume", "rm", "-f"], "network": ["network", "rm", "-f"]}


def leftovers(remove: bool = False) -> list[str]:
    """The project's containers, volumes and networks (by compose label); `remove`: remove them first."""
    label = f"label=io.podman.compose.project={PROJECT}"
    found = []
    for kind, args in LISTS.items():
        names = sh("podman", *args, "--filter", label, capture=True).stdout.split()
        if remove and names:
            sh("podman", *REMOVE[kind], *names, check=False, capture=True)
            names = sh("podman", *args, "--filter", label, capture=True).stdout.split()
        found += [f"{kind} {n}" for n in names]
    return found


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("stack-test: run as root (rootful podman; see docker/README.md)")
    missing = [tool for tool in ("podman", "debootstrap", "runc", "iptables") if shutil.which(tool) is None]
    if missing:  # netavark sets up container networks with iptables
        raise SystemExit(f"stack-test: {', '.join(missing)} not found; on Debian: apt-get install -y "
                         "--no-install-recommends podman runc netavark aardvark-dns iptables debootstrap")
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "docker" / "local" / "containers.conf"))
    WORK.mkdir(parents=True, exist_ok=True)
    build_images()
    log("images built")
    try:
        run()
    finally:
        log("tearing down")
        compose("--profile", "replay", "--profile", "retrain", "down", "-v", "--remove-orphans", check=False)
        left = leftovers()
        if left:  # podman-compose 1.6 removes in an order podman sometimes refuses; finish the job
            log(f"compose down left {left}; removing them")
            left = leftovers(remove=True)
        if left:
            raise SystemExit(f"stack-test: left behind: {left}")
    log("passed; nothing left behind")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
