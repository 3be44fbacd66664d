"""Process management on real child processes (no Kafka, no Triton): groups die together."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from streams.infra.process import (
    InfraError,
    ManagedProcess,
    ProcessService,
    free_port,
    kill_group,
    pid_alive,
    port_is_free,
    require_free_port,
    wait_until,
)


def test_free_port_is_free_and_a_bound_port_is_not() -> None:
    port = free_port()
    assert port_is_free(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert not port_is_free(port)
        with pytest.raises(InfraError, match=f"127.0.0.1:{port} is already in use"):
            require_free_port(port, "test service")


def test_stop_kills_the_whole_group_including_grandchildren(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    proc = ManagedProcess("sleeper", ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"],
                          tmp_path / "sleeper.log").start()
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 10, "grandchild")
    grandchild = int(pid_file.read_text())
    assert pid_alive(proc.pid) and pid_alive(grandchild)
    proc.stop(grace_s=5)
    assert not proc.alive()
    wait_until(lambda: not pid_alive(grandchild), 5, "the grandchild is gone", interval_s=0.05)


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(300)")
    proc = ManagedProcess("stubborn", [sys.executable, "-c", code], tmp_path / "stubborn.log").start()
    wait_until(lambda: "up" in proc.log_tail(), 10, "stubborn")
    t0 = time.monotonic()
    proc.stop(grace_s=0.5)
    assert not proc.alive()
    assert time.monotonic() - t0 < 10


def test_wait_until_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    proc = ManagedProcess("failing", ["sh", "-c", "echo 'cannot bind: port in use'; exit 3"],
                          tmp_path / "failing.log").start()
    with pytest.raises(InfraError, match=r"exited with code 3[\s\S]*cannot bind: port in use"):
        wait_until(lambda: False, 10, "failing service", proc)


def test_wait_until_times_out_with_a_clear_message() -> None:
    with pytest.raises(InfraError, match="not ready after 0 s"):
        wait_until(lambda: False, 0.3, "never-ready service", interval_s=0.05)


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="cannot run '/nonexistent/broker'"):
        ManagedProcess("ghost", ["/nonexistent/broker"], tmp_path / "ghost.log").start()


def test_kill_group_leaves_a_process_whose_command_line_does_not_match(tmp_path: Path) -> None:
    """A recorded pid that now belongs to something else is never killed."""
    proc = ManagedProcess("bystander", ["sleep", "300"], tmp_path / "b.log").start()
    try:
        assert not kill_group(proc.pid, expect_in_cmdline="tritonserver")
        assert proc.alive()
        assert kill_group(proc.pid, expect_in_cmdline="sleep", grace_s=5)
        proc.returncode()
        assert not pid_alive(proc.pid)
    finally:
        proc.stop()


class _Sleeper(ProcessService):
    """A managed `sleep` that is ready once `ok` is set."""

    what = "sleeper"
    ready_interval_s = 0.05

    def __init__(self, tmp_path: Path) -> None:
        self.process = ManagedProcess("sleeper", ["sleep", "300"], tmp_path / "sleeper.log")
        self.ok = False

    def ready(self) -> bool:
        return self.ok

    def start(self, timeout_s: float = 0.3) -> _Sleeper:
        self._run(timeout_s)
        return self


def test_a_service_that_never_gets_ready_is_stopped_before_the_error(tmp_path: Path) -> None:
    service = _Sleeper(tmp_path)
    with pytest.raises(InfraError, match="sleeper: not ready"):
        service.start()
    assert not pid_alive(service.process.pid)


def test_a_service_is_stopped_when_the_body_fails(tmp_path: Path) -> None:
    service = _Sleeper(tmp_path)
    service.ok = True
    with pytest.raises(RuntimeError, match="boom"), service:
        assert service.process.alive()
        raise RuntimeError("boom")
    assert not pid_alive(service.process.pid)
