"""`python -m workbench bench combos`: one-pass all-combination evaluation vs the naive loop.

Both ways evaluate the same model on the same batches (both protocols, all 2^M - 1 combinations),
in one run; prints a table and, last, one JSON line with `speedup` and `identical` (confusion
matrices equal). Identity is checked at the precision the timing runs in (float32) and in float64.
The RMM / NM lines (`workbench.robustness`, all rates and levels, the same draws both ways) time the
one-pass sweep (clean inputs encoded once per batch, each corrupted copy once, every setting formed from
those encodings) against the benchmark's loop (one full forward per setting, settings outer).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from workbench.config import preset
from workbench.data import Collate, dataset_from_config
from workbench.evaluate import evaluate_combinations
from workbench.models import build_model, load_model
from workbench.robustness import evaluate_nm, evaluate_rmm


def _time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _cast(batches, dtype):
    return [{k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in b.items()}
            for b in batches]


def _setup(profile: str, batches: int, fusion: str, checkpoint: str | None):
    cfg = preset(profile)
    torch.manual_seed(0)
    ds = dataset_from_config(cfg.data, "val", augment=False)
    loader = DataLoader(ds, batch_size=cfg.data.batch_size, collate_fn=Collate(ds.modalities))
    data = []
    for i, b in enumerate(loader):  # rendered once, outside the timing
        if i >= batches:
            break
        data.append(b)
    if checkpoint:  # a trained model: near-tied logits (where summation order can flip argmax) are rare
        model = load_model(checkpoint)
    else:
        model = build_model(cfg.model, ds.modalities, ds.num_classes)
        model.fusion = type(model.fusion)(fusion, model.channels, len(ds.modalities))
    model.eval()
    return model, data


def bench_profile(profile: str, batches: int, repeats: int, fusion: str, checkpoint: str | None = None) -> dict:
    model, data = _setup(profile, batches, fusion, checkpoint)
    run = lambda one_pass, d: evaluate_combinations(model, d, progress=False, one_pass=one_pass)  # noqa: E731
    t_fast, fast = _time(lambda: run(True, data), repeats)
    t_naive, naive = _time(lambda: run(False, data), repeats)
    same32 = all(torch.equal(fast.cms[k], naive.cms[k]) for k in fast.cms)
    diff32 = sum(int((fast.cms[k] - naive.cms[k]).abs().sum()) for k in fast.cms) // 2
    model.double()
    d64 = _cast(data, torch.float64)
    f64, n64 = run(True, d64), run(False, d64)
    same64 = all(torch.equal(f64.cms[k], n64.cms[k]) for k in f64.cms)
    images = sum(b["label"].shape[0] for b in data)
    return {"profile": profile, "fusion": fusion, "images": images, "combos": len(fast.combos),
            "protocols": len(fast.protocols), "naive_s": t_naive, "one_pass_s": t_fast,
            "speedup": t_naive / t_fast, "identical_float32": same32, "pixels_differing_float32": diff32,
            "identical_float64": same64}


def bench_robustness(profile: str, batches: int, repeats: int, fusion: str, checkpoint: str | None = None) -> list[dict]:
    """One row per protocol: RMM (rates 0.25/0.5/0.75 x 15 sets, shared draws) and NM (3 levels)."""
    model, data = _setup(profile, batches, fusion, checkpoint)
    rows = []
    for name, fn in (("rmm", evaluate_rmm), ("nm", evaluate_nm)):
        t_fast, fast = _time(lambda fn=fn: fn(model, data, progress=False), repeats)
        t_naive, naive = _time(lambda fn=fn: fn(model, data, progress=False, one_pass=False), repeats)
        same32 = all(torch.equal(fast.cms[k], naive.cms[k]) for k in fast.cms)
        diff32 = sum(int((fast.cms[k] - naive.cms[k]).abs().sum()) for k in fast.cms) // 2
        settings = len(fast.cms)
        rows.append({"profile": profile, "protocol": name, "fusion": fusion, "settings": settings,
                     "images": sum(b["label"].shape[0] for b in data), "naive_s": t_naive, "one_pass_s": t_fast,
                     "speedup": t_naive / t_fast, "identical_float32": same32, "pixels_differing_float32": diff32})
    model.double()
    d64 = _cast(data, torch.float64)
    for row, fn in zip(rows, (evaluate_rmm, evaluate_nm)):
        f64, n64 = fn(model, d64, progress=False), fn(model, d64, progress=False, one_pass=False)
        row["identical_float64"] = all(torch.equal(f64.cms[k], n64.cms[k]) for k in f64.cms)
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--profiles", default="tiny,quick", help="comma-separated profiles to time")
    p.add_argument("--fusion", default="mean", choices=("mean", "softmax"), help="fusion of the random model")
    p.add_argument("--batches", type=int, default=2, help="val batches evaluated per timing")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per way (best of N)")
    p.add_argument("--checkpoint", default=None, help="time a trained model (its own profile's data) instead of "
                   "a randomly initialized one; use with a single --profiles entry")
    p.add_argument("--robustness", default="tiny", help="profiles for the RMM / NM lines (comma-separated; "
                   "'none' skips them)")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(torch.get_num_threads())
    rows = [bench_profile(pr, args.batches, args.repeats, args.fusion, args.checkpoint)
            for pr in args.profiles.split(",")]
    print(f"{'profile':<8}{'fusion':<9}{'images':>7}{'naive s':>10}{'one-pass s':>12}{'speedup':>9}  identical(f32/f64)")
    for r in rows:
        print(f"{r['profile']:<8}{r['fusion']:<9}{r['images']:>7}{r['naive_s']:>10.3f}{r['one_pass_s']:>12.3f}"
              f"{r['speedup']:>8.1f}x  {r['identical_float32']}/{r['identical_float64']}")
    robust = [] if args.robustness == "none" else [
        r for pr in args.robustness.split(",") for r in bench_robustness(pr, args.batches, args.repeats, args.fusion,
                                                                         args.checkpoint)]
    for r in robust:
        print(f"{r['protocol'].upper() + ' ' + r['profile']:<17}{r['images']:>7}{r['naive_s']:>10.3f}"
              f"{r['one_pass_s']:>12.3f}{r['speedup']:>8.1f}x  {r['identical_float32']}/{r['identical_float64']}"
              f"  ({r['settings']} settings; {r['pixels_differing_float32']} float32 pixels differ)")
    print(json.dumps({"bench": "combos", "speedup": {r["profile"]: round(r["speedup"], 2) for r in rows},
                      "robustness_speedup": {f"{r['protocol']}/{r['profile']}": round(r["speedup"], 2) for r in robust},
                      "robustness_identical": all(r["identical_float32"] and r["identical_float64"] for r in robust),
                      "min_speedup": round(min(r["speedup"] for r in rows), 2),
                      "identical": all(r["identical_float32"] and r["identical_float64"] for r in rows),
                      "identical_float64": all(r["identical_float64"] for r in rows),
                      "pixels_differing_float32": sum(r["pixels_differing_float32"] for r in rows),
                      "threads": torch.get_num_threads(), "rows": rows, "robustness_rows": robust}))
    return 0
