"""Calibration of the synthetic benchmark's modality profile against DeLiVER's (docs/BENCHMARK.md).

The calibration is a property of the data, measured with the baseline only: baselines trained on
modality subsets (`data.modalities=...`) and the full-modality baseline evaluated on every modality
combination. No distilled model is trained or read here. Per training seed it measures:

- the mIoU of models trained on each subset (R, D, E, L, RD, RE, RL, DEL, EL, RDEL), on the test
  split, set beside the published DeLiVER models trained on combinations (CMNeXt model zoo);
- the full-modality baseline on every combination under both protocols (`zero`, `drop`), its
  per-modality Shapley values and EMM, beside M-SegFormer's and CMNeXt's rows in the RobustSeg paper;
- how often ASM picks each modality as primary on the frozen full-modality baseline (cosine of each
  modality's last-stage feature with the fused feature, top ceil(M/2) per sample);
- per-condition mIoU of the full baseline and of the RGB-only model;
- the criteria of the paper's regime (docs/BENCHMARK.md, "6. The paper's regime"): Event+LiDAR keeps at
  most 0.05 of the full score under both protocols, the DEL-trained model beats the full baseline on DEL
  by at least 8 points under `drop`, RGB has the largest Shapley value, and (with `model.init=pretrained`)
  the full baseline scores no lower than the scratch baseline of the same seed.

The baselines are `workbench.runs.Run`s (trained once, cached, evaluated once per split), so a second
call only re-reads. Run: `python -m workbench calibrate --profile quick --seeds 0,1,2` (writes
`figures/calibration_<profile>.csv` and prints the table).
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from workbench.config import apply_overrides, preset
from workbench.data import synthetic as syn
from workbench.errors import ConfigError, UnknownName
from workbench.evaluate import CombinationResults, combo_name
from workbench.losses import asm_primary, asm_similarity
from workbench.runs import Run
from workbench.stats import distinct_seeds

log = logging.getLogger(__name__)

FULL = syn.MODALITIES
# Modality subsets a baseline is trained on, by short name (R = rgb, D = depth, E = event, L = lidar).
SUBSETS: dict[str, tuple[str, ...]] = {
    "R": ("rgb",), "D": ("depth",), "E": ("event",), "L": ("lidar",),
    "RD": ("rgb", "depth"), "RE": ("rgb", "event"), "RL": ("rgb", "lidar"),
    "DEL": ("depth", "event", "lidar"), "EL": ("event", "lidar"), "RDEL": FULL,
}

# Published DeLiVER figures used as relative targets (docs/BENCHMARK.md gives the sources).
DELIVER_ZOO = {"R": 57.20, "RE": 57.48, "RL": 58.04, "RD": 63.58, "RDE": 64.44, "RDL": 65.50, "RDEL": 66.30}
MSEGFORMER = {"full": 61.92, "EL": 1.57, "EMM": 39.36}  # RobustSeg paper, main table (MiT-B0)
CMNEXT_B0 = {"full": 60.59, "EL": 4.97, "EMM": 34.09}


@dataclass
class Check:
    """One row of the calibration table: a measured quantity per seed and the DeLiVER target."""

    name: str
    deliver: str  # the published value(s), as text
    target: str  # the rule the measurement should satisfy, as text
    values: list[float] = field(default_factory=list)  # one per seed
    rule: Callable[[float], bool] | None = None  # applied to the mean; None: reported only
    measure: Callable[[dict, dict], float] | None = None  # (results by subset, ASM) -> this seed's value

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def ok(self) -> str:
        if self.rule is None or not self.values:
            return ""
        return "yes" if self.rule(self.mean) else "NO"


@dataclass
class Calibration:
    profile: str
    seeds: tuple[int, ...]
    checks: list[Check]
    per_condition: dict[str, dict[str, list[float]]]  # model row -> condition -> one value per seed
    asm: dict[str, dict[str, list[float]]]  # ASM stage (last | all) -> modality -> primary frequency per seed
    seconds: float
    regime: list[Check] = field(default_factory=list)  # the criteria of the paper's regime
    init: str = "scratch"  # model.init of the baselines

    def format_table(self) -> str:
        width = max(len(c.name) for c in self.checks + self.regime)
        init = "" if self.init == "scratch" else f", model.init={self.init}"
        lines = [f"Calibration of the synthetic benchmark ({self.profile} profile{init}, seeds "
                 f"{','.join(map(str, self.seeds))}; test split; mean ± std over seeds)",
                 *_check_lines(self.checks, width)]
        if self.regime:
            lines += ["", "Criteria of the paper's regime (docs/BENCHMARK.md, section 6; same seeds)",
                      *_check_lines(self.regime, width)]
        if self.per_condition:
            conds = list(next(iter(self.per_condition.values())))
            lines.append("")
            lines.append("per-condition mIoU (test split): " + " ".join(f"{k:>13}" for k in conds))
            for row, vals in self.per_condition.items():
                lines.append(f"{row:<32} " + " ".join(
                    f"{statistics.fmean(vals[k]):6.2f} ± {_std(vals[k]):4.2f}" for k in conds))
        for stage, freq in self.asm.items():
            lines.append("")
            lines.append(f"ASM primary frequency on the frozen full baseline (stage {stage}; test split, top-2 of 4 "
                         "per sample): " + ", ".join(f"{combo_name((m,))} {statistics.fmean(v):.2f} ± {_std(v):.2f}"
                                                     for m, v in freq.items()))
        lines.append(f"({self.seconds:.0f} s{', cached runs re-read' if self.seconds < 60 else ''})")
        return "\n".join(lines)

    def rows(self) -> list[dict]:
        out = []
        for c in self.checks + [replace(c, name=f"regime: {c.name}") for c in self.regime]:
            out.append({"quantity": c.name, "deliver": c.deliver, "target": c.target, "mean": _r(c.mean),
                        "std": _r(c.std), "ok": c.ok, **{f"seed{s}": _r(v) for s, v in zip(self.seeds, c.values)}})
        for row, vals in self.per_condition.items():
            for cond, v in vals.items():
                out.append({"quantity": f"{row} [{cond}]", "deliver": "", "target": "", "mean": _r(statistics.fmean(v)),
                            "std": _r(_std(v)), "ok": "", **{f"seed{s}": _r(x) for s, x in zip(self.seeds, v)}})
        for stage, freq in self.asm.items():
            for m, v in freq.items():
                out.append({"quantity": f"ASM primary frequency {combo_name((m,))} [stage {stage}]", "deliver": "",
                            "target": "", "mean": _r(statistics.fmean(v)), "std": _r(_std(v)), "ok": "",
                            **{f"seed{s}": _r(x) for s, x in zip(self.seeds, v)}})
        return out

    def save_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        fields = ["quantity", "deliver", "target", "mean", "std", "ok", *[f"seed{s}" for s in self.seeds]]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        return path


def _check_lines(checks: list[Check], width: int) -> list[str]:
    lines = [f"{'quantity':<{width}}  {'DeLiVER (published)':<20}  {'target':<29}  {'measured':>15}  ok"]
    for c in checks:
        measured = f"{c.mean:7.2f} ± {c.std:5.2f}" if c.values else "-"
        lines.append(f"{c.name:<{width}}  {c.deliver:<20}  {c.target:<29}  {measured:>15}  {c.ok}".rstrip())
    return lines


def _std(v: Sequence[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def _r(x: float) -> float:
    return round(x, 3) if math.isfinite(x) else x


# ----------------------------------------------------------------------------------------------
# The baselines (trained or reused through workbench.runs.Run)

def baseline_run(profile: str, seed: int, modalities: Sequence[str], overrides: dict | None = None) -> Run:
    """The baseline of `profile` trained on `modalities` with training seed `seed`; on every modality it
    is the same cached run as the ablation's baseline (the students' teacher)."""
    over = {"train.seed": seed, **(overrides or {})}
    if tuple(modalities) != FULL:
        over["data.modalities"] = ",".join(modalities)
    return Run.from_config(apply_overrides(preset("baseline", profile), over))


@torch.no_grad()
def asm_frequencies(run: Run, split: str = "test", stage: str = "last") -> dict[str, dict[str, float]]:
    """On the frozen full-modality model: per modality, the fraction of samples where ASM picks it as
    primary (`asm_primary`, top ceil(M/2)) and its mean cosine with the fused feature (`asm_similarity`)."""
    model = run.model()
    device = next(model.parameters()).device
    picks = torch.zeros(len(model.modalities))
    sims = torch.zeros(len(model.modalities))
    n = 0
    for batch in run.loader(split):
        out = model({m: batch[m].to(device) for m in model.modalities})
        sim = asm_similarity(out.features, out.fused, stage=stage).cpu()  # (B, M)
        picks += asm_primary(sim).float().sum(0)
        sims += sim.sum(0)
        n += sim.shape[0]
    return {"primary": {m: float(picks[i] / n) for i, m in enumerate(model.modalities)},
            "similarity": {m: float(sims[i] / n) for i, m in enumerate(model.modalities)}}


# ----------------------------------------------------------------------------------------------
# The calibration table

Measure = Callable[[dict, dict], float]  # (results by subset name, ASM of the full baseline) -> value


def _own(name: str) -> Measure:
    """mIoU of the model trained on subset `name`, on its own modalities."""
    return lambda res, asm: res[name].full("drop")


def _ratio(num: str, den: str) -> Measure:
    return lambda res, asm: res[num].full("drop") / max(res[den].full("drop"), 1e-9)


def _full_share(p: str, combo: tuple[str, ...] | None) -> Measure:
    """The full baseline's mIoU on `combo` (None: EMM) over its full-modality mIoU, protocol p."""
    def measure(res, asm):
        full = res["RDEL"]
        return (full.emm(p) if combo is None else full.miou(p, combo)) / max(full.full(p), 1e-9)
    return measure


def _shapley(p: str, mod: str) -> Measure:
    return lambda res, asm: res["RDEL"].shapley(p)[mod]


def _margin(values: dict[str, float]) -> float:
    """RGB's value minus the largest other modality's."""
    return values["rgb"] - max(v for m, v in values.items() if m != "rgb")


def _checks(subsets: Sequence[str]) -> list[Check]:
    """The rows of the table (those whose models are in `subsets`), with the published values."""
    z = DELIVER_ZOO
    m, c = MSEGFORMER, CMNEXT_B0
    have = set(subsets)
    rows = []

    def add(name, deliver, target, needs, measure, rule=None):
        if set(needs) <= have:
            rows.append(Check(name, deliver, target, rule=rule, measure=measure))

    for s in ("R", "D", "E", "L", "RD", "RE", "RL", "DEL", "EL", "RDEL"):
        pub = f"{z[s]:.2f} (CMNeXt-B2)" if s in z else "not published"
        add(f"model trained on {s}: mIoU", pub, "", [s], _own(s))
    add("D / R (trained models)", "not published", "0.6-1.0: second", ["R", "D"], _ratio("D", "R"),
        lambda x: 0.6 <= x <= 1.0)
    add("E / R (trained models)", "not published", "<= 0.6: weak alone", ["R", "E"], _ratio("E", "R"),
        lambda x: x <= 0.6)
    add("L / R (trained models)", "not published", "<= 0.6: weak alone", ["R", "L"], _ratio("L", "R"),
        lambda x: x <= 0.6)
    add("RD / R (trained models)", f"{z['RD'] / z['R']:.3f}", "> 1: depth adds most", ["R", "RD"],
        _ratio("RD", "R"), lambda x: x > 1.0)
    add("RE / R (trained models)", f"{z['RE'] / z['R']:.3f}", "~1: adds little", ["R", "RE"], _ratio("RE", "R"))
    add("RL / R (trained models)", f"{z['RL'] / z['R']:.3f}", "~1: adds little", ["R", "RL"], _ratio("RL", "R"))
    add("RDEL / R (trained models)", f"{z['RDEL'] / z['R']:.3f}", "> 1", ["R", "RDEL"], _ratio("RDEL", "R"),
        lambda x: x > 1.0)
    for p in ("drop", "zero"):
        add(f"full baseline RDEL [{p}]", f"{m['full']:.2f} / {c['full']:.2f}", "", ["RDEL"],
            lambda res, asm, p=p: res["RDEL"].full(p))
        add(f"full baseline EL / RDEL [{p}]", f"{m['EL'] / m['full']:.3f} / {c['EL'] / c['full']:.3f}",
            "<= 0.15: collapses", ["RDEL"], _full_share(p, ("event", "lidar")), lambda x: x <= 0.15)
        add(f"full baseline DEL / RDEL [{p}]", "not published", "<= 0.6: far below", ["RDEL"],
            _full_share(p, ("depth", "event", "lidar")), lambda x: x <= 0.6)
        add(f"full baseline EMM / RDEL [{p}]", f"{m['EMM'] / m['full']:.3f} / {c['EMM'] / c['full']:.3f}",
            "0.4-0.75", ["RDEL"], _full_share(p, None), lambda x: 0.4 <= x <= 0.75)
        for mod in FULL:
            add(f"full baseline Shapley {combo_name((mod,))} [{p}]", "not published",
                "largest" if mod == "rgb" else "", ["RDEL"], _shapley(p, mod))
        add(f"Shapley R - max(other) [{p}]", "not published", "> 0: RGB largest", ["RDEL"],
            lambda res, asm, p=p: _margin(res["RDEL"].shapley(p)), lambda x: x > 0)
        add(f"DEL: trained-on-DEL minus full baseline [{p}]", "not published", "> 5: evidence hidden by bias",
            ["RDEL", "DEL"], lambda res, asm, p=p: res["DEL"].full("drop") - res["RDEL"].miou(
                p, ("depth", "event", "lidar")), lambda x: x > 5)
    add("ASM: RGB primary freq - max(other)", "not published", "> 0: RGB picked most", ["RDEL"],
        lambda res, asm: _margin(asm["primary"]), lambda x: x > 0)
    return rows


def _regime_checks(subsets: Sequence[str], pretrained: bool) -> list[Check]:
    """The criteria of the paper's regime (docs/BENCHMARK.md, section 6), the rows whose models are in
    `subsets`; with `pretrained`, the full baseline against the scratch one of the same seed (`res["scratch"]`)."""
    m, have, rows = MSEGFORMER, set(subsets), []
    el, rest = ("event", "lidar"), ("depth", "event", "lidar")
    if "RDEL" in have:
        for p in ("drop", "zero"):
            rows.append(Check(f"full baseline EL / RDEL [{p}]", f"{m['EL'] / m['full']:.3f}", "<= 0.05: collapses",
                              rule=lambda x: x <= 0.05, measure=_full_share(p, el)))
    if {"RDEL", "DEL"} <= have:
        rows.append(Check("DEL: trained-on-DEL minus full baseline [drop]", "not published", ">= 8: evidence hidden",
                          rule=lambda x: x >= 8, measure=lambda res, asm: res["DEL"].full("drop")
                          - res["RDEL"].miou("drop", rest)))
    if "RDEL" in have:
        for p in ("drop", "zero"):
            rows.append(Check(f"Shapley R - max(other) [{p}]", "not published", "> 0: RGB largest",
                              rule=lambda x: x > 0, measure=lambda res, asm, p=p: _margin(res["RDEL"].shapley(p))))
        if pretrained:
            rows.append(Check("full baseline RDEL minus scratch's (same seed)", "not published", ">= 0: not lower",
                              rule=lambda x: x >= 0, measure=lambda res, asm: res["RDEL"].full("drop")
                              - res["scratch"].full("drop")))
    return rows


def _measure(checks: list[Check], res: dict[str, CombinationResults], asm: dict | None) -> None:
    """Append this seed's value to every check."""
    for c in checks:
        c.values.append(float(c.measure(res, asm)))


def calibrate(profile: str = "quick", seeds: Sequence[int] = (0, 1, 2), subsets: Sequence[str] | None = None,
              overrides: dict | None = None, progress: bool = True) -> Calibration:
    """Train (or reuse) the baselines of `subsets` (default: all of `SUBSETS`) for every seed, evaluate
    them on the test split, and compare the profile with DeLiVER's. `overrides` apply to every config
    (e.g. `{"data.size": 128}`)."""
    t0 = time.perf_counter()
    subsets = list(SUBSETS if subsets is None else subsets)
    seeds = distinct_seeds(seeds)
    if not subsets:
        raise ConfigError(f"no subsets given; leave subsets out for all of {', '.join(SUBSETS)}")
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise UnknownName(f"unknown subset {unknown[0]!r}; valid: {', '.join(SUBSETS)}")
    checks = _checks(subsets)
    init = apply_overrides(preset("baseline", profile), overrides).model.init
    regime = _regime_checks(subsets, pretrained=init == "pretrained")
    per_condition: dict[str, dict[str, list[float]]] = {}
    asm_freq: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        res, asm = {}, None
        for name in subsets:
            t = time.perf_counter()
            run = baseline_run(profile, seed, SUBSETS[name], overrides).ensure(progress)
            res[name] = run.evaluation("test", progress=progress)
            log.info("seed %d %-5s mIoU %6.2f  (%5.1f s, %s)", seed, name, res[name].full("drop"),
                     time.perf_counter() - t, run.dir)
            if name == "RDEL":
                for stage in ("last", "all"):
                    a = asm_frequencies(run, stage=stage)
                    asm = a if stage == "last" else asm  # the method's default stage makes the check
                    for m, v in a["primary"].items():
                        asm_freq.setdefault(stage, {}).setdefault(m, []).append(v)
        if init == "pretrained" and "RDEL" in res:  # the reference: the scratch baseline of the same seed
            scratch = baseline_run(profile, seed, FULL, {**(overrides or {}), "model.init": "scratch"})
            res["scratch"] = scratch.ensure(progress).evaluation("test", progress=progress)
            log.info("seed %d scratch RDEL mIoU %6.2f (%s)", seed, res["scratch"].full("drop"), scratch.dir)
        _measure(checks, res, asm)
        _measure(regime, res, asm)
        rows = {"full baseline, all four [drop]": ("RDEL", "drop", FULL),
                "full baseline, RGB only [drop]": ("RDEL", "drop", ("rgb",)),
                "model trained on R": ("R", "drop", ("rgb",)),
                "model trained on DEL": ("DEL", "drop", ("depth", "event", "lidar"))}
        for row, (name, p, combo) in rows.items():
            if name in res:
                for cond, v in res[name].per_condition(p, combo).items():
                    per_condition.setdefault(row, {}).setdefault(cond, []).append(v)
    return Calibration(profile, tuple(seeds), checks, per_condition, asm_freq, time.perf_counter() - t0, regime, init)
