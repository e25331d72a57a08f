"""How the workbench's log messages are shown: library code logs through `logging.getLogger(__name__)`
and never prints; the command line (`setup_logging`) and the notebook suite's kernels choose where the
records go."""

from __future__ import annotations

import json
import logging
import os
import sys

from workbench import timing

__all__ = ["StderrHandler", "ShortNames", "setup_logging", "SUITE_LOG_ENV", "log_to_suite"]

# The file a kernel started by the suite writes its workbench log records to (one JSON object a line); the
# suite tails it to show which run is training, its epoch and an ETA, and the notebook stays clean.
SUITE_LOG_ENV = "WORKBENCH_SUITE_LOG"


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


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"t": record.created, "name": record.name, "level": record.levelname, "message": record.getMessage()}
        if (t := timing.record_timing(record)) is not None:
            out["timing"] = t
        return json.dumps(out)


def log_to_suite(ready: bool = True) -> bool:
    """In a kernel the suite started (it runs this first) and in the processes such a kernel trains in
    (`Run.ensure_many`): the workbench's INFO records, and the timers' records (`workbench.timing`), go to the
    file named by WORKBENCH_SUITE_LOG, which the suite shows as progress; warnings also go to the notebook.
    `ready`: first a record that the kernel has started (its start-up time for `bench suite`). Anywhere else
    (JupyterLab, a script) it does nothing and returns False."""
    path = os.environ.get(SUITE_LOG_ENV)
    if not path:
        return False
    logger = logging.getLogger("workbench")
    logger.setLevel(logging.INFO)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(_JsonLines())
    to_notebook = StderrHandler()  # warnings and errors still show in the notebook
    to_notebook.setLevel(logging.WARNING)
    to_notebook.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    logger.addHandler(to_file)
    logger.addHandler(to_notebook)
    logger.propagate = False
    logging.getLogger(timing.log.name).setLevel(logging.DEBUG)  # the timers' records, for `bench suite`
    if ready:
        timing.log.debug("kernel ready", extra={"timing": {"kind": "ready", "label": "", "seconds": 0.0, "self": 0.0,
                                                           "parts": {}, "child": False}})
    return True
