"""Where the time goes: named, nested timers whose durations are log records (docs/BENCHMARK.md, "Where the
suite's time goes"; `python -m workbench bench suite` adds them up per notebook and kind).

    with timed("training", "robustseg (quick, seed 0)"):   # a part of the work, by kind
        ...
    add("render", seconds)                                 # a small piece, summed into the open timer

Each timer, when it closes, sends one DEBUG record through the `workbench.timing` logger with its `timing`
attribute: `{"kind", "label", "seconds" (wall, with what ran inside it), "self" (without the timers and
pieces inside it), "parts" (pieces added inside it, by kind), "child"}`. So the self times of every timer
plus every part add up to the time spent in timers, each second counted once, under one kind. A piece added
with no timer open is sent on its own once a second of it has gathered (and when the next timer opens).
`child` marks a process that trains beside others (`workbench.runs.Run.ensure_many`): its records say how
long each run took, not where the suite's wall time went (its parent times the whole side-by-side block).

Nothing is shown unless a handler asks for DEBUG records of `workbench.timing` (the suite's kernels do:
`workbench.logs.log_to_suite`); the cost is a clock read and one record per timer.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["KINDS", "timed", "add", "mark_child", "record_timing"]

log = logging.getLogger("workbench.timing")

# The kinds of work the suite's breakdown has rows for (any other name is allowed and gets its own row).
KINDS = ("kernel", "render", "training", "evaluation", "tsne", "figures", "report")

_state = threading.local()
_child = False


@dataclass
class _Frame:
    kind: str
    label: str
    start: float
    inside: float = 0.0  # seconds of the timers and pieces inside this one
    parts: dict = field(default_factory=dict)


def _stack() -> list[_Frame]:
    if not hasattr(_state, "stack"):
        _state.stack, _state.loose = [], {}
    return _state.stack


def mark_child(child: bool = True) -> None:
    """This process trains beside others: its records are per-run times, not the parent's wall time."""
    global _child
    _child = child


def _emit(kind: str, label: str, seconds: float, own: float, parts: dict) -> None:
    if log.isEnabledFor(logging.DEBUG):
        timing = {"kind": kind, "label": label, "seconds": round(seconds, 4), "self": round(own, 4),
                  "parts": {k: round(v, 4) for k, v in parts.items()}, "child": _child}
        log.debug("%s %s: %.2f s", kind, label, seconds, extra={"timing": timing})


def _flush_loose() -> None:
    loose = _state.loose
    for kind, seconds in list(loose.items()):
        _emit(kind, "", seconds, seconds, {})
    loose.clear()


@contextmanager
def timed(kind: str, label: str = ""):
    """Time the block as `kind` (see `KINDS`), named `label`."""
    stack = _stack()
    if not stack and _state.loose:
        _flush_loose()
    frame = _Frame(kind, label, time.perf_counter())
    stack.append(frame)
    try:
        yield frame
    finally:
        stack.pop()
        seconds = time.perf_counter() - frame.start
        if stack:
            stack[-1].inside += seconds
        _emit(kind, label, seconds, seconds - frame.inside, frame.parts)


def add(kind: str, seconds: float) -> None:
    """A piece of work of `kind` that took `seconds` (e.g. rendering one sample): summed into the open timer."""
    stack = _stack()
    if stack:
        frame = stack[-1]
        frame.parts[kind] = frame.parts.get(kind, 0.0) + seconds
        frame.inside += seconds
        return
    _state.loose[kind] = _state.loose.get(kind, 0.0) + seconds
    if _state.loose[kind] >= 1.0:
        _flush_loose()


def record_timing(record: logging.LogRecord) -> dict | None:
    """The timing of a log record sent by this module (None for any other record)."""
    return getattr(record, "timing", None)
