"""How the engine's costs grow with the catalog (issue 15, "What to measure"), in one run.

1. seqrec's restricted top-N at 10k / 100k / 1M items and 32 / 256 / 1,000 clusters, batch 1 and
   64, on onnxruntime (2 threads; with --triton also through the embedded Triton on the CPU,
   gRPC, one caller): the full-scoring graph (`interests.seqrec.topn.RestrictedTopN`, every
   item scored and masked) beside the clustered graph (`interests.seqrec.clustered_topn.ClusteredTopN`,
   only the allowed clusters' items), on the same requests: histories of 50 random items, 3
   allowed clusters per row (the engine's M). SASRec with random weights (dim 64, 2 blocks, 2
   heads: the defaults) and items assigned to clusters uniformly at random (balanced up to
   chance): cost does not depend on what the weights learnt. Timings are one run on a shared
   machine: compare the two graphs within a row, not across runs.
2. The novelty table at 32 / 256 / 1,000 clusters (K = 2: C * (C - 1) contexts, rows as deep as
   `table_depth`): bytes on the topic (key + value as published, `streams.core.table`) and bytes
   in a worker's memory as Python rows (`parse_row` into a dict, measured by tracemalloc; the
   worker's form before `CompactTable`). Rows hold random scores; a sample of rows is measured and
   multiplied out when the table is large.
3. `CompactTable` (the worker's form now) loaded with 1M contexts of 1,000 clusters in a fresh
   process, as the follower loads it (`parse_rows` a fetch of 5,000 at a time, store; no broker):
   seconds and resident set.
4. The served mixture (`interests.novelty.mixture_topn.MixtureTopN`: the cluster head's scores for every
   cluster, the top M unknown ones, then the clustered slate inside them) beside the slate alone
   (`ClusteredTopN` given the same M clusters), on onnxruntime, same requests: what the sequence
   expert's O(clusters) scores add to a request (issue 26: within 2x at 1M items / 1,000 clusters).

Run: python benchmarks/scale.py                     (everything, a few minutes on 2 cores)
     python benchmarks/scale.py --items 10000,100000 --clusters 32 --seconds 0.5   (a quick look)
     python benchmarks/scale.py --plot docs/scale.png
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interests.novelty.precompute import table_depth
from streams.core.table import Row, context_key, parse_row, row_value

# PyTorch and the exporters are imported where the seqrec part runs: the compact-table child
# process measures its resident set, and a worker does not import them.

ALLOWED = 3  # novel clusters per slate (the engine's M)
HISTORY = 50
TOP_N = 20


@dataclass
class Timing:
    p50_ms: float
    rows_per_s: float


@dataclass
class TopNRow:
    items: int
    clusters: int
    largest: int
    batch: int
    full: Timing
    clustered: Timing
    path: str = "onnxruntime"


def random_requests(n_items: int, n_clusters: int, batch: int, count: int,
                    rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` requests of `batch` full histories and ALLOWED distinct allowed clusters per row."""
    out = []
    for _ in range(count):
        history = rng.integers(1, n_items + 1, size=(batch, HISTORY)).astype(np.int64)
        allowed = np.zeros((batch, n_clusters), bool)
        for row in range(batch):
            allowed[row, rng.choice(n_clusters, ALLOWED, replace=False)] = True
        out.append((history, allowed))
    return out


def measure(twin, requests: list[tuple[np.ndarray, np.ndarray]], seconds: float) -> Timing:
    """p50 latency and rows/s of back-to-back calls for `seconds` (at least 3 calls, after one warm-up)."""
    twin.top_n(*requests[0])
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 3:
        t0 = time.perf_counter()
        twin.top_n(*requests[len(latencies) % len(requests)])
        latencies.append(time.perf_counter() - t0)
    rows = sum(len(requests[i % len(requests)][0]) for i in range(len(latencies)))
    return Timing(float(np.percentile(latencies, 50) * 1000), rows / sum(latencies))


def session_for(graph, work: Path, name: str):  # type: ignore[no-untyped-def]
    """Export `graph` (a RestrictedTopN) and open it as the worker does (onnxruntime, 2 threads)."""
    from exporters.seqrec_onnx import export_onnx
    from streams.inference.seqrec import OnnxSeqRec

    return OnnxSeqRec(export_onnx(graph, work / f"{name}.onnx"), threads=2)


def triton_server(work: Path):  # type: ignore[no-untyped-def]
    """The embedded Triton (CPU) serving work/clustered.onnx as `seqrec` and work/full.onnx as `seqrec_full`,
    each with the committed `triton_models/seqrec` (Python backend over onnxruntime, 2 threads)."""
    import shutil

    from exporters.repository import source_dir
    from streams.infra.triton import EmbeddedTriton

    for name, graph in (("seqrec", "clustered"), ("seqrec_full", "full")):
        dest = work / "repo" / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source_dir() / "seqrec", dest, ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
        config = dest / "config.pbtxt"
        config.write_text(config.read_text().replace('name: "seqrec"', f'name: "{name}"'))
        shutil.copy(work / f"{graph}.onnx", dest / "1" / "model.onnx")
    return EmbeddedTriton(work / "repo", work / "triton").start(timeout_s=600)


def random_catalogs(item_counts: list[int], cluster_counts: list[int]):  # type: ignore[no-untyped-def]
    """(random SASRec, items, clusters, rng, item -> cluster uniformly at random) for every configuration."""
    import torch

    from interests.seqrec.sasrec import SASRec, SASRecConfig

    for n_items in item_counts:
        torch.manual_seed(0)
        model = SASRec(SASRecConfig(n_items=n_items, max_len=HISTORY)).eval()
        for n_clusters in cluster_counts:
            rng = np.random.default_rng(n_items + n_clusters)
            yield model, n_items, n_clusters, rng, torch.from_numpy(rng.integers(0, n_clusters, n_items))


def print_row(row: TopNRow) -> None:
    print(f"{row.items:>9,} {row.clusters:>8} {row.largest:>7} {row.batch:>5} {row.path:>11} {row.full.p50_ms:>11.2f} "
          f"{row.full.rows_per_s:>11,.0f} {row.clustered.p50_ms:>12.2f} {row.clustered.rows_per_s:>12,.0f} "
          f"{row.full.p50_ms / row.clustered.p50_ms:>7.1f}x", flush=True)


def topn_growth(item_counts: list[int], cluster_counts: list[int], batches: list[int], seconds: float,
                work: Path, triton: bool = False) -> list[TopNRow]:
    """Both graphs on the same requests for every (items, clusters, batch), on onnxruntime in-process and
    with `triton` also through the embedded Triton over gRPC (one caller); prints each row as measured."""
    import torch

    from interests.seqrec.clustered_topn import ClusteredTopN
    from interests.seqrec.topn import RestrictedTopN

    torch.set_num_threads(2)
    rows = []
    from streams.inference.seqrec import TritonSeqRec

    print(f"{'items':>9} {'clusters':>8} {'largest':>7} {'batch':>5} {'path':>11} {'full p50 ms':>11} "
          f"{'full rows/s':>11} {'clust p50 ms':>12} {'clust rows/s':>12} {'speed-up':>8}", flush=True)
    for model, n_items, n_clusters, rng, item_cluster in random_catalogs(item_counts, cluster_counts):
        clustered = ClusteredTopN(model, item_cluster, n_clusters, TOP_N)
        twins = {"full": session_for(RestrictedTopN(model, item_cluster, n_clusters, TOP_N), work, "full"),
                 "clustered": session_for(clustered, work, "clustered")}
        server = triton_server(work) if triton else None
        remote = {"full": TritonSeqRec(server.grpc_url, "seqrec_full", timeout_s=300),
                  "clustered": TritonSeqRec(server.grpc_url, "seqrec", timeout_s=300)} if server else {}
        try:
            for batch in batches:
                requests = random_requests(n_items, n_clusters, batch, 8, rng)
                a, b = (twins[g].top_n(*requests[0]) for g in ("full", "clustered"))
                if not (np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1], atol=1e-4)):
                    print("  (the two graphs disagree on this request: see tests/unit/models/test_clustered_topn.py)")
                for path, calls in (("onnxruntime", twins), ("Triton", remote)):
                    if calls:
                        rows.append(TopNRow(n_items, n_clusters, clustered.cluster_size, batch,
                                            measure(calls["full"], requests, seconds),
                                            measure(calls["clustered"], requests, seconds), path))
                        print_row(rows[-1])
        finally:
            for client in remote.values():
                client.close()
            if server:
                server.stop()
        del twins, clustered
        gc.collect()
    return rows


class MixtureTwin:
    """The exported mixture graph in-process, called as `measure` calls a twin (`top_n(*request)`)."""

    def __init__(self, path: Path) -> None:
        from interests.runtime.constrained import onnx_session

        self.session = onnx_session(path, 2, False)

    def top_n(self, history: np.ndarray, known: np.ndarray, context: np.ndarray) -> tuple:  # type: ignore[type-arg]
        return tuple(self.session.run(None, {"history": history, "known": known, "context_scores": context}))


ITEM_EXPERT_HISTORY, TRANSITION_ENTRIES = 200, 16  # the worker's recent items; clusters kept per item (random)


def random_item_experts(n_items: int, item_cluster: np.ndarray, n_clusters: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Item experts of the served shape with random entries: TRANSITION_ENTRIES clusters per item and, where
    `explore novelty mix` would fit EASE (at most MAX_EASE_ITEMS items), TOP neighbours per item; above that
    the mixture has no EASE expert, so none is measured."""
    from interests.novelty.item_experts import MAX_EASE_ITEMS, TOP, ItemExperts, SparseRows

    def rows(width: int, high: int) -> SparseRows:
        ids = rng.integers(0, high, size=(n_items, width)).astype(np.int32)
        return SparseRows.of_padded(ids, rng.random((n_items, width)).astype(np.float32) * 0.05)

    ease = rows(TOP, n_items) if n_items <= MAX_EASE_ITEMS else SparseRows.empty(n_items)
    return ItemExperts(np.asarray(item_cluster, np.int64), rows(TRANSITION_ENTRIES, n_clusters), ease)


def item_experts_ms(experts, n_items: int, batch: int, seconds: float, rng: np.random.Generator) -> float:  # type: ignore[no-untyped-def]
    """p50 ms of the worker's item-expert scores (`ItemExperts.scores`) for `batch` users of 200 recent items."""
    histories = [rng.integers(0, n_items, ITEM_EXPERT_HISTORY) for _ in range(batch)]
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        experts.scores(histories)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def mixture_growth(item_counts: list[int], cluster_counts: list[int], batches: list[int], seconds: float,
                   work: Path, prototypes: int) -> list[dict]:
    """p50 and rows/s of the slate alone and of the mixture graph (head + top M + slate), same requests, and
    the worker's item experts for the same batch (numpy, one thread)."""
    import torch

    from exporters.seqrec_onnx import export_mixture_onnx
    from interests.novelty.cluster_head import ClusterHead
    from interests.novelty.mixture_topn import MixtureTopN
    from interests.seqrec.clustered_topn import ClusteredTopN

    torch.set_num_threads(2)
    print(f"\nthe served mixture: cluster head ({prototypes} prototypes a cluster) + top {ALLOWED} unknown clusters + "
          f"slate, against the slate alone")
    print(f"{'items':>9} {'clusters':>8} {'batch':>5} {'slate p50 ms':>12} {'mixture p50 ms':>14} {'ratio':>6} "
          f"{'item experts ms':>15} {'with them':>9} {'tables MB':>9} EASE", flush=True)
    rows = []
    for model, n_items, n_clusters, rng, item_cluster in random_catalogs(item_counts, cluster_counts):
        head = ClusterHead(model.cfg.dim, n_clusters, prototypes)
        with torch.no_grad():
            head.weight.normal_(std=0.1)
        slate = session_for(ClusteredTopN(model, item_cluster, n_clusters, TOP_N), work, "slate")
        mixture = MixtureTwin(export_mixture_onnx(MixtureTopN(model, item_cluster, n_clusters, head, 1.0, ALLOWED,
                                                              TOP_N), work / "mixture.onnx"))
        items = random_item_experts(n_items, item_cluster.numpy(), n_clusters, rng)
        for batch in batches:
            plain = random_requests(n_items, n_clusters, batch, 8, rng)
            mixed = [(h, rng.random((batch, n_clusters)) < 0.1, rng.normal(size=(batch, n_clusters)).astype(
                np.float32)) for h, _ in plain]
            row = {"items": n_items, "clusters": n_clusters, "batch": batch, "prototypes": prototypes,
                   "slate": vars(measure(slate, plain, seconds)), "mixture": vars(measure(mixture, mixed, seconds))}
            row["ratio"] = row["mixture"]["p50_ms"] / row["slate"]["p50_ms"]
            row["item_experts_ms"] = item_experts_ms(items, n_items, batch, seconds, rng)
            row["item_experts_mb"] = items.nbytes / 2**20
            row["ratio_with_items"] = (row["mixture"]["p50_ms"] + row["item_experts_ms"]) / row["slate"]["p50_ms"]
            ease = "yes" if items.has_ease else "no"
            rows.append(row)
            print(f"{n_items:>9,} {n_clusters:>8} {batch:>5} {row['slate']['p50_ms']:>12.2f} "
                  f"{row['mixture']['p50_ms']:>14.2f} {row['ratio']:>5.2f}x {row['item_experts_ms']:>15.2f} "
                  f"{row['ratio_with_items']:>8.2f}x {row['item_experts_mb']:>9.0f} {ease}", flush=True)
        del slate, mixture, items
        gc.collect()
    return rows


@dataclass
class TableRow:
    clusters: int
    contexts: int
    depth: int
    sampled: int
    topic_bytes_per_row: float
    memory_bytes_per_row: float

    @property
    def topic_bytes(self) -> float:
        return self.topic_bytes_per_row * self.contexts

    @property
    def memory_bytes(self) -> float:
        return self.memory_bytes_per_row * self.contexts


def table_size(n_clusters: int, k: int, sample: int, rng: np.random.Generator) -> TableRow:
    """Bytes per row on the topic and as the worker holds it, from `sample` rows (all when fewer)."""
    contexts = n_clusters ** k - n_clusters if k == 2 else None
    if contexts is None:
        raise ValueError("only K = 2 is measured")
    depth = table_depth(n_clusters, k)
    chosen = rng.choice(contexts, min(sample, contexts), replace=False)
    pairs = [(int(i) // (n_clusters - 1), int(i) % (n_clusters - 1)) for i in chosen]
    records = []
    for a, b in pairs:
        b += b >= a  # the (n_clusters - 1) clusters other than a
        ranked = [int(c) for c in rng.permutation(n_clusters) if c not in (a, b)][:depth]
        scores = np.sort(np.log(rng.random(depth)).astype(np.float32))[::-1].tolist()
        records.append((context_key([a, b]), row_value(ranked, scores, "0123456789abcdef")))
    topic = sum(len(key) + len(value) for key, value in records) / len(records)
    table: dict[bytes, Row] = {}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for key, value in records:  # as the worker's follower does: bytes from Kafka, parsed, kept
        row = parse_row(bytes(key), bytes(value), "0123456789abcdef", k, n_clusters)
        assert not isinstance(row, str), row
        table[bytes(key)] = row
    memory = (tracemalloc.get_traced_memory()[0] - before) / len(records)
    tracemalloc.stop()
    return TableRow(n_clusters, contexts, depth, len(records), topic, memory)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def table_growth(cluster_counts: list[int], sample: int) -> list[TableRow]:
    print(f"\n{'clusters':>8} {'contexts':>9} {'depth':>5} {'sampled':>7} {'topic B/row':>11} {'topic':>9} "
          f"{'worker B/row':>12} {'worker (Python rows)':>20}", flush=True)
    rows = []
    for n_clusters in cluster_counts:
        row = table_size(n_clusters, 2, sample, np.random.default_rng(n_clusters))
        rows.append(row)
        print(f"{row.clusters:>8} {row.contexts:>9,} {row.depth:>5} {row.sampled:>7,} "
              f"{row.topic_bytes_per_row:>11,.0f} {human(row.topic_bytes):>9} "
              f"{row.memory_bytes_per_row:>12,.0f} {human(row.memory_bytes):>20}",
              flush=True)
    return rows


def rss_bytes() -> int:
    """This process's resident set (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def compact_ingest(n_clusters: int, contexts: int) -> dict:
    """Load `contexts` published rows into a CompactTable as the worker's follower does (`parse_rows` of
    a fetch, then store): seconds and the growth of the resident set. Run in a fresh process (see main)."""
    from streams.core.table import CompactTable, parse_rows
    from streams.wiring.table_topic import FETCH_RECORDS as FETCH

    rng = np.random.default_rng(0)
    depth = table_depth(n_clusters, 2)
    values = [row_value(rng.permutation(n_clusters)[:depth].tolist(),
                        np.sort(np.log(rng.random(depth)).astype(np.float32))[::-1].tolist(), "v") for _ in range(256)]
    table = CompactTable(n_clusters)
    gc.collect()
    before = rss_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, contexts, FETCH):  # a fetch at a time, as the follower parses them
        records = []
        for i in range(first, min(first + FETCH, contexts)):
            a, b = divmod(i % (n_clusters * (n_clusters - 1)), n_clusters - 1)
            records.append((context_key([a, b + (b >= a)]), values[i % len(values)]))
        for (key, _), row in zip(records, parse_rows(records, "v", 2, n_clusters), strict=True):
            assert not isinstance(row, str), row
            table[key] = row
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"clusters": n_clusters, "contexts": len(table), "seconds": seconds, "cpu_seconds": cpu,
            "rss_growth": rss_bytes() - before, "arrays": table.nbytes(), "rss": rss_bytes()}


def compact_growth(n_clusters: int, contexts: int) -> dict:
    """`compact_ingest` in a child process, so that the resident set is the table's alone."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, __file__, "--compact-child", f"{n_clusters},{contexts}"],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"\ncompact table (arrays keyed by context), {result['contexts']:,} contexts of {n_clusters} clusters: "
          f"loaded in {result['seconds']:.1f} s, {result['cpu_seconds']:.1f} s of CPU "
          f"({result['contexts'] / result['cpu_seconds']:,.0f} rows per CPU second; parse_rows + store, "
          "no broker), "
          f"resident set grew {human(result['rss_growth'])} (arrays {human(result['arrays'])}), "
          f"the process (Python, numpy, the table) {human(result['rss'])}", flush=True)
    return result


def plot(rows: list[TopNRow], path: Path) -> None:
    """Batch-64 latency against catalog size: one line per graph and cluster count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, n_clusters in enumerate(sorted({r.clusters for r in rows})):
        mine = [r for r in rows if r.clusters == n_clusters and r.batch == max(x.batch for x in rows)
                and r.path == "onnxruntime"]
        xs = [r.items for r in mine]
        ax.plot(xs, [r.full.p50_ms for r in mine], "o--", color=f"C{i}", label=f"full scoring, {n_clusters} clusters")
        ax.plot(xs, [r.clustered.p50_ms for r in mine], "s-", color=f"C{i}", label=f"clustered, {n_clusters} clusters")
    ax.set(xscale="log", yscale="log", xlabel="items in the catalog", ylabel="p50 ms per request",
           title=f"seqrec top-{TOP_N}, {ALLOWED} allowed clusters, batch {max(r.batch for r in rows)}, onnxruntime")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=ints, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--clusters", type=ints, default=[32, 256, 1000])
    parser.add_argument("--batches", type=ints, default=[1, 64])
    parser.add_argument("--seconds", type=float, default=1.0, help="per graph and configuration")
    parser.add_argument("--table-sample", type=int, default=2000, help="novelty rows measured per cluster count")
    parser.add_argument("--skip-topn", action="store_true")
    parser.add_argument("--skip-mixture", action="store_true", help="skip part 4, the served mixture's cost")
    parser.add_argument("--prototypes", type=int, default=8, help="cluster head prototypes per cluster (part 4)")
    parser.add_argument("--triton", action="store_true", help="also through the embedded Triton (CPU), one caller")
    parser.add_argument("--compact-contexts", type=int, default=1_000_000,
                        help="contexts loaded into the compact table at 1,000 clusters (0: skip)")
    parser.add_argument("--compact-child", help=argparse.SUPPRESS)
    parser.add_argument("--plot", type=Path, help="write the batch-64 latency plot here (PNG)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--replot", type=Path, help="draw --plot from a --json file of an earlier run, measure nothing")
    args = parser.parse_args()
    if args.replot and args.plot:
        saved = json.loads(args.replot.read_text())["topn"]
        plot([TopNRow(**{**r, "full": Timing(**r["full"]), "clustered": Timing(**r["clustered"])}) for r in saved],
             args.plot)
        return
    if args.compact_child:
        print(json.dumps(compact_ingest(*ints(args.compact_child))))
        return
    print(f"seqrec top-{TOP_N}, onnxruntime 2 threads, random weights (dim 64, 2 blocks), history {HISTORY}, "
          f"{ALLOWED} allowed clusters per row, items in clusters uniformly at random", flush=True)
    topn: list[TopNRow] = []
    if not args.skip_topn:
        with tempfile.TemporaryDirectory() as tmp:
            topn = topn_growth(args.items, args.clusters, args.batches, args.seconds, Path(tmp), args.triton)
    mixture: list[dict] = []
    if not args.skip_mixture:
        with tempfile.TemporaryDirectory() as tmp:
            mixture = mixture_growth(args.items, args.clusters, args.batches, args.seconds, Path(tmp), args.prototypes)
    table = table_growth(args.clusters, args.table_sample)
    compact = compact_growth(max(args.clusters), args.compact_contexts) if args.compact_contexts else None
    if args.plot and topn:
        plot(topn, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"topn": [vars(r) | {"full": vars(r.full), "clustered": vars(r.clustered)}
                                                  for r in topn],
                                         "mixture": mixture, "table": [vars(r) for r in table],
                                         "compact": compact}, indent=1))


if __name__ == "__main__":
    main()
