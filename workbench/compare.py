"""The paper's main table, reproducible: M-SegFormer, CMNeXt, MAGIC, AnySeg and RobustSeg side by side.

`run_compare(profile, seeds)` trains or reuses every method at every seed through `workbench.runs.Run`
(the presets `baseline`, `cmnext`, `magic`, `anyseg`, `robustseg`; a student's teacher comes first),
evaluates every modality combination under both protocols (cached beside each run) and summarizes, per
method and protocol, the three numbers of the paper's table (docs/METHOD.md, "The paper's ablation and
main table"):

- `full`: mIoU with every modality;
- `el`: mIoU with Event + LiDAR only (the paper's collapse case for RGB-centred models; nan for a
  dataset without both);
- `emm`: the mean over all 2^M - 1 combinations (docs/METHOD.md, "All combinations and EMM").

Each is given as mean and standard deviation over seeds, beside the paper's DeLiVER / MiT-B0 figures, and
as the paired difference to RobustSeg over the same seeds with a t confidence interval
(`workbench.stats.paired_ci`). MAGIC has no public code: its rows are labelled "re-implemented from the
paper" (`workbench.models.magic`). The synthetic benchmark is not DeLiVER: compare orderings and gaps,
not absolute levels.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench import preflight
from workbench.analysis import combination_matrix as _combination_matrix
from workbench.config import PRESETS
from workbench.errors import ConfigError, UnknownName
from workbench.evaluate import CombinationResults
from workbench.paths import figures_dir
from workbench.runs import Run, config_of
from workbench.stats import distinct_seeds, paired_ci
from workbench.tables import write_csv

log = logging.getLogger(__name__)

__all__ = ["MAIN_ORDER", "REFERENCE", "PAPER_MAIN", "Comparison", "run_compare", "format_table", "table_rows",
           "label", "el_combo", "scores", "combination_matrix", "combination_rows"]

MAIN_ORDER = ("baseline", "cmnext", "magic", "anyseg", "robustseg")  # the paper's rows, in its order
REFERENCE = "robustseg"  # the paired differences are method - RobustSeg
METRICS = ("full", "el", "emm")
METRIC_NAMES = {"full": "full", "el": "Event+LiDAR", "emm": "EMM"}
NAMES = {"baseline": "M-SegFormer", "cmnext": "CMNeXt", "magic": "MAGIC", "anyseg": "AnySeg",
         "robustseg": "RobustSeg", "anyseg_approx": "AnySeg (approximation)"}
NOTES = {"magic": "re-implemented from the paper"}
# The paper's main table (DeLiVER, MiT-B0, mIoU %): full / Event+LiDAR / mean of the 15 combinations.
PAPER_MAIN: dict[str, dict[str, float]] = {
    "cmnext": {"full": 60.59, "el": 4.97, "emm": 34.09},
    "magic": {"full": 63.40, "el": 0.26, "emm": 40.49},
    "baseline": {"full": 61.92, "el": 1.57, "emm": 39.36},
    "anyseg": {"full": 59.41, "el": 27.57, "emm": 47.51},
    "robustseg": {"full": 61.85, "el": 33.01, "emm": 49.91},
}


def label(method: str, short: bool = False) -> str:
    """How the table names a method: its paper name, with MAGIC's note ("re-implemented from the paper";
    `short`: "re-impl.")."""
    name = NAMES.get(method, method)
    if method in NOTES:
        return f"{name} (re-impl.)" if short else f"{name} ({NOTES[method]})"
    return name


def el_combo(modalities: Sequence[str]) -> tuple[str, ...] | None:
    """The Event + LiDAR combination of a dataset's modalities, or None when it lacks one of them."""
    event = [m for m in modalities if m in ("event", "event_camera")]
    lidar = [m for m in modalities if m == "lidar"]
    if not (event and lidar):
        return None
    return tuple(m for m in modalities if m in (event[0], lidar[0]))


def scores(res: CombinationResults, protocol: str) -> dict[str, float]:
    """full, el (Event + LiDAR; nan without them) and emm of one evaluation under one protocol."""
    el = el_combo(res.modalities)
    return {"full": res.full(protocol), "el": res.miou(protocol, el) if el else math.nan, "emm": res.emm(protocol)}


@dataclass
class Comparison:
    """What `run_compare` produced: the evaluations (method -> seed -> results), the per-seed rows and the
    summary rows (one per method and protocol)."""

    profile: str
    split: str
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    results: dict[str, dict[int, CombinationResults]]
    per_seed: list[dict]
    rows: list[dict]
    confidence: float = 0.95

    @property
    def protocols(self) -> list[str]:
        return sorted({r["protocol"] for r in self.rows})


def run_compare(profile: str = "quick", seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] | None = None,
                overrides=None, out: str | Path | None = None, split: str = "test", progress: bool = True,
                confidence: float = 0.95, jobs: int | None = None) -> Comparison:
    """Train or reuse every method x seed (the runs not trained yet first; `jobs` >= 2: side by side at one
    thread each, `Run.ensure_many`), evaluate it on `split` (cached) and summarize. Writes the summary to `out`
    (default figures/compare_<profile>.csv) and the per-seed rows beside it (`*_seeds.csv`).
    `overrides` (`--set` style, a list or a dict) apply to every method, e.g. a data root."""
    methods = tuple(MAIN_ORDER if methods is None else methods)
    if not methods:
        raise ConfigError(f"no methods given; leave methods out for the paper's rows ({', '.join(MAIN_ORDER)})")
    unknown = [m for m in methods if m not in PRESETS]
    if unknown:
        raise UnknownName(f"unknown method {unknown[0]!r}; valid: {', '.join(PRESETS)}")
    seeds = distinct_seeds(seeds)
    results: dict[str, dict[int, CombinationResults]] = {m: {} for m in methods}
    per_seed = []
    preflight.split(config_of(methods[0], profile, seeds[0], overrides), split)  # before any training
    Run.ensure_many([Run.of(m, profile, s, overrides) for s in seeds for m in methods], jobs, progress)
    for seed in seeds:  # seed-major: a partial comparison already covers every method
        for method in methods:
            run = Run.of(method, profile, seed, overrides).ensure(progress)
            res = run.evaluation(split, progress=progress)
            results[method][seed] = res
            for protocol in res.protocols:
                per_seed.append({"method": method, "label": label(method), "seed": seed, "protocol": protocol,
                                 **scores(res, protocol), "run": run.name})
    rows = summarize(per_seed, methods, confidence)
    cmp = Comparison(profile, split, seeds, methods, results, per_seed, rows, confidence)
    out = Path(out) if out else figures_dir() / f"compare_{profile}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, rows, digits=4)
    write_csv(out.with_name(out.stem + "_seeds.csv"), per_seed, digits=4)
    log.info("main table (%s, seeds %s) written: %s and %s", profile, ",".join(map(str, seeds)), out,
             out.with_name(out.stem + "_seeds.csv"))
    return cmp


def summarize(per_seed: list[dict], methods: Sequence[str], confidence: float = 0.95) -> list[dict]:
    """Per method and protocol: mean and std over seeds of full / el / emm, the paper's figures, and the
    paired difference to RobustSeg (`d_<metric>` with `_low` / `_high`, nan for RobustSeg itself, without
    it, or with one seed for the interval)."""
    rows = []
    protocols = sorted({r["protocol"] for r in per_seed})
    for method in methods:
        for protocol in protocols:
            mine = sorted((r for r in per_seed if r["method"] == method and r["protocol"] == protocol),
                          key=lambda r: r["seed"])
            if not mine:
                continue
            ref = {r["seed"]: r for r in per_seed if r["method"] == REFERENCE and r["protocol"] == protocol}
            row = {"method": method, "label": label(method), "protocol": protocol, "seeds": len(mine)}
            for k in METRICS:
                vals = [r[k] for r in mine]
                row[f"{k}_mean"] = statistics.fmean(vals)
                row[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else math.nan  # no spread from one seed
            for k in METRICS:
                row[f"paper_{k}"] = PAPER_MAIN.get(method, {}).get(k, math.nan)
            paired = [r for r in mine if r["seed"] in ref]
            for k in METRICS:
                if method == REFERENCE or not paired:
                    ci = {"mean": math.nan, "low": math.nan, "high": math.nan}
                else:
                    ci = paired_ci([r[k] for r in paired], [ref[r["seed"]][k] for r in paired], confidence)
                row[f"d_{k}"], row[f"d_{k}_low"], row[f"d_{k}_high"] = ci["mean"], ci["low"], ci["high"]
            row["note"] = NOTES.get(method, "")
            rows.append(row)
    return rows


def _num(v: float, width: int = 6) -> str:
    return f"{'-':>{width}}" if math.isnan(v) else f"{v:{width}.2f}"


def format_table(cmp: Comparison) -> str:
    """The table as printed by `python -m workbench compare`: ours (mean ± std over seeds) beside the
    paper's, then the paired differences to RobustSeg with their intervals."""
    n = len(cmp.seeds)
    width = max(len(r["label"]) for r in cmp.rows) + 2
    head = (f"Main table: profile {cmp.profile}, {cmp.split} split, seeds {','.join(map(str, cmp.seeds))} "
            f"(mIoU %; ours: mean ± std over seeds; paper: DeLiVER, MiT-B0)")
    lines = [head, f"{'method':<{width}}{'protocol':<10}" + "".join(f"{METRIC_NAMES[k]:>16}" for k in METRICS)
             + "   paper full / EL / EMM"]
    for r in cmp.rows:
        ours = "".join((f"{_num(r[k + '_mean'])} ± {r[k + '_std']:5.2f}" if r[k + "_std"] == r[k + "_std"]
                        else _num(r[k + "_mean"])).rjust(16) for k in METRICS)
        paper = " / ".join(_num(r[f"paper_{k}"], 5).strip() for k in METRICS)
        lines.append(f"{r['label']:<{width}}{r['protocol']:<10}{ours}   {paper}")
    if REFERENCE in cmp.methods and len(cmp.methods) > 1:
        pct = round(100 * cmp.confidence)
        lines += ["", f"Paired difference to {label(REFERENCE)} (method - {label(REFERENCE)}, mean over {n} seed"
                  f"{'s' if n > 1 else ''}" + (f", [{pct}% t interval])" if n > 1 else "; one seed gives no interval)")]
        lines.append(f"{'method':<{width}}{'protocol':<10}" + "".join(f"{METRIC_NAMES[k]:>24}" for k in METRICS))
        for r in cmp.rows:
            if r["method"] == REFERENCE:
                continue
            cells = []
            for k in METRICS:
                d, lo, hi = r[f"d_{k}"], r[f"d_{k}_low"], r[f"d_{k}_high"]
                ci = "" if math.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]"
                cells.append(f"{_num(d, 1).strip()}{ci}".rjust(24))
            lines.append(f"{r['label']:<{width}}{r['protocol']:<10}" + "".join(cells))
    return "\n".join(lines)


def table_rows(cmp: Comparison) -> list[dict]:
    """The summary as a compact table for notebooks and the report (the full intervals are in the CSV of
    `run_compare`): ours, the paper's, and the paired difference to RobustSeg with the EMM interval."""
    out = []
    for r in cmp.rows:
        row = {"method": r["label"], "protocol": r["protocol"], "seeds": r["seeds"]}
        for k in METRICS:
            row[METRIC_NAMES[k]], row[f"± {METRIC_NAMES[k]}"] = r[f"{k}_mean"], r[f"{k}_std"]
        row |= {f"paper {METRIC_NAMES[k]}": r[f"paper_{k}"] for k in METRICS}
        row |= {f"Δ {METRIC_NAMES[k]}": r[f"d_{k}"] for k in METRICS}
        row |= {"Δ EMM low": r["d_emm_low"], "Δ EMM high": r["d_emm_high"]}
        out.append(row)
    return out


def combination_matrix(cmp: Comparison, protocol: str) -> tuple[list[str], list[str], np.ndarray]:
    """(combo names, method labels, (combos, methods) mIoU matrix averaged over seeds) for one protocol,
    for `workbench.plotting.plot_combination_heatmaps`."""
    mats = [_combination_matrix({label(m, short=True): cmp.results[m][s] for m in cmp.methods}, protocol)
            for s in cmp.seeds]
    combos, methods = mats[0][0], mats[0][1]
    return combos, methods, np.mean([m[2] for m in mats], axis=0)


def combination_rows(cmp: Comparison) -> list[dict]:
    """The numbers behind the heatmaps: protocol, combination, method and mIoU (mean over seeds)."""
    rows = []
    for protocol in cmp.protocols:
        combos, methods, mat = combination_matrix(cmp, protocol)
        rows += [{"protocol": protocol, "combo": c, "method": m, "miou": float(mat[i, j])}
                 for i, c in enumerate(combos) for j, m in enumerate(methods)]
    return rows
