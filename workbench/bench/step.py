"""`python -m workbench bench step`: the RobustSeg student+feedback step over the baseline step.

Same batch, same model size, in one run: the baseline step (forward, CE, backward, AdamW) against
the RobustSeg step (teacher forward, student forward under Anymodal Dropout, L_hp, backward, AdamW,
then the feedback step on the teacher's non-primary encoders). The floor is about 1.33x (the added
teacher forward); the target is <= 1.6x. Prints, last, one JSON line with the ratios.
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


def _step_time(method, batch, steps: int, warmup: int) -> float:
    opt = torch.optim.AdamW(param_groups(method.model, 0.01), lr=1e-4)
    gen = Draws.for_epoch(0, 0)
    method.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = method.training_step(batch, gen)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(batch, gen, lr=1e-4)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]  # median


def bench_profile(profile: str, method_name: str, steps: int, warmup: int, device: str) -> dict:
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
    t_base = _step_time(Supervised(preset("baseline", profile), base_model), batch, steps, warmup)
    t_rs = _step_time(Distiller(cfg, student, teacher), batch, steps, warmup)
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


def run(args: argparse.Namespace) -> int:
    rows = [bench_profile(pr, args.method, args.steps, args.warmup, args.device) for pr in args.profiles.split(",")]
    print(f"{'profile':<8}{'method':<11}{'batch':>6}{'size':>6}{'baseline s':>12}{'method s':>10}{'ratio':>8}")
    for r in rows:
        print(f"{r['profile']:<8}{r['method']:<11}{r['batch']:>6}{r['size']:>6}{r['baseline_step_s']:>12.4f}"
              f"{r['method_step_s']:>10.4f}{r['ratio']:>7.2f}x")
    print(json.dumps({"bench": "step", "ratio": {r["profile"]: round(r["ratio"], 3) for r in rows},
                      "max_ratio": round(max(r["ratio"] for r in rows), 3), "target": 1.6, "rows": rows}))
    return 0
