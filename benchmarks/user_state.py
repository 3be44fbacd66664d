"""What users cost a worker as their number grows (issue 15): state bytes, memory, changelog recovery.

For 10k / 100k users (and more with --users), in one run on Apache Kafka (KRaft, one broker):

1. Bytes per user: the state as the changelog stores it (Faust's JSON of `streams.core.state`'s dict,
   key and value) and as Python objects in a `memory://` table (tracemalloc of the dicts).
2. A real worker recovering those users: every user's state is written to the users table's
   changelog topic (8 partitions, each user in the partition its input records would take, as the
   engine writes them), then a worker starts with an empty data directory and the time until
   `/ready` (recovery done, novelty table loaded, processing) is measured, with its resident set
   and data directory; for `memory://` and for `rocksdb://`, and for `rocksdb://` once more after
   a clean stop (a restart that keeps its data directory replays only what it has not stored);
   with --gc-default, `memory://` once more with CPython's default GC threshold (see the setting
   `gc_young_threshold`).
   A sample of users is read back through `/users/{id}?local=1` and must equal what was written.

States are synthetic but full-sized: the engine's bounds filled (`recent_items` items,
`dedupe_ids` event ids, `feedback_max_open` open slates of M clusters, a slate, ~20 known
clusters), i.e. every user as heavy as a long-time user gets; a typical user is lighter. Timings
are one run on a shared 2-core machine: compare within the run.

Run: python benchmarks/user_state.py [--users 10000,100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streams.config import EngineConfig
from streams.core.feedback import open_slate
from streams.core.state import new_state
from streams.infra.process import free_port, wait_until
from streams.infra.worker_process import WorkerProcess
from streams.wiring.worker import ensure_topics

N_ITEMS, N_CLUSTERS = 320, 8  # the synthetic catalog the worker serves (build_models below)


def full_state(user: str, rnd: random.Random, cfg: EngineConfig, n_items: int = N_ITEMS,
               n_clusters: int = N_CLUSTERS) -> dict:
    """A state at the engine's bounds: as heavy as a user can make it (module docstring). Item and cluster
    ids are the served catalog's, so the worker can show the state (items by external id, as the state keeps
    them since issue 27: the synthetic catalog's "i003-017"; MovieLens's 1-6 digit ids are shorter)."""
    s = new_state()
    known = sorted(rnd.sample(range(n_clusters), n_clusters - 2))
    per_cluster = n_items // n_clusters
    s.update(items=[f"i{rnd.randrange(n_clusters):03d}-{rnd.randrange(per_cluster):03d}"
                    for _ in range(cfg.recent_items)], known=known, context=known[-cfg.k:],
             pos=[rnd.randrange(cfg.partitions), rnd.randrange(10**7)],
             ids=[f"{user}-{rnd.randrange(10**9)}" for _ in range(cfg.dedupe_ids)], n=5000,
             ts=1.7e9 + rnd.random() * 1e7, seen=1.7e9)
    s["slate"] = {"context": list(s["context"]), "clusters": rnd.sample(range(n_clusters), cfg.m),
                  "items": [str(rnd.randrange(n_items)) for _ in range(cfg.n)], "ts": s["ts"]}
    versions = {"catalog": "c" * 16, "seqrec": "s" * 16, "novelty": "n" * 16}
    s["proposals"] = [open_slate(s["n"] - j, s["ts"], s["context"], rnd.sample(range(n_clusters), cfg.m), "table",
                                 versions, s["vs"]) for j in range(cfg.feedback_max_open)]
    return s


def changelog_record(user: str, state: dict) -> tuple[bytes, bytes]:
    """Key and value as Faust writes them for the `users` table (key_type str, value_type None: JSON both)."""
    return json.dumps(user).encode(), json.dumps(state).encode()


def python_bytes(states: dict[str, dict]) -> int:
    """Bytes the states take as Python objects (a rebuilt copy, measured by tracemalloc)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    copy = {u: json.loads(json.dumps(s)) for u, s in states.items()}
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del copy
    return size


def write_changelog(bootstrap: str, topic: str, partitions: int, n_users: int, cfg: EngineConfig,
                    tag: str) -> tuple[dict[str, dict], int]:
    """Write n_users states to `topic`, each in its user's input partition; (a sample of the states, bytes)."""
    from kafka import KafkaProducer
    from kafka.partitioner.default import murmur2

    rnd = random.Random(n_users)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024,
                             compression_type=None, max_request_size=8 * 1024 * 1024)
    sample: dict[str, dict] = {}
    total = 0
    try:
        for i in range(n_users):
            user = f"{tag}-u{i}"
            state = full_state(user, rnd, cfg)
            key, value = changelog_record(user, state)
            part = (murmur2(user.encode()) & 0x7FFFFFFF) % partitions  # the input topic's partition of the user
            producer.send(topic, key=key, value=value, partition=part)
            total += len(key) + len(value)
            if i % max(1, n_users // 20) == 0:
                sample[user] = state
        producer.flush()
    finally:
        producer.close()
    return sample, total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def start_and_time(cfg: EngineConfig, work: Path, name: str, sample: dict[str, dict]) -> dict:
    """Start a worker, time it to /ready, check the sampled users, measure it; the worker is left running."""
    worker = WorkerProcess(cfg, work, name)
    t0 = time.perf_counter()
    worker.start(wait_s=0)
    wait_until(worker.ready, 1800, f"{name} ready", worker.proc, interval_s=0.1)
    ready_s = time.perf_counter() - t0
    for user, state in sample.items():
        code, body = worker.get(f"/users/{user}?local=1")
        seen = (body.get("events_applied"), body.get("input_position"), body.get("last_slate"),
                [p["clusters"] for p in body.get("open_proposals", [])])
        wrote = (state["n"], state["pos"], state["slate"], [[c for c, _ in p["open"]] for p in state["proposals"]])
        if code != 200 or seen != wrote:
            raise AssertionError(f"{name}: user {user} not recovered as written: {code} {str(body)[:300]}")
    return {"worker": worker, "ready_s": ready_s, "rss": rss_bytes(worker.proc.pid)}


def measure_users(bootstrap: str, base: EngineConfig, work: Path, n_users: int, gc_default: bool = False) -> dict:
    """Every measurement of the module docstring for one user count."""
    tag = f"s{n_users}"
    cfg = replace(base, app_id=f"state-{tag}", interactions_topic=f"in-{tag}", dlq_topic=f"dlq-{tag}",
                  recommendations_topic=f"recs-{tag}", feedback_topic=f"fb-{tag}")
    ensure_topics(cfg)
    t0 = time.perf_counter()
    sample, topic_bytes = write_changelog(bootstrap, f"{cfg.app_id}-users-changelog", cfg.partitions, n_users, cfg, tag)
    write_s = time.perf_counter() - t0
    out: dict = {"users": n_users, "changelog_bytes": topic_bytes, "changelog_write_s": write_s,
                 "python_bytes_per_user": python_bytes(sample) / len(sample)}
    for store in ("memory://", "rocksdb://"):
        label = store.split(":")[0]
        data = work / f"{tag}-{label}"
        run = start_and_time(replace(cfg, store=store, data_dir=str(data), web_port=free_port()), work,
                             f"{tag}-{label}", sample)
        out[label] = {"ready_s": run["ready_s"], "rss": run["rss"]}
        if store == "rocksdb://":
            run["worker"].stop()
            out[label]["disk"] = dir_bytes(data)
            again = start_and_time(replace(cfg, store=store, data_dir=str(data), web_port=free_port()), work,
                                   f"{tag}-{label}-again", sample)
            out[label]["restart_ready_s"], out[label]["restart_rss"] = again["ready_s"], again["rss"]
            again["worker"].stop()
        else:
            run["worker"].stop()
        shutil.rmtree(data, ignore_errors=True)
    if gc_default:  # the same recovery with CPython's own GC thresholds: what `gc_young_threshold` buys
        data = work / f"{tag}-gc700"
        run = start_and_time(replace(cfg, store="memory://", gc_young_threshold=700, data_dir=str(data),
                                     web_port=free_port()), work, f"{tag}-gc700", sample)
        run["worker"].stop()
        out["memory_gc700"] = {"ready_s": run["ready_s"], "rss": run["rss"]}
        shutil.rmtree(data, ignore_errors=True)
    return out


def baseline(base: EngineConfig, work: Path) -> dict:
    """A worker with no users: what the per-user figures are measured against."""
    cfg = replace(base, app_id="state-empty", interactions_topic="in-empty", dlq_topic="dlq-empty",
                  recommendations_topic="recs-empty", feedback_topic="fb-empty", web_port=free_port(),
                  data_dir=str(work / "empty"))
    ensure_topics(cfg)
    run = start_and_time(cfg, work, "empty", {})
    run["worker"].stop()
    return {"ready_s": run["ready_s"], "rss": run["rss"]}


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def report(empty: dict, rows: list[dict]) -> None:
    print(f"\nworker with no users: ready in {empty['ready_s']:.1f} s, RSS {mb(empty['rss'])}")
    print(f"{'users':>9} {'changelog':>10} {'B/user':>7} {'py B/user':>9} {'mem ready':>9} {'mem RSS':>9} "
          f"{'rdb ready':>9} {'rdb RSS':>9} {'rdb disk':>9} {'rdb again':>9}")
    for r in rows:
        m, d = r["memory"], r["rocksdb"]
        print(f"{r['users']:>9,} {mb(r['changelog_bytes']):>10} {r['changelog_bytes'] / r['users']:>7,.0f} "
              f"{r['python_bytes_per_user']:>9,.0f} {m['ready_s']:>8.1f}s {mb(m['rss']):>9} {d['ready_s']:>8.1f}s "
              f"{mb(d['rss']):>9} {mb(d['disk']):>9} {d['restart_ready_s']:>8.1f}s")
    for r in rows:
        m, d = r["memory"], r["rocksdb"]
        print(f"{r['users']:,} users: recovery {r['users'] / max(m['ready_s'] - empty['ready_s'], 1e-9):,.0f} users/s "
              f"(memory://), {r['users'] / max(d['ready_s'] - empty['ready_s'], 1e-9):,.0f} users/s (rocksdb://); "
              f"RSS over the empty worker {(m['rss'] - empty['rss']) / r['users']:,.0f} B/user (memory://), "
              f"{(d['rss'] - empty['rss']) / r['users']:,.0f} B/user (rocksdb://)")
        if "memory_gc700" in r:
            print(f"{r['users']:,} users, memory://, CPython's default GC threshold (700): ready in "
                  f"{r['memory_gc700']['ready_s']:.1f} s against {m['ready_s']:.1f} s with gc_young_threshold "
                  f"{EngineConfig().gc_young_threshold:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=lambda t: [int(x) for x in t.split(",")], default=[10_000, 100_000])
    ap.add_argument("--json", type=Path, help="write every measurement here")
    ap.add_argument("--gc-default", action="store_true",
                    help="also recover memory:// with CPython's default GC threshold (700), side by side")
    args = ap.parse_args()
    from engine_throughput import build_models

    from streams.infra.apache_kafka import ApacheKafka

    work = Path(tempfile.mkdtemp(prefix="user-state-"))
    print(f"building a small synthetic catalog and models in {work} ...", flush=True)
    catalog, repo, _, _, _ = build_models(work, 200)
    with ApacheKafka(work / "kafka") as kafka:
        base = EngineConfig().with_values({"bootstrap": kafka.bootstrap, "catalog": str(catalog),
                                           "repository": str(repo), "novelty_topic": "novel-state"})
        empty = baseline(base, work)
        rows = []
        for n in args.users:
            print(f"{n:,} users: writing the changelog, then recovering it ...", flush=True)
            rows.append(measure_users(kafka.bootstrap, base, work, n, args.gc_default))
            print(json.dumps(rows[-1]), flush=True)
    report(empty, rows)
    if args.json:
        args.json.write_text(json.dumps({"empty": empty, "rows": rows}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
