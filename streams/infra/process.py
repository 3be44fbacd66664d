"""Child processes that never outlive their owner by accident.

Every embedded service (broker, Triton) runs as a child process in its own process group, with
its output in a log file. Stopping sends SIGTERM to the whole group, waits, then SIGKILLs it, so
helper processes (Triton's Python-backend stubs) go too. A process started *attached* also
gets PR_SET_PDEATHSIG, so the kernel kills it if the owner dies without cleaning up (a test
runner killed by a timeout); `explore infra up` starts *detached* ones that outlive the CLI and
records them in a state file for `explore infra down`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

_PR_SET_PDEATHSIG = 1


class InfraError(RuntimeError):
    """A service could not be started, reached or stopped; the message says what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port and we could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(port: int, what: str, host: str = "127.0.0.1") -> None:
    """Raise a clear error when a port that the user asked for is taken."""
    if not port_is_free(port, host):
        raise InfraError(f"{what}: port {host}:{port} is already in use; pick another port or stop what holds it")


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def pid_cmdline(pid: int) -> str:
    """The command line of `pid` ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_group(pid: int, expect_in_cmdline: str | None = None, grace_s: float = 10.0) -> bool:
    """SIGTERM the process group led by `pid`, then SIGKILL what is left after `grace_s`.

    `expect_in_cmdline` guards against killing an unrelated process that reused a recorded pid.
    Returns True when something was signalled.
    """
    if not pid_alive(pid):
        return False
    if expect_in_cmdline and expect_in_cmdline not in pid_cmdline(pid):
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.1)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.05)
    return True


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process of group `pgid` exists."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    proc: ManagedProcess | None = None,
    interval_s: float = 0.2,
) -> float:
    """Poll `check` until it is true; fail early (with the log tail) if `proc` dies.

    Returns the seconds waited.
    """
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if proc is not None and not proc.alive():
            raise InfraError(f"{what}: the process exited with code {proc.returncode()} before it was ready.\n"
                             f"Last lines of {proc.log_path}:\n{proc.log_tail()}")
        if time.monotonic() - start > timeout_s:
            tail = f"\nLast lines of {proc.log_path}:\n{proc.log_tail()}" if proc else ""
            raise InfraError(f"{what}: not ready after {timeout_s:.0f} s.{tail}")
        time.sleep(interval_s)


@dataclass
class ManagedProcess:
    """One child process with its own process group and a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    detached: bool = False
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> ManagedProcess:
        """Start the process; its stdout and stderr go to `log_path`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        with open(self.log_path, "ab") as log:
            try:
                self._popen = subprocess.Popen(
                    list(self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=None if self.detached else _set_pdeathsig,
                )
            except FileNotFoundError as e:
                raise InfraError(f"{self.name}: cannot run {self.argv[0]!r}: {e.strerror}") from e
        return self

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise InfraError(f"{self.name} was never started")
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the whole process group, politely first."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            kill_group(self._popen.pid, grace_s=grace_s)
        else:
            # The leader is gone; helpers it left in its group must go too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=5)


class Service:
    """Something a caller starts and must always stop: `start()` returns it, `stop()` is safe to call
    at any time; as a context manager it starts on entry and stops on exit, also when the body fails."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProcessService(Service):
    """A `Service` that is one `ManagedProcess` (`self.process`, set by the subclass), ready when
    `ready()` says so. A start that fails or times out stops the process before it raises, so a
    failed start leaves nothing running."""

    process: ManagedProcess | None = None
    what = "service"  # named in errors
    ready_interval_s = 0.2
    stop_grace_s = 10.0

    def ready(self) -> bool:
        raise NotImplementedError

    def _run(self, timeout_s: float) -> None:
        """Start the process and wait until `ready()`; stop it if that fails."""
        if self.process is None:
            raise InfraError(f"{self.what}: nothing to start")
        self.process.start()
        try:
            wait_until(self.ready, timeout_s, self.what, self.process, interval_s=self.ready_interval_s)
        except BaseException:
            self.process.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_s=self.stop_grace_s)
