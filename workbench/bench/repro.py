"""`python -m workbench bench repro`: what the reproducibility mode (WORKBENCH_REPRO=1) costs.

Times the quick baseline training step (forward, CE, backward, AdamW on one batch, on the CPU) in the
default mode and with the pinned code paths of `workbench.repro` (ATen AVX2 kernels, oneDNN at AVX2,
MKL's COMPATIBLE reproducibility branch, numpy without AVX-512, deterministic algorithms), each in a fresh
subprocess because the switches are read when torch loads. Both run at the mode's thread count
(`REPRO_THREADS`), so the ratio is the cost of the pinned paths alone. The modes alternate over
`--rounds` subprocesses each (a shared machine's load drifts, and weighs on both alike); each reports the
median seconds per step and a digest of the weights after its steps: the rounds of one mode must agree
bit for bit, and the two modes differ (they take different code paths). Prints, last, one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

from workbench import repro
from workbench.paths import REPO_ROOT


def weights_digest(module) -> str:
    """SHA-256 (first 16 hex digits) of a module's parameters and buffers, in state-dict order."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def measure(profile: str = "quick", steps: int = 10, warmup: int = 2) -> dict:
    """Median seconds per baseline training step at `profile` in this process's mode and thread count, and
    the digest of the weights after warm-up and timed steps."""
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
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = method.training_step(batch, draws)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    mode = repro.mode()
    return {"mode": mode["mode"], "threads": mode["threads"], "cpu": mode["cpu"],
            "cpu_capability": mode["cpu_capability"], "profile": profile, "batch": cfg.data.batch_size,
            "size": cfg.data.size, "steps": steps, "step_s": sorted(times)[len(times) // 2],
            "weights": weights_digest(method.model)}


def distillation_digest(steps: int = 2) -> dict:
    """Digests of the student and the teacher after `steps` RobustSeg steps (HPD losses, feedback, AdamW) at
    the tiny profile, from a teacher at its initialisation (no checkpoint needed): the data rendering (numpy),
    ATen, oneDNN and MKL all take part. With this process's mode and its numerical switches."""
    import torch
    from torch.utils.data import DataLoader

    from workbench.config import apply_overrides, preset
    from workbench.data import Collate, dataset_from_config
    from workbench.methods import Distiller, Draws
    from workbench.models import build_model

    cfg = apply_overrides(preset("robustseg", "tiny"), {"data.train_samples": 8, "train.device": "cpu"})
    ds = dataset_from_config(cfg.data, "train", augment=False)
    batch = next(iter(DataLoader(ds, batch_size=cfg.data.batch_size, collate_fn=Collate(ds.modalities))))
    torch.manual_seed(0)
    teacher = build_model(cfg.model, ds.modalities, ds.num_classes)
    student = build_model(cfg.model, ds.modalities, ds.num_classes)
    student.load_state_dict(teacher.state_dict())
    method = Distiller(cfg, student, teacher)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.train.lr)
    method.train()
    for step in range(steps):
        draws = Draws.for_epoch(0, step)
        loss = method.training_step(batch, draws)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(batch, draws, lr=cfg.train.lr)
    return {"student": weights_digest(student), "teacher": weights_digest(teacher), "numerics": repro.mode()}


def child_env(reproducible: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a subprocess in the given mode: this one's without the workbench's pins and flag
    (whichever mode this process runs in), WORKBENCH_REPRO=1 where `reproducible`, the mode's thread count in
    both, this checkout first on PYTHONPATH, and `extra` last (e.g. the switches a lesser CPU would set)."""
    env = {k: v for k, v in os.environ.items() if k not in repro.PINNED and k != repro.ENV_FLAG}
    env |= {"OMP_NUM_THREADS": str(repro.REPRO_THREADS), "MKL_NUM_THREADS": str(repro.REPRO_THREADS),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if reproducible:
        env[repro.ENV_FLAG] = "1"
    return env | (extra or {})


def run_child(code: str, reproducible: bool, extra: dict[str, str] | None = None, timeout: float = 600) -> dict:
    """Run `code` (Python that prints one JSON object last) in a fresh interpreter in the given mode; its
    object. The interpreter imports workbench first, so the mode's switches are set before torch loads."""
    out = subprocess.run([sys.executable, "-c", "import workbench\n" + code], env=child_env(reproducible, extra),
                         capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the {'repro' if reproducible else 'default'}-mode subprocess failed:\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--profile", default="quick", help="the profile whose baseline training step is timed")
    p.add_argument("--steps", type=int, default=10, help="timed steps per subprocess")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, in each subprocess")
    p.add_argument("--rounds", type=int, default=3, help="subprocesses per mode, the modes alternating")


def run(args: argparse.Namespace) -> int:
    code = (f"import json; from workbench.bench.repro import measure; "
            f"print(json.dumps(measure({args.profile!r}, {args.steps}, {args.warmup})))")
    rows: dict[str, list[dict]] = {"default": [], "repro": []}
    for _ in range(args.rounds):
        for mode in rows:
            rows[mode].append(run_child(code, mode == "repro"))
    step = {m: sorted(r["step_s"] for r in rs)[len(rs) // 2] for m, rs in rows.items()}  # median over rounds
    same = {m: len({r["weights"] for r in rs}) == 1 for m, rs in rows.items()}
    r0 = rows["default"][0]
    ratio = step["repro"] / step["default"]
    print(f"{r0['profile']} baseline training step, batch {r0['batch']} at {r0['size']}x{r0['size']}, "
          f"{r0['threads']} threads, CPU {r0['cpu']} ({r0['cpu_capability']}), {args.rounds} rounds x "
          f"{args.steps} steps per mode")
    print(f"{'mode':<9}{'s/step (median)':>17}{'rounds (s/step)':>32}  {'weights after the steps'}")
    for m, rs in rows.items():
        digests = rs[0]["weights"] if same[m] else "DIFFER between rounds: " + ", ".join(r["weights"] for r in rs)
        per_round = ", ".join(f"{r['step_s']:.3f}" for r in rs)
        print(f"{m:<9}{step[m]:>17.4f}{per_round:>32}  {digests}")
    print(f"repro / default: {ratio:.2f}x; the two modes' weights "
          f"{'differ' if rows['default'][0]['weights'] != rows['repro'][0]['weights'] else 'agree'} "
          f"(different code paths), each mode's rounds {'agree' if all(same.values()) else 'DO NOT agree'}")
    print(json.dumps({"bench": "repro", "ratio": round(ratio, 3), "step_s": step, "repeatable": same,
                      "cpu": r0["cpu"], "threads": r0["threads"], "rows": rows}))
    return 0 if all(same.values()) else 1
