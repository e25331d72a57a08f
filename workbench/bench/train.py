"""`python -m workbench bench train`: how much of the machine the quick baseline's training step uses.

In one run: the machine's fp32 matmul rate (`torch.matmul` of two 2048 x 2048 matrices, best of 5, at the
thread count of the timed steps), the FLOPs of one training step of the quick baseline (forward and
backward, counted with `torch.utils.flop_counter.FlopCounterMode`, whose count of a grouped convolution's
backward is corrected: it ignores the groups and counts the depthwise convolutions of Mix-FFN 16-384x too
high), and the median time of a step (forward, CE, backward, AdamW) on pre-rendered batches, for each way
of running it:

- `before`: the optimizer as before issue 19 (AdamW's one-tensor-at-a-time loop, PyTorch's CPU default);
- `workbench`: what `train` runs (AdamW's foreach implementation: bitwise the same weights, checked here);
- `fused AdamW`, `channels_last` (and `--compile`: `torch.compile` of the network): measured options that
  change the rounding (the largest weight difference after the timed steps is printed).

The ways take their steps in turn (round robin), so the drifting load of a shared machine weighs on all alike.
`--clock cpu` times at one thread with the thread's CPU time (`time.thread_time`), which other processes on a
shared machine barely change (wall time at load 7 on 2 cores is several times the quiet one).

`achieved / matmul` is the step's GFLOP/s over the matmul's (the issue's target: >= 0.4). Then `--pairs`
pairs of quick baseline trainings of `--steps` steps each: one process at the thread count, one run after
the other, against two one-thread processes side by side (`workbench.runs.train_side_by_side`), with the
wall times and the speedup. Prints, last, one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from workbench.paths import REPO_ROOT

TARGET = 0.4


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """A convolution's backward: each gradient asked for costs what the forward costs (the forward's count,
    `conv_flop_count`, takes the weight's per-group input channels, so groups are counted right)."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode with the grouped-convolution backward counted right."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


def step_flops(method, batch: dict, draws) -> int:
    """FLOPs of one training step's forward and backward, and of the method's work after it (RobustSeg's
    feedback step, run with learning rate 0: the weights stay as they are); the optimizers' elementwise work
    is not counted."""
    with flop_counter() as fc:
        method.training_step(batch, draws)["loss"].backward()
        method.after_step(batch, draws, lr=0.0)
    method.model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def matmul_gflops(n: int = 2048, repeats: int = 5, dtype=torch.float32, device: str = "cpu",
                  clock=time.perf_counter) -> float:
    """The best rate of an n x n matmul (GFLOP/s)."""
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = clock()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return 2 * n**3 / best / 1e9


def _setup(profile: str, batches: int):
    from torch.utils.data import DataLoader

    from workbench.config import apply_overrides, preset
    from workbench.data import Collate, dataset_from_config
    from workbench.models import build_model

    cfg = apply_overrides(preset("baseline", profile), {"train.device": "cpu"})
    ds = dataset_from_config(cfg.data, "train", aug_seed=0)
    loader = DataLoader(ds, batch_size=cfg.data.batch_size, collate_fn=Collate(ds.modalities), shuffle=False)
    data = [b for _, b in zip(range(batches), loader)]
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, ds.modalities, ds.num_classes), data


VARIANTS = {  # name -> (AdamW keywords, channels_last, compile)
    "before": ({"foreach": False}, False, False),
    "workbench": ({"foreach": True}, False, False),
    "fused AdamW": ({"fused": True}, False, False),
    "channels_last": ({"foreach": True}, True, False),
    "compile": ({"foreach": True}, False, True),
}


class Stepper:
    """One way of running the training step on a copy of `model` (see `VARIANTS`), step by step."""

    def __init__(self, cfg, model, data, opt_kw: dict, channels_last: bool, compiled: bool):
        from workbench.methods import Draws, Supervised
        from workbench.train import move_batch, param_groups

        model = copy.deepcopy(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.method = Supervised(cfg, model)
        if compiled:
            self.method.net = torch.compile(self.method.net)
        self.opt = torch.optim.AdamW(param_groups(self.method.model, cfg.train.weight_decay), lr=cfg.train.lr,
                                     **opt_kw)
        self.batches = [move_batch(b, torch.device("cpu"), channels_last) for b in data]
        self.draws, self.i, self.times = Draws.for_epoch(0, 0), 0, []
        self.rng = torch.Generator().manual_seed(1)  # head dropout: the same draws for every variant

    def step(self, timed: bool, clock=time.perf_counter) -> None:
        self.method.train()
        rng = torch.get_rng_state()
        torch.set_rng_state(self.rng.get_state())
        t0 = clock()
        loss = self.method.training_step(self.batches[self.i % len(self.batches)], self.draws)["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if timed:
            self.times.append(clock() - t0)
        self.rng.set_state(torch.get_rng_state())
        torch.set_rng_state(rng)
        self.i += 1

    @property
    def median(self) -> float:
        return sorted(self.times)[len(self.times) // 2]


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def bench_step(profile: str, variants: list[str], steps: int, warmup: int, batches: int, clock=time.perf_counter
               ) -> dict:
    from workbench.methods import Draws, Supervised

    cfg, model, data = _setup(profile, batches)
    method = Supervised(cfg, copy.deepcopy(model))
    method.train()
    flops = step_flops(method, data[0], Draws.for_epoch(0, 0))
    matmul = matmul_gflops(clock=clock)
    steppers = {name: Stepper(cfg, model, data, *VARIANTS[name]) for name in variants}
    for i in range(warmup + steps):  # round robin: a shared machine's drifting load weighs on every way alike
        for s in steppers.values():
            s.step(timed=i >= warmup, clock=clock)
    rows, ref = [], None
    for name, s in steppers.items():
        seconds, weights = s.median, s.method.model.state_dict()
        ref = ref if ref is not None else weights
        diff = _max_diff(ref, weights)
        gflops = flops / seconds / 1e9
        rows.append({"variant": name, "step_s": seconds, "images_per_s": cfg.data.batch_size / seconds,
                     "gflops": gflops, "ratio": gflops / matmul, "bitwise_as_before": diff == 0.0, "max_diff": diff})
    return {"profile": profile, "batch": cfg.data.batch_size, "size": cfg.data.size, "gflop_per_step": flops / 1e9,
            "matmul_gflops": matmul, "threads": torch.get_num_threads(), "rows": rows}


_CHILD = """
import json, sys, tempfile, time, torch
from pathlib import Path
torch.set_num_threads({threads})
from workbench.config import apply_overrides, preset
from workbench.train import train
t0 = time.perf_counter()
for seed in {seeds}:
    cfg = apply_overrides(preset("baseline", "{profile}"), {{"train.seed": seed, "train.max_steps": {steps},
                          "train.device": "cpu", "train.val_every": 0}})
    train(cfg, Path(tempfile.mkdtemp(dir="{tmp}")) / "run", progress=False)
print(json.dumps(time.perf_counter() - t0))
"""


def _trainings(profile: str, steps: int, seeds: list[int], threads: int, tmp: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "WORKBENCH_RUNS": tmp}
    code = _CHILD.format(threads=threads, seeds=seeds, profile=profile, steps=steps, tmp=tmp)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a timed training failed:\n{err[-2000:]}")


def bench_side_by_side(profile: str, steps: int, pairs: int, threads: int, rounds: int = 1) -> dict:
    """Wall seconds of 2 x `pairs` trainings: one process at `threads` threads, one after the other, against
    two one-thread processes side by side (each process start counted, as in the suite); the two ways take
    turns `rounds` times and the totals are compared."""
    from workbench.config import preset
    from workbench.data import dataset_from_config

    seeds = list(range(2 * pairs))
    with tempfile.TemporaryDirectory(prefix="workbench-bench-train-") as tmp:
        saved = os.environ.get("WORKBENCH_RUNS")
        os.environ["WORKBENCH_RUNS"] = tmp
        try:  # the data rendered once and cached on disk first, as the suite's trainings find it
            for split in ("train", "val"):
                ds = dataset_from_config(preset("baseline", profile).data, split)
                for i in range(len(ds)):
                    ds.load(i)
        finally:
            os.environ.pop("WORKBENCH_RUNS") if saved is None else os.environ.update(WORKBENCH_RUNS=saved)
        sequential, side = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            _wait([_trainings(profile, steps, seeds, threads, tmp)])
            sequential.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _wait([_trainings(profile, steps, seeds[0::2], 1, tmp), _trainings(profile, steps, seeds[1::2], 1, tmp)])
            side.append(time.perf_counter() - t0)
    return {"profile": profile, "runs": len(seeds), "steps": steps, "threads": threads, "rounds": rounds,
            "sequential_s": sum(sequential) / rounds, "side_by_side_s": sum(side) / rounds,
            "each": {"sequential_s": sequential, "side_by_side_s": side}, "speedup": sum(sequential) / sum(side)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--profile", default="quick", help="the profile whose baseline step is timed (default quick)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per way")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batches", type=int, default=4, help="pre-rendered batches the steps cycle through")
    p.add_argument("--variants", default="before,workbench,fused AdamW,channels_last",
                   help=f"comma list of: {', '.join(VARIANTS)}")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation on a CPU)")
    p.add_argument("--pairs", type=int, default=1, help="pairs of trainings timed one after another vs side by side "
                   "(0: skip)")
    p.add_argument("--train-steps", type=int, default=60, help="steps of each timed training")
    p.add_argument("--rounds", type=int, default=1, help="times the two ways of training take turns")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall: wall time at torch's thread count; cpu: one thread, its CPU time (for a shared machine)")


def run(args: argparse.Namespace) -> int:
    from workbench.errors import UnknownName

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] + (["compile"] * args.compile)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UnknownName(f"unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
    load = os.getloadavg()
    threads = torch.get_num_threads()
    if args.clock == "cpu":
        torch.set_num_threads(1)
    try:
        r = bench_step(args.profile, variants, args.steps, args.warmup, args.batches,
                       time.thread_time if args.clock == "cpu" else time.perf_counter)
    finally:
        torch.set_num_threads(threads)
    print(f"{r['profile']} baseline step (batch {r['batch']} at {r['size']}px): {r['gflop_per_step']:.2f} GFLOP "
          f"forward+backward; fp32 matmul {r['matmul_gflops']:.1f} GFLOP/s; {r['threads']} threads, "
          f"{'CPU time' if args.clock == 'cpu' else 'wall time'}")
    print(f"{'variant':<15}{'step ms':>9}{'img/s':>8}{'GFLOP/s':>9}{'achieved/matmul':>17}  bitwise as before")
    for row in r["rows"]:
        print(f"{row['variant']:<15}{1e3 * row['step_s']:>9.1f}{row['images_per_s']:>8.1f}{row['gflops']:>9.1f}"
              f"{row['ratio']:>17.3f}  {row['bitwise_as_before']}"
              + ("" if row["bitwise_as_before"] else f" (max |diff| {row['max_diff']:.1e})"))
    side = bench_side_by_side(args.profile, args.train_steps, args.pairs, threads, args.rounds) if args.pairs else None
    if side:
        print(f"{side['runs']} trainings of {side['steps']} steps: one after another at {side['threads']} threads "
              f"{side['sequential_s']:.1f} s, side by side at 1 thread {side['side_by_side_s']:.1f} s "
              f"(mean of {side['rounds']}; each: {', '.join(f'{a:.0f}/{b:.0f}' for a, b in zip(*side['each'].values()))}"
              f" s): {side['speedup']:.2f}x")
    load_after = os.getloadavg()
    print(f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load)}, "
          f"after {'/'.join(f'{x:.2f}' for x in load_after)}; {os.cpu_count()} CPUs")
    rows = {row["variant"]: row for row in r["rows"]}
    ours = rows.get("workbench", r["rows"][-1])
    print(json.dumps({"bench": "train", "profile": r["profile"], "clock": args.clock, "threads": r["threads"],
                      "ratio": round(ours["ratio"], 3), "target": TARGET,
                      "images_per_s": {k: round(v["images_per_s"], 1) for k, v in rows.items()},
                      "gflop_per_step": round(r["gflop_per_step"], 3), "matmul_gflops": round(r["matmul_gflops"], 1),
                      "side_by_side": side, "load_before": [round(x, 2) for x in load],
                      "load_after": [round(x, 2) for x in load_after], "rows": r["rows"]}))
    return 0
