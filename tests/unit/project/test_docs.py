"""The documentation site: it builds strictly (no broken link, no page outside the navigation), its
generated reference lists every command option, engine setting and metric the code has, every local
asset a built page names exists, and no page names a file of the repository that is gone."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def _leaves(parser: argparse.ArgumentParser, path: str) -> dict[str, argparse.ArgumentParser]:
    subs = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if not subs:
        return {path: parser}
    return {k: v for name, sub in subs.items() for k, v in _leaves(sub, f"{path} {name}").items()}


def test_the_reference_lists_every_command_option(site: Path) -> None:
    from explore.cli import build_parser

    page = (ROOT / "docs" / "reference" / "commands.md").read_text()
    sections = dict(re.findall(r"^## `(explore[^`]*)`\n(.*?)(?=^## |\Z)", page, re.S | re.M))
    leaves = _leaves(build_parser(), "explore")
    assert set(sections) == set(leaves)
    for path, parser in leaves.items():
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in sections[path], (path, flag)
    assert (site / "reference" / "commands.html").is_file()


def test_the_reference_lists_every_setting_and_metric(site: Path) -> None:
    from streams.config import EngineConfig
    from streams.core.metrics import Metrics, PrecomputeMetrics

    settings = (ROOT / "docs" / "reference" / "settings.md").read_text()
    for f in dataclasses.fields(EngineConfig):
        assert f"| `{f.name}` | `{EngineConfig.env_name(f.name)}` |" in settings, f.name
    metrics = (ROOT / "docs" / "reference" / "metrics.md").read_text()
    for registry in (Metrics().registry, PrecomputeMetrics().registry):
        for family in registry.collect():
            assert f"`{family.name}" in metrics, family.name


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("href", "src") and value and not re.match(r"^(#|[a-z]+:|//)", value):
                self.targets.append(value.split("#")[0].split("?")[0])


def test_every_local_asset_and_link_of_the_built_site_exists(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 6
    for page in pages:
        links = _Links()
        links.feed(page.read_text())
        # a root-relative path (404.html's, for a server) is under the site's root
        missing = [t for t in links.targets if t and not
                   ((site / t.lstrip("/")) if t.startswith("/") else (page.parent / t)).resolve().exists()]
        assert not missing, (page.relative_to(site), missing)


def test_no_page_names_a_file_that_is_gone() -> None:
    """Backquoted repository paths (`interests/...py`, `tests/...`, `benchmarks/...`) in the README, CONTRIBUTING
    and the docs must exist: a page that names a moved or deleted file sends a newcomer nowhere."""
    top = "interests|streams|exporters|explore|tests|benchmarks|scripts|docker|triton_models|docs|examples"
    pattern = re.compile(rf"`((?:{top})/[\w./-]*\w)`")
    generated = {"docs/reference/commands.md", "docs/reference/settings.md", "docs/reference/metrics.md"}
    for page in PAGES:
        if str(page.relative_to(ROOT)) in generated:
            continue
        gone = sorted({p for p in pattern.findall(page.read_text()) if not (ROOT / p).exists()})
        assert not gone, (page.relative_to(ROOT), gone)


def _parser_at(words: list[str]) -> tuple[str, argparse.ArgumentParser] | None:
    """The deepest `explore` subcommand the words name, and its parser (None: not an explore command)."""
    from explore.cli import build_parser

    parser, path = build_parser(), "explore"
    for word in words:
        subs = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if not subs or word not in subs:
            break
        parser, path = subs[word], f"{path} {word}"
    return path, parser


def test_every_explore_command_and_option_the_pages_show_exists() -> None:
    """`explore ...` lines in the README's and the docs' code (and inline `explore ...` spans) name commands and
    options that the parsers have: a renamed option in a page is a command that fails for a newcomer."""
    shown = 0
    for page in PAGES:
        text = page.read_text().replace("\\\n", " ")
        lines = re.findall(r"^(?:\$E|\.venv/bin/explore|explore) ([^\n#]*)", text, re.M)
        lines += re.findall(r"`(?:\.venv/bin/)?explore ([a-z][^`]*)`", text)
        for line in lines:
            words = line.split()
            path, parser = _parser_at(words)
            if path == "explore":
                continue  # "explore" in prose, not a command
            flags = {s for a in parser._actions for s in a.option_strings}
            unknown = [w.split("=")[0] for w in words if w.startswith("--") and w.split("=")[0] not in flags]
            assert not unknown, (page.relative_to(ROOT), path, unknown)
            shown += 1
    assert shown > 30
