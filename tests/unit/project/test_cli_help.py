"""Every option of every `explore` command has help that explains it (issue #28 item 4).

Why: options made from the config dataclasses (`add_config_args`) used to print only their default
(`--dim DIM  default: 64`), and a few options printed nothing at all. A user reading
`explore novelty train --help` could not tell what `--dim` widens, that `--heads` must divide it, or
that both are ignored with `--base-model`. The formatter already prints each default, so a help that
is empty, missing, or says no more than "default: %(default)s" tells the user nothing.

The check walks `build_parser()` into every subcommand and looks at every action but -h/--help:
one added without help fails here, whichever module adds it. A help of `argparse.SUPPRESS` is an
option hidden on purpose and passes. The second test plants such options in a tiny parser to show
the check catches them; the third renders every help page (a stray `%` in a help breaks `--help`
only when it is printed).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from explore.cli import build_parser

MIN_CHARS = 15  # what a help must say beyond its default, in characters
_DEFAULT = re.compile(r"\(?\s*default:?\s*%\(default\)[sr]\s*\)?", re.IGNORECASE)


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every subcommand's parser below it, each once."""
    seen: set[int] = set()
    todo = [parser]
    while todo:
        p = todo.pop(0)
        if id(p) in seen:  # an alias names the same parser twice
            continue
        seen.add(id(p))
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())


def weak_help(text: object) -> str | None:
    """Why `text` does not explain an option, or None when it does (or hides the option on purpose)."""
    if text == argparse.SUPPRESS:
        return None
    if text is None:
        return "no help"
    if not isinstance(text, str) or not text.strip():
        return "empty help"
    rest = _DEFAULT.sub("", text).strip(" .,;:()")
    if len(rest) < MIN_CHARS:
        return f"help {text!r} says nothing beyond its default"
    return None


def help_problems(parser: argparse.ArgumentParser) -> list[str]:
    """'PROG OPTION: why' for every option (and subcommand) of `parser`, recursively, without help that explains it."""
    problems = []
    for p in parsers(parser):
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                # a subcommand's one-line help in its parent's list (add_parser without help= leaves none)
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, child in action.choices.items():
                    primary = child.prog.rsplit(" ", 1)[-1] == name  # an alias shares its command's parser and help
                    if primary and (why := weak_help(helps.get(name))):
                        problems.append(f"{p.prog} {name}: {why}")
                continue
            if why := weak_help(action.help):
                problems.append(f"{p.prog} {'/'.join(action.option_strings) or action.dest}: {why}")
    return problems


def test_every_option_of_every_command_has_help_that_explains_it() -> None:
    parser = build_parser()
    assert sum(1 for _ in parsers(parser)) > 30  # the walk reached the nested subcommands
    assert help_problems(parser) == []


def test_the_check_reports_an_option_planted_without_help() -> None:
    parser = argparse.ArgumentParser(prog="tiny", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--good", type=int, default=3, help="how many widgets a batch holds")
    parser.add_argument("--hidden", help=argparse.SUPPRESS)
    parser.add_argument("--planted", type=int, default=2)
    parser.add_argument("--only-default", type=int, default=5, help="default: %(default)s")
    parser.add_argument("--blank", help="  ")
    parser.add_argument("--terse", help="width (default: %(default)s)")
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("child", help="a nested command with options of its own")
    child.add_argument("path", help="the file to read, CSV or Parquet")
    child.add_argument("--deep")
    sub.add_parser("bare")

    assert help_problems(parser) == [
        "tiny --planted: no help",
        "tiny --only-default: help 'default: %(default)s' says nothing beyond its default",
        "tiny --blank: empty help",
        "tiny --terse: help 'width (default: %(default)s)' says nothing beyond its default",
        "tiny bare: no help",
        "tiny child --deep: no help",
    ]


def test_every_help_page_renders() -> None:
    failures = []
    for parser in parsers(build_parser()):
        try:
            text = parser.format_help()  # fills every %(default)s: a stray % raises here
        except (ValueError, TypeError, KeyError) as e:
            failures.append(f"{parser.prog}: {type(e).__name__}: {e}")
            continue
        if "%(" in text:
            failures.append(f"{parser.prog}: an unfilled %(...) in its help")
    assert failures == []


def test_a_kafka_error_is_one_line_of_error_not_a_traceback(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import kafka.errors

    import streams.wiring.model_sets
    from explore.cli import main

    def unreachable(cfg):  # type: ignore[no-untyped-def]  # what kafka-python raises without a broker (30 s later)
        raise kafka.errors.KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:1")

    monkeypatch.setattr(streams.wiring.model_sets, "read_sets", unreachable)
    assert main(["models", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Kafka: ") and "127.0.0.1:1" in err and "Traceback" not in err
    monkeypatch.setattr(streams.wiring.model_sets, "read_sets", lambda cfg: 1 / 0)  # any other error: a crash
    with pytest.raises(ZeroDivisionError):
        main(["models", "list"])
