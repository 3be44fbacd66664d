"""onnxruntime sessions with their pool threads spinning between calls and without, side by side.

onnxruntime's intra-op threads spin after a call, waiting for the next one (its session option
`session.intra_op.allow_spinning`). The project builds every session with it off
(`interests.runtime.constrained.onnx_session`; `intra_op_spinning` in the Triton configs). This measures why,
in-process on the CPU, for both served graphs, each call either paced (a pause after it, as the engine
calls `seqrec` once per micro-batch) or back to back:

- `seqrec`: the clustered restricted top-N of a SASRec with random weights (10,000 items, 32 clusters,
  histories of 50, 3 allowed clusters a row; `benchmarks/scale.py`'s requests), batches of 16 and 64;
- `interest_generator`: the constrained beam search (`Generator`, top 5, beam 8, key/value cache) of a
  small novelty LM trained here on planted synthetic data (8 clusters), 56 contexts a call.

Per variant: CPU ms per call (this process's user + system time, so spinning threads count) and the
calls' p50 latency. Sessions of 2 threads, as served. Prints what it measured; asserts nothing.

Run: python benchmarks/onnx_spinning.py [--calls 60] [--pause-ms 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interests.runtime.constrained import Generator, onnx_session


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(call: Callable[[int], object], calls: int, pause_s: float) -> tuple[float, float]:
    """(CPU ms per call, p50 ms) of `calls` calls after one warm-up, `pause_s` after each."""
    call(0)
    start, latencies = cpu_s(), []
    for i in range(calls):
        t = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t)
        if pause_s:
            time.sleep(pause_s)
    return 1000 * (cpu_s() - start) / calls, 1000 * float(np.median(latencies))


def seqrec_graph(work: Path) -> Path:
    import torch

    from benchmarks.scale import HISTORY, TOP_N
    from exporters.seqrec_onnx import export_onnx
    from interests.seqrec.clustered_topn import ClusteredTopN
    from interests.seqrec.sasrec import SASRec, SASRecConfig

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=10_000, max_len=HISTORY)).eval()
    item_cluster = torch.from_numpy(np.random.default_rng(0).integers(0, 32, 10_000))
    return export_onnx(ClusteredTopN(model, item_cluster, 32, TOP_N), work / "seqrec.onnx")


def seqrec_call(path: Path, batch: int, spinning: bool) -> Callable[[int], object]:
    from benchmarks.scale import random_requests

    session = onnx_session(path, 2, spinning)
    requests = random_requests(10_000, 32, batch, 8, np.random.default_rng(batch))
    return lambda i: session.run(None, {"history": requests[i % 8][0], "allowed": requests[i % 8][1]})


def generator_dir(work: Path) -> Path:
    from benchmarks.engine_throughput import export_models
    from interests.clusters.build import BuildConfig, build_catalog
    from interests.data.synthetic import make_synthetic

    ds, _ = make_synthetic(n_clusters=8, items_per_cluster=40, n_users=300, seed=1)
    export_models(ds, build_catalog(ds, BuildConfig(levels=(4, 8)), progress=False), work)
    return work / "repo" / "interest_generator" / "1"


def generator_call(directory: Path, spinning: bool) -> Callable[[int], object]:
    generator = Generator.from_directory(directory, 5, 8, threads=2, spinning=spinning)
    contexts = np.array(list(itertools.permutations(range(generator.n_clusters), 2)), dtype=np.int64)
    exclude = np.zeros((len(contexts), generator.n_clusters), bool)
    return lambda i: generator.propose(contexts, exclude)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=60, help="timed calls per variant")
    ap.add_argument("--pause-ms", type=float, default=20.0, help="the pause after each call of the paced runs")
    ap.add_argument("--rounds", type=int, default=2, help="every variant this many times, in turn")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="onnx-spinning-"))
    print(f"exporting the graphs in {work} ...", flush=True)
    seqrec, generator = seqrec_graph(work), generator_dir(work)
    cases: dict[str, Callable[[bool], Callable[[int], object]]] = {
        "seqrec, batch 16": lambda spin: seqrec_call(seqrec, 16, spin),
        "seqrec, batch 64": lambda spin: seqrec_call(seqrec, 64, spin),
        "generator, 56 contexts": lambda spin: generator_call(generator, spin)}
    print(f"{'graph':<24}{'calls':<14}{'spinning':>9}{'CPU ms/call':>13}{'p50 ms':>9}   (2 threads, this machine)")
    for n, (name, make) in itertools.product(range(args.rounds), cases.items()):
        for pause, spinning in itertools.product((args.pause_ms / 1000, 0.0), (True, False)):
            cpu, p50 = timed(make(spinning), args.calls, pause)
            paced = f"paced {args.pause_ms:.0f} ms" if pause else "back to back"
            print(f"{name:<24}{paced:<14}{'on' if spinning else 'off':>9}{cpu:>13.1f}{p50:>9.1f}   round {n + 1}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
