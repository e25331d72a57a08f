"""`workbench.bench.contention`: the competitors it starts really run and stop, the measurement runs in
this process and in a subprocess with another OpenMP wait policy, and the command ends with one JSON line.
`workbench.bench.repro`: both numerical modes are timed, each in its own subprocess.
(Tests assert behaviour, not timings: the ratios depend on the machine.)"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from workbench.bench import BENCHES
from workbench.bench.contention import Competitors, measure, measure_in_subprocess
from workbench.cli import main


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_registered():
    assert BENCHES["contention"] == "workbench.bench.contention"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
def test_competitors_burn_cpu_only_while_switched_on_and_stop():
    with Competitors(1) as others:
        pid = others.procs[0].pid
        others.busy(False)
        before = _cpu_seconds(pid)
        time.sleep(0.5)
        asleep = _cpu_seconds(pid) - before
        others.busy(True)
        before = _cpu_seconds(pid)
        time.sleep(1.0)
        busy = _cpu_seconds(pid) - before
    assert busy > 0.2 and asleep < 0.1, f"busy {busy:.2f} s, asleep {asleep:.2f} s of CPU"
    assert not any(p.is_alive() for p in others.procs)


def test_measure_idle_and_contended_in_this_process():
    r = measure(profile="tiny", steps=2, rounds=2, warmup=1, competing=1)
    assert r["wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "(unset)")
    assert r["steps"] == [2, 2] and r["idle_s"] > 0 and r["contended_s"] > 0
    assert r["slowdown"] == pytest.approx(r["contended_s"] / r["idle_s"])


@pytest.mark.slow
def test_spinning_threads_are_measured_in_a_subprocess():
    r = measure_in_subprocess("ACTIVE", profile="tiny", steps=1, rounds=1, warmup=0, competing=1)
    assert r["wait_policy"] == "ACTIVE" and r["steps"] == [1, 1]


def test_command_prints_a_table_then_one_json_line(capsys):
    assert main(["bench", "contention", "--profile", "tiny", "--steps", "2", "--rounds", "1", "--warmup", "0",
                 "--no-spinning"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "slowdown" in lines[1] and "(workbench)" in lines[2]
    last = json.loads(lines[-1])
    assert last["bench"] == "contention" and len(last["rows"]) == 1
    assert last["vs_workbench_idle"] == last["slowdown"], "the workbench's row is measured against its own idle"


def test_repro_is_registered():
    assert BENCHES["repro"] == "workbench.bench.repro"


@pytest.mark.slow  # two fresh interpreters, one per numerical mode
def test_repro_command_times_both_modes_in_subprocesses_and_ends_with_one_json_line(capsys):
    assert main(["bench", "repro", "--profile", "tiny", "--steps", "1", "--rounds", "1", "--warmup", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = json.loads(lines[-1])
    assert last["bench"] == "repro" and set(last["rows"]) == {"default", "repro"}
    assert [r["mode"] for r in last["rows"]["repro"]] == ["repro"] and last["rows"]["default"][0]["mode"] == "default"
    assert all(r["threads"] == 2 for rs in last["rows"].values() for r in rs), "both modes at the mode's thread count"
    assert last["ratio"] == pytest.approx(last["step_s"]["repro"] / last["step_s"]["default"], rel=1e-2)
    assert last["rows"]["default"][0]["weights"] != last["rows"]["repro"][0]["weights"], "different code paths"
