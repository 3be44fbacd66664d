"""Issue 15's GPU run (item 5): seqrec's clustered top-N at 1 M items and the novelty precompute, GPU beside CPU.

One short run on a lent GPU, in priority order under a time budget (`--budget-s`): a stage that the budget
cannot hold is skipped with the reason printed, never half-done, and every measurement is written to
OUT/gpu_scale.json (and OUT/log.txt) as it is taken, so that a run killed at its limit still returns what it
measured.

1. seqrec's clustered restricted top-N (`interests.seqrec.clustered_topn.ClusteredTopN`, the served graph) at 1 M
   items / 1,000 clusters first, then 100k and 10k (each only while stage 2's share of the budget stays),
   batch 1 and 64, on the requests `benchmarks/scale.py` makes (its functions: SASRec with random weights,
   items in clusters uniformly at random, histories of 50 items, 3 allowed clusters a row, top-20):
   - the CPU: the exported ONNX graph on onnxruntime's CPU provider, 2 threads (the worker's twin, as in
     the README's Scale table);
   - the GPU: the same ONNX graph on onnxruntime's CUDA / TensorRT providers where `onnxruntime` offers
     them (the providers it has are recorded), and always the same graph as PyTorch modules on the GPU
     (the model that `ClusteredTopN` exports, TF32 off), the closest real thing where onnxruntime has no
     GPU provider (the lent H200 had none, and no TensorRT);
   - p50 latency and rows/s of back-to-back calls (`benchmarks.scale.measure`; a GPU call includes the
     copies to and from the device), and parity on the same requests: top-N ids identical to the CPU's
     (all of them, and where the CPU's scores are not within 1e-5 of a neighbour: runtimes may order
     near-ties either way) and the largest |score difference| (must be <= 1e-4).
2. The novelty table's precompute (`interests.novelty.precompute.precompute`: constrained beam search,
   full depth: beam = depth = `table_depth`; batches of 64 contexts, up to 256 on a GPU) with a
   from-scratch NoveltyLM trained here in seconds on synthetic transitions, at 32 and 256 clusters:
   contexts/s on the GPU and on the CPU (all its threads, and 2 threads on a share of the contexts: the
   project's 2-core figure) over the same contexts, and parity: table rows with identical clusters, the
   largest |score difference| (must be <= 1e-4).

usage, in a session lent a GPU (one `run` call, timeout_s 540: the budget leaves the last stage room to end):
  python3 scripts/gpu_scale.py --out $OUT --budget-s 420
check on a CPU (device "cpu" standing in for "cuda", tiny sizes, ~10-20 s; tests/unit/project/test_gpu_scale.py):
  python scripts/gpu_scale.py --smoke --out /tmp/gs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.scale import ALLOWED, HISTORY, TOP_N, ints, measure, random_requests, session_for  # noqa: E402
from scripts.gpu_pretrained import Run as LoggedRun  # noqa: E402

# Seconds a stage needs at full size (first run on the H200 will tell; generous on purpose): the ONNX
# export and CPU figures dominate at 1 M items.
SEQREC_NEED = {1_000_000: 150.0, 100_000: 45.0, 10_000: 25.0}
NOVELTY_NEED = {32: 40.0, 256: 120.0}


class Run(LoggedRun):
    """gpu_pretrained's deadline and log, and the JSON of everything measured so far (rewritten after each entry)."""

    def __init__(self, out: Path, budget_s: float, device: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        super().__init__(out, budget_s, device)
        self.results: dict = {"seqrec": [], "novelty": [], "skipped": [], "errors": []}

    def save(self) -> None:
        tmp = self.out / "gpu_scale.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1))
        tmp.replace(self.out / "gpu_scale.json")

    def add(self, kind: str, entry: dict) -> None:
        self.results[kind].append(entry)
        self.save()

    def afford(self, what: str, need_s: float, reserve_s: float = 0.0) -> bool:
        """True when `need_s` seconds (plus `reserve_s` kept for later stages) are left; else say why not."""
        if self.left() >= need_s + reserve_s:
            return True
        reason = f"{self.left():.0f} s left, needs ~{need_s:.0f}" + (f" + {reserve_s:.0f} kept for later stages"
                                                                    if reserve_s else "")
        self.log(f"== {what}: skipped ({reason})")
        self.add("skipped", {"what": what, "reason": reason})
        return False

    def failed(self, what: str, error: BaseException) -> None:
        self.log(f"== {what}: failed: {type(error).__name__}: {error}")
        self.add("errors", {"what": what, "error": f"{type(error).__name__}: {error}",
                            "traceback": traceback.format_exc(limit=6)})


def compare_topn(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> dict:
    """Parity of one answer against the CPU's: ids identical (all; and where the CPU's scores are untied
    at 1e-5, as `exporters.seqrec_onnx.check_parity` counts them) and the largest |score difference|."""
    (r_items, r_scores), (g_items, g_scores) = ref, got
    gaps = np.abs(np.diff(r_scores, axis=1)) > 1e-5
    untied = np.concatenate([gaps[:, :1], gaps[:, 1:] & gaps[:, :-1], gaps[:, -1:]], axis=1)
    return {"rows": len(r_items), "rows_ids_identical": int(np.all(r_items == g_items, axis=1).sum()),
            "rows_ids_identical_untied": int(np.all((r_items == g_items) | ~untied, axis=1).sum()),
            "max_abs_score_diff": float(np.abs(r_scores.astype(np.float64) - g_scores).max())}


def merge_parity(parts: list[dict]) -> dict:
    out = {k: sum(p[k] for p in parts) for k in ("rows", "rows_ids_identical", "rows_ids_identical_untied")}
    out["max_abs_score_diff"] = max(p["max_abs_score_diff"] for p in parts)
    out["ok"] = out["rows_ids_identical"] == out["rows"] and out["max_abs_score_diff"] <= 1e-4
    return out


class TorchTwin:
    """The exported module itself on a torch device: numpy in, numpy out (the copies are in the call)."""

    def __init__(self, graph, device) -> None:  # type: ignore[no-untyped-def]
        self.graph, self.device = graph.to(device).eval(), device

    def top_n(self, history: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            items, scores = self.graph(torch.from_numpy(history).to(self.device),
                                       torch.from_numpy(allowed).to(self.device))
            return items.cpu().numpy(), scores.cpu().numpy()


class OrtTwin:
    """The exported ONNX file on onnxruntime with the given providers (CUDA, TensorRT)."""

    def __init__(self, onnx_path: Path, providers: list[str]) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(onnx_path), providers=providers)
        self.providers = self.session.get_providers()  # what onnxruntime actually took

    def top_n(self, history: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        items, scores = self.session.run(["items", "scores"], {"history": history, "allowed": allowed})
        return items, scores


def gpu_paths(onnx_path: Path, graph, device, run: Run) -> dict:  # type: ignore[no-untyped-def]
    """{path name: twin} for every GPU path there is: onnxruntime's GPU providers, and PyTorch on `device`."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    paths: dict = {}
    if device.type == "cuda":
        for name, providers in (("ort-tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider"]),
                                ("ort-cuda", ["CUDAExecutionProvider"])):
            if providers[0] in have:
                try:
                    paths[name] = OrtTwin(onnx_path, [*providers, "CPUExecutionProvider"])
                except Exception as e:  # a provider that fails to build is reported, the rest still measured
                    run.failed(f"onnxruntime {name}", e)
    paths["torch-" + device.type] = TorchTwin(graph, device)
    return paths


def seqrec_stage(run: Run, args: argparse.Namespace, device) -> None:  # type: ignore[no-untyped-def]
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # parity: full fp32 products, as the CPU computes them
    torch.backends.cudnn.allow_tf32 = False
    reserve = sum(NOVELTY_NEED.get(c, 30.0) for c in args.novelty_clusters) if not args.smoke else 0.0
    for i, n_items in enumerate(args.items):
        for n_clusters in args.clusters:
            what = f"seqrec {n_items:,} items / {n_clusters} clusters"
            # the first (1 M) size is the point of the run; later sizes keep stage 2's share of the budget
            if not run.afford(what, SEQREC_NEED.get(n_items, 20.0) * (0.1 if args.smoke else 1.0),
                              reserve if i else 0.0):
                continue
            try:
                seqrec_config(run, args, device, n_items, n_clusters)
            except Exception as e:
                run.failed(what, e)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()


def seqrec_config(run: Run, args: argparse.Namespace, device, n_items: int, n_clusters: int) -> None:  # type: ignore[no-untyped-def]
    import torch

    from interests.seqrec.clustered_topn import ClusteredTopN
    from interests.seqrec.sasrec import SASRec, SASRecConfig

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=n_items, max_len=HISTORY)).eval()
    rng = np.random.default_rng(n_items + n_clusters)  # benchmarks/scale.py's seed and draws
    item_cluster = torch.from_numpy(rng.integers(0, n_clusters, n_items))
    graph = ClusteredTopN(model, item_cluster, n_clusters, TOP_N)
    with tempfile.TemporaryDirectory() as tmp:
        cpu = session_for(graph, Path(tmp), "clustered")  # exported, onnxruntime CPU, 2 threads
        paths = gpu_paths(Path(tmp) / "clustered.onnx", graph, device, run)
        run.log(f"== seqrec {n_items:,} items / {n_clusters} clusters (largest {graph.cluster_size}): built and "
                f"exported in {time.perf_counter() - t0:.0f} s; GPU paths {list(paths)}")
        for batch in args.batches:
            requests = random_requests(n_items, n_clusters, batch, args.requests, rng)
            answers = [cpu.top_n(*r) for r in requests]
            cpu_timing = measure(cpu, requests, args.seconds)
            for name, twin in paths.items():
                parity = merge_parity([compare_topn(a, twin.top_n(*r)) for a, r in zip(answers, requests, strict=True)])
                timing = measure(twin, requests, args.seconds)
                entry = {"items": n_items, "clusters": n_clusters, "largest": graph.cluster_size, "batch": batch,
                         "path": name, "providers": getattr(twin, "providers", None),
                         "cpu_p50_ms": cpu_timing.p50_ms, "cpu_rows_per_s": cpu_timing.rows_per_s,
                         "gpu_p50_ms": timing.p50_ms, "gpu_rows_per_s": timing.rows_per_s, "parity": parity}
                run.add("seqrec", entry)
                same, untied = parity["rows_ids_identical"], parity["rows_ids_identical_untied"]
                run.log(f"   batch {batch:>3} {name:>13}: p50 {timing.p50_ms:8.2f} ms ({timing.rows_per_s:9,.0f} "
                        f"rows/s) against the CPU's {cpu_timing.p50_ms:8.2f} ms ({cpu_timing.rows_per_s:9,.0f} rows/s);"
                        f" ids {same}/{parity['rows']} identical ({untied} where untied), "
                        f"max |score diff| {parity['max_abs_score_diff']:.2g}")
        del cpu, paths


def synthetic_descriptions(n_clusters: int) -> list[str]:
    """Distinct multi-word descriptions sharing words (so the trie branches as a catalog's does)."""
    return [f"films about a{i % 16} with b{i // 16} and c{(i * 7) % 5}" for i in range(n_clusters)]


def synthetic_transitions(n_clusters: int, n: int, seed: int):  # type: ignore[no-untyped-def]
    """`n` novel transitions with a planted rule (the target follows from the context, with noise)."""
    from interests.novelty.examples import NoveltyExamples

    rng = np.random.default_rng(seed)
    contexts = np.stack([rng.choice(n_clusters, 2, replace=False) for _ in range(n)]).astype(np.int32)
    targets = (3 * contexts[:, 0] + contexts[:, 1] + rng.integers(0, 3, n)) % n_clusters
    for j in np.nonzero((targets == contexts[:, 0]) | (targets == contexts[:, 1]))[0]:
        while targets[j] in contexts[j]:
            targets[j] = (targets[j] + 1) % n_clusters
    return NoveltyExamples(contexts, targets.astype(np.int32), [frozenset(map(int, c)) for c in contexts],
                           np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64))


def novelty_stage(run: Run, args: argparse.Namespace, device) -> None:  # type: ignore[no-untyped-def]
    for n_clusters in args.novelty_clusters:
        what = f"novelty precompute {n_clusters} clusters"
        if not run.afford(what, NOVELTY_NEED.get(n_clusters, 30.0) * (0.1 if args.smoke else 1.0)):
            continue
        try:
            novelty_config(run, args, device, n_clusters)
        except Exception as e:
            run.failed(what, e)


def timed(fn, device):  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return value, time.perf_counter() - t0


def novelty_config(run: Run, args: argparse.Namespace, device, n_clusters: int) -> None:  # type: ignore[no-untyped-def]
    import torch

    from interests.novelty.lm import LMConfig, NoveltyLM, train_novelty_lm
    from interests.novelty.precompute import precompute, table_depth

    t0 = time.perf_counter()
    descriptions = synthetic_descriptions(n_clusters)
    train = synthetic_transitions(n_clusters, args.train_examples, 0)
    valid = synthetic_transitions(n_clusters, max(64, args.train_examples // 10), 1)
    lm, info = train_novelty_lm(descriptions, train, valid,
                                LMConfig(layers=1, dim=48, heads=2, epochs=args.epochs, patience=args.epochs,
                                         device=device.type),
                                {"catalog_version": f"synthetic-{n_clusters}", "k": 2, "level": 0}, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        lm.save(Path(tmp) / "lm")
        gpu, cpu = NoveltyLM.load(Path(tmp) / "lm", str(device)), NoveltyLM.load(Path(tmp) / "lm", "cpu")
    del lm
    depth = table_depth(n_clusters, 2)
    rng = np.random.default_rng(n_clusters)
    contexts = [list(map(int, rng.choice(n_clusters, 2, replace=False))) for _ in range(args.contexts)]
    run.log(f"== novelty precompute, {n_clusters} clusters: LM trained in {info['seconds']:.0f} s "
            f"(valid loss {info['best_valid_loss']:.3f}), set up in {time.perf_counter() - t0:.0f} s; "
            f"{len(contexts)} contexts, depth = beam = {depth}")

    def table(lm, chunk):  # type: ignore[no-untyped-def]
        return precompute(lm, chunk, depth, depth, progress=False)

    timed(lambda: table(gpu, contexts[:4]), device)  # warm-up: CUDA context, kernels
    rows_gpu, gpu_s = timed(lambda: table(gpu, contexts), device)
    threads = torch.get_num_threads()
    rows_cpu, cpu_s = timed(lambda: table(cpu, contexts), torch.device("cpu"))
    entry = {"clusters": n_clusters, "contexts": len(contexts), "depth": depth, "device": str(device),
             "contexts_per_batch": {"gpu": gpu.contexts_per_batch(depth), "cpu": cpu.contexts_per_batch(depth)},
             "lm_train_seconds": info["seconds"], "gpu_contexts_per_s": len(contexts) / gpu_s,
             "cpu_threads": threads, "cpu_contexts_per_s": len(contexts) / cpu_s}
    few = contexts[:args.contexts_2_threads]
    if few:
        torch.set_num_threads(2)
        try:
            _, secs = timed(lambda: table(cpu, few), torch.device("cpu"))
        finally:
            torch.set_num_threads(threads)
        entry["cpu_2_threads_contexts"], entry["cpu_2_threads_contexts_per_s"] = len(few), len(few) / secs
    same = sum(a["clusters"] == b["clusters"] for a, b in zip(rows_gpu, rows_cpu, strict=True))
    worst = max(abs(x - y) for a, b in zip(rows_gpu, rows_cpu, strict=True)
                for x, y in zip(a["scores"], b["scores"], strict=False))
    entry["parity"] = {"rows": len(rows_cpu), "rows_identical": same, "max_abs_score_diff": worst,
                       "ok": same == len(rows_cpu) and worst <= 1e-4}
    run.add("novelty", entry)
    run.log(f"   {device}: {entry['gpu_contexts_per_s']:,.1f} contexts/s; cpu ({threads} threads): "
            f"{entry['cpu_contexts_per_s']:,.1f} contexts/s"
            + (f", 2 threads: {entry['cpu_2_threads_contexts_per_s']:,.1f}" if few else "")
            + f"; rows identical {same}/{len(rows_cpu)}, max |score diff| {worst:.2g}")


def same_of(e: dict) -> str:
    p = e["parity"]
    return f"{p.get('rows_ids_identical', p.get('rows_identical'))}/{p['rows']}"


SEQREC_COLUMNS = (("items", 9, lambda e: f"{e['items']:,}"), ("clusters", 8, lambda e: e["clusters"]),
                  ("batch", 5, lambda e: e["batch"]), ("path", 13, lambda e: e["path"]),
                  ("cpu p50 ms", 10, lambda e: f"{e['cpu_p50_ms']:.2f}"),
                  ("cpu rows/s", 10, lambda e: f"{e['cpu_rows_per_s']:,.0f}"),
                  ("gpu p50 ms", 10, lambda e: f"{e['gpu_p50_ms']:.2f}"),
                  ("gpu rows/s", 10, lambda e: f"{e['gpu_rows_per_s']:,.0f}"),
                  ("speed-up", 8, lambda e: f"{e['gpu_rows_per_s'] / e['cpu_rows_per_s']:.1f}x"),
                  ("ids same", 9, same_of), ("max diff", 8, lambda e: f"{e['parity']['max_abs_score_diff']:.1g}"))
NOVELTY_COLUMNS = (("clusters", 8, lambda e: e["clusters"]), ("contexts", 8, lambda e: e["contexts"]),
                   ("depth", 5, lambda e: e["depth"]), ("gpu ctx/s", 10, lambda e: f"{e['gpu_contexts_per_s']:,.1f}"),
                   ("cpu ctx/s", 10, lambda e: f"{e['cpu_contexts_per_s']:,.1f}"),
                   ("threads", 7, lambda e: e["cpu_threads"]),
                   ("2-thr ctx/s", 11, lambda e: f"{e.get('cpu_2_threads_contexts_per_s', float('nan')):,.1f}"),
                   ("speed-up", 8, lambda e: f"{e['gpu_contexts_per_s'] / e['cpu_contexts_per_s']:.1f}x"),
                   ("rows same", 9, same_of), ("max diff", 8, lambda e: f"{e['parity']['max_abs_score_diff']:.1g}"))


def print_table(run: Run) -> None:
    r = run.results
    for rows, columns in ((r["seqrec"], SEQREC_COLUMNS), (r["novelty"], NOVELTY_COLUMNS)):
        if rows:
            run.log("\n" + " ".join(f"{name:>{width}}" for name, width, _ in columns))
            for e in rows:
                run.log(" ".join(f"{cell(e)!s:>{width}}" for _, width, cell in columns))
    for s in r["skipped"]:
        run.log(f"skipped: {s['what']} ({s['reason']})")
    for s in r["errors"]:
        run.log(f"failed: {s['what']}: {s['error']}")
    bad = [e for e in r["seqrec"] + r["novelty"] if not e["parity"]["ok"]]
    run.log(f"parity: {'every measurement within 1e-4 with identical ids/rows' if not bad else f'{len(bad)} off'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="gpu_scale.json and log.txt go here (e.g. $OUT)")
    p.add_argument("--budget-s", type=float, default=420.0, help="the whole run's time budget")
    p.add_argument("--device", default="cuda", help="the torch device standing for the GPU")
    p.add_argument("--items", type=ints, default=[1_000_000, 100_000, 10_000], help="in priority order")
    p.add_argument("--clusters", type=ints, default=[1000])
    p.add_argument("--batches", type=ints, default=[1, 64])
    p.add_argument("--requests", type=int, default=8, help="distinct requests per (size, batch), cycled")
    p.add_argument("--seconds", type=float, default=1.0, help="timed calls per path and configuration")
    p.add_argument("--novelty-clusters", type=ints, default=[32, 256])
    p.add_argument("--contexts", type=int, default=512, help="contexts precomputed on both devices")
    p.add_argument("--contexts-2-threads", type=int, default=128, help="of those, timed again on 2 CPU threads")
    p.add_argument("--train-examples", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="everything tiny on the CPU (device 'cpu' for 'cuda')")
    args = p.parse_args()
    if args.smoke:
        args.device, args.items, args.clusters, args.batches = "cpu", [20_000, 2_000], [50], [1, 16]
        args.requests, args.seconds, args.novelty_clusters = 3, 0.2, [8, 24]
        args.contexts, args.contexts_2_threads, args.train_examples, args.epochs = 12, 4, 400, 1
    import onnxruntime as ort
    import torch

    from interests.novelty.lm import resolve_device

    device = resolve_device(args.device)
    run = Run(args.out, args.budget_s, str(device))
    run.results["setup"] = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
        "cpu_count": os.cpu_count(), "budget_s": args.budget_s, "smoke": args.smoke,
        "seqrec": {"history": HISTORY, "allowed": ALLOWED, "top_n": TOP_N, "cpu": "onnxruntime CPU, 2 threads",
                   "weights": "random (dim 64, 2 blocks, 2 heads)", "items_in_clusters": "uniformly at random"}}
    run.save()
    run.log(f"device {run.results['setup']['device_name']} ({device}); torch {torch.__version__}, onnxruntime "
            f"{ort.__version__}, providers {ort.get_available_providers()}; {os.cpu_count()} CPUs; "
            f"budget {args.budget_s:.0f} s")
    try:
        seqrec_stage(run, args, device)
        novelty_stage(run, args, device)
    finally:
        print_table(run)
        run.results["left_s"] = round(run.left(), 1)
        run.save()
        run.log(f"== done, {run.left():.0f} s of the budget left; {args.out / 'gpu_scale.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
