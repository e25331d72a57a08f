"""`python -m workbench bench step`: the RobustSeg student+feedback step over the baseline step.

Same batch, same model size, in one run: the baseline step (forward, CE, backward, AdamW) against
the RobustSeg step (teacher forward, student forward under Anymodal Dropout, L_hp, backward, AdamW,
then the feedback step on the teacher's non-primary encoders), the two taking their steps in turn (a shared
machine's drifting load weighs on both alike). With `--clock cpu` both run at one thread, timed by the
thread's CPU time (robust to other processes on a shared machine). The RobustSeg step adds to the baseline's
the teacher's forward (about 1/3 of a baseline step), the distillation terms and the feedback step (a
backward through the teacher's head into its non-primary encoders, about 1/2 of a baseline step): about
2x, whatever the implementation, without changing what is computed (docs/BENCHMARK.md, "Speed").
Prints, last, one JSON line with the ratios (issue 19's target: <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from workbench.config import apply_overrides, preset
from workbench.data import Collate, dataset_from_config
from workbench.methods import Distiller, Draws, Supervised
from workbench.models import build_model
from workbench.train import move_batch, param_groups, resolve_device


class _Timed:
    """A method's training step as the loop runs it (AdamW foreach), timed by `clock`."""

    def __init__(self, method, clock):
        self.method, self.clock, self.times = method, clock, []
        self.opt = torch.optim.AdamW(param_groups(method.model, 0.01), lr=1e-4, foreach=True)
        self.gen = Draws.for_epoch(0, 0)

    def step(self, batch, timed: bool) -> None:
        self.method.train()
        t0 = self.clock()
        loss = self.method.training_step(batch, self.gen)["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.method.after_step(batch, self.gen, lr=1e-4)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if timed:
            self.times.append(self.clock() - t0)

    @property
    def median(self) -> float:
        return sorted(self.times)[len(self.times) // 2]


def bench_profile(profile: str, method_name: str, steps: int, warmup: int, device: str,
                  clock=time.perf_counter) -> dict:
    cfg = apply_overrides(preset(method_name, profile), {"train.device": device})
    dev = resolve_device(device)
    ds = dataset_from_config(cfg.data, "train", augment=False)
    batch = move_batch(next(iter(DataLoader(ds, batch_size=cfg.data.batch_size, collate_fn=Collate(ds.modalities)))),
                       dev)
    torch.manual_seed(0)
    base_model = build_model(cfg.model, ds.modalities, ds.num_classes).to(dev)
    teacher = build_model(cfg.model, ds.modalities, ds.num_classes).to(dev)
    teacher.load_state_dict(base_model.state_dict())
    student = build_model(cfg.model, ds.modalities, ds.num_classes).to(dev)
    student.load_state_dict(base_model.state_dict())
    base, rs = _Timed(Supervised(preset("baseline", profile), base_model), clock), _Timed(Distiller(cfg, student, teacher),
                                                                                          clock)
    for i in range(warmup + steps):
        base.step(batch, i >= warmup)
        rs.step(batch, i >= warmup)
    t_base, t_rs = base.median, rs.median
    return {"profile": profile, "method": method_name, "batch": cfg.data.batch_size, "size": cfg.data.size,
            "baseline_step_s": t_base, "method_step_s": t_rs, "ratio": t_rs / t_base}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--profiles", default="tiny,quick", help="comma-separated profiles to time")
    p.add_argument("--method", default="robustseg", help="the method preset timed against the baseline step")
    p.add_argument("--steps", type=int, default=10, help="timed steps per profile")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall: wall time at torch's thread count; cpu: one thread, its CPU time (a shared machine)")


def run(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    if args.clock == "cpu":
        torch.set_num_threads(1)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    try:
        rows = [bench_profile(pr, args.method, args.steps, args.warmup, args.device, clock)
                for pr in args.profiles.split(",")]
    finally:
        torch.set_num_threads(threads)
    print(f"{'profile':<8}{'method':<11}{'batch':>6}{'size':>6}{'baseline s':>12}{'method s':>10}{'ratio':>8}")
    for r in rows:
        print(f"{r['profile']:<8}{r['method']:<11}{r['batch']:>6}{r['size']:>6}{r['baseline_step_s']:>12.4f}"
              f"{r['method_step_s']:>10.4f}{r['ratio']:>7.2f}x")
    print(json.dumps({"bench": "step", "clock": args.clock, "ratio": {r["profile"]: round(r["ratio"], 3) for r in rows},
                      "max_ratio": round(max(r["ratio"] for r in rows), 3), "target": 1.5, "rows": rows}))
    return 0
