"""The distributed novelty precompute, measured: contexts/s with 1 and 2 workers against one Triton.

Starts Apache Kafka and one embedded Triton serving `interest_generator` exported from `--model`, then
for each worker count (interleaved over `--rounds`, so that a change of load hits all alike): fresh
topics, the workers started and given their partitions (`explore_precompute_partitions` on their
/metrics), every context enqueued at once, and the time until the group's committed offsets reach
the end (`read_progress`). Beside it, on the same server: Triton called directly in batches by one
and by two client threads (the capacity the workers share), and the single-process precompute
(PyTorch, `interests.novelty.precompute.precompute`) at the same top/beam. Then a cost model for
1 M contexts from the measured per-context cost. Prints what it measured; asserts nothing.

Run: python benchmarks/distributed_precompute.py --model runs/judge/novelty-l1 [--rounds 2] [--top 5 --beam 8]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from exporters.novelty_onnx import export_generator
from interests.novelty.lm import NoveltyLM
from interests.novelty.precompute import precompute
from streams.core.model_files import novelty_serving
from streams.inference.novelty import TritonNovelty
from streams.infra.kafka_check import create_topic
from streams.infra.process import free_port
from streams.precompute.jobs import enqueue, read_progress


def set_decoding(repository: Path, top: int, beam: int) -> None:
    """The Triton model's top_m and beam, as an operator would set them in config.pbtxt."""
    config = repository / "interest_generator" / "config.pbtxt"
    text = config.read_text()
    for name, value in (("top_m", top), ("beam", beam)):
        text = re.sub(r'(key: "' + name + r'", value: \{ string_value: )"\d+"', rf'\1"{value}"', text)
    config.write_text(text)


def scrape(port: int, name: str) -> float:
    """One unlabelled sample of a worker's /metrics (0 when it is not up yet)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def start_workers(n: int, job: list[str], triton_url: str, batch: int, partitions: int) -> list[tuple]:
    """`n` precompute-worker processes, each holding some of the `partitions` before the clock starts."""
    procs = []
    for i in range(n):
        port = free_port()
        cmd = [sys.executable, "-m", "explore", "novelty", "precompute-worker", *job, "--triton-url", triton_url,
               "--worker-id", f"bench-{i}", "--batch", str(batch), "--metrics-port", str(port)]
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), port))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        held = [scrape(port, "explore_precompute_partitions") for _, port in procs]
        if sum(held) == partitions and all(held):
            return procs
        time.sleep(0.5)
    raise RuntimeError(f"the workers did not share the {partitions} partitions within 90 s")


def run_job(bootstrap: str, repository: Path, triton_url: str, contexts: list[list[int]], workers: int,
            batch: int, partitions: int) -> dict:
    """One job of every context with `workers` workers: wall time from the enqueue to the last commit."""
    serving, tag = novelty_serving(repository), uuid.uuid4().hex[:8]
    requests, group = f"requests-{tag}", f"bench-{tag}"
    job = ["--repository", str(repository), "--bootstrap", bootstrap, "--requests-topic", requests,
           "--topic", f"novel-{tag}", "--group", group]
    create_topic(bootstrap, requests, partitions=partitions)
    create_topic(bootstrap, f"novel-{tag}", partitions=1, compacted=True)
    procs = start_workers(workers, job, triton_url, batch, partitions)
    try:
        t0 = time.perf_counter()
        enqueue(bootstrap, requests, contexts, serving.catalog_version, partitions)
        while read_progress(bootstrap, requests, group).left:
            time.sleep(0.1)
        wall = time.perf_counter() - t0
    finally:
        for proc, _ in procs:
            proc.terminate()
        outs = [proc.communicate(timeout=60)[0] for proc, _ in procs]
    totals = [eval_line(out) for out in outs]
    return {"workers": workers, "wall_s": wall, "ctx_s": len(contexts) / wall, "totals": totals,
            "load": os.getloadavg()[0]}


def eval_line(stdout: str) -> dict:
    import json

    lines = [line for line in stdout.splitlines() if line.startswith('{"precompute_worker"')]
    return json.loads(lines[-1])["precompute_worker"] if lines else {}


def direct_triton(url: str, contexts: list[list[int]], n_clusters: int, batch: int, clients: int) -> float:
    """Contexts/s of Triton called directly, `clients` threads each sending its share in batches."""
    shares = [contexts[i::clients] for i in range(clients)]

    def call(share: list[list[int]]) -> None:
        model = TritonNovelty(url, timeout_s=300)
        for start in range(0, len(share), batch):
            chunk = np.asarray(share[start:start + batch], np.int64)
            model.propose(chunk, np.zeros((len(chunk), n_clusters), bool))
        model.close()

    threads = [threading.Thread(target=call, args=(s,)) for s in shares]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(contexts) / (time.perf_counter() - t0)


# Per-context costs measured elsewhere in this project (README, "A pretrained model"): SmolLM2-135M
# scoring every description after a context on a lent H200 (fp32, judge scoring; a table row is the same
# scores, sorted), and its full-depth precompute on this machine's 2 cores before other jobs took them.
REFERENCE_RATES = (("SmolLM2-135M, 128 clusters, H200 (README, judge scoring)", 25.0, 1, "GPU"),
                   ("SmolLM2-135M, 32 clusters, H200 (README, judge scoring)", 178.0, 1, "GPU"),
                   ("SmolLM2-135M, 32 clusters, 2 CPU cores (README, precompute)", 0.44, 8, "CPU"))


def print_cost_model(rates: list[tuple[str, float, int, str]]) -> None:
    """Hours for 1 M contexts on N machines: contexts/s per unit (2 CPU cores, or one GPU) times the units of a
    machine (a 16-core machine runs 8 Triton instances of 2 threads), times N. Linear in units and machines:
    what the 1-vs-2-worker run checks up to one Triton's capacity, not proven beyond it."""
    print("\ncost model, 1,000,000 contexts (linear: units per machine x machines; a CPU unit is 2 cores, "
          "a 16-core machine 8 units; a GPU machine is 1 GPU):")
    print(f"  {'per-context cost from':72} {'ctx/s/unit':>10} {'1 machine':>10} {'10 machines':>12} {'100':>8}")
    for name, rate, units, _kind in rates:
        spans = [duration(1e6 / (rate * units * n)) for n in (1, 10, 100)]
        print(f"  {name:72} {rate:10.2f} {spans[0]:>10} {spans[1]:>12} {spans[2]:>8}")


def duration(seconds: float) -> str:
    """Hours, minutes under an hour, seconds under a minute."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("runs/judge/novelty-l1"), help="a novelty LM directory")
    p.add_argument("--contexts", type=int, default=0, help="0: every ordered K-tuple of clusters")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--top", type=int, default=5, help="the Triton model's top_m")
    p.add_argument("--beam", type=int, default=8)
    args = p.parse_args()
    from streams.infra.apache_kafka import ApacheKafka
    from streams.infra.triton import EmbeddedTriton

    lm = NoveltyLM.load(args.model, "cpu")
    n, k = len(lm.descriptions), lm.meta["k"]
    contexts = [list(c) for c in itertools.permutations(range(n), k)]
    contexts = contexts[:args.contexts] if args.contexts else contexts
    work = Path(tempfile.mkdtemp(prefix="bench-precompute-"))
    export_generator(lm, work / "repo")
    set_decoding(work / "repo", args.top, args.beam)
    print(f"{args.model}: {n} clusters, K = {k}, {len(contexts):,} contexts; top {args.top}, beam {args.beam}, "
          f"batch {args.batch}, {args.partitions} partitions; one Triton (1 CPU instance, 2 intra-op threads)")
    with contextlib.ExitStack() as stack:
        kafka = stack.enter_context(ApacheKafka(work / "kafka"))
        triton = stack.enter_context(EmbeddedTriton(work / "repo", work / "triton"))
        direct_triton(triton.grpc_url, contexts[:args.batch], n, args.batch, 1)  # warm-up
        results: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for w in [int(x) for x in args.workers.split(",")]:
                job = run_job(kafka.bootstrap, work / "repo", triton.grpc_url, contexts, w, args.batch,
                              args.partitions)
                results.setdefault(f"{w} worker(s) via Kafka", []).append(job["ctx_s"])
                print(f"round {r + 1}: {w} worker(s): {job['wall_s']:.1f} s, {job['ctx_s']:.1f} contexts/s "
                      f"(load average {job['load']:.1f}); "
                      + "; ".join(f"{t.get('worker')}: {t.get('published')} published, {t.get('batches')} batches, "
                                  f"Triton {t.get('triton_s', 0):.1f} s, publish {t.get('publish_s', 0):.1f} s"
                                  for t in job["totals"]), flush=True)
            for clients in (1, 2):
                rate = direct_triton(triton.grpc_url, contexts, n, args.batch, clients)
                results.setdefault(f"Triton direct, {clients} client(s)", []).append(rate)
        t0 = time.perf_counter()
        few = contexts[:256]
        precompute(lm, few, args.top, args.beam, batch=args.batch, progress=False)
        results[f"single process (PyTorch, {len(few)} contexts)"] = [len(few) / (time.perf_counter() - t0)]
    print("\nmedian over rounds, contexts/s (this 2-core machine, shared with other jobs):")
    med = {name: float(np.median(v)) for name, v in results.items()}
    for name, rate in med.items():
        print(f"  {name:44} {rate:8.1f}   ({', '.join(f'{x:.1f}' for x in results[name])})")
    one, two = med.get("1 worker(s) via Kafka"), med.get("2 worker(s) via Kafka")
    if one and two:  # per round, the two jobs ran back to back: their ratio is less exposed to load changes
        ratios = [b / a for a, b in zip(results["1 worker(s) via Kafka"], results["2 worker(s) via Kafka"],
                                        strict=True)]
        print(f"  2 workers / 1 worker, per round: {', '.join(f'{x:.2f}' for x in ratios)}; median "
              f"{np.median(ratios):.2f}x; 1 worker / Triton direct (medians): "
              f"{one / med['Triton direct, 1 client(s)']:.2f}")
    here = [(f"{args.model.name} ({n} clusters), 1 worker via Kafka, 2 shared cores (here)", one or 0.0, 8, "CPU"),
            (f"{args.model.name}, Triton direct, 2 shared cores (here)", med["Triton direct, 1 client(s)"], 8, "CPU")]
    print_cost_model(here + list(REFERENCE_RATES))


if __name__ == "__main__":
    main()
