"""`explore`: every command of the engine, one subcommand each.

The parsers and commands live in `explore/commands/`, one module per command group; this module
assembles them and turns errors into one line. Subcommands import their packages lazily:
`explore --help` is instant and the streaming commands never import PyTorch.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from explore.commands import clusters, engine, infra, lifecycle, loop, novelty, report, seqrec
from explore.commands.common import ENV_HELP


def _raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so `with` blocks stop what they started."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="explore",
        description="Streaming engine for LLM-guided interest exploration: Kafka events in, novel "
                    "interest clusters and cluster-restricted slates out.",
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (infra, clusters, seqrec, novelty, engine, lifecycle, report, loop):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _raise_on_sigterm()
    from streams.infra.process import InfraError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (InfraError, ValueError, RuntimeError, FileNotFoundError) as e:
        # DataError, CatalogError and BalanceError are ValueErrors whose message says what to fix.
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started here was stopped", file=sys.stderr)
        return 130
    except Exception as e:  # a Kafka client's error (no broker, no access) is the user's to fix, not a crash
        if not type(e).__module__.startswith(("kafka.", "aiokafka.")):
            raise
        print(f"error: Kafka: {e} (is a broker at the bootstrap address, KAFKA_BOOTSTRAP or --bootstrap, up and "
              "reachable?)", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `explore clusters show ... | head`: the reader has what it wanted
        sys.stdout = None  # type: ignore[assignment]  # nothing left to flush at exit
        return 0
