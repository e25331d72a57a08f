"""How the workbench's log messages are shown: library code logs through `logging.getLogger(__name__)`
and never prints; the command line (`setup_logging`) and the notebook suite's kernels choose where the
records go."""

from __future__ import annotations

import logging
import sys

__all__ = ["StderrHandler", "ShortNames", "setup_logging"]


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (a notebook or a test may replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class ShortNames(logging.Formatter):
    """`[train] message` for the logger `workbench.train` (and the level for warnings and errors)."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name.removeprefix("workbench.")
        prefix = f"[{name}] " if record.levelno < logging.WARNING else f"[{name}] {record.levelname.lower()}: "
        return prefix + record.getMessage()


def setup_logging(quiet: bool = False) -> None:
    """Show the workbench's log messages on stderr (INFO, or WARNING with `quiet`)."""
    logger = logging.getLogger("workbench")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, "_workbench", False) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(ShortNames())
        handler._workbench = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
