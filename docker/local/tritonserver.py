#!/opt/python/bin/python
"""`tritonserver` in the local Triton image: the nvidia-pytriton binary, with the Python backend
and its stub assembled and the bundled libraries on the path (as `explore infra` starts it), and
every argument passed on. GPU metrics are turned off: this server runs on the CPU."""

import os
import sys
from pathlib import Path

from streams.infra.triton import _site_packages, prepare_backend_dir, pytriton_dirs

server_dir, lib_dir = pytriton_dirs()
backends = prepare_backend_dir(Path("/tmp/triton-backends"))
env = {**os.environ, "PYTHONPATH": os.pathsep.join(_site_packages()),
       "LD_LIBRARY_PATH": f"{lib_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":")}
args = [a for a in sys.argv[1:] if not a.startswith("--allow-gpu-metrics")]
binary = str(server_dir / "bin" / "tritonserver")
os.execve(binary, [binary, f"--backend-directory={backends}", "--allow-gpu-metrics=false", *args], env)
