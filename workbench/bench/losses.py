"""Benchmark of the HPD losses (`workbench.losses`): vectorized vs a naive loop reference.

Times prototypes, L_cp, L_ifv (forward + backward, what a training step pays) and ASM (forward) at
the feature shapes of the `tiny` and `quick` presets on one CPU thread (`--threads`), checks in
float64 that both implementations give the same values and gradients, prints a table and, last, one
JSON line:
`{"bench": "losses", "speedup": {...}, "min_speedup": x, "identical": true}`.

Run: `python -m workbench bench losses --presets tiny,quick --repeats 5`.

The `loop_*` functions are the references: a loop over samples and classes (and modalities and
stages), as a straightforward implementation of the paper's equations would be written.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from workbench.errors import UnknownName
from workbench.losses import (
    Features,
    anymodal_dropout,
    asm_primary,
    asm_similarity,
    class_prototypes,
    cpd_loss,
    cpd_pairs,
    ifv_loss,
)

IGNORE = 255

# Feature shapes of the presets (workbench/config.py): mit_tiny stage channels, strides 4..32, K = 12.
PRESETS: dict[str, dict] = {
    "tiny": dict(batch=4, modalities=4, size=32, channels=(16, 32, 64, 96), classes=12),
    "quick": dict(batch=16, modalities=4, size=64, channels=(16, 32, 64, 96), classes=12),
}


# ----------------------------------------------------------------------------------------------
# Loop references

def _resize(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """One label (H, W) -> (h, w), PyTorch `nearest`."""
    return F.interpolate(label[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()


def loop_class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          ignore_index: int = IGNORE) -> tuple[torch.Tensor, torch.Tensor]:
    """features (B, C, h, w) -> protos (B, K, C), present (B, K): a loop over samples and classes."""
    b, c = features.shape[:2]
    rows, present = [], torch.zeros(b, num_classes, dtype=torch.bool)
    for s in range(b):
        lab = _resize(labels[s], features.shape[-2:])
        for k in range(num_classes):
            mask = lab == k
            if k != ignore_index and bool(mask.any()):
                rows.append(features[s][:, mask].mean(1))
                present[s, k] = True
            else:
                rows.append(features.new_zeros(c))
    return torch.stack(rows).reshape(b, num_classes, c), present


def loop_ifv_map(features: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE,
                 eps: float = 1e-8) -> torch.Tensor:
    """features (B, C, h, w) -> IFV map (B, h, w): per sample, each class's pixels set to their mean."""
    maps = []
    for s in range(features.shape[0]):
        f = features[s]
        lab = _resize(labels[s], f.shape[-2:])
        cfm = f.clone()
        for k in range(num_classes):
            mask = lab == k
            if k != ignore_index and bool(mask.any()):
                cfm[:, mask] = f[:, mask].mean(1, keepdim=True)
        maps.append(F.cosine_similarity(f, cfm, dim=0, eps=eps))
    return torch.stack(maps)


def loop_cpd_loss(student_feats: Features, teacher_feats: Features, labels: torch.Tensor, num_classes: int,
                  pairs: torch.Tensor, stages: Sequence[int] = (0, 1, 2, 3), kind: str = "kl_class",
                  temperature: float = 1.0, received: torch.Tensor | None = None,
                  ignore_index: int = IGNORE, aggregation: str = "sum") -> torch.Tensor:
    """L_cp with a loop over stages, samples, modalities and (inside the prototypes) classes. `pairs`
    (B, M), or (B, S, M) with one pairing per stage; `sum`: total / B, `mean`: total / number of terms."""
    names = list(student_feats)
    total, count, tau = 0.0, 0, temperature
    for j, i in enumerate(stages):
        for s in range(labels.shape[0]):
            for m in range(len(names)):
                src = int(pairs[s, j, m]) if pairs.dim() == 3 else int(pairs[s, m])
                if received is not None and not bool(received[s, src]):
                    continue
                ps, present = loop_class_prototypes(student_feats[names[src]][i][s:s + 1], labels[s:s + 1],
                                                    num_classes, ignore_index)
                pt, _ = loop_class_prototypes(teacher_feats[names[m]][i][s:s + 1].detach(), labels[s:s + 1],
                                              num_classes, ignore_index)
                idx = present[0].nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                a, t = ps[0, idx], pt[0, idx]  # (n_present, C)
                if kind == "kl_class":
                    log_q, log_p = F.log_softmax(a / tau, 0), F.log_softmax(t / tau, 0)
                    d = (log_p.exp() * (log_p - log_q)).sum() / a.numel() * tau * tau
                else:
                    d = (1 - F.cosine_similarity(a, t, dim=1)).mean()
                total, count = total + d, count + 1
    return total / (labels.shape[0] if aggregation == "sum" else max(count, 1))


def loop_ifv_loss(student_feats: Features, teacher_feats: Features, labels: torch.Tensor, num_classes: int,
                  modalities_mask: torch.Tensor, stages: Sequence[int] = (0, 1, 2, 3), kind: str = "kl_spatial",
                  temperature: float = 2.0, pairs: torch.Tensor | None = None,
                  ignore_index: int = IGNORE, aggregation: str = "sum") -> torch.Tensor:
    """L_ifv with a loop over stages, samples, modalities and classes; `kl_width` as the public code;
    `sum`: total / B, `mean`: total / number of terms."""
    names = list(student_feats)
    total, count, tau = 0.0, 0, temperature
    for i in stages:
        for s in range(labels.shape[0]):
            for m in range(len(names)):
                src = int(pairs[s, m]) if pairs is not None else m
                if not bool(modalities_mask[s, src]):
                    continue
                ms = loop_ifv_map(student_feats[names[src]][i][s:s + 1], labels[s:s + 1], num_classes,
                                  ignore_index)[0]
                mt = loop_ifv_map(teacher_feats[names[m]][i][s:s + 1].detach(), labels[s:s + 1], num_classes,
                                  ignore_index)[0]
                if kind == "mse":
                    d = F.mse_loss(ms, mt)
                elif kind == "kl_spatial":
                    d = F.kl_div(F.log_softmax(ms.flatten() / tau, 0), F.softmax(mt.flatten() / tau, 0),
                                 reduction="sum") * tau * tau
                else:  # RMMSS CriterionIFV: softmax along width, batchmean over a batch of one map
                    d = F.kl_div(F.log_softmax(ms[None] / tau, -1), F.softmax(mt[None] / tau, -1),
                                 reduction="batchmean") * tau * tau
                total, count = total + d, count + 1
    return total / (labels.shape[0] if aggregation == "sum" else max(count, 1))


def loop_asm_similarity(features: Features, fused: Sequence[torch.Tensor], stage: str = "last") -> torch.Tensor:
    """ASM cosine similarities (B, M) with a loop over samples, modalities and stages."""
    names = list(features)
    stages = [len(fused) - 1] if stage == "last" else list(range(len(fused)))
    b = fused[0].shape[0]
    sim = fused[0].new_zeros(b, len(names))
    for s in range(b):
        for m, name in enumerate(names):
            vals = [F.cosine_similarity(features[name][i][s].flatten(), fused[i][s].flatten(), dim=0)
                    for i in stages]
            sim[s, m] = sum(vals) / len(vals)
    return sim


# ----------------------------------------------------------------------------------------------
# Benchmark

def make_inputs(preset: dict, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """Random student / teacher stage features, labels (10% ignored, 2 classes never present), an
    Anymodal Dropout mask, CPD pairs and an ASM-like primary mask."""
    g = torch.Generator().manual_seed(seed)
    b, m, size, k = preset["batch"], preset["modalities"], preset["size"], preset["classes"]
    names = [f"m{j}" for j in range(m)]
    shapes = [(b, c, size // 2 ** (i + 2), size // 2 ** (i + 2)) for i, c in enumerate(preset["channels"])]

    def feats() -> dict:
        return {n: [torch.randn(sh, generator=g, dtype=dtype) for sh in shapes] for n in names}

    labels = torch.randint(0, k - 2, (b, size, size), generator=g)
    labels[torch.rand(b, size, size, generator=g) < 0.1] = IGNORE
    received = anymodal_dropout(b, m, g)
    primary = torch.zeros(b, m, dtype=torch.bool)
    primary[:, : (m + 1) // 2] = True
    fused = [torch.randn(sh, generator=g, dtype=dtype) for sh in shapes]
    return dict(student=feats(), teacher=feats(), fused=fused, labels=labels, classes=k, received=received,
                pairs=cpd_pairs(b, m, g), mask=primary & received)


def _leaves(student: Features) -> list[torch.Tensor]:
    return [t for stages in student.values() for t in stages]


def cases(x: dict) -> dict[str, tuple[Callable, Callable, bool]]:
    """name -> (vectorized(student), loop(student), differentiable); each returns a tuple of tensors."""
    t, lab, k = x["teacher"], x["labels"], x["classes"]
    names = list(t)
    return {
        "prototypes": (
            lambda s: tuple(class_prototypes(torch.stack([s[n][i] for n in names], 1), lab, k)[0]
                            for i in range(4)),
            lambda s: tuple(torch.stack([loop_class_prototypes(s[n][i], lab, k)[0] for n in names], 1)
                            for i in range(4)),
            True),
        "cpd": (lambda s: (cpd_loss(s, t, lab, k, x["pairs"], received=x["received"]),),
                lambda s: (loop_cpd_loss(s, t, lab, k, x["pairs"], received=x["received"]),), True),
        "ifv": (lambda s: (ifv_loss(s, t, lab, k, x["mask"]),),
                lambda s: (loop_ifv_loss(s, t, lab, k, x["mask"]),), True),
        "asm": (lambda s: (asm_primary(asm_similarity(s, x["fused"])),),
                lambda s: (asm_primary(loop_asm_similarity(s, x["fused"])),), False),
    }


class _Runner:
    """Calls one implementation on fixed inputs: forward, and backward (into fresh .grad) when
    differentiable, seeded with fixed output gradients so that no extra op enters the timing."""

    def __init__(self, fn: Callable, student: Features, differentiable: bool):
        self.fn, self.differentiable = fn, differentiable
        self.student = {n: [t.detach().clone().requires_grad_(differentiable) for t in stages]
                        for n, stages in student.items()}
        self.leaves = _leaves(self.student)
        self.seeds = []
        if differentiable:
            with torch.no_grad():
                out = fn(self.student)
            self.seeds = [torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape) if o.dim()
                          else torch.ones_like(o) for o in out]

    def __call__(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        for leaf in self.leaves:
            leaf.grad = None
        out = self.fn(self.student)
        if not self.differentiable:
            return [o.detach() for o in out], []
        torch.autograd.backward(out, self.seeds)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.leaves]
        return [o.detach() for o in out], grads


def _best_time(run: _Runner, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def _same(a: tuple, b: tuple) -> tuple[bool, float]:
    pairs = list(zip(a[0], b[0])) + list(zip(a[1], b[1]))
    diff = max(float((u.double() - v.double()).abs().max()) if u.numel() else 0.0 for u, v in pairs)
    return all(torch.allclose(u.double(), v.double(), rtol=1e-9, atol=1e-10) for u, v in pairs), diff


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--presets", default="tiny,quick", help="comma-separated: " + ", ".join(PRESETS))
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case (best of N is reported)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads while timing (default 1: on a busy shared CPU, every op big "
                        "enough to be split waits for its worker threads to get a time slice)")


def run(args: argparse.Namespace) -> int:
    names = [n for n in args.presets.split(",") if n]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise UnknownName(f"unknown preset {unknown[0]!r}; valid presets: {', '.join(PRESETS)}")

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows, speedup, identical = _bench(names, args.repeats)
    finally:
        torch.set_num_threads(threads)
    print(f"{'case':<18}{'pass':<9}{'vector ms':>11}{'loop ms':>11}{'speedup':>9}{'max |diff| f64':>16}  same"
          f"   ({args.threads} thread{'s' * (args.threads > 1)}, best of {args.repeats})")
    for key, mode, tv, tl, sp, diff, ok in rows:
        print(f"{key:<18}{mode:<9}{tv:>11.2f}{tl:>11.2f}{sp:>8.1f}x{diff:>16.1e}  {ok}")
    print(json.dumps({"bench": "losses", "speedup": speedup, "min_speedup": min(speedup.values()),
                      "identical": identical}))
    return 0 if identical else 1


def _bench(names: list[str], repeats: int) -> tuple[list, dict, bool]:
    speedup, identical, rows = {}, True, []
    for preset in names:
        x64 = make_inputs(PRESETS[preset], torch.float64)
        x32 = make_inputs(PRESETS[preset], torch.float32)
        checks, timed = cases(x64), cases(x32)
        for case, (vec, loop, diff_able) in timed.items():
            ok, diff = _same(_Runner(checks[case][0], x64["student"], diff_able)(),
                             _Runner(checks[case][1], x64["student"], diff_able)())
            t_vec = _best_time(_Runner(vec, x32["student"], diff_able), repeats)
            t_loop = _best_time(_Runner(loop, x32["student"], diff_able), repeats)
            key = f"{preset}/{case}"
            speedup[key] = round(t_loop / t_vec, 1)
            identical &= ok
            mode = "fwd+bwd" if diff_able else "fwd"
            rows.append((key, mode, t_vec * 1e3, t_loop * 1e3, t_loop / t_vec, diff, ok))
    return rows, speedup, identical
