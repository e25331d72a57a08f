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
import torch

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
def test_new_benches_are_registered():
    assert {"suite", "train", "gpu"} <= set(BENCHES)


def test_flop_count_of_a_grouped_convolution_backward_is_the_forward_per_gradient():
    """torch's FlopCounterMode counts a depthwise convolution's backward groups-times too high; `bench train`
    counts each gradient as one forward."""
    import torch.nn.functional as F

    from workbench.bench.train import flop_counter

    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    forward = 2 * 8 * 36 * 9 * 2  # batch x channels x positions x taps x (multiply, add)
    with flop_counter() as fc:
        y = F.conv2d(x, w, padding=1, groups=8)
    assert fc.get_total_flops() == forward
    with flop_counter() as fc:
        y.sum().backward()
    assert fc.get_total_flops() == 2 * forward  # input and weight gradients


def test_train_bench_prints_the_ratio_and_checks_the_optimizer_is_bitwise_as_before(capsys):
    assert main(["bench", "train", "--profile", "tiny", "--steps", "2", "--warmup", "1", "--batches", "1",
                 "--pairs", "0", "--variants", "before,workbench,fused AdamW"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["bench"] == "train" and last["target"] == 0.4 and last["gflop_per_step"] > 0
    rows = {r["variant"]: r for r in last["rows"]}
    assert rows["workbench"]["bitwise_as_before"], "foreach AdamW gives the loop's weights exactly"
    assert last["ratio"] == pytest.approx(rows["workbench"]["gflops"] / last["matmul_gflops"], abs=2e-3)


def test_gpu_bench_runs_on_a_cpu_at_tiny_sizes(capsys):
    assert main(["bench", "gpu", "--device", "cpu", "--profiles", "tiny", "--steps", "1", "--warmup", "1"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["bench"] == "gpu" and last["peak_tflops"] > 0 and not last["skipped"]
    assert [(r["method"], r["compile"]) for r in last["rows"]] == [("baseline", False), ("robustseg", False)]
    for r in last["rows"]:
        split = r["data_ms"] + r["forward_ms"] + r["backward_ms"] + r["optimizer_ms"] + r["after_ms"]
        assert r["images_per_s"] > 0 and 0 < r["mfu"] < 1 and r["peak_memory_gib"] is None
        assert split == pytest.approx(r["step_ms"], rel=1e-6)  # one step: the parts add up to it
    assert last["rows"][0]["after_ms"] < last["rows"][1]["after_ms"], "only RobustSeg has a feedback step"


def test_gpu_bench_peak_table():
    from workbench.bench.gpu import PEAK_TFLOPS

    lookup = lambda name: next(v for k, v in PEAK_TFLOPS if k in name)  # noqa: E731
    assert lookup("NVIDIA H100 80GB HBM3") == 989 and lookup("NVIDIA H100 PCIe") == 756
    assert lookup("NVIDIA H200") == 989 and lookup("NVIDIA A100-SXM4-80GB") == 312


def test_suite_breakdown_counts_each_second_once(tmp_path):
    """`bench suite` adds up a kernel's timers per kind: self times and pieces, kernel start-up from the first
    record, trainings beside others listed but not added (their parent's block holds the wall time)."""
    from workbench.bench.suite import breakdown, format_breakdown
    from workbench.suite import Outcome

    def rec(t, kind, label="", seconds=0.0, own=0.0, parts=None, child=False):
        return json.dumps({"t": t, "name": "workbench.timing", "level": "DEBUG", "message": "",
                           "timing": {"kind": kind, "label": label, "seconds": seconds, "self": own,
                                      "parts": parts or {}, "child": child}})

    log = tmp_path / "nb.log"
    log.write_text("\n".join([
        json.dumps({"t": 104.0, "name": "workbench.runs", "level": "INFO", "message": "training x"}),
        rec(103.0, "ready"),
        rec(109.0, "validation", "baseline", 0.5, 0.5),
        rec(110.0, "training", "baseline (quick, seed 0)", 5.5, 4.0, {"render": 1.0}),
        rec(120.0, "training", "basic_kd (quick, seed 0)", 6.0, 6.0, child=True),
        rec(121.0, "training", "2 runs side by side (2 at a time)", 8.0, 8.0),
        rec(125.0, "evaluation", "baseline test", 2.0, 1.5, {"render": 0.5}),
        rec(126.0, "figures", "nb/a", 1.0, 1.0),
    ]) + "\nnot json\n")
    res = breakdown([Outcome("nb", "ok", seconds=30.0, started=100.0, log=log)])
    (row,) = res["notebooks"]
    assert row["kernel"] == 3.0 and row["training"] == 12.0 and row["render"] == 1.5 and row["validation"] == 0.5
    assert row["evaluation"] == 1.5 and row["figures"] == 1.0
    assert row["other"] == pytest.approx(30.0 - 3.0 - 12.0 - 0.5 - 1.5 - 1.5 - 1.0)
    assert [(r["run"], r["seconds"], r["side_by_side"]) for r in res["runs"]][:2] == [
        ("baseline (quick, seed 0)", 5.5, False), ("basic_kd (quick, seed 0)", 6.0, True)]
    text = format_breakdown(res)
    assert "all notebooks" in text and "(side by side)" in text


@pytest.mark.slow
def test_suite_bench_on_the_smoke_profile(capsys):
    assert main(["bench", "suite", "--profile", "smoke", "--only", "01"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["bench"] == "suite" and last["ok"]
    (nb,) = last["notebooks"]
    assert nb["notebook"] == "01_training" and nb["kernel"] > 0 and nb["training"] > 0 and nb["figures"] > 0
    assert [r["run"] for r in last["runs"]] == ["baseline (tiny, seed 0)", "robustseg (tiny, seed 0)"]
    total = sum(v for k, v in nb.items() if isinstance(v, float) and k != "seconds")
    assert total == pytest.approx(nb["seconds"])


def test_gpu_bench_stops_a_row_at_the_hard_limit_and_starts_none_past_the_budget(capsys):
    """What keeps the prepared GPU command inside its time: a row that runs past --hard-limit stops taking
    steps (e.g. torch.compile recompiling) and says so; no row starts past --budget."""
    assert main(["bench", "gpu", "--device", "cpu", "--profiles", "tiny", "--methods", "baseline",
                 "--steps", "2", "--warmup", "0", "--hard-limit", "0"]) == 0
    out = capsys.readouterr().out
    (row,) = json.loads(out.strip().splitlines()[-1])["rows"]
    assert row["cut"] and row["steps_timed"] == 0 and "cut after 0 timed steps" in out
    assert main(["bench", "gpu", "--device", "cpu", "--profiles", "tiny", "--methods", "baseline,robustseg",
                 "--steps", "1", "--warmup", "0", "--budget", "0"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["rows"] == [] and last["skipped"] == ["tiny/baseline/compile off", "tiny/robustseg/compile off"]
