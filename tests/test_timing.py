"""`workbench.timing`: nested timers count each second once (self time + pieces), send records only when
asked for, and mark the processes that train beside others."""

from __future__ import annotations

import logging
import time

import pytest

from workbench import timing


@pytest.fixture
def records():
    got: list[dict] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(timing.record_timing(record))

    handler = Keep()
    timing._stack()
    timing._state.loose.clear()  # pieces gathered by earlier tests (rendering outside any timer)
    timing.log.addHandler(handler)
    timing.log.setLevel(logging.DEBUG)
    yield got
    timing.log.removeHandler(handler)
    timing.log.setLevel(logging.NOTSET)
    timing.mark_child(False)


def test_nested_timers_and_pieces_add_up_to_the_outer_wall_time(records):
    with timing.timed("training", "outer"):
        time.sleep(0.02)
        timing.add("render", 0.5)  # a piece: counted as rendering, not as the outer timer's own time
        with timing.timed("evaluation", "inner"):
            time.sleep(0.03)
    inner, outer = records
    assert (inner["kind"], inner["label"], outer["kind"], outer["label"]) == ("evaluation", "inner", "training", "outer")
    assert inner["self"] == pytest.approx(inner["seconds"]) and inner["seconds"] >= 0.03
    assert outer["parts"] == {"render": 0.5}
    # the outer self time excludes the inner timer and the piece (which may be longer than the wall time)
    assert outer["self"] == pytest.approx(outer["seconds"] - inner["seconds"] - 0.5, abs=2e-4)
    assert not outer["child"]


def test_pieces_outside_any_timer_are_sent_once_a_second_gathers(records):
    timing.add("render", 0.4)
    assert records == []
    timing.add("render", 0.7)
    assert records == [{"kind": "render", "label": "", "seconds": 1.1, "self": 1.1, "parts": {}, "child": False}]
    timing.add("render", 0.2)
    with timing.timed("figures", "f"):  # opening a timer sends what gathered before it
        pass
    assert records[1]["kind"] == "render" and records[1]["seconds"] == pytest.approx(0.2)
    assert records[2]["kind"] == "figures"


def test_child_processes_are_marked(records):
    timing.mark_child()
    with timing.timed("training", "a run"):
        pass
    assert records[-1]["child"] is True


def test_nothing_is_sent_unless_debug_records_are_asked_for():
    got = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(record)

    handler = Keep(level=logging.DEBUG)
    timing.log.addHandler(handler)
    try:
        timing.log.setLevel(logging.INFO)
        with timing.timed("training", "x"):
            pass
    finally:
        timing.log.removeHandler(handler)
        timing.log.setLevel(logging.NOTSET)
    assert got == []
