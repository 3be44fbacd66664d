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

# the alignment model's fit (`explore novelty align`, `critics`, `explore loop ab`)
STEPS_HELP = ("each (context, candidate) group's acceptance rate, over the best group's, is rounded to a multiple "
              "of 1/STEPS in [0, 1] (coarser labels: less noise from small counts)")
ALPHA_HELP = ("ridge regularisation strength of the alignment model: larger shrinks its word-pair weights, "
              "steadier on few outcomes")


def engine_settings():  # type: ignore[no-untyped-def]
    """The engine's settings from the environment (and $EXPLORE_CONFIG), for the commands beside the
    worker that talk to its Kafka or Triton (`replay`, `novelty precompute --publish`, `infra check`):
    they connect with the worker's security settings and create topics replicated as its are."""
    from streams.config import EngineConfig

    try:
        return EngineConfig.load()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def add_dataset_args(p: argparse.ArgumentParser, synthetic_default: bool = False) -> None:
    """Where the interactions come from: a MovieLens directory, generic files, or synthetic data.

    `synthetic_default`: the command reads --synthetic when no data option is given (`explore demo`,
    `explore loop ab` do); the group's title says so.
    """
    fallback = "; none of them: --synthetic" if synthetic_default else ""
    g = p.add_argument_group(f"data (one of --data, --interactions with --items, or --synthetic{fallback})")
    g.add_argument("--data", type=Path, metavar="DIR",
                   help="a MovieLens directory as unpacked from grouplens.org: ml-100k (u.data, u.item), ml-1m "
                        "(ratings.dat, movies.dat), ml-latest or ml-latest-small (ratings.csv, movies.csv, and "
                        "tags.csv when present); ratings become the interactions' weights, titles, genres and "
                        "tags (where present) the items' text")
    g.add_argument("--format", default="auto", choices=["auto", "movielens-100k", "movielens-1m", "movielens-latest"],
                   help="the MovieLens layout of --data; auto recognises it by its files (u.data: 100k, "
                        "ratings.dat: 1m, ratings.csv and movies.csv: latest)")
    g.add_argument("--interactions", type=Path, metavar="FILE",
                   help="your own interactions (with --items): a CSV file with a header row, or Parquet "
                        "(.parquet, .pq); a row per interaction with the columns user, item, timestamp (Unix "
                        "seconds or milliseconds, or ISO-8601 dates) and, used when present, event (its kind) and "
                        "weight (e.g. a rating: higher means liked); other column names: --columns")
    g.add_argument("--items", type=Path, metavar="FILE",
                   help="your own items (with --interactions): a CSV file with a header row, or Parquet; a row "
                        "per item with its id (column item, as the interactions name it), a title (column title, "
                        "if any) and the text columns the cluster embeddings and descriptions are made of "
                        "(genres, tags, a plot: by default every other column)")
    g.add_argument("--columns", default=None, metavar="KEY=NAME,...",
                   help="generic format: your files' column names where they differ, e.g. "
                        "user=user_id,item=imdb_id,title=name (the README's examples/own-data). Keys of the "
                        "interactions file: user, item, timestamp, event, weight; of the items file: item_id, "
                        "title, text (several names joined by '+', e.g. text=genres+plot). A key not given keeps "
                        "its name (user, item, timestamp, event, weight; item_id: item), title the column called "
                        "title if any, text every other column of the items file")
    g.add_argument("--list-separator", default="auto", metavar="SEP",
                   help="generic format: how list-valued text columns (genres 'Crime|Drama') are split into "
                        "phrases: auto finds '|', ';' or ',' in each column that clearly holds lists; none splits "
                        "nothing; any other string (e.g. '|') splits every text column but the title on it")
    g.add_argument("--synthetic", action="store_true",
                   help="generated users who move between planted interest clusters (40 items each, 20-60 "
                        "interactions a user; seeded by --seed where the command has one): no files needed, known "
                        "truth, a fast check of the whole pipeline")
    g.add_argument("--synthetic-clusters", type=int, default=8,
                   help="with --synthetic: how many interest clusters are planted (default: %(default)s)")
    g.add_argument("--synthetic-users", type=int, default=400,
                   help="with --synthetic: how many users are generated (default: %(default)s)")


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
    for pair in filter(None, (args.columns or "").split(",")):
        key, _, name = pair.partition("=")
        if key not in GenericColumns.__dataclass_fields__ or not name:
            keys = ", ".join(GenericColumns.__dataclass_fields__)
            raise SystemExit(f"error: --columns: bad entry {pair!r} (keys: {keys})")
        setattr(cols, key, name.split("+") if key == "text" else name)
    return load_generic(args.interactions, args.items, cols, list_separator=args.list_separator)


def add_config_args(p: argparse.ArgumentParser | Any, cls: type, helps: Mapping[str, str],
                    choices: Mapping[str, Sequence[str]] | None = None) -> None:
    """One `--option` per named field of the config dataclass `cls`, with the dataclass's default.

    The dataclass is the one home of a default: the command line cannot drift from what the
    library does when it is called without the option. `helps` names the fields to offer, each with
    a help that explains it (what it does, its unit, why one would change it: the formatter adds the
    default; tests/unit/project/test_cli_help.py fails on a field without one); `choices` restricts the
    values of the options it names.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, text in helps.items():
        default = defaults[name]
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
