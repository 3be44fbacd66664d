"""A worker's start-up with the novelty table of a 1,000-cluster catalog, end to end (issue 15, item 2).

The goal: with a ~1M-context table, a worker's resident set under 2 GB and `/ready` within 60 s.
`benchmarks/scale.py` measured the table alone (`CompactTable` filled from parsed rows, no
broker, no worker); this is the real thing on Apache Kafka (KRaft, one broker):

1. A catalog of C clusters (synthetic data, its planted clusters), SASRec and the novelty LM trained
   for one epoch and exported (a worker needs both; what they learnt does not change the cost).
2. Every ordered context of K = 2 (C(C-1): 999,000 at C = 1,000) gets a row of `table_depth`
   clusters with random scores, published to the novelty topic as the precompute does
   (`row_value`, this catalog's version): bytes and the time to publish are reported.
3. A worker with an empty novelty topic, then `--starts` workers with the full table, one after
   the other, each started from nothing and timed to `/ready` (the follower has read the topic to
   its end); resident set (at ready and its peak while starting) and contexts held (`/ready`'s
   `novelty_contexts`, must equal the rows published). Only cost is measured: that the engine
   serves the rows it holds is the engine tests' part.
4. `--items N` (issue 27): N published items (`explore items publish`'s records, a short title and
   text each) on the items topic, and `--starts` workers with the empty table and those items, timed
   to `/ready` as above (which waits for the items follower too); items held (`published_items`).
5. `--formats binary,json`: the same table also as JSON rows (the format before the binary one, which
   workers still read) on a topic of its own, and the starts alternate between the two, so that the
   formats are compared side by side in one run.

One run on a shared 2-core machine: compare within the run. Run:
python benchmarks/table_ready.py [--clusters 1000] [--contexts N (a prefix of the contexts, for a
quick run)] [--starts 2] [--formats binary[,json]] [--work DIR (keep and reuse the published tables)]
[--items N] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from user_state import mb, rss_bytes  # the same resident-set reading and units as the users' benchmark

from streams.config import EngineConfig
from streams.core.table import context_key, row_value
from streams.infra.process import free_port, wait_until
from streams.infra.worker_process import WorkerProcess
from streams.wiring.worker import ensure_topics


def planted_catalog(ds, item_cluster, n_clusters: int):  # type: ignore[no-untyped-def]
    """The synthetic data's planted clusters as a catalog (two levels: 16 fine clusters to a coarse one),
    with distinct multi-word descriptions: clustering 10,000 items into 1,000 balanced clusters
    (`build_catalog`) takes many minutes here and would measure nothing this benchmark is about."""
    import numpy as np

    from interests.clusters.catalog import Catalog, Cluster

    fine = np.asarray(item_cluster, dtype=np.int32)
    coarse = fine // 16
    n_coarse = int(coarse.max()) + 1
    sizes, coarse_sizes = np.bincount(fine, minlength=n_clusters), np.bincount(coarse, minlength=n_coarse)
    levels = [[Cluster(c, 0, None, f"films of kind k{c}", [f"k{c}"], int(coarse_sizes[c]), 0)
               for c in range(n_coarse)],
              [Cluster(c, 1, c // 16, f"films about a{c % 16} with b{c // 16} and c{(c * 7) % 5}",
                       [f"a{c % 16}", f"b{c // 16}"], int(sizes[c]), 0) for c in range(n_clusters)]]
    return Catalog([n_coarse, n_clusters], levels, list(map(str, ds.item_ids)), list(map(str, ds.item_ids)),
                   np.stack([coarse, fine]), {"dataset": "synthetic, planted clusters"})


def build_models(work: Path, n_clusters: int) -> tuple[Path, Path, str]:
    """A catalog of `n_clusters` and the two exported models a worker serves (one epoch each)."""
    from engine_throughput import export_models

    from interests.data.synthetic import make_synthetic

    ds, truth = make_synthetic(n_clusters=n_clusters, items_per_cluster=10, n_users=2 * n_clusters, seed=1)
    catalog = planted_catalog(ds, truth.item_cluster, n_clusters)
    export_models(ds, catalog, work, seqrec_epochs=1, lm_epochs=1)
    return work / "catalog", work / "repo", catalog.version


def json_row(clusters: list[int], scores: list[float], version: str, source: str) -> bytes:
    """A row as JSON, as `row_value` wrote it before the binary format (workers still read it)."""
    return json.dumps({"clusters": clusters, "scores": scores, "catalog_version": version, "source": source}).encode()


ENCODERS = {"binary": row_value, "json": json_row}


def publish_table(bootstrap: str, topic: str, n_clusters: int, depth: int, version: str,
                  limit: int | None, fmt: str) -> tuple[int, int, float]:
    """Publish a row in format `fmt` for every ordered context of 2 clusters (the first `limit` of them):
    (rows, bytes of keys and values, seconds). The same rows for either format (a seeded generator)."""
    from kafka import KafkaProducer
    from tqdm import tqdm

    rnd = random.Random(n_clusters)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50, batch_size=1024 * 1024,
                             max_request_size=8 * 1024 * 1024)
    contexts = itertools.islice(itertools.permutations(range(n_clusters), 2), limit)
    total = n_clusters * (n_clusters - 1) if limit is None else min(limit, n_clusters * (n_clusters - 1))
    rows = size = 0
    t0 = time.perf_counter()
    try:
        for context in tqdm(contexts, total=total, desc=f"publishing {fmt} rows", unit="row", mininterval=5):
            clusters = [c for c in rnd.sample(range(n_clusters), depth + 2) if c not in context][:depth]
            scores = sorted((-rnd.random() * 10 for _ in clusters), reverse=True)
            key, value = context_key(context), ENCODERS[fmt](clusters, scores, version, source="precompute")
            producer.send(topic, key=key, value=value)
            rows, size = rows + 1, size + len(key) + len(value)
        producer.flush()
    finally:
        producer.close()
    return rows, size, time.perf_counter() - t0


def publish_items(bootstrap: str, topic: str, n: int, n_clusters: int, version: str, level: int) -> tuple[int, float]:
    """`n` published items as `explore items publish` writes them: (bytes of keys and values, seconds)."""
    from kafka import KafkaProducer
    from tqdm import tqdm

    from streams.core.items import PublishedItem

    rnd = random.Random(n)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50, batch_size=1024 * 1024,
                             max_request_size=8 * 1024 * 1024)
    size = 0
    t0 = time.perf_counter()
    try:
        for i in tqdm(range(n), desc="publishing items", unit="item", mininterval=5):
            item = PublishedItem(f"new-{i}", f"A new film {i} (2027)", "Adventure | Comedy | a new film",
                                 version, level, rnd.randrange(n_clusters), rnd.random(), "tfidf", 1.8e9)
            value = item.encode()
            producer.send(topic, key=item.key, value=value)
            size += len(item.key) + len(value)
        producer.flush()
    finally:
        producer.close()
    return size, time.perf_counter() - t0


def start_and_time(cfg: EngineConfig, work: Path, name: str) -> dict:
    """Start a worker from nothing, time it to /ready, read what it holds; stop it."""
    worker = WorkerProcess(cfg, work, name)
    t0 = time.perf_counter()
    worker.start(wait_s=0)
    peak = 0
    try:
        def ready() -> bool:
            nonlocal peak
            peak = max(peak, rss_bytes(worker.proc.pid))
            return worker.ready()

        wait_until(ready, 1800, f"{name} ready", worker.proc, interval_s=0.2)
        ready_s = time.perf_counter() - t0
        _, body = worker.get("/ready")
        rss = rss_bytes(worker.proc.pid)
    finally:
        worker.stop()
    return {"ready_s": ready_s, "rss": rss, "peak_rss": max(peak, rss), "contexts": body.get("novelty_contexts"),
            "items": body.get("published_items")}


def report(out: dict) -> None:
    """One line per worker start, against the empty-table worker."""
    e, depth = out["empty"], out["depth"]
    print(f"\nworker, empty table: ready in {e['ready_s']:.1f} s, RSS {mb(e['rss'])}")
    for name, f in out.get("items", {}).items():
        n, size = out["published_items"]["items"], out["published_items"]["bytes"]
        print(f"worker with {f['items']:,} published items ({mb(size)} on the topic), {name}: ready in "
              f"{f['ready_s']:.1f} s, RSS {mb(f['rss'])} (peak {mb(f['peak_rss'])}): "
              f"{(f['rss'] - e['rss']) / max(n, 1):,.0f} B an item over the empty worker")
        if f["items"] != n:
            raise SystemExit(f"the worker holds {f['items']} published items, {n} were published")
    for name, f in out["full"].items():
        published = out["published"][f["format"]]
        rows, size = published["rows"], published["bytes"]
        extra = f["ready_s"] - e["ready_s"]
        print(f"worker with {f['contexts']:,} contexts ({out['clusters']} clusters, rows of {depth}, {f['format']}: "
              f"{mb(size)} on the topic), {name}: ready in {f['ready_s']:.1f} s, RSS {mb(f['rss'])} (peak "
              f"{mb(f['peak_rss'])}): {(f['rss'] - e['rss']) / max(rows, 1):,.0f} B a context over the empty worker"
              + (f"; the table's share of the start {extra:.1f} s, {size / 2**20 / extra:,.0f} MB/s, "
                 f"{rows / extra:,.0f} rows/s" if extra > 1 else ""))  # below 1 s: start-up noise
        if f["contexts"] != rows:
            raise SystemExit(f"the worker holds {f['contexts']} contexts, {rows} were published")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clusters", type=int, default=1000, help="clusters of the synthetic catalog (default 1000)")
    ap.add_argument("--contexts", type=int, help="publish only the first N contexts (a quick run)")
    ap.add_argument("--starts", type=int, default=2, help="full-table worker starts, one after the other (default 2)")
    ap.add_argument("--formats", default="binary", help="row formats to publish and start from, comma-separated: "
                                                        "binary (what the engine publishes), json (the format "
                                                        "before it); starts alternate between them (default binary)")
    ap.add_argument("--work", type=Path, help="keep everything here (models, the broker's data) and, when run "
                                              "again with the same --clusters/--contexts, reuse the published "
                                              "tables instead of publishing them again (~10 min at 1,000 clusters)")
    ap.add_argument("--items", type=int, default=0, help="also publish this many new items (the items topic, "
                                                        "issue 27) and time --starts workers with them")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or set(formats) - set(ENCODERS):
        ap.error(f"--formats takes {' and '.join(ENCODERS)}, comma-separated; got {args.formats!r}")
    from interests.novelty.precompute import table_depth
    from streams.infra.apache_kafka import ApacheKafka

    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="table-ready-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"building a {args.clusters}-cluster catalog and its models in {work} ...", flush=True)
    catalog, repo, version = build_models(work, args.clusters)
    print(f"models built in {time.perf_counter() - t0:.0f} s", flush=True)
    depth = table_depth(args.clusters, 2)
    out: dict = {"clusters": args.clusters, "depth": depth, "full": {}}
    with ApacheKafka(work / "kafka") as kafka:
        base = EngineConfig().with_values({"bootstrap": kafka.bootstrap, "catalog": str(catalog),
                                           "repository": str(repo)})

        def worker_cfg(tag: str, topic: str, items_topic: str = "items-none") -> EngineConfig:
            shutil.rmtree(work / f"data-{tag}", ignore_errors=True)  # every worker starts from nothing
            cfg = replace(base, app_id=f"table-{tag}", interactions_topic=f"in-{tag}", dlq_topic=f"dlq-{tag}",
                          recommendations_topic=f"recs-{tag}", feedback_topic=f"fb-{tag}", items_topic=items_topic,
                          novelty_topic=topic, web_port=free_port(), data_dir=str(work / f"data-{tag}"))
            ensure_topics(cfg)
            return cfg

        out["empty"] = start_and_time(worker_cfg("empty", "novel-empty"), work, "empty")
        print(f"worker, empty table: ready in {out['empty']['ready_s']:.1f} s", flush=True)
        topics, out["published"] = {}, {}
        for fmt in formats:
            # The JSON table's topic keeps the name it had before the binary format: a kept --work is reused.
            suffix = "-nt1" if fmt == "binary" else ""
            topics[fmt] = f"novel-{args.clusters}-{args.contexts or 'all'}-{version}{suffix}"
            done = work / f"{topics[fmt]}.json"  # what was published, written once the producer flushed
            if done.is_file():
                out["published"][fmt] = json.loads(done.read_text())
                print(f"reusing the {out['published'][fmt]['rows']:,} {fmt} rows published before on {topics[fmt]}",
                      flush=True)
                continue
            ensure_topics(replace(base, novelty_topic=topics[fmt]))
            rows, size, secs = publish_table(kafka.bootstrap, topics[fmt], args.clusters, depth, version,
                                             args.contexts, fmt)
            out["published"][fmt] = {"rows": rows, "bytes": size, "seconds": secs}
            done.write_text(json.dumps(out["published"][fmt]))
            print(f"published {rows:,} {fmt} rows, {mb(size)}, in {secs:.0f} s", flush=True)
        if args.items:
            items_topic = f"items-{args.items}-{version}"
            ensure_topics(replace(base, items_topic=items_topic))
            size, secs = publish_items(kafka.bootstrap, items_topic, args.items, args.clusters, version, 1)
            out["published_items"], out["items"] = {"items": args.items, "bytes": size, "seconds": secs}, {}
            print(f"published {args.items:,} items, {mb(size)}, in {secs:.0f} s", flush=True)
            for start in range(1, args.starts + 1):
                result = start_and_time(worker_cfg(f"items-{start}", "novel-empty", items_topic), work,
                                        f"items-{start}")
                out["items"][f"start {start}"] = result
                print(f"items, start {start}: ready in {result['ready_s']:.1f} s", flush=True)
        for start in range(1, args.starts + 1):
            for fmt in formats:
                name = f"{fmt}, start {start}"
                result = start_and_time(worker_cfg(f"full-{fmt}-{start}", topics[fmt]), work, f"full-{fmt}-{start}")
                out["full"][name] = {**result, "format": fmt}
                print(f"{name}: ready in {result['ready_s']:.1f} s", flush=True)
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
