"""`explore loop`: the feedback loop offline, on the real engine (`explore loop ab`)."""

from __future__ import annotations

import argparse

from explore.commands.common import ALPHA_HELP, STEPS_HELP, add_dataset_args, levels
from interests.alignment.best_of_n import MIN_HELDOUT_PAIRS

AB_DESCRIPTION = """\
The offline protocol of the feedback loop, in one command, on the real engine (embedded Kafka,
Triton and engine workers, as `explore demo` runs them).

Time is cut in three: the training period (the models learn from it), period A (the first part of
the held-out time: feedback to align on) and period B (the rest: the test). Nothing is chosen on B.

  1. data and periods; models built on the training period, or --reuse a demo's (checked: same
     training period, same items);
  2. arm A: a worker replays the training period fast (users' state), then A one event per
     micro-batch, so that every context change gets a slate and its proposals resolve into feedback;
  3. `align` on A's feedback (fixed --min-events/--steps/--alpha), the novelty table re-ranked by
     best-of-n (--best-of) with the alignment model;
  4. period B twice, each arm with topics, consumer group and state of its own, built the same way
     (training period and A fast, B one event per batch): with the LM's table, then the aligned one.
     Both arms make their slates at the same moments; they differ only in the table's order;
  5. the report: acceptance on B per arm (every proposal of a B slate; accepted when its feedback
     record says so), by rank, per slate, with bootstrap intervals over users; the same slates
     paired (difference with a paired bootstrap, exact McNemar); the judge's hit rates of both
     tables on B's novel-cluster moments. Printed, and written to RUN/ab.md and RUN/ab.json.

Acceptance is off-policy: the replayed users did what the data set says, whatever the engine
showed; "accepted" means they went to the proposed cluster anyway.
"""


def register(sub: argparse._SubParsersAction) -> None:
    loop = sub.add_parser("loop", help="the feedback loop offline: align on one period, test on the next")
    lsub = loop.add_subparsers(dest="loop_command", metavar="ACTION", required=True)
    ab = lsub.add_parser("ab", help="replay A, align on its feedback, replay B with and without alignment, report",
                         description=AB_DESCRIPTION, formatter_class=_Formatter)
    add_dataset_args(ab, synthetic_default=True)
    ab.add_argument("--users", dest="synthetic_users", type=int, default=400,
                    help="synthetic users (the same as --synthetic-users)")
    ab.add_argument("--reuse", default=None, metavar="RUN",
                    help="a run directory of `explore demo` (or of this command) whose models to use instead of "
                         "training them: its training period must be this one (same data and --holdout)")
    ab.add_argument("--model-size", choices=["auto", "small", "full"], default="auto",
                    help="without --reuse: the models' sizes, as `explore demo --model-size`")
    ab.add_argument("--levels", type=levels, default=None,
                    help="without --reuse: the catalog's cluster counts, e.g. 8,32 (default: as --model-size's)")
    ab.add_argument("--holdout", type=float, default=0.2,
                    help="share of time (the latest) held out from training: periods A and B (as the demo's)")
    ab.add_argument("--b-share", type=float, default=0.5, help="share of the held-out time that is period B")
    ab.add_argument("--best-of", type=int, default=10,
                    help="the alignment model picks among the LM's first this many candidates per context")
    ab.add_argument("--min-events", type=int, default=5, help="align: outcomes a (context, candidate) group needs")
    ab.add_argument("--steps", type=int, default=10, help="align: " + STEPS_HELP)
    ab.add_argument("--alpha", type=float, default=1.0, help="align: " + ALPHA_HELP)
    ab.add_argument("--min-pairs", type=int, default=MIN_HELDOUT_PAIRS, metavar="P",
                    help="stop after A unless the alignment model was checked on at least P held-out candidate pairs "
                         "and ordered them better than the LM's ranks, as `explore novelty rerank` requires before "
                         "it publishes; 0: re-rank anyway, to measure what an unchecked model does")
    ab.add_argument("--m", type=int, default=3, help="novel clusters per slate (the engine's M), and the judge's M")
    ab.add_argument("--kafka", choices=["tansu", "apache"], default="tansu",
                    help="which broker to start. Each arm's worker restarts once; Tansu reports a partition's end "
                         "below its last records, so the restarted worker's recovery can miss a user's newest state "
                         "(the report lists such users); Apache Kafka (needs Java) recovers every one")
    ab.add_argument("--run-dir", default=None, help="where everything goes (default: runs/loop-YYYYmmdd-HHMMSS)")
    ab.add_argument("--seed", type=int, default=0, help="seed of --synthetic and of the bootstrap")
    ab.add_argument("--quiet", action="store_true", help="no progress bars")
    ab.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE", type=engine_setting,
                    help="an engine setting for every arm's workers (a name of the README's Configuration table, "
                         "e.g. feedback_horizon_events=10 or feedback_max_open=8); repeat for more; the report "
                         "lists them")
    ab.set_defaults(func=cmd_loop_ab)


def engine_setting(text: str) -> tuple[str, str]:
    """NAME=VALUE of `--setting` (the name and value are checked with the others by EngineConfig)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"a setting is NAME=VALUE, e.g. feedback_max_open=8, got {text!r}")
    return name.strip(), value.strip()


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The numbered steps as written, and every option's default."""


def cmd_loop_ab(args: argparse.Namespace) -> int:
    from explore.loop import run_loop_ab

    return run_loop_ab(args)
