"""Where runs, checkpoints, caches and figures live (runs/ is git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def runs_dir() -> Path:
    """Root for runs and caches; override with the WORKBENCH_RUNS environment variable."""
    return Path(os.environ.get("WORKBENCH_RUNS", REPO_ROOT / "runs")).expanduser()


def figures_dir() -> Path:
    """Committed final figures; override with WORKBENCH_FIGURES (tests write elsewhere)."""
    return Path(os.environ.get("WORKBENCH_FIGURES", REPO_ROOT / "figures")).expanduser()
