"""`workbench.repro`: the same bits on a busy machine (no dynamic thread adjustment) and, with
WORKBENCH_REPRO=1, whatever code paths the machine would pick (docs/RELIABILITY.md, "Same bits").
The subprocesses start fresh interpreters because the switches are read when torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench import repro
from workbench.bench.contention import Competitors
from workbench.bench.repro import child_env, run_child
from workbench.checkpoint import load_checkpoint, write_run_info
from workbench.config import apply_overrides, preset
from workbench.errors import CheckpointError
from workbench.runs import cache_dir
from workbench.train import train

# LayerNorm's weight gradient is reduced per thread: its bits tell a 1-thread team from a 2-thread one
LAYER_NORM_GRAD = """
import json, os
{first}
import torch
import workbench.models
from workbench import repro
torch.manual_seed(0)
x, g = torch.randn(4, 64, 16, requires_grad=True), torch.randn(4, 64, 16)
ln = torch.nn.LayerNorm(16)
def grad(threads):
    torch.set_num_threads(threads)
    ln.zero_grad()
    ln(x).backward(g)
    return ln.weight.grad.clone()
one, two = grad(1), grad(2)
print(json.dumps({{"env": os.environ.get("OMP_DYNAMIC"), "omp_dynamic": repro.omp_dynamic(),
                  "one_differs_from_two": not torch.equal(one, two), "two_again": torch.equal(grad(2), two)}}))
"""


def _child(code: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("workbench_first", [True, False], ids=["workbench-imported-first", "torch-imported-first"])
def test_dynamic_thread_adjustment_is_off_even_when_the_environment_asks_for_it(workbench_first):
    """With OMP_DYNAMIC=true, GNU OpenMP sizes each team as cores minus the 15-minute load average, so on a busy
    machine a 2-thread run computes with 1-thread teams and its bits follow the load (before the fix, at a
    load average of 7, this child's 2-thread gradient equalled its 1-thread one). The workbench switches it
    off: in the environment before torch loads, and in the loaded runtime when torch came first."""
    env = child_env(False, {"OMP_DYNAMIC": "true", "MKL_DYNAMIC": "true"})
    r = _child(LAYER_NORM_GRAD.format(first="import workbench" if workbench_first else ""), env)
    assert r["omp_dynamic"] is False
    assert r["env"] == "FALSE"
    assert r["one_differs_from_two"], "a 2-thread team computes with 2 threads (not the 1 a load average allows)"
    assert r["two_again"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the competitors' CPU time from /proc")
def test_distillation_is_bitwise_repeatable_on_busy_cores(tiny_cfg, tmp_path):
    """The same tiny RobustSeg run (HPD losses, feedback, validation) trained twice while CPU-bound processes
    keep every core busy: the same metrics.jsonl, student and teacher, bit for bit."""
    teacher = train(tiny_cfg, tmp_path / "teacher", progress=False).checkpoint
    cfg = apply_overrides(preset("robustseg", "tiny"), {"data.train_samples": 8, "data.val_samples": 4,
                                                        "data.test_samples": 4, "train.epochs": 2,
                                                        "train.val_every": 1})

    def cpu_seconds(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with Competitors(max(2, os.cpu_count() or 1)) as others:
        others.busy(True)
        before = [cpu_seconds(p.pid) for p in others.procs]
        runs = [train(cfg, tmp_path / name, progress=False, teacher_checkpoint=teacher) for name in ("a", "b")]
        burnt = [cpu_seconds(p.pid) - b for p, b in zip(others.procs, before)]
    assert all(s > 0 for s in burnt), f"the competitors did not run ({burnt} s of CPU)"

    def records(run_dir):
        return [{k: v for k, v in json.loads(x).items() if k != "img_per_s"}
                for x in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert any("val/grad/ifv" in r for r in records(runs[0].run_dir)), "validation (with the gradient probe) ran"
    assert records(runs[0].run_dir) == records(runs[1].run_dir)
    a, b = (load_checkpoint(r.checkpoint) for r in runs)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["method"]["teacher"][k], b["method"]["teacher"][k]) for k in a["method"]["teacher"])


# What a lesser x86-64 machine would pick, emulated through the libraries' own switches: ATen's generic
# kernels, oneDNN at SSE4.1, numpy without its AVX2-level targets, MKL's AUTO branch of its reproducible mode.
LESSER_MACHINE = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                  "NPY_DISABLE_CPU_FEATURES": "X86_V3", "MKL_CBWR": "AUTO"}
DIGEST = "import json; from workbench.bench.repro import distillation_digest; print(json.dumps(distillation_digest()))"


@pytest.mark.slow  # four fresh interpreters
@pytest.mark.skipif(not torch.cpu._is_avx2_supported(), reason="the reproducible mode pins the AVX2 code paths")
def test_reproducible_mode_gives_the_same_bits_whatever_code_paths_the_machine_would_pick():
    """Without WORKBENCH_REPRO, the code paths a machine picks change a tiny RobustSeg run's weights; with it,
    they are pinned, and the weights are the same whether the machine would pick AVX2 or a lesser path."""
    default = run_child(DIGEST, False)
    default_lesser = run_child(DIGEST, False, LESSER_MACHINE)
    pinned = run_child(DIGEST, True)
    pinned_lesser = run_child(DIGEST, True, LESSER_MACHINE)
    assert default_lesser["numerics"]["cpu_capability"] == "DEFAULT", "the emulation took effect"
    assert default["student"] != default_lesser["student"], "the code paths change the bits by default"
    assert pinned["numerics"]["mode"] == pinned_lesser["numerics"]["mode"] == "repro"
    assert pinned_lesser["numerics"]["env"] == pinned["numerics"]["env"]
    assert pinned_lesser["numerics"]["cpu_capability"] == "AVX2" and pinned_lesser["numerics"]["threads"] == 2
    assert pinned_lesser["numerics"]["deterministic_algorithms"] is True
    assert (pinned["student"], pinned["teacher"]) == (pinned_lesser["student"], pinned_lesser["teacher"])
    assert pinned["student"] != default["student"], "the pinned paths are not the default ones (MKL, numpy)"


def test_the_mode_is_recorded_and_runs_of_the_two_modes_never_share_a_cache_entry(tmp_path, monkeypatch):
    cfg = preset("baseline", "tiny")
    monkeypatch.delenv(repro.ENV_FLAG, raising=False)
    default_dir, info = cache_dir(cfg), write_run_info(tmp_path / "a", cfg.to_json())
    assert info["numerics"]["mode"] == "default" and info["numerics"]["env"]["OMP_DYNAMIC"] == "FALSE"
    assert info["numerics"]["threads"] == torch.get_num_threads() and info["numerics"]["cpu"]
    monkeypatch.setenv(repro.ENV_FLAG, "1")
    assert cache_dir(cfg) != default_dir and cache_dir(cfg).name == default_dir.name, "same config, other folder"
    assert write_run_info(tmp_path / "b", cfg.to_json())["numerics"]["mode"] == "repro"
    assert json.loads((tmp_path / "b" / "run_info.json").read_text())["numerics"]["mode"] == "repro"


def test_a_run_resumes_only_in_the_mode_it_started_in(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv(repro.ENV_FLAG, raising=False)
    cfg = apply_overrides(tiny_cfg, {"train.epochs": 1})
    train(cfg, tmp_path / "r", progress=False)
    monkeypatch.setenv(repro.ENV_FLAG, "1")  # resuming must refuse before anything is computed in the other mode
    with pytest.raises(CheckpointError, match=r"default numerical mode.*repro mode; resume it with WORKBENCH_REPRO unset"):
        train(cfg, tmp_path / "r", resume=True, progress=False)
    monkeypatch.delenv(repro.ENV_FLAG)
    repro.check_resume(None, "old.pt")  # runs made before the mode was recorded are default-mode runs
    with pytest.raises(CheckpointError, match="WORKBENCH_REPRO=1"):
        repro.check_resume({"mode": "repro"}, "last.pt")
