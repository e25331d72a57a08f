"""`python -m workbench bench gpu`: the training step on one device, part by part, for each profile.

One prepared command for a GPU machine (about 5 minutes on one GPU with the defaults; no row starts after
`--budget` seconds and a running row stops taking steps after `--hard-limit`, so it fits in 8): with
`torch.compile` off, then on, for each of `--profiles` (quick, study, paper) and `--methods` (the baseline
step; RobustSeg's student step with its feedback step), it times `--steps` training steps after `--warmup`
untimed ones and prints

- images/s and the median step time, split into data (the host-to-device copy of a batch, as the training
  loop does it), forward (the method's losses), backward, optimizer and after (RobustSeg's feedback step),
  with `torch.cuda.synchronize()` around each part;
- peak device memory (`torch.cuda.max_memory_allocated`);
- model FLOP utilization: the step's FLOPs (forward + backward, `bench train`'s corrected FlopCounterMode)
  per second over the device's dense bf16 peak (`PEAK_TFLOPS` by device name, or `--peak-tflops`).

The data is the synthetic benchmark rendered at each profile's training size (the paper profile: 1024 px
crops, batch 2, MiT-B0, its head and OHEM; 12 synthetic classes instead of DeLiVER's 25) once, before any
timing, so rendering and loading are not measured. The training set-up is the loop's: bf16 autocast and
channels_last on CUDA (`train.amp`, `train.channels_last`), AdamW (foreach). With `--device cpu` it runs
on the CPU (fp32; MFU against this CPU's fp32 matmul rate, measured in the same run): `--profiles tiny`
makes it a test. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext

import torch

# Dense bf16 tensor-core peak in TFLOP/s by device name (NVIDIA data sheets); the first match counts.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
)


def peak_tflops(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    """The device's bf16 peak (TFLOP/s) and where it comes from."""
    if override:
        return override, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_TFLOPS:
            if key in name:
                return value, f"{name} (table)"
        return None, f"{name} (not in the table: pass --peak-tflops)"
    from workbench.bench.train import matmul_gflops

    return matmul_gflops() / 1e3, "this CPU's fp32 matmul, measured"


def _config(profile: str, method: str, device: str):
    from workbench.config import apply_overrides, preset

    cfg = preset(method, profile)
    over = {"train.device": device, "data.dataset": "synthetic", "data.root": None, "data.eval_size": None,
            "data.num_workers": 0, "data.case": None, "data.pipeline": None}
    if cfg.distill.enabled:
        over["distill.weighting"] = "paper"  # the step's cost does not depend on how the weights were chosen
    return apply_overrides(cfg, over)


def _batches(cfg, device: torch.device, count: int) -> list[dict]:
    """`count` training batches rendered at the profile's size (no augmentation), on the host (pinned on CUDA)."""
    from torch.utils.data import DataLoader

    from workbench.data import Collate, dataset_from_config

    ds = dataset_from_config(cfg.data, "train", augment=False)
    loader = DataLoader(ds, batch_size=cfg.data.batch_size, collate_fn=Collate(ds.modalities))
    out = []
    for _, b in zip(range(count), loader):
        out.append({k: (v.pin_memory() if device.type == "cuda" and torch.is_tensor(v) else v) for k, v in b.items()})
    return out, ds


def bench_row(profile: str, method_name: str, compiled: bool, device: torch.device, steps: int, warmup: int,
              peak: float | None, batches: int = 2, deadline: float = float("inf")) -> dict:
    """One row: `steps` timed steps after `warmup` untimed ones, fewer when the clock passes `deadline`
    (`perf_counter` time; `steps_timed` says how many were timed, `cut` that it was cut short)."""
    from workbench.bench.train import step_flops
    from workbench.methods import Distiller, Draws, Supervised
    from workbench.models import build_model
    from workbench.train import move_batch, param_groups

    cfg = _config(profile, method_name, str(device))
    host, ds = _batches(cfg, device, batches)
    torch.manual_seed(0)
    build = lambda: build_model(cfg.model, ds.modalities, ds.num_classes).to(device)  # noqa: E731
    channels_last = cfg.train.channels_last and device.type == "cuda"
    amp = device.type == "cuda" and cfg.train.amp in ("auto", "bf16") or cfg.train.amp == "bf16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    if cfg.distill.enabled:
        teacher = build()
        student = build()
        student.load_state_dict(teacher.state_dict())
        if channels_last:
            teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
        method = Distiller(cfg, student, teacher)
    else:
        model = build()
        method = Supervised(cfg, model.to(memory_format=torch.channels_last) if channels_last else model)
    draws = Draws.for_epoch(0, 0)
    method.train()
    with autocast():
        flops = step_flops(method, move_batch(host[0], device, channels_last), draws)
    if compiled:
        method.net = torch.compile(method.net)
    opt = torch.optim.AdamW(param_groups(method.model, cfg.train.weight_decay), lr=cfg.train.lr, foreach=True)

    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts = {k: [] for k in ("data", "forward", "backward", "optimizer", "after", "step")}
    t_start, cut = time.perf_counter(), False
    for i in range(warmup + steps):
        if time.perf_counter() > deadline:  # e.g. torch.compile recompiling for each Anymodal Dropout subset size
            cut = True
            break
        t0 = sync()
        batch = move_batch(host[i % len(host)], device, channels_last)
        t1 = sync()
        with autocast():
            losses = method.training_step(batch, draws)
        t2 = sync()
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        t3 = sync()
        opt.step()
        t4 = sync()
        with autocast():
            method.after_step(batch, draws, lr=opt.param_groups[0]["lr"])
        t5 = sync()
        if i >= warmup:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)):
                parts[k].append(v)
    median = {k: sorted(v)[len(v) // 2] if v else float("nan") for k, v in parts.items()}
    step = median["step"]
    return {"profile": profile, "method": method_name, "compile": compiled, "steps_timed": len(parts["step"]),
            "cut": cut, "batch": cfg.data.batch_size,
            "size": cfg.data.size, "encoder": cfg.model.encoder, "images_per_s": cfg.data.batch_size / step,
            **{f"{k}_ms": 1e3 * v for k, v in median.items()},
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "gflop_per_step": flops / 1e9, "tflops": flops / step / 1e12,
            "mfu": flops / step / 1e12 / peak if peak else None, "seconds": time.perf_counter() - t_start}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    p.add_argument("--profiles", default="quick,study,paper", help="comma-separated profiles (tiny: a CPU test)")
    p.add_argument("--methods", default="baseline,robustseg", help="comma-separated method presets")
    p.add_argument("--compile", default=None, help="off,on (default on CUDA) | off (default on a CPU) | on")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (torch.compile compiles here)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s "
                   "(default: from the table of device names)")
    p.add_argument("--budget", type=float, default=300.0, help="seconds after which no new row starts")
    p.add_argument("--hard-limit", type=float, default=420.0,
                   help="seconds after which a running row stops taking steps (it reports the steps it timed)")


def run(args: argparse.Namespace) -> int:
    from workbench.errors import ConfigError
    from workbench.train import resolve_device

    device = resolve_device(args.device)
    compile_modes = (args.compile or ("off,on" if device.type == "cuda" else "off")).split(",")
    if any(m not in ("off", "on") for m in compile_modes):
        raise ConfigError(f"--compile {args.compile!r}: give off, on or off,on")
    peak, source = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device {name}; peak {f'{peak:.4g} TFLOP/s' if peak else 'unknown'} ({source}); torch {torch.__version__}")
    head = (f"{'profile':<8}{'method':<10}{'compile':<8}{'batch':>6}{'size':>6}{'img/s':>9}{'step ms':>9}"
            f"{'data':>8}{'fwd':>8}{'bwd':>8}{'opt':>8}{'after':>8}{'peak GiB':>9}{'GFLOP':>8}{'TFLOP/s':>9}{'MFU':>7}")
    print(head)
    rows, skipped, t0 = [], [], time.perf_counter()
    for mode in compile_modes:  # every eager row first: compiling is what may not fit
        for profile in [p for p in args.profiles.split(",") if p]:
            for method in [m for m in args.methods.split(",") if m]:
                if time.perf_counter() - t0 > args.budget:
                    skipped.append(f"{profile}/{method}/compile {mode}")
                    continue
                r = bench_row(profile, method, mode == "on", device, args.steps, args.warmup, peak,
                              deadline=t0 + args.hard_limit)
                rows.append(r)
                mem = f"{r['peak_memory_gib']:>9.2f}" if r["peak_memory_gib"] is not None else f"{'-':>9}"
                mfu = f"{100 * r['mfu']:>6.1f}%" if r["mfu"] is not None else f"{'-':>7}"
                print(f"{profile:<8}{method:<10}{mode:<8}{r['batch']:>6}{r['size']:>6}{r['images_per_s']:>9.1f}"
                      f"{r['step_ms']:>9.1f}{r['data_ms']:>8.1f}{r['forward_ms']:>8.1f}{r['backward_ms']:>8.1f}"
                      f"{r['optimizer_ms']:>8.1f}{r['after_ms']:>8.1f}{mem}{r['gflop_per_step']:>8.1f}"
                      f"{r['tflops']:>9.3f}{mfu}" + (f"  (cut after {r['steps_timed']} timed steps)" if r["cut"] else ""),
                      flush=True)
    if skipped:
        print(f"past the {args.budget:.0f} s budget, not run: {', '.join(skipped)}")
    print(json.dumps({"bench": "gpu", "device": name, "peak_tflops": peak, "peak_source": source,
                      "seconds": round(time.perf_counter() - t0, 1), "skipped": skipped, "rows": rows}))
    return 0
