"""Studies over many runs: the paper's ablation rows over seeds, and loss-weight sweeps on val.

Every row is a `workbench.runs.Run` (trained or reused, evaluated once per split and cached beside
it), so notebooks and the `ablate` / `sweep` commands share every trained model and every evaluation.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
from pathlib import Path

from workbench import preflight
from workbench.config import PRESETS
from workbench.errors import ConfigError, UnknownName
from workbench.evaluate import CombinationResults, combo_name
from workbench.methods import TERMS
from workbench.paths import figures_dir
from workbench.runs import Run, as_overrides, config_of
from workbench.stats import distinct_seeds
from workbench.tables import write_csv

log = logging.getLogger(__name__)

# The paper's ablation (MiT-B0, DeLiVER; EMM / full modality): docs/METHOD.md, "The paper's ablation and main table".
PAPER_ABLATION = {
    "baseline": (39.36, 61.92), "basic_kd": (46.42, 61.34), "ifv_single": (47.51, 59.71),
    "ifv_cross": (43.42, 53.38), "cpd": (49.06, 60.11), "ifv_cpd": (48.63, 61.11), "hpd": (49.10, 61.26),
    "robustseg": (49.91, 61.85), "anyseg_approx": (47.51, 59.41),  # beside the approximation: AnySeg's own numbers
}
ABLATION_ORDER = ("baseline", "baseline_long", "dropout_only", "basic_kd", "ifv_single", "ifv_cross", "cpd", "ifv_cpd",
                  "hpd", "robustseg", "anyseg_approx")  # with the compute-matched controls (docs/METHOD.md, "Controls")


SHARES = tuple(t.name for t in TERMS)  # the distillation terms whose gradient share a row reports


def _summary(res: CombinationResults, protocol: str, run: Run | None = None) -> dict:
    """A row's scores under `protocol`, and the gradient share of each distillation term at its last
    validation (docs/METHOD.md, "Loss weights"; nan where the row has no such term)."""
    worst_c, worst = res.worst(protocol)
    last = run.metrics().last_val if run is not None else {}
    return {"emm": res.emm(protocol), "full": res.full(protocol), "worst": worst, "worst_combo": combo_name(worst_c),
            "no_rgb": res.miou(protocol, tuple(m for m in res.modalities if m != "rgb"))
            if "rgb" in res.modalities and len(res.modalities) > 1 else float("nan"),
            "p0.1": res.expected(protocol, 0.1),
            **{f"share_{t}": last.get(f"val/share/{t}", float("nan")) for t in SHARES}}


def run_ablation(profile: str = "quick", seeds=(0, 1, 2), methods=None, overrides=None, out=None,
                 split: str = "test", progress: bool = True, jobs: int | None = None) -> list[dict]:
    """Every ablation row x seed: per-seed rows and a mean +- std summary (CSV) beside the paper's numbers.
    The runs not trained yet train first (`jobs` >= 2: side by side at one thread each, `Run.ensure_many`)."""
    methods = list(ABLATION_ORDER if methods is None else methods)
    seeds = distinct_seeds(seeds)
    if not methods:
        raise ConfigError(f"no methods given; leave methods out for every ablation row ({', '.join(ABLATION_ORDER)})")
    unknown = [m for m in methods if m not in PRESETS]
    if unknown:
        raise UnknownName(f"unknown method {unknown[0]!r}; valid: {', '.join(PRESETS)}")
    preflight.split(config_of(methods[0], profile, seeds[0], overrides), split)  # before any training
    Run.ensure_many([Run.of(m, profile, s, overrides) for s in seeds for m in methods], jobs, progress)
    per_seed = []
    for seed in seeds:  # seed-major: a partial study already covers every row
        for method in methods:
            run = Run.of(method, profile, seed, overrides).ensure(progress)
            res = run.evaluation(split, progress=progress)
            for protocol in res.protocols:
                per_seed.append({"method": method, "seed": seed, "protocol": protocol, **_summary(res, protocol, run)})
    summary = summarize(per_seed)
    out = Path(out) if out else figures_dir() / f"ablation_{profile}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_name(out.stem + "_seeds.csv"), per_seed, digits=4)
    write_csv(out, summary, digits=4)
    log.info("ablation (%s, seeds %s):\n%s\nwritten: %s and %s", profile, ",".join(map(str, seeds)),
             format_summary(summary), out, out.with_name(out.stem + "_seeds.csv"))
    return summary


def summarize(per_seed: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["method"], r["protocol"]) for r in per_seed},
                  key=lambda k: (ABLATION_ORDER.index(k[0]) if k[0] in ABLATION_ORDER else 99, k[1]))
    for method, protocol in keys:
        rs = [r for r in per_seed if r["method"] == method and r["protocol"] == protocol]
        row = {"method": method, "protocol": protocol, "seeds": len(rs)}
        for k in ("emm", "full", "worst", "no_rgb", "p0.1", *(f"share_{t}" for t in SHARES)):
            vals = [r[k] for r in rs]
            row[f"{k}_mean"] = statistics.fmean(vals)
            row[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else math.nan  # no spread from one seed
        row["worst_combo"] = max({r["worst_combo"] for r in rs}, key=[r["worst_combo"] for r in rs].count)
        row["paper_emm"], row["paper_full"] = PAPER_ABLATION.get(method, (float("nan"), float("nan")))
        rows.append(row)
    return rows


def format_summary(rows: list[dict]) -> str:
    """The summary as text, with each row's gradient shares (kd vs CE; cp, ifv vs the weighted KD)."""
    lines = [f"{'method':<14}{'protocol':<9}{'EMM':>15}{'full':>15}{'worst':>15} {'(combo)':<8}{'paper EMM/full':>16}"
             f"  gradient share kd / cp / ifv"]

    def pm(r, k):
        std = r[k + "_std"]
        return f"{r[k + '_mean']:6.2f} ± {std:4.2f}" if std == std else f"{r[k + '_mean']:6.2f}       "

    def share(r, t):
        v = r.get(f"share_{t}_mean", float("nan"))
        return "  -  " if v != v else f"{100 * v:4.0f}%"

    for r in rows:
        lines.append(f"{r['method']:<14}{r['protocol']:<9}{pm(r, 'emm'):>15}{pm(r, 'full'):>15}{pm(r, 'worst'):>15} "
                     f"{r['worst_combo']:<8}{r['paper_emm']:>8.2f}/{r['paper_full']:.2f}  "
                     + " / ".join(share(r, t) for t in SHARES))
    return "\n".join(lines)


def run_sweep(method: str, profile: str, grid: dict[str, list], seed: int = 0, split: str = "val",
              overrides=None, out=None, progress: bool = True) -> list[dict]:
    """Grid search of config values on the validation split (tuning never looks at test)."""
    keys = list(grid)
    rows = []
    preflight.split(config_of(method, profile, seed, overrides), split)  # before any training
    for values in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, values))
        run = Run.of(method, profile, seed, {**as_overrides(overrides), **setting}).ensure(progress)
        res = run.evaluation(split, progress=progress)
        for protocol in res.protocols:
            rows.append({**{k: v for k, v in setting.items()}, "method": method, "seed": seed, "split": split,
                         "protocol": protocol, **_summary(res, protocol, run)})
    out = Path(out) if out else figures_dir() / f"sweep_{method}_{profile}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, rows, digits=4)
    log.info("sweep of %s (%s, seed %d, %s split):\n%s\nwritten: %s", method, profile, seed, split,
             "\n".join(", ".join(f"{k}={r[k]}" for k in keys) + f" {r['protocol']}: EMM {r['emm']:.2f} full "
                       f"{r['full']:.2f}" for r in rows), out)
    return rows
