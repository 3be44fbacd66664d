"""`explore infra`: start, inspect and stop Kafka and Triton, and round-trip through them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from explore.commands.common import ENV_HELP


def register(sub: argparse._SubParsersAction) -> None:
    infra = sub.add_parser("infra", help="start, inspect and stop Kafka and Triton",
                           description="Start, inspect and stop Kafka and Triton. What KAFKA_BOOTSTRAP "
                                       "or TRITON_URL names is used as it is; the rest is started here.",
                           epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    isub = infra.add_subparsers(dest="infra_command", metavar="ACTION", required=True)
    p = isub.add_parser("up", help="start the embedded broker and Triton in the background")
    p.add_argument("--kafka", choices=["tansu", "apache"], default="tansu",
                   help="embedded Tansu (default, starts in milliseconds) or real Apache Kafka (KRaft, "
                        "jars resolved through Maven once)")
    p.add_argument("--kafka-port", type=int, default=None, help="broker port (default: a free one)")
    p.add_argument("--model-repository", type=Path, default=None,
                   help="Triton model repository (default: one serving the tiny_linear check model)")
    p.set_defaults(func=cmd_infra_up)
    isub.add_parser("down", help="stop everything `infra up` started").set_defaults(func=cmd_infra_down)
    isub.add_parser("status", help="what runs where, and whether it answers").set_defaults(func=cmd_infra_status)
    isub.add_parser("check", help="round trip through the running broker and Triton"
                    ).set_defaults(func=cmd_infra_check)


def _default_repository() -> Path:
    """The model repository that `explore infra up` serves when none is given: `tiny_linear`."""
    from exporters.repository import write_tiny_repository
    from streams.infra.paths import explore_home

    return write_tiny_repository(explore_home() / "infra" / "model_repository")


# --- explore infra ------------------------------------------------------------------------


def cmd_infra_up(args: argparse.Namespace) -> int:
    from streams.infra import stack

    repo = args.model_repository or (None if stack.external_triton() else _default_repository())
    t0 = time.perf_counter()
    records = stack.up(repo, kafka=args.kafka, kafka_port=args.kafka_port)
    print(f"Up in {time.perf_counter() - t0:.1f} s:")
    _print_records([(r, True, "started" if r.pid else "external") for r in records])
    print("Stop with `explore infra down`.")
    return 0


def cmd_infra_down(args: argparse.Namespace) -> int:
    from streams.infra import stack

    stopped = stack.down()
    print("Stopped: " + ", ".join(stopped) if stopped else "Nothing was running.")
    return 0


def cmd_infra_status(args: argparse.Namespace) -> int:
    from streams.infra import stack

    rows = stack.status()
    if not rows:
        print("Nothing is up (and neither KAFKA_BOOTSTRAP nor TRITON_URL is set).")
        return 0
    _print_records(rows)
    return 0 if all(ok for _, ok, _ in rows) else 1


def _print_records(rows: list) -> None:
    print(f"  {'service':8} {'kind':9} {'address':22} {'process':11}  state")
    for r, ok, why in rows:
        pid = f"pid {r.pid}" if r.pid else "-"
        print(f"  {r.name:8} {r.kind:9} {r.address:22} {pid:11}  {'ok' if ok else 'DOWN'}: {why}")
        for key, value in r.extra.items():
            print(f"  {'':8} {'':9} {key}: {value}")
        if r.log:
            print(f"  {'':8} {'':9} log: {r.log}")


def cmd_infra_check(args: argparse.Namespace) -> int:
    from streams.infra import stack

    ends = stack.endpoints_from_state()
    repo = next((Path(r.extra["model_repository"]) for r in stack.read_state()
                 if r.name == "triton" and "model_repository" in r.extra), None)
    return _round_trips(ends, repo)


def _round_trips(ends, repo: Path | None) -> int:  # type: ignore[no-untyped-def]
    """Kafka produce/consume and Triton gRPC/HTTP/metrics against what runs; print what was measured."""
    from explore.commands.common import engine_settings
    from streams.infra.kafka_check import KafkaAccessError, kafka_round_trip
    from streams.infra.triton_check import triton_round_trip

    cfg = engine_settings()
    try:
        k = kafka_round_trip(ends.kafka_bootstrap, security=cfg.kafka_security())
    except KafkaAccessError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"Kafka  {ends.kafka_bootstrap}: {int(k['records'])} records produced in {k['produce_s'] * 1000:.0f} ms, "
          f"read back in order in {k['consume_s'] * 1000:.0f} ms")
    onnx_path = repo / "tiny_linear" / "1" / "model.onnx" if repo else None
    if onnx_path is None or not onnx_path.is_file():
        print(f"Triton {ends.triton_grpc}: ready (no tiny_linear model here to round-trip)")
        return 0
    t = triton_round_trip(ends.triton_grpc, ends.triton_http, onnx_path, metrics_url=ends.triton_metrics,
                          tls=cfg.triton_tls())
    parts = [f"gRPC {t['grpc_ms']:.1f} ms"]
    if "http_ms" in t:
        parts.append(f"HTTP {t['http_ms']:.1f} ms")
    if "metrics_success_count" in t:
        parts.append(f"metrics: {int(t['metrics_success_count'])} successful requests")
    print(f"Triton {ends.triton_grpc}: tiny_linear matches onnxruntime in-process ({', '.join(parts)})")
    return 0
