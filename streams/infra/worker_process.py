"""An engine worker as a child process: what `explore demo`, the benchmark and the tests start."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from streams.config import EngineConfig
from streams.infra.process import ManagedProcess, ProcessService, free_port
from streams.web.peers import auth_headers


def http_json(url: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (OSError, ValueError):
        return 0, {}


COMMANDS = {
    "faust": ["-m", "streams.wiring.app", "worker", "-l", "info"],  # the plain Faust command line
    "serve": ["-m", "explore", "serve", "--log-level", "info"],  # the CLI a user runs
}


class WorkerProcess(ProcessService):
    """An engine worker with `cfg` in its environment; its own web port and data dir.

    `command` picks how it is started: `python -m streams.wiring.app worker` (Faust's own command line)
    or `explore serve`; both read the settings from the environment.
    """

    ready_interval_s = 0.25
    stop_grace_s = 20.0

    def __init__(self, cfg: EngineConfig, work_dir: Path, name: str = "worker",
                 extra_env: dict[str, str] | None = None, command: str = "faust") -> None:
        work_dir = Path(work_dir)
        self.cfg = replace(cfg, web_port=cfg.web_port if cfg.web_port != 6066 else free_port(),
                           data_dir=cfg.data_dir or str(work_dir / name / "data"))
        env = {**os.environ, **self.cfg.as_env(), **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
        self.what = f"engine worker {name}"
        # `proc` is the name callers (the demo, the benchmark, tests) know it by.
        self.process = self.proc = ManagedProcess(name, [sys.executable, *COMMANDS[command]], work_dir / f"{name}.log",
                                                  env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.web_port}"

    def ready(self) -> bool:
        return http_json(self.url + "/ready")[0] == 200

    def start(self, wait_s: float = 90.0) -> WorkerProcess:
        """Start the worker and, unless `wait_s` is 0, wait until `/ready` answers 200."""
        if wait_s:
            self._run(wait_s)
        else:
            self.proc.start()
        return self

    def get(self, path: str) -> tuple[int, dict]:
        """(status, body) of a GET on the worker, with its web token when it has one."""
        return http_json(self.url + path, headers=auth_headers(self.cfg.web_token))

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            return r.read().decode()

    def alive(self) -> bool:
        return self.proc.alive()
