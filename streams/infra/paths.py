"""Where the engine keeps caches and state outside the repository."""

from __future__ import annotations

import os
from pathlib import Path


def explore_home() -> Path:
    """`$EXPLORE_HOME`, else `~/.cache/interest-explorer`: jar cache, infra state, logs."""
    home = Path(os.environ.get("EXPLORE_HOME") or Path.home() / ".cache" / "interest-explorer")
    home.mkdir(parents=True, exist_ok=True)
    return home
