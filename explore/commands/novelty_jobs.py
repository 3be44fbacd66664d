"""`explore novelty enqueue / precompute-worker / precompute-status`: the precompute as a distributed job;
`explore novelty dump`: what the novelty topic holds.

Thin wiring: the logic is `streams.precompute.jobs` (requests, progress), `streams.precompute.worker`
(the transactional loop) and `streams.core.table` (rows). The single-process `explore novelty
precompute` stays for small catalogs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from explore.commands.common import add_dataset_args

BOOTSTRAP_HELP = "Kafka bootstrap (default: $KAFKA_BOOTSTRAP)"
GROUP_HELP = "the job's consumer group: every worker of one job uses the same"
REQUESTS_HELP = "the job's requests topic, a request per context: enqueue writes it, precompute-workers answer it"


def register(nsub: argparse._SubParsersAction) -> None:
    """The three subcommands, under `explore novelty`."""
    d = argparse.ArgumentDefaultsHelpFormatter
    ne = nsub.add_parser("enqueue", formatter_class=d,
                         help="a distributed precompute job: one request per context not yet on the novelty topic")
    add_dataset_args(ne)
    ne.add_argument("--catalog", type=Path, default=Path("runs/catalog"), help="with the data: its seen contexts")
    ne.add_argument("--all-contexts", action="store_true", help="every ordered K-tuple of distinct clusters")
    _common(ne)
    ne.add_argument("--partitions", type=int, default=8, help="partitions of a new requests topic: the most "
                                                             "workers that can share the job")
    ne.add_argument("--watch", action="store_true", help="then show the job's progress until it is done")
    ne.set_defaults(func=cmd_enqueue)
    nw = nsub.add_parser("precompute-worker", formatter_class=d,
                         help="answer a job's requests through Triton's interest_generator, exactly once")
    _common(nw)
    nw.add_argument("--triton-url", default=None, help="Triton gRPC host:port (default: $TRITON_URL)")
    nw.add_argument("--worker-id", default=None, help="this worker's name (default: the host name); a worker "
                                                      "restarted under the same name aborts its predecessor's "
                                                      "open transaction at once")
    nw.add_argument("--batch", type=int, default=64, help="requests per batch and transaction")
    nw.add_argument("--idle-exit-s", type=float, default=0.0, help="exit after this long without a request "
                                                                   "(0: run until stopped)")
    nw.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here (0: none)")
    nw.add_argument("--triton-timeout-s", type=float, default=60.0,
                    help="seconds a batch's Triton call may take; past it the batch's transaction is aborted and "
                         "the batch read again")
    nw.set_defaults(func=cmd_worker)
    ns = nsub.add_parser("precompute-status", formatter_class=d, help="a job's progress: requests answered of all")
    ns.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    ns.add_argument("--requests-topic", default="novelty-requests", help=REQUESTS_HELP)
    ns.add_argument("--group", default="novelty-precompute", help=GROUP_HELP)
    ns.add_argument("--watch", action="store_true", help="a progress bar until the job is done")
    ns.set_defaults(func=cmd_status)
    nd = nsub.add_parser("dump", formatter_class=d,
                         help="the novelty topic's rows as JSON lines (rows are binary on the topic), as "
                              "`precompute --out` writes them: for people, and for `rerank --table`")
    nd.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    nd.add_argument("--topic", default="novel-interests",
                    help="the compacted novelty topic to read (the engine's novelty_topic)")
    nd.add_argument("--context", default=None, help="only this context's row, as the table keys it (\"12,7\": "
                                                    "cluster ids, most recent last)")
    nd.add_argument("--out", type=Path, default=None, help="write the rows here (default: standard output)")
    nd.set_defaults(func=cmd_dump)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", type=Path, default=Path("runs/triton"),
                   help="the Triton model repository with interest_generator (its catalog, K, batch limit)")
    p.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    p.add_argument("--requests-topic", default="novelty-requests", help=REQUESTS_HELP)
    p.add_argument("--topic", default="novel-interests", help="the novelty topic the rows go to")
    p.add_argument("--group", default="novelty-precompute", help=GROUP_HELP)


def _bootstrap(args: argparse.Namespace) -> str:
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP", "")
    if not bootstrap:
        raise SystemExit("error: pass --bootstrap or set KAFKA_BOOTSTRAP")
    return bootstrap


def _contexts(args: argparse.Namespace, serving) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """Every ordered K-tuple, or the contexts seen in the data (as `explore novelty precompute` takes them)."""
    if args.all_contexts:
        return [list(c) for c in itertools.permutations(range(serving.n_clusters), serving.k)]
    from explore.commands.common import novelty_split
    from interests.clusters.catalog import CatalogError

    _, catalog, _, examples, _ = novelty_split(args, serving.k, serving.level)
    if catalog.version != serving.catalog_version:  # else the contexts would name another catalog's clusters
        raise CatalogError(f"{args.catalog} is catalog {catalog.version}; {args.repository}'s interest_generator "
                           f"was exported with catalog {serving.catalog_version}")
    return np.unique(examples.contexts, axis=0).tolist()


def cmd_enqueue(args: argparse.Namespace) -> int:
    from explore.commands.common import engine_settings
    from streams.core.model_files import novelty_serving
    from streams.precompute.jobs import enqueue, pending, read_published

    serving, cfg, bootstrap = novelty_serving(args.repository), engine_settings(), _bootstrap(args)
    contexts = _contexts(args, serving)
    done = read_published(bootstrap, args.topic, serving.catalog_version, serving.k, serving.n_clusters,
                          cfg.kafka_security())
    todo = pending(contexts, done)
    sent = enqueue(bootstrap, args.requests_topic, todo, serving.catalog_version, args.partitions,
                   cfg.kafka_security(), cfg.replication_factor, cfg.min_insync_replicas)
    print(f"{len(contexts):,} contexts, {len(contexts) - len(todo):,} already on {args.topic!r} for catalog "
          f"{serving.catalog_version}; enqueued {sent:,} requests to {args.requests_topic!r}")
    return _watch(bootstrap, args.requests_topic, args.group, cfg.kafka_security()) if args.watch else 0


def cmd_status(args: argparse.Namespace) -> int:
    from explore.commands.common import engine_settings
    from streams.precompute.jobs import read_progress

    bootstrap, security = _bootstrap(args), engine_settings().kafka_security()
    if args.watch:
        return _watch(bootstrap, args.requests_topic, args.group, security)
    p = read_progress(bootstrap, args.requests_topic, args.group, security)
    print(f"{p.done:,} of {p.total:,} requests answered, {p.left:,} left (group {args.group!r})")
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    """The table the topic holds after compaction (read_committed, as workers read it), a row a line."""
    from explore.commands.common import engine_settings
    from streams.core.table import context_key, latest_rows
    from streams.wiring.topic_reader import TopicMissing, read_topic_records

    bootstrap, security = _bootstrap(args), engine_settings().kafka_security()
    try:
        records = read_topic_records(bootstrap, args.topic, security, timeout_s=600, isolation="read_committed")
    except TopicMissing as exc:
        raise SystemExit(f"error: {exc}") from None
    rows, unreadable = latest_rows(records)
    if args.context is not None:
        rows = [r for r in rows if context_key(r["context"]).decode() == args.context.replace(" ", "")]
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    if args.out is None:
        sys.stdout.write(lines)
    else:
        args.out.write_text(lines)
    print(f"{len(rows):,} rows from {len(records):,} records of {args.topic!r}"
          + (f"; {unreadable:,} records were neither a row nor a tombstone" if unreadable else "")
          + (f"; written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0 if rows or args.context is None else 1


def _watch(bootstrap: str, topic: str, group: str, security) -> int:  # type: ignore[no-untyped-def]
    """A tqdm bar over the group's committed offsets until every request is answered."""
    from tqdm import tqdm

    from streams.precompute.jobs import read_progress

    p = read_progress(bootstrap, topic, group, security)
    with tqdm(total=p.total, initial=p.done, unit="ctx", desc="precompute") as bar:
        while p.left > 0:
            time.sleep(2.0)
            p = read_progress(bootstrap, topic, group, security)
            bar.update(p.done - bar.n)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from explore.commands.common import engine_settings
    from streams.core.model_files import novelty_serving
    from streams.precompute.worker import WorkerSettings, serve

    cfg = engine_settings()
    url = args.triton_url or cfg.triton_url
    if not url:
        raise SystemExit("error: a precompute worker needs Triton: pass --triton-url or set TRITON_URL")
    extra = {"worker_id": args.worker_id} if args.worker_id else {}
    settings = WorkerSettings(_bootstrap(args), novelty_serving(args.repository), args.requests_topic, args.topic,
                              args.group, batch=args.batch, idle_exit_s=args.idle_exit_s,
                              security=cfg.kafka_security(), **extra)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, then leave the group
        signal.signal(sig, lambda *_: stop.set())
    totals = serve(settings, url, args.triton_timeout_s, args.metrics_port, cfg.triton_tls(), stop)
    print(totals.line(), flush=True)
    return 0
