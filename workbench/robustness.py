"""The robustness protocols of the multi-modal segmentation robustness benchmark beyond EMM: RMM and NM.

Source: Liao et al., "Benchmarking Multi-modal Semantic Segmentation under Sensor Failures: Missing and
Noisy Modality Robustness" (CVPRW 2025), public code `Chenfei-Liao/Multi-Modal-Semantic-Segmentation-
Robustness-Benchmark` (`val_mm_RMM.py`, `val_mm_NM.py`; RobustSeg's `tools/` carry the same files).
METHOD.md, "Evaluation", lists both as extras of the same benchmark. Both act on the network input of the
evaluation pipeline, i.e. on the *normalized* tensors of a batch (RGB after ImageNet mean/std, the other
modalities at /255), every modality of the model always encoded and fused.

- RMM (random-missing modality). For every set S of "missing" modalities with |S| = 0..M-1 (15 sets for
  M = 4, in the benchmark's order: by size, then `itertools.combinations` order), each *element* (every
  channel of every pixel, drawn independently) of the modalities in S is zeroed with probability r; the
  benchmark reports r = 0.25, 0.5 and 0.75. Per rate: mIoU, mF1 and mAcc of each S, their mean over the 15
  sets (mIoU^Avg_RMM) and the expectations mIoU^E_RMM where each modality is in S independently with
  probability p in (0.2, 0.1, 0.05): weight p^|S| (1-p)^(M-|S|), renormalized over the 15 sets.
- NM (noisy modality). Three levels (low, mid, high), each applying, to the whole batch tensor,
  salt-and-pepper noise of density d = 0.05, 0.1, 0.2 to every modality and then additive Gaussian noise
  N(0, sigma^2), sigma = 0.1, 0.2, 0.5, to every modality except the event image (RGB, depth and LiDAR in
  DeLiVER). Salt-and-pepper: ceil(d N / 2) element coordinates are drawn uniformly with replacement over
  the N elements of the batch tensor (each dimension drawn independently) and set to the tensor's maximum,
  then ceil(d N / 2) more are set to its minimum (the extremes of the clean batch tensor). No clipping.
  One full-modality evaluation per level; the benchmark's table lists per-class IoU and mIoU per level.

Conventions: the metrics are those of `workbench.evaluate` (DeLiVER's `semseg/metrics.py` under the
`deliver` convention). The benchmark rounds each set's metrics to 2 decimals before averaging; here means
and expectations use the unrounded values. The benchmark draws its masks from the global, unseeded torch
generator; here every draw comes from a `torch.Generator` seeded by (seed, setting, batch index, modality)
(`draw_generator`), on the device of the inputs, so a run is reproducible for a fixed loader order and
device type. The benchmark draws a fresh mask for every set S; `draws="independent"` does the same, while
the default `draws="shared"` corrupts each modality once per (rate, batch) and uses that one corrupted
copy in every set that contains it (the same per-set distribution; the sets' results become correlated).

Speed (the one-pass engine, `workbench.evaluate.predict_combinations`): a set's prediction differs from
the clean one only in the encodings of the corrupted modalities, and with `mean` fusion the head's affine
part commutes with the average. Per batch the clean inputs are encoded once, each corrupted copy once,
and every set is formed from those encodings (RMM with shared draws: M + M |rates| encoder passes per
batch against 15 M |rates| for the benchmark's loop). NM corrupts every modality, so each level needs its
own forward; the single pass over the loader only saves reloading the data per level (and, with `noisy`
restricted, re-encoding the clean modalities). `one_pass=False` runs the benchmark's loop (one full forward
per setting, settings outer, batches inner) with the same draws: the confusion matrices are equal. Models
without one-pass support (CMNeXt, MAGIC: `workbench.evaluate.one_pass_supported`) always take that loop.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench.errors import ConfigError
from workbench.evaluate import (
    METRICS,
    ConfusionAccumulator,
    _to_device,
    _ZeroCache,
    check_labels,
    combo_name,
    encode,
    iou_per_class,
    one_pass_supported,
    predict_combinations,
    score,
)

RMM_RATES = (0.25, 0.5, 0.75)
COLUMNS = ("miou", "mf1", "macc")  # the benchmark's column order: IoU, F1, Acc
COLUMN_NAMES = {"miou": "mIoU", "mf1": "mF1", "macc": "mAcc"}
NM_LEVELS = {"low": (0.05, 0.1), "mid": (0.1, 0.2), "high": (0.2, 0.5)}  # (salt-and-pepper density, Gaussian std)
NM_KINDS = ("salt_pepper", "gaussian")
NO_GAUSSIAN = ("event", "event_camera")  # the benchmark adds no Gaussian noise to the event image
DRAWS = ("shared", "independent")
EXPECTATION_PS = (0.2, 0.1, 0.05)


# ---------------------------------------------------------------- corruptions
def draw_generator(seed: int, *key, device: torch.device | str | None = None) -> torch.Generator:
    """A generator seeded from (seed, *key), e.g. (seed, "rmm", rate, batch index, modality)."""
    digest = hashlib.blake2b("/".join(str(k) for k in (seed, *key)).encode(), digest_size=8).digest()
    g = torch.Generator(device=device or "cpu")
    g.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return g


def rmm_corrupt(x: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Each element of `x` (every channel of every pixel independently) zeroed with probability `rate`."""
    if not 0 <= rate <= 1:
        raise ConfigError(f"RMM rate {rate} must be in [0, 1]")
    mask = torch.rand(x.shape, generator=generator, device=generator.device) < rate
    return x.masked_fill(mask.to(x.device), 0)


def salt_and_pepper(x: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """ceil(density N / 2) elements of `x` (coordinates drawn per dimension, with replacement) set to
    x.max(), then as many again set to x.min(); N = x.numel() over the whole (batch) tensor."""
    if not 0 <= density <= 1:
        raise ConfigError(f"salt-and-pepper density {density} must be in [0, 1]")
    n = math.ceil(density * x.numel() * 0.5)
    out = x.clone()
    for value in (x.max(), x.min()):  # salt, then pepper (pepper wins where both land)
        where = tuple(torch.randint(0, size, (n,), generator=generator, device=generator.device).to(x.device)
                      for size in x.shape)
        out[where] = value
    return out


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator, mean: float = 0.0) -> torch.Tensor:
    """x + N(mean, std^2) per element, unclipped."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype) * std + mean
    return x + noise.to(x.device)


def nm_corrupt(inputs: dict, level: str, generator: torch.Generator, kinds: Sequence[str] = NM_KINDS,
               noisy: Sequence[str] | None = None, no_gaussian: Sequence[str] = NO_GAUSSIAN) -> dict:
    """The benchmark's noisy-modality corruption at `level` (low, mid, high): salt-and-pepper on every
    modality of `noisy` (default all, in the dict's order), then Gaussian noise on those not in `no_gaussian`.
    `kinds` selects one of the two noises alone."""
    if level not in NM_LEVELS:
        raise ConfigError(f"unknown NM level {level!r}; valid: {', '.join(NM_LEVELS)}")
    unknown = [k for k in kinds if k not in NM_KINDS]
    if unknown or not kinds:
        raise ConfigError(f"NM kinds {tuple(kinds)!r} are not valid; choose from {', '.join(NM_KINDS)}")
    density, std = NM_LEVELS[level]
    noisy = list(inputs) if noisy is None else [m for m in inputs if m in noisy]
    out = dict(inputs)
    if "salt_pepper" in kinds:
        for m in noisy:
            out[m] = salt_and_pepper(out[m], density, generator)
    if "gaussian" in kinds:
        for m in noisy:
            if m not in no_gaussian:
                out[m] = gaussian_noise(out[m], std, generator)
    return out


def corrupted_sets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """The benchmark's RMM settings: every set of corrupted modalities of size 0..M-1, in its order."""
    return [s for k in range(len(modalities)) for s in itertools.combinations(modalities, k)]


def set_name(corrupted: tuple[str, ...]) -> str:
    return combo_name(corrupted) if corrupted else "none"


def rmm_weights(modalities: Sequence[str], p: float) -> dict[tuple[str, ...], float]:
    """P(S) = p^|S| (1-p)^(M-|S|) over the corrupted sets, renormalized (S = all modalities excluded)."""
    m = len(modalities)
    w = {s: p ** len(s) * (1 - p) ** (m - len(s)) for s in corrupted_sets(modalities)}
    z = sum(w.values())
    return {s: v / z for s, v in w.items()}


# ---------------------------------------------------------------- results
def _rate_key(rate: float) -> str:
    return f"{rate:g}"


@dataclass
class RMMResults:
    """Confusion matrices per (rate, corrupted set) and the benchmark's aggregates."""

    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    rates: tuple[float, ...]
    cms: dict[tuple[float, tuple[str, ...]], torch.Tensor]  # (rate, corrupted set) -> (K, K)
    convention: str = "deliver"
    seed: int = 0
    draws: str = "shared"

    @property
    def sets(self) -> list[tuple[str, ...]]:
        return corrupted_sets(self.modalities)

    def score(self, rate: float, corrupted: tuple[str, ...], metric: str = "miou") -> float:
        return score(self.cms[(rate, tuple(corrupted))], metric, self.convention)

    def mean(self, rate: float, metric: str = "miou") -> float:
        """mIoU^Avg_RMM (or mF1 / mAcc): the mean over the corrupted sets."""
        return sum(self.score(rate, s, metric) for s in self.sets) / len(self.sets)

    def expected(self, rate: float, p: float, metric: str = "miou") -> float:
        """mIoU^E_RMM: each modality corrupted independently with probability p."""
        return sum(w * self.score(rate, s, metric) for s, w in rmm_weights(self.modalities, p).items())

    def summary(self) -> dict:
        return {_rate_key(r): {metric: {"clean": self.score(r, (), metric), "avg": self.mean(r, metric),
                                        **{f"expected_p{p}": self.expected(r, p, metric) for p in EXPECTATION_PS}}
                               for metric in METRICS} for r in self.rates}

    def rows(self) -> list[dict]:
        return [{"rate": r, "corrupted": set_name(s), "modalities": "+".join(s),
                 **{metric: self.score(r, s, metric) for metric in METRICS},
                 **{f"iou/{k}": float(v * 100) for k, v in zip(self.classes, iou_per_class(self.cms[(r, s)]))}}
                for r in self.rates for s in self.sets]

    def format_table(self) -> str:
        """One block per rate in the benchmark's layout (rows: corrupted sets, Mean, Expectation_p; columns:
        IoU, F1, Acc), then the README's summary (per rate: mIoU^Avg_RMM and mIoU^E_RMM)."""
        lines = []
        for r in self.rates:
            lines.append(f"RMM r={r:g} (seed {self.seed}, {self.draws} draws; rows: corrupted modalities)")
            lines.append(f"{'corrupted':<18}" + "".join(f"{COLUMN_NAMES[m]:>8}" for m in COLUMNS))
            for s in self.sets:
                lines.append(f"{set_name(s):<18}" + "".join(f"{self.score(r, s, m):8.2f}" for m in COLUMNS))
            lines.append(f"{'Mean':<18}" + "".join(f"{self.mean(r, m):8.2f}" for m in COLUMNS))
            for p in EXPECTATION_PS:
                lines.append(f"{'Expectation_p' + str(p):<18}" + "".join(f"{self.expected(r, p, m):8.2f}"
                                                                          for m in COLUMNS))
            lines.append("")
        lines.append(f"{'rate':<8}{'clean':>8}{'Avg':>8}" + "".join(f"{'E[p=' + str(p) + ']':>10}" for p in EXPECTATION_PS)
                     + "  (mIoU)")
        for r in self.rates:
            lines.append(f"{r:<8g}{self.score(r, ()):8.2f}{self.mean(r):8.2f}"
                         + "".join(f"{self.expected(r, p):10.2f}" for p in EXPECTATION_PS))
        return "\n".join(lines)

    def state(self) -> dict:
        return {"protocol": "rmm", "modalities": self.modalities, "classes": self.classes, "rates": self.rates,
                "convention": self.convention, "seed": self.seed, "draws": self.draws,
                "cms": {f"{_rate_key(r)}|{'+'.join(s)}": v.tolist() for (r, s), v in self.cms.items()}}

    @classmethod
    def from_state(cls, s: dict) -> RMMResults:
        rates = tuple(float(r) for r in s["rates"])

        def key(k):
            r, mods = k.split("|")
            return next(x for x in rates if _rate_key(x) == r), tuple(m for m in mods.split("+") if m)

        return cls(tuple(s["modalities"]), tuple(s["classes"]), rates,
                   {key(k): torch.tensor(v) for k, v in s["cms"].items()}, s["convention"], s["seed"], s["draws"])

    def save(self, out_dir: str | Path, prefix: str = "rmm") -> Path:
        path = Path(out_dir) / f"{prefix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"summary": self.summary(), "rows": self.rows(), "state": self.state()}, indent=2))
        return path


@dataclass
class NMResults:
    """Confusion matrices per noise level and the benchmark's table (per-class IoU by level)."""

    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    levels: tuple[str, ...]
    cms: dict[str, torch.Tensor]  # level -> (K, K)
    convention: str = "deliver"
    seed: int = 0
    kinds: tuple[str, ...] = NM_KINDS
    noisy: tuple[str, ...] = field(default_factory=tuple)  # the modalities that received noise

    def score(self, level: str, metric: str = "miou") -> float:
        return score(self.cms[level], metric, self.convention)

    def per_class_iou(self, level: str) -> dict[str, float]:
        """Per-class IoU in percent; an undefined class counts 0 under `deliver` (as the benchmark's table)."""
        iou = iou_per_class(self.cms[level]) * 100
        if self.convention == "deliver":
            iou = torch.nan_to_num(iou, nan=0.0)
        return {c: float(v) for c, v in zip(self.classes, iou)}

    def summary(self) -> dict:
        return {level: {m: self.score(level, m) for m in METRICS} for level in self.levels}

    def rows(self) -> list[dict]:
        return [{"level": lv, "density": NM_LEVELS[lv][0], "std": NM_LEVELS[lv][1],
                 **{m: self.score(lv, m) for m in METRICS},
                 **{f"iou/{c}": v for c, v in self.per_class_iou(lv).items()}} for lv in self.levels]

    def format_table(self) -> str:
        """The benchmark README's NM layout: one row per class (IoU), then mIoU, mF1, mAcc; one column per level."""
        head = "".join(f"{lv + ' (' + str(NM_LEVELS[lv][0]) + '/' + str(NM_LEVELS[lv][1]) + ')':>17}"
                       for lv in self.levels)
        lines = [f"NM (seed {self.seed}; {' + '.join(self.kinds)} on {', '.join(self.noisy)}; "
                 f"columns: level (salt-and-pepper density / Gaussian std))", f"{'class':<16}{head}"]
        per = {lv: self.per_class_iou(lv) for lv in self.levels}
        for c in self.classes:
            lines.append(f"{c[:15]:<16}" + "".join(f"{per[lv][c]:17.2f}" for lv in self.levels))
        for m in METRICS:
            lines.append(f"{m:<16}" + "".join(f"{self.score(lv, m):17.2f}" for lv in self.levels))
        return "\n".join(lines)

    def state(self) -> dict:
        return {"protocol": "nm", "modalities": self.modalities, "classes": self.classes, "levels": self.levels,
                "convention": self.convention, "seed": self.seed, "kinds": self.kinds, "noisy": self.noisy,
                "cms": {lv: v.tolist() for lv, v in self.cms.items()}}

    @classmethod
    def from_state(cls, s: dict) -> NMResults:
        return cls(tuple(s["modalities"]), tuple(s["classes"]), tuple(s["levels"]),
                   {lv: torch.tensor(v) for lv, v in s["cms"].items()}, s["convention"], s["seed"],
                   tuple(s["kinds"]), tuple(s["noisy"]))

    def save(self, out_dir: str | Path, prefix: str = "nm") -> Path:
        path = Path(out_dir) / f"{prefix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"summary": self.summary(), "rows": self.rows(), "state": self.state()}, indent=2))
        return path


# ---------------------------------------------------------------- evaluation
def rmm_generator(seed: int, rate: float, batch: int, modality: str, corrupted: tuple[str, ...] | None = None,
                  device=None) -> torch.Generator:
    """The generator of one RMM mask: per (rate, batch, modality) with shared draws; per corrupted set too
    with independent draws (`corrupted` given)."""
    key = ("rmm", _rate_key(rate), batch, modality) + (() if corrupted is None else ("+".join(corrupted),))
    return draw_generator(seed, *key, device=device)


def nm_generator(seed: int, level: str, batch: int, device=None) -> torch.Generator:
    return draw_generator(seed, "nm", level, batch, device=device)


def _rmm_copy(inputs: dict, corrupted: tuple[str, ...], rate: float, seed: int, batch: int, draws: str) -> dict:
    """`inputs` with the modalities of `corrupted` under RMM at `rate` (the other tensors shared)."""
    key = None if draws == "shared" else corrupted
    return {m: rmm_corrupt(x, rate, rmm_generator(seed, rate, batch, m, key, x.device)) if m in corrupted else x
            for m, x in inputs.items()}


def _check_options(model, rates=(), draws="shared", levels=(), kinds=NM_KINDS) -> None:
    if draws not in DRAWS:
        raise ConfigError(f"draws={draws!r} is not valid; choose {' or '.join(DRAWS)}")
    bad = [r for r in rates if not 0 <= r <= 1]
    if bad:
        raise ConfigError(f"RMM rates {bad} must lie in [0, 1]")
    bad = [lv for lv in levels if lv not in NM_LEVELS]
    if bad:
        raise ConfigError(f"unknown NM level {bad[0]!r}; valid: {', '.join(NM_LEVELS)}")
    if not kinds or any(k not in NM_KINDS for k in kinds):
        raise ConfigError(f"NM kinds {tuple(kinds)!r} are not valid; choose from {', '.join(NM_KINDS)}")


def _batches(loader, progress: bool, desc: str):
    return enumerate(tqdm(loader, desc=desc, disable=not progress, leave=False))


@torch.no_grad()
def evaluate_rmm(model, loader, rates: Sequence[float] = RMM_RATES, seed: int = 0, draws: str = "shared",
                 device=None, one_pass: bool = True, convention: str = "deliver", classes=None,
                 progress: bool = True, reduce_fn=None, desc: str = "rmm") -> RMMResults:
    """RMM over a loader (model in eval mode): confusion matrices for every (rate, corrupted set)."""
    _check_options(model, rates=rates, draws=draws)
    rates = tuple(float(r) for r in rates)
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    mods, k = model.modalities, model.num_classes
    one_pass = one_pass and one_pass_supported(model)  # CMNeXt, MAGIC: the benchmark's loop
    sets = corrupted_sets(mods)
    acc = ConfusionAccumulator(k, [(r, s) for r in rates for s in sets])
    zero_cache = _ZeroCache(model)

    def present(s):  # the modalities a set leaves clean: the `present` combination of the engine
        return tuple(m for m in mods if m not in s)

    try:
        if one_pass:
            for bi, batch in _batches(loader, progress, desc):
                inputs, labels = _to_device(batch, mods, device)
                check_labels(labels, k, batch["meta"])
                clean = encode(model, inputs)
                for r in rates:
                    if draws == "shared":  # one corrupted copy per modality serves every set
                        corrupted = encode(model, _rmm_copy(inputs, mods, r, seed, bi, draws))
                        groups = [(sets, corrupted)]
                    else:  # a fresh copy per set, as the benchmark's loop
                        groups = [([s], encode(model, _rmm_copy(inputs, s, r, seed, bi, draws), s)) for s in sets]
                    for group, repl in groups:
                        for _, part, logits in predict_combinations(model, inputs, ("zero",), [present(s) for s in group],
                                                                    zero_cache, feats=clean, replacements=repl):
                            acc.add([(r, tuple(m for m in mods if m not in c)) for c in part], logits, labels,
                                    batch["meta"])
        else:  # the benchmark's loop: one full forward per (rate, set), settings outer, batches inner
            for r in rates:
                for s in sets:
                    for bi, batch in _batches(loader, progress, f"{desc} r={r:g} {set_name(s)}"):
                        inputs, labels = _to_device(batch, mods, device)
                        check_labels(labels, k, batch["meta"])
                        acc.add([(r, s)], model(_rmm_copy(inputs, s, r, seed, bi, draws)).logits, labels, batch["meta"])
    finally:
        model.train(was_training)
    if reduce_fn is not None:
        acc.reduce(reduce_fn)
    classes = tuple(classes or (str(i) for i in range(k)))
    return RMMResults(mods, classes, rates, acc.cms, convention, seed, draws)


@torch.no_grad()
def evaluate_nm(model, loader, levels: Sequence[str] = tuple(NM_LEVELS), seed: int = 0,
                kinds: Sequence[str] = NM_KINDS, noisy: Sequence[str] | None = None,
                no_gaussian: Sequence[str] = NO_GAUSSIAN, device=None, one_pass: bool = True,
                convention: str = "deliver", classes=None, progress: bool = True, reduce_fn=None,
                desc: str = "nm") -> NMResults:
    """NM over a loader (model in eval mode): the full-modality confusion matrix per noise level.

    `noisy` restricts the noise to some modalities (default all, the benchmark); the clean ones are then
    encoded once per batch for every level."""
    _check_options(model, levels=levels, kinds=kinds)
    levels, kinds = tuple(levels), tuple(kinds)
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    mods, k = model.modalities, model.num_classes
    one_pass = one_pass and one_pass_supported(model)  # CMNeXt, MAGIC: the benchmark's loop
    noisy = tuple(m for m in mods if noisy is None or m in noisy)
    if not noisy:
        raise ConfigError(f"no modality to add noise to: noisy must name some of {', '.join(mods)}")
    acc = ConfusionAccumulator(k, [(lv,) for lv in levels])

    def corrupt(inputs, level, bi):
        g = nm_generator(seed, level, bi, inputs[mods[0]].device)
        return nm_corrupt(inputs, level, g, kinds, noisy, no_gaussian)

    try:
        if one_pass:
            for bi, batch in _batches(loader, progress, desc):
                inputs, labels = _to_device(batch, mods, device)
                check_labels(labels, k, batch["meta"])
                clean = encode(model, inputs, [m for m in mods if m not in noisy])
                for lv in levels:
                    x = corrupt(inputs, lv, bi)
                    logits = _full_forward(model, clean | encode(model, x, noisy), labels.shape[-2:])
                    acc.add([(lv,)], logits, labels, batch["meta"])
        else:  # the benchmark's loop: levels outer, batches inner, one full forward each
            for lv in levels:
                for bi, batch in _batches(loader, progress, f"{desc} {lv}"):
                    inputs, labels = _to_device(batch, mods, device)
                    check_labels(labels, k, batch["meta"])
                    acc.add([(lv,)], model(corrupt(inputs, lv, bi)).logits, labels, batch["meta"])
    finally:
        model.train(was_training)
    if reduce_fn is not None:
        acc.reduce(reduce_fn)
    classes = tuple(classes or (str(i) for i in range(k)))
    return NMResults(mods, classes, levels, {lv: acc.cms[(lv,)] for lv in levels}, convention, seed, kinds, noisy)


def _full_forward(model, feats: dict, size: tuple[int, int]) -> torch.Tensor:
    """The model's full-modality forward from given stage features: fuse, head, logits to the input `size`."""
    f0 = feats[model.modalities[0]][0]
    weights = torch.ones(f0.shape[0], len(model.modalities), device=f0.device)
    return F.interpolate(model.head(model.fuse(feats, weights)), size=size, mode="bilinear", align_corners=False)
