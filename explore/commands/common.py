"""What several commands share: the dataset options, options made from config dataclasses, help text."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_HELP = """\
environment:
  KAFKA_BOOTSTRAP     use this Kafka cluster (host:port[,host:port]) instead of starting the
                      embedded broker
  TRITON_URL          use this Triton server (gRPC host:port) instead of starting the embedded
                      tritonserver; TRITON_HTTP_URL and TRITON_METRICS_URL are optional
  KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*, TRITON_SSL*
                      how to connect to a secured Kafka and Triton (`explore serve --help`
                      lists every setting)
  EXPLORE_HOME        caches and state (default ~/.cache/interest-explorer): Apache Kafka jars,
                      `explore infra up` state and logs
"""


def engine_settings():  # type: ignore[no-untyped-def]
    """The engine's settings from the environment (and $EXPLORE_CONFIG), for the commands beside the
    worker that talk to its Kafka or Triton (`replay`, `novelty precompute --publish`, `infra check`):
    they connect with the worker's security settings and create topics replicated as its are."""
    from streams.config import EngineConfig

    try:
        return EngineConfig.load()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    """Where the interactions come from: a MovieLens directory, generic files, or synthetic data."""
    g = p.add_argument_group("data (one of --data, --interactions/--items, --synthetic)")
    g.add_argument("--data", type=Path, help="a MovieLens directory (100K, 1M, latest or latest-small)")
    g.add_argument("--format", default="auto", choices=["auto", "movielens-100k", "movielens-1m", "movielens-latest"],
                   help="format of --data (default: recognised by its files)")
    g.add_argument("--interactions", type=Path, help="generic format: interactions file (CSV or Parquet)")
    g.add_argument("--items", type=Path, help="generic format: items file (CSV or Parquet)")
    g.add_argument("--columns", default="",
                   help="generic format: column names as key=name,... with keys user, item, timestamp, event, "
                        "weight, item_id, title, text (text: names joined by '+'); default user,item,timestamp; "
                        "items: item, title (the column called title, if any) + every other column as text")
    g.add_argument("--list-separator", default="auto",
                   help="generic format: how list-valued text columns (genres 'Crime|Drama') are split: auto "
                        "(default: '|', ';' or ',' where a column clearly holds lists), none, or a separator that "
                        "splits every text column but the title")
    g.add_argument("--synthetic", action="store_true", help="generated data with planted clusters")
    g.add_argument("--synthetic-clusters", type=int, default=8, help="planted clusters (default 8)")
    g.add_argument("--synthetic-users", type=int, default=400, help="synthetic users (default 400)")


def dataset_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from interests.data.loaders import GenericColumns, load_dataset, load_generic

    chosen = [bool(args.data), bool(args.interactions or args.items), args.synthetic]
    if sum(chosen) != 1:
        raise SystemExit("error: give exactly one of --data DIR, --interactions F --items F, or --synthetic")
    if args.synthetic:
        from interests.data.synthetic import make_synthetic

        return make_synthetic(n_clusters=args.synthetic_clusters, n_users=args.synthetic_users,
                              seed=getattr(args, "seed", 0))[0]
    if args.data:
        return load_dataset(args.data, args.format)
    if not (args.interactions and args.items):
        raise SystemExit("error: the generic format needs both --interactions and --items")
    cols = GenericColumns()
    for pair in filter(None, args.columns.split(",")):
        key, _, name = pair.partition("=")
        if key not in GenericColumns.__dataclass_fields__ or not name:
            keys = ", ".join(GenericColumns.__dataclass_fields__)
            raise SystemExit(f"error: --columns: bad entry {pair!r} (keys: {keys})")
        setattr(cols, key, name.split("+") if key == "text" else name)
    return load_generic(args.interactions, args.items, cols, list_separator=args.list_separator)


def add_config_args(p: argparse.ArgumentParser | Any, cls: type, helps: Mapping[str, str | None],
                    choices: Mapping[str, Sequence[str]] | None = None) -> None:
    """One `--option` per named field of the config dataclass `cls`, with the dataclass's default.

    The dataclass is the one home of a default: the command line cannot drift from what the
    library does when it is called without the option. A help of None says only the default;
    `choices` restricts the values of the options it names.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, given in helps.items():
        default, text = defaults[name], given or "default: %(default)s"
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=default, help=text)
        else:
            p.add_argument(flag, type=type(default) if default is not None else str, default=default, help=text,
                           choices=(choices or {}).get(name))


def config_from_args(cls: type, args: argparse.Namespace, names: Iterable[str], **extra: Any):  # type: ignore[no-untyped-def]
    """The config dataclass `cls` from the parsed options `names` (those `add_config_args` added)."""
    return cls(**{name: getattr(args, name) for name in names}, **extra)


def levels(text: str) -> tuple[int, ...]:
    """Cluster counts per level, "8,32" -> (8, 32)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"levels are cluster counts like 8,32, got {text!r}") from e


def holdout_dataset(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The dataset of the arguments, cut to its training period when `--holdout` asks (`explore demo`'s cut)."""
    ds = dataset_from_args(args)
    share = getattr(args, "holdout", 0.0)
    if not share:
        return ds
    from interests.data.splits import held_out_start, training_period

    return training_period(ds, held_out_start(ds, share))


def load_lms(paths: list[Path], catalog_version: str, device: str = "cpu") -> list:
    """Each model directory as a judge entry named by its variant (unique names across directories)."""
    from interests.clusters.catalog import CatalogError
    from interests.evaluation.judge import LMEntry, variant_name
    from interests.novelty.lm import NoveltyLM

    entries: list[LMEntry] = []
    for path in paths:
        lm = NoveltyLM.load(path, device)
        if lm.meta["catalog_version"] != catalog_version:
            raise CatalogError(f"{path} was trained with catalog {lm.meta['catalog_version']}, not {catalog_version}")
        name = f"LM {variant_name(lm.meta)}"
        if any(e.name == name and e.lm.meta["level"] == lm.meta["level"] for e in entries):
            name = f"{name} ({path.name})"
        entries.append(LMEntry(name, lm))
    return entries


def novelty_split(args: argparse.Namespace, k: int, level: int | None):  # type: ignore[no-untyped-def]
    """(dataset, catalog, level, all examples, time split) for the novelty commands."""
    from interests.clusters.catalog import Catalog, check_same_items
    from interests.novelty.examples import novel_transitions, split_by_time

    ds = holdout_dataset(args)
    catalog = Catalog.load(args.catalog)
    check_same_items(catalog, ds.item_ids)
    lv = catalog.finest if level is None else level
    examples = novel_transitions(ds, catalog.item_clusters(lv), k)
    if len(examples) < 10:
        raise ValueError(f"only {len(examples)} novel transitions with {k} distinct clusters before them: "
                         "use a smaller K or a finer catalog level")
    return ds, catalog, lv, examples, split_by_time(examples)
