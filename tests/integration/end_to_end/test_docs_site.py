"""The documentation site as a reader sees it: headless Chromium (1,280 px wide) opens the built site's
index and a generated reference page from disk; each renders with its navigation, every image loads,
nothing scrolls sideways, and the reference shows the settings table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import Chromium

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def test_the_built_site_renders_with_its_navigation_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    with Chromium(tmp_path) as browser:
        index = browser.visit((site / "index.html").as_uri())
        settings = browser.visit((site / "reference" / "settings.html").as_uri())
    for name, page in (("index", index), ("settings", settings)):
        (tmp_path / f"{name}.png").write_bytes(page.png)
        assert all(entry in page.text for entry in ("Design", "Commands", "Engine settings", "Metrics")), page.text
        assert page.broken_images == 0 and page.scroll_width <= page.viewport_width, (name, page.scroll_width)
        assert len(page.png) > 10_000
    assert "make demo" in index.text
    assert settings.tables >= 1 and "EXPLORE_POLICY" in settings.text
