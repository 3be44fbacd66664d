"""The embedded Triton Inference Server: the real `tritonserver` binary that `nvidia-pytriton` carries.

It runs on the CPU with the Python backend, which our `triton_models/*/1/model.py` use to run
ONNX models through onnxruntime. Three traps, handled here rather than left to the user:

- The wheel ships Python-backend stubs per Python version in `python_backend_stubs/X.Y/`; the
  backend wants the stub next to `libtriton_python.so`. We assemble a private backend directory
  (never touching site-packages) with the stub for the running Python.
- The stub and `tritonserver` find their bundled libraries through `nvidia_pytriton.libs`; a
  copied stub does not, so LD_LIBRARY_PATH names that directory.
- The stub embeds the system's libpython and ignores PYTHONPATH when it sets up `sys.path`, so
  the models prepend `$PYTHONPATH` themselves (see triton_models/README.md); we set it to this
  interpreter's site-packages so that numpy and onnxruntime come from the virtualenv.

On a machine without a GPU the server logs NVML/DCGM errors and carries on.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

from streams.infra.process import InfraError, ManagedProcess, ProcessService, free_port, require_free_port

# Every model of the repository loaded at the start, and loaded again (new versions included) when asked: what
# a server needs to take the model sets `explore models publish` writes (docs/design/lifecycle.md).
EXPLICIT_MODEL_CONTROL = ("--model-control-mode=explicit", "--load-model=*")
_PYTRITON_HINT = ("The embedded Triton server needs the nvidia-pytriton wheel: "
                  "pip install 'interest-explorer[embedded]' (or set TRITON_URL to use your own Triton)")


def pytriton_dirs() -> tuple[Path, Path]:
    """(tritonserver directory, bundled-libraries directory) inside the nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError(_PYTRITON_HINT)
    pkg = Path(next(iter(spec.submodule_search_locations)))
    server_dir = pkg / "tritonserver"
    if not (server_dir / "bin" / "tritonserver").is_file():
        raise InfraError(f"No tritonserver binary under {server_dir}. {_PYTRITON_HINT}")
    return server_dir, pkg.parent / "nvidia_pytriton.libs"


def _missing_libraries(binary: Path, lib_dir: Path) -> list[str]:
    """Shared libraries that `binary` needs and the loader cannot find (from ldd)."""
    env = {**os.environ, "LD_LIBRARY_PATH": f"{lib_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if "not found" in line]


def prepare_backend_dir(dest: Path) -> Path:
    """Assemble `dest/python/` with the Python backend and the stub for this Python; return `dest`."""
    server_dir, lib_dir = pytriton_dirs()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise InfraError(f"nvidia-pytriton ships no Python-backend stub for Python {version} "
                         f"(looked for {stub}); run the engine with Python 3.10-3.12")
    missing = _missing_libraries(stub, lib_dir)
    if missing:
        raise InfraError(f"The Triton Python-backend stub cannot load {', '.join(missing)}. "
                         f"On Debian/Ubuntu: apt-get install -y libpython{version}")
    target = dest / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in (*(server_dir / "backends" / "python").glob("*.*"), stub):
        if src.is_file():
            shutil.copy2(src, target / src.name)
    return dest


def _site_packages() -> list[str]:
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(p for p in paths if p))


class EmbeddedTriton(ProcessService):
    """`tritonserver` on free loopback ports over a model repository; a context manager."""

    kind = "embedded"
    what = "embedded Triton"
    ready_interval_s = 0.25
    stop_grace_s = 15.0

    def __init__(self, model_repository: Path, work_dir: Path, http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None,
                 detached: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        """`extra_args` go to tritonserver as they are, e.g. the --grpc-use-ssl flags for a TLS gRPC endpoint."""
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise InfraError(f"Triton model repository {self.model_repository} does not exist")
        for port, what in ((http_port, "HTTP"), (grpc_port, "gRPC"), (metrics_port, "metrics")):
            if port is not None:
                require_free_port(port, f"Triton {what}")
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.work_dir = Path(work_dir).resolve()
        server_dir, lib_dir = pytriton_dirs()
        backends = prepare_backend_dir(self.work_dir / "backends")
        pythonpath = os.pathsep.join([*_site_packages(), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env = {**os.environ, "PYTHONPATH": pythonpath,
               "LD_LIBRARY_PATH": f"{lib_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":"),
               # One onnxruntime / OpenMP thread pool per model instance, not one per core each.
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.process = ManagedProcess(
            name="tritonserver",
            argv=[str(server_dir / "bin" / "tritonserver"),
                  f"--model-repository={self.model_repository}",
                  f"--backend-directory={backends}",
                  f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                  f"--metrics-port={self.metrics_port}", "--allow-metrics=true",
                  "--allow-gpu-metrics=false", "--metrics-interval-ms=500", "--http-address=127.0.0.1",
                  "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                  "--exit-on-error=true", "--log-verbose=0", *extra_args],
            log_path=self.work_dir / "tritonserver.log",
            env=env,
            detached=detached,
        )

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def ready(self) -> bool:
        return http_ready(self.http_url)

    def start(self, timeout_s: float = 120.0) -> EmbeddedTriton:
        """Start the server and wait until every model in the repository is ready."""
        try:
            self._run(timeout_s)
        except InfraError as e:
            raise InfraError(f"{e}\nErrors in the Triton log:\n{triton_errors(self.process.log_path)}") from e
        return self


# Logged on every machine without a GPU; not why a start failed.
_GPU_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "CUDA driver")


def triton_errors(log_path: Path, limit: int = 15) -> str:
    """The error lines of a Triton log (model load failures first), without the GPU-less noise."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if (ln.startswith("E") or "UNAVAILABLE" in ln or ln.startswith("error:"))
              and not any(noise in ln for noise in _GPU_NOISE)]
    return "\n".join(errors[:limit]) or "(none)"


def http_ready(http_url: str, timeout_s: float = 2.0) -> bool:
    """True when Triton's HTTP endpoint says the server (and all its models) is ready."""
    url = http_url if "://" in http_url else f"http://{http_url}"
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False
