"""The paper's claims as paired-seed comparisons (docs/METHOD.md, "Comparing methods").

Each claim compares two ablation rows on one metric under one missing-modality protocol: for every
seed s both rows are trained (or reused) with seed s, so they share the teacher, the data order and
the Anymodal Dropout draws, and the claim is judged on the per-seed differences (`workbench.stats`):
`reproduced`, `contradicted` or `inconclusive at this power`, with the 95% CI and the smallest difference
the design could detect (MDE at 80% power). Results go to `figures/claims_<profile>.csv` (+ `_seeds.csv`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workbench.evaluate import CombinationResults
from workbench.paths import figures_dir
from workbench.runs import Run
from workbench.stats import paired, verdict
from workbench.tables import write_csv

log = logging.getLogger(__name__)

__all__ = ["Claim", "CLAIMS", "ROWS", "run_claims", "format_claims"]


@dataclass(frozen=True)
class Claim:
    """`a - b` on `metric` should be `direction` `threshold`; `paper`: the paper's a - b (DeLiVER, MiT-B0)."""

    key: str
    text: str
    a: str  # method preset; "robustseg:teacher" = the teacher stored with the run (after feedback)
    b: str
    metric: str  # emm | full | a combination such as "event+lidar"
    direction: str = ">"
    threshold: float = 0.0
    paper: float = math.nan


CLAIMS: tuple[Claim, ...] = (
    Claim("distillation", "Distillation raises EMM over the baseline", "basic_kd", "baseline", "emm",
          paper=46.42 - 39.36),
    Claim("cross_ifv_cost", "Cross-modal IFV costs full-modality mIoU", "ifv_cross", "baseline", "full", "<",
          paper=53.38 - 61.92),
    Claim("cpd_vs_cross_ifv", "CPD costs less full-modality mIoU than cross-modal IFV", "cpd", "ifv_cross", "full",
          paper=60.11 - 53.38),
    Claim("cpd_vs_kd", "CPD beats basic KD on EMM", "cpd", "basic_kd", "emm", paper=49.06 - 46.42),
    Claim("primary_ifv", "Primary-only IFV + CPD beats all-modality IFV + CPD on EMM", "hpd", "ifv_cpd", "emm",
          paper=49.10 - 48.63),
    Claim("hpd_full", "HPD keeps full-modality mIoU within about a point of the baseline", "hpd", "baseline", "full",
          ">", -1.0, paper=61.26 - 61.92),
    Claim("feedback", "Feedback adds EMM", "robustseg", "hpd", "emm", paper=49.91 - 49.10),
    Claim("feedback_teacher", "Feedback lifts the teacher's weak combination (Event+LiDAR)", "robustseg:teacher",
          "baseline", "event+lidar", paper=27.28 - 1.57),
)
ROWS = ("baseline", "basic_kd", "ifv_cross", "cpd", "ifv_cpd", "hpd", "robustseg")


def _value(res: CombinationResults, metric: str, protocol: str) -> float:
    if metric == "emm":
        return res.emm(protocol)
    if metric == "full":
        return res.full(protocol)
    return res.miou(protocol, tuple(m for m in res.modalities if m in metric.split("+")))


def run_claims(profile: str = "quick", seeds: Sequence[int] = (0, 1, 2), overrides=None, split: str = "test",
               protocols: Sequence[str] = ("drop", "zero"), claims: Sequence[Claim] = CLAIMS,
               out: str | Path | None = None, progress: bool = True, jobs: int | None = None) -> list[dict]:
    """Train or reuse every row at every seed (seed-major: a partial study covers every row; the runs not
    trained yet first; `jobs` >= 2: side by side at one thread each, `Run.ensure_many`), evaluate them on `split`,
    and judge each claim under each protocol. Writes the CSVs; returns the claim rows."""
    Run.ensure_many([Run.of(row, profile, seed, overrides) for seed in seeds for row in ROWS], jobs, progress)
    results: dict[tuple[str, str, int], CombinationResults] = {}
    shares: dict[tuple[str, int], dict] = {}
    for seed in seeds:
        for row in ROWS:
            run = Run.of(row, profile, seed, overrides).ensure(progress)
            results[(row, "model", seed)] = run.evaluation(split, progress=progress)
            if run.config.distill.feedback:
                results[(row, "teacher", seed)] = run.evaluation(split, "teacher", progress=progress)
            val = run.metrics().last_val
            shares[(row, seed)] = {k.removeprefix("val/share/"): v for k, v in val.items() if k.startswith("val/share/")}
    per_seed, rows = [], []
    for (row, which, seed), res in results.items():
        for protocol in protocols:
            per_seed.append({"row": row if which == "model" else f"{row}:{which}", "seed": seed, "protocol": protocol,
                             "full": res.full(protocol), "emm": res.emm(protocol),
                             "event+lidar": _value(res, "event+lidar", protocol),
                             **{f"share_{k}": v for k, v in shares.get((row, seed), {}).items()}})
    def values(name: str, metric: str, protocol: str) -> list[float]:  # one per seed, in seed order
        row, _, which = name.partition(":")
        return [_value(results[(row, which or "model", s)], metric, protocol) for s in seeds]

    for claim in claims:
        for protocol in protocols:
            d = paired(values(claim.a, claim.metric, protocol), values(claim.b, claim.metric, protocol))
            rows.append({"claim": claim.key, "text": claim.text, "protocol": protocol, "metric": claim.metric,
                         "a": claim.a, "b": claim.b, "seeds": d.n, "difference": d.mean, "ci_low": d.low,
                         "ci_high": d.high, "mde": d.mde, "expected": f"{claim.direction} {claim.threshold:g}",
                         "paper": claim.paper, "verdict": verdict(d, claim.direction, claim.threshold)})
    out = Path(out) if out else figures_dir() / f"claims_{profile}.csv"
    write_csv(out, rows, digits=4)
    write_csv(out.with_name(out.stem + "_seeds.csv"), per_seed, digits=4)
    log.info("claims (%s, seeds %s) written: %s and %s", profile, ",".join(map(str, seeds)), out,
             out.with_name(out.stem + "_seeds.csv"))
    return rows


def format_claims(rows: Sequence[dict]) -> str:
    """The claim table as text: one line per claim and protocol."""
    lines = [f"{'claim':<18}{'protocol':<9}{'a - b (95% CI)':>26}{'MDE':>7}{'paper':>8}  verdict"]
    for r in rows:
        ci = f"{r['difference']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        lines.append(f"{r['claim']:<18}{r['protocol']:<9}{ci:>26}{r['mde']:>7.2f}{r['paper']:>+8.2f}  {r['verdict']}")
    n = rows[0]["seeds"] if rows else 0
    lines.append(f"({n} seeds, paired by seed; MDE: the smallest true difference this design detects with 80% "
                 f"power at the 5% level)")
    return "\n".join(lines)
