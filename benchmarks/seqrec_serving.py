"""Serving the item policy: PyTorch, in-process onnxruntime and Triton side by side, in one run.

Each path answers the same cluster-restricted top-N requests (random histories of max_len items,
random allowed clusters) at batch 1, 16 and 64; one caller, back to back, after a warm-up, with
2 compute threads everywhere (torch, onnxruntime in-process, onnxruntime inside Triton's Python
backend). Triton is the embedded server (CPU) unless TRITON_URL names one; it is also measured
with 4 concurrent callers, which lets its dynamic batcher overlap transport and compute.

Run: python benchmarks/seqrec_serving.py --checkpoint runs/seqrec/model.pt --catalog runs/catalog
     python benchmarks/seqrec_serving.py --synthetic        (trains a small model first)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from exporters.seqrec_export import export_seqrec, restricted_model
from exporters.seqrec_onnx import random_inputs
from interests.clusters.catalog import Catalog
from streams.inference.seqrec import OnnxSeqRec, TritonSeqRec


def measure(calls, inputs, seconds: float) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """(p50 ms, p95 ms, histories per second) with one caller per function in `calls`, for `seconds`."""
    for x in inputs[:3]:
        calls[0](*x)
    latencies: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds

    def worker(offset: int) -> int:
        n, i, call = 0, offset, calls[offset]
        while time.perf_counter() < deadline:
            x = inputs[i % len(inputs)]
            t0 = time.perf_counter()
            call(*x)
            latencies.append(time.perf_counter() - t0)
            n += len(x[0])
            i += 1
        return n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        done = sum(pool.map(worker, range(len(calls))))
    elapsed = time.perf_counter() - t0
    p50, p95 = np.percentile(np.array(latencies) * 1000, [50, 95])
    return float(p50), float(p95), done / elapsed


def synthetic_model(work: Path) -> tuple[Path, Path]:
    from interests.clusters.build import BuildConfig, build_catalog
    from interests.data.splits import leave_one_out
    from interests.data.synthetic import make_synthetic
    from interests.seqrec.train import TrainConfig, train

    ds, _ = make_synthetic(n_clusters=16, items_per_cluster=100, n_users=1000, seed=0)
    catalog = build_catalog(ds, BuildConfig(levels=(4, 16)), progress=False)
    catalog.save(work / "catalog")
    train(leave_one_out(ds), TrainConfig(epochs=3, patience=3), progress=False, checkpoint=work / "model.pt",
          extra={"catalog_version": catalog.version})
    return work / "model.pt", work / "catalog"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/seqrec/model.pt"))
    parser.add_argument("--catalog", type=Path, default=Path("runs/catalog"))
    parser.add_argument("--synthetic", action="store_true", help="train a small model on synthetic data first")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per cell")
    parser.add_argument("--top-n", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-seqrec-"))
    checkpoint, catalog_dir = synthetic_model(work) if args.synthetic else (args.checkpoint, args.catalog)
    catalog = Catalog.load(catalog_dir)
    module, _ = restricted_model(checkpoint, catalog, args.top_n, None)
    export = export_seqrec(checkpoint, catalog_dir, work / "repo", args.top_n)
    cfg = module.model.cfg
    print(f"SASRec: {cfg.n_items:,} items, {module.n_clusters} clusters, max_len {cfg.max_len}, dim {cfg.dim}, "
          f"{cfg.blocks} blocks; top-{module.top_n}; ONNX parity: max diff {export.parity.max_abs_score_diff:.1e}")

    def torch_call(h, a):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return module(torch.from_numpy(h), torch.from_numpy(a))

    twin = OnnxSeqRec(export.onnx_path, threads=2)
    from streams.infra.stack import external_triton
    from streams.infra.triton import EmbeddedTriton

    ext = external_triton()
    server = None if ext else EmbeddedTriton(work / "repo", work / "triton").start()
    url = ext[0] if ext else server.grpc_url  # type: ignore[union-attr]
    clients = [TritonSeqRec(url) for _ in range(4)]
    try:
        rng = np.random.default_rng(0)
        rows = []
        for batch in (1, 16, 64):
            inputs = [random_inputs(cfg.n_items, module.n_clusters, batch, cfg.max_len, rng) for _ in range(16)]
            cells = {"PyTorch": measure([torch_call], inputs, args.seconds),
                     "onnxruntime": measure([twin.top_n], inputs, args.seconds),
                     "Triton gRPC": measure([clients[0].top_n], inputs, args.seconds),
                     "Triton x4 callers": measure([c.top_n for c in clients], inputs, args.seconds)}
            rows.append((batch, cells))
    finally:
        for c in clients:
            c.close()
        if server:
            server.stop()
    print(f"\n{'batch':>5} {'path':18} {'p50 ms':>8} {'p95 ms':>8} {'histories/s':>12}")
    for batch, cells in rows:
        for name, (p50, p95, rate) in cells.items():
            print(f"{batch:>5} {name:18} {p50:>8.2f} {p95:>8.2f} {rate:>12.0f}")
    at64 = dict(rows)[64]
    ort_rate = at64["onnxruntime"][2]
    print(f"\nbatch 64 throughput, onnxruntime in-process / Triton: {ort_rate / at64['Triton gRPC'][2]:.2f} "
          f"(one caller), {ort_rate / at64['Triton x4 callers'][2]:.2f} (Triton with 4 callers); "
          "the target is at most 1.5")


if __name__ == "__main__":
    main()
