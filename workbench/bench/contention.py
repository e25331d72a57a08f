"""`python -m workbench bench contention`: the training step on a CPU shared with another busy process.

Times the quick baseline training step (forward, CE, backward, AdamW on one batch, on the CPU with
torch's default thread count) idle, then while `--competitors` CPU-bound processes (Python busy loops
started by the benchmark) run beside it, and prints the slowdown against idle. With T threads on C
cores and one competitor, the fair cost is about (T + 1) / C: about 1.5x for 2 threads on 2 cores,
and 2x for two jobs that each would use the whole machine.

It measures twice, in one run: in this process, with the workbench's OpenMP wait policy (PASSIVE,
set in `workbench/__init__.py` before torch loads: a thread that waits for work sleeps), and in a
subprocess with OMP_WAIT_POLICY=ACTIVE (waiting threads spin and take the cores the other job
needs, the naive way and the cause of 40x slowdowns on busy machines). `slowdown` is each row against its own
idle phase; `vs workbench idle` against the workbench's idle phase (on a machine other jobs already load,
spinning threads are slow before the competitor starts, so that column is the cost of the naive way).
Idle and contended phases alternate
(`--rounds`), so the drifting load of a shared machine weighs on both alike; a phase is cut to one step
once it has used its share of `--budget` seconds, so the spinning case stays short (under a minute in
all on 2 cores). Prints, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

from workbench.paths import REPO_ROOT


def _busy(stop, go, ready) -> None:
    """A CPU-bound competitor: pure Python arithmetic while `go` is set (asleep while it is clear), until
    `stop` is set."""
    ready.release()
    x = 0
    while not stop.is_set():
        if go.wait(0.05):
            for _ in range(50_000):
                x += 1


class Competitors:
    """`n` busy processes, started once (spawned: nothing of torch is inherited) and switched on and off
    between phases, so idle and contended phases can alternate without restarting them."""

    def __init__(self, n: int):
        ctx = mp.get_context("spawn")
        self.stop, self.go, self.ready = ctx.Event(), ctx.Event(), ctx.Semaphore(0)
        self.procs = [ctx.Process(target=_busy, args=(self.stop, self.go, self.ready), daemon=True)
                      for _ in range(n)]

    def __enter__(self) -> Competitors:
        for p in self.procs:
            p.start()
        for _ in self.procs:  # each one started (a spawned interpreter takes a moment)
            if not self.ready.acquire(timeout=60):
                raise RuntimeError("a competitor process did not start within 60 s")
        return self

    def busy(self, on: bool) -> None:
        if on and self.procs:
            self.go.set()
            time.sleep(0.2)  # running before the first timed step
        else:
            self.go.clear()
            time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.go.set()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def measure(profile: str = "quick", steps: int = 6, rounds: int = 3, warmup: int = 2, budget: float = 5.0,
            competing: int = 1) -> dict:
    """Mean seconds per baseline training step at `profile`, idle and beside `competing` busy processes, in
    this process (its OMP_WAIT_POLICY and thread count). Idle and contended phases alternate over `rounds`
    (a shared machine's own load drifts), each with steps / rounds steps, cut to one step past budget / rounds
    seconds."""
    import torch
    from torch.utils.data import DataLoader

    from workbench.config import apply_overrides, preset
    from workbench.data import Collate, dataset_from_config
    from workbench.methods import Draws, Supervised
    from workbench.models import build_model
    from workbench.train import param_groups

    cfg = apply_overrides(preset("baseline", profile), {"train.device": "cpu"})
    ds = dataset_from_config(cfg.data, "train", augment=False)
    batch = next(iter(DataLoader(ds, batch_size=cfg.data.batch_size, collate_fn=Collate(ds.modalities))))
    torch.manual_seed(0)
    method = Supervised(cfg, build_model(cfg.model, ds.modalities, ds.num_classes))
    opt = torch.optim.AdamW(param_groups(method.model, 0.01), lr=1e-4)
    draws = Draws.for_epoch(0, 0)
    method.train()

    def step() -> None:
        loss = method.training_step(batch, draws)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    per_round = max(1, -(-steps // rounds))
    spent = {"idle": [0.0, 0], "contended": [0.0, 0]}  # seconds, steps
    for _ in range(warmup):
        step()
    with Competitors(competing) as others:
        for _ in range(rounds):
            for phase in ("idle", "contended"):
                others.busy(phase == "contended")
                t0 = time.perf_counter()
                for _ in range(per_round):
                    step()
                    spent[phase][1] += 1
                    if time.perf_counter() - t0 > budget / rounds:
                        break
                spent[phase][0] += time.perf_counter() - t0
    idle, contended = (spent[k][0] / spent[k][1] for k in ("idle", "contended"))
    return {"wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"), "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "profile": profile, "batch": cfg.data.batch_size, "size": cfg.data.size,
            "competitors": competing, "idle_s": idle, "contended_s": contended,
            "steps": [spent["idle"][1], spent["contended"][1]], "slowdown": contended / idle}


def measure_in_subprocess(wait_policy: str, **kwargs) -> dict:
    """`measure` in a fresh interpreter whose OpenMP runtime starts with OMP_WAIT_POLICY=`wait_policy`."""
    env = {**os.environ, "OMP_WAIT_POLICY": wait_policy,
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = f"import json; from workbench.bench.contention import measure; print(json.dumps(measure(**{kwargs!r})))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the OMP_WAIT_POLICY={wait_policy} measurement failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--profile", default="quick", help="the profile whose baseline training step is timed")
    p.add_argument("--competitors", type=int, default=1, help="busy processes running beside the timed step")
    p.add_argument("--steps", type=int, default=6, help="timed steps idle, and as many contended")
    p.add_argument("--rounds", type=int, default=3,
                   help="idle and contended phases alternate this many times (a shared machine's load drifts)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the first phase")
    p.add_argument("--budget", type=float, default=5.0,
                   help="seconds per condition after which its phases take one step each, so spinning stays short")
    p.add_argument("--no-spinning", action="store_true",
                   help="skip the OMP_WAIT_POLICY=ACTIVE subprocess (the naive way)")


def run(args: argparse.Namespace) -> int:
    kwargs = {"profile": args.profile, "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
              "budget": args.budget, "competing": args.competitors}
    rows = [measure(**kwargs)]
    if not args.no_spinning:
        rows.append(measure_in_subprocess("ACTIVE", **kwargs))
    r0 = rows[0]
    print(f"{r0['profile']} baseline training step, batch {r0['batch']} at {r0['size']}x{r0['size']}, "
          f"{r0['threads']} torch threads on {r0['cpus']} CPUs, {r0['competitors']} busy competitor(s)")
    for r in rows:  # on a machine that others load too, spinning threads are slow before any competitor starts
        r["vs_workbench_idle"] = r["contended_s"] / r0["idle_s"]
    print(f"{'OMP_WAIT_POLICY':<34}{'idle s/step':>12}{'contended s/step':>18}{'slowdown':>10}"
          f"{'vs workbench idle':>19}")
    for r, label in zip(rows, ("(workbench)", "(spinning, the naive way)")):
        print(f"{r['wait_policy'] + ' ' + label:<34}{r['idle_s']:>12.4f}{r['contended_s']:>18.4f}"
              f"{r['slowdown']:>9.2f}x{r['vs_workbench_idle']:>18.2f}x")
    print(json.dumps({"bench": "contention", "slowdown": {r["wait_policy"]: round(r["slowdown"], 3) for r in rows},
                      "vs_workbench_idle": {r["wait_policy"]: round(r["vs_workbench_idle"], 3) for r in rows},
                      "rows": rows}))
    return 0
