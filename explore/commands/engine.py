"""`explore serve` and `explore replay`: an engine worker, and a load generator for it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from explore.commands.common import add_dataset_args, dataset_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from streams.config import describe

    serve = sub.add_parser("serve", help="run an engine worker: interactions in, novel clusters and slates out",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Run one Faust worker of the engine in the foreground. Start more with the "
                                       "same --app-id to share the partitions.",
                           epilog="settings (command line > environment > --config file > default):\n"
                                  + describe() + "\n\nThe worker serves /metrics, /health, /ready and "
                                  "/users/{id} on its web port.\nAs a plain Faust worker: "
                                  "faust -A streams.wiring.app worker -l info (settings from the environment).")
    serve.add_argument("--config", type=Path, default=None, help="TOML or JSON file with settings (or EXPLORE_CONFIG)")
    serve.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (KAFKA_BOOTSTRAP)")
    serve.add_argument("--triton-url", default=None, help="Triton gRPC host:port (TRITON_URL); empty: onnxruntime only")
    serve.add_argument("--catalog", default=None,
                       help="catalog directory of `explore clusters build --out` (EXPLORE_CATALOG)")
    serve.add_argument("--repository", default=None, help="Triton model repository (EXPLORE_REPOSITORY)")
    serve.add_argument("--app-id", default=None, help="consumer group / changelog prefix (EXPLORE_APP_ID)")
    serve.add_argument("--web-port", type=int, default=None,
                       help="port of /metrics, /health, /ready and /users/{id} (EXPLORE_WEB_PORT)")
    serve.add_argument("--k", type=int, default=None,
                       help="context length: the user's last K distinct clusters (EXPLORE_K)")
    serve.add_argument("--m", type=int, default=None, help="novel clusters per slate (EXPLORE_M)")
    serve.add_argument("--n", type=int, default=None, help="items per slate (EXPLORE_N)")
    serve.add_argument("--batch-size", type=int, default=None, help="events per micro-batch (EXPLORE_BATCH_SIZE)")
    serve.add_argument("--store", default=None, choices=["memory://", "rocksdb://"],
                       help="where the worker keeps its tables: in memory or in RocksDB on disk (EXPLORE_STORE)")
    serve.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="any other setting of the table below, e.g. --set slate_max_age_s=600")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="log level of the Faust worker process (default: %(default)s)")
    serve.set_defaults(func=cmd_serve)

    replay = sub.add_parser("replay", help="load generator: a dataset's interactions to Kafka in time order",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(replay)
    replay.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP)")
    replay.add_argument("--topic", default="interactions",
                        help="topic to write to: the engine's input topic (its interactions_topic setting)")
    replay.add_argument("--partitions", type=int, default=8, help="partitions if the topic is created")
    replay.add_argument("--rate", type=float, default=1000.0, help="records per second (0: as fast as possible)")
    replay.add_argument("--start-fraction", type=float, default=0.0,
                        help="replay only interactions at or after this time quantile (0.8: the last 20%%)")
    replay.add_argument("--limit", type=int, default=0, help="at most this many records (0: all)")
    replay.add_argument("--seed", type=int, default=0,
                        help="random seed of --synthetic (the same seed: the same users)")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(func=cmd_replay)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run one engine worker in the foreground (Ctrl-C stops it cleanly)."""
    from streams.config import EngineConfig

    overrides = {"bootstrap": args.bootstrap, "triton_url": args.triton_url, "catalog": args.catalog,
                 "repository": args.repository, "app_id": args.app_id, "web_port": args.web_port,
                 "k": args.k, "m": args.m, "n": args.n, "batch_size": args.batch_size, "store": args.store}
    overrides.update(dict(s.split("=", 1) for s in args.set))
    try:
        cfg = EngineConfig.load(args.config, **overrides)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    from faust.worker import Worker

    from streams.infra.kafka_check import KafkaAccessError
    from streams.wiring.worker import create_app, ensure_topics

    try:
        cfg.canonical_url()  # a wildcard bind on a host whose name does not resolve: say so before starting
        ensure_topics(cfg)  # also the first contact with Kafka: credentials, TLS and ACLs are checked here
    except (ValueError, KafkaAccessError) as e:
        raise SystemExit(f"error: {e}") from None
    app = create_app(cfg)
    print(f"engine worker {cfg.app_id}: {cfg.interactions_topic} -> {cfg.recommendations_topic} on {cfg.bootstrap}; "
          f"Triton {cfg.triton_url or '(none: in-process onnxruntime)'}; http://{cfg.web_host}:{cfg.web_port}/metrics",
          flush=True)
    Worker(app, loglevel=args.log_level).execute_from_commandline()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """A dataset's interactions to the interactions topic, in time order, at a rate."""
    from explore.commands.common import engine_settings
    from streams.infra.kafka_check import KafkaAccessError, create_topic
    from streams.wiring.replay import dataset_events, produce

    cfg = engine_settings()
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        raise SystemExit("error: pass --bootstrap HOST:PORT or set KAFKA_BOOTSTRAP")
    ds = dataset_from_args(args)
    events = dataset_events(ds, args.start_fraction)
    if args.limit:
        events = events[: args.limit]
    try:
        create_topic(bootstrap, args.topic, partitions=args.partitions, security=cfg.kafka_security(),
                     replication_factor=cfg.replication_factor, min_insync_replicas=cfg.min_insync_replicas)
    except KafkaAccessError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"replaying {len(events):,} interactions of {ds.name} to {args.topic} on {bootstrap}"
          + (f" at {args.rate:,.0f}/s" if args.rate else " as fast as possible"), flush=True)
    timing = produce(bootstrap, args.topic, [e.encode() for e in events], rate=args.rate, progress=not args.quiet,
                     security=cfg.kafka_security())
    print(f"sent {timing['records']:,} records in {timing['seconds']:.1f} s ({timing['rate']:,.0f}/s)")
    return 0
