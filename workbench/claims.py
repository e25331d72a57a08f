"""The paper's claims, and the controls it lacks, as paired-seed comparisons (docs/METHOD.md, "Comparing
methods" and "Controls").

Each claim compares two rows on one metric under one missing-modality protocol: for every seed s both rows
are trained (or reused) with seed s, so they share the teacher, the data order and the Anymodal Dropout
draws, and the claim is judged on the per-seed differences (`workbench.stats`): `reproduced`,
`contradicted` or `inconclusive at this power`, with the 95% CI and the smallest difference the design
could detect (MDE at 80% power). Results go to `figures/claims_<profile>.csv` (+ `_seeds.csv`).

Every student continues the same trained teacher for the same number of epochs, while the baseline (the
teacher) stops where the students start. Two controls separate what the students' objective adds from the
extra training they get: `baseline_long` (the teacher trained as long again on every modality with CE alone)
and `dropout_only` (CE under Anymodal Dropout, no distillation term: lambda = 0). The claims marked
`control` compare against them; the lambda line (`LAMBDA_LINE`: 0, 5, 50) shows how KD's weight moves full
mIoU and EMM beyond dropout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from workbench import preflight
from workbench.errors import ConfigError, UnknownName
from workbench.evaluate import CombinationResults
from workbench.methods import TERMS
from workbench.paths import figures_dir
from workbench.runs import Run, as_overrides, config_of
from workbench.stats import distinct_seeds, paired, verdict
from workbench.tables import write_csv

log = logging.getLogger(__name__)

__all__ = ["Row", "ROWS", "Claim", "CLAIMS", "LAMBDA_LINE", "ClaimTable", "run_claims", "format_claims", "lambda_line",
           "format_lambda_line", "format_weights", "regime_table", "format_regime_table"]


@dataclass(frozen=True)
class Row:
    """A row of the claim table: a method preset with its own overrides (on top of the study's)."""

    key: str
    preset: str
    overrides: dict = field(default_factory=dict)

    def run(self, profile: str, seed: int, overrides=None, progress: bool = True) -> Run:
        return Run.of(self.preset, profile, seed, {**as_overrides(overrides), **self.overrides}, progress=progress)


ROWS: tuple[Row, ...] = (
    Row("baseline", "baseline"),
    Row("baseline_long", "baseline_long"),
    Row("dropout_only", "dropout_only"),
    Row("basic_kd_l5", "basic_kd", {"distill.kd_weight": 5.0}),
    Row("basic_kd", "basic_kd"),
    Row("ifv_cross", "ifv_cross"),
    Row("cpd", "cpd"),
    Row("ifv_cpd", "ifv_cpd"),
    Row("hpd", "hpd"),
    Row("robustseg", "robustseg"),
)
# KD's weight lambda (basic KD under Anymodal Dropout): the rows that trace it, lambda = 0 being dropout alone
LAMBDA_LINE: tuple[tuple[float, str], ...] = ((0.0, "dropout_only"), (5.0, "basic_kd_l5"), (50.0, "basic_kd"))


def row_named(key: str) -> Row:
    """The row of `ROWS` called `key`, or an UnknownName listing them."""
    for r in ROWS:
        if r.key == key:
            return r
    raise UnknownName(f"unknown claim-table row {key!r}; valid: {', '.join(r.key for r in ROWS)}")


@dataclass(frozen=True)
class Claim:
    """`a - b` on `metric` should be `direction` `threshold`; `paper`: the paper's a - b (DeLiVER, MiT-B0),
    nan for a control the paper does not have."""

    key: str
    text: str
    a: str  # a row key; "robustseg:teacher" = the teacher stored with the run (after feedback)
    b: str
    metric: str  # emm | full | a combination such as "event+lidar"
    direction: str = ">"
    threshold: float = 0.0
    paper: float = math.nan

    @property
    def control(self) -> bool:
        return math.isnan(self.paper)


CLAIMS: tuple[Claim, ...] = (
    # the paper's claims (its ablation and its feedback figure)
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
    # the controls the paper lacks: the same budget for both sides
    Claim("dropout_vs_training", "Anymodal Dropout raises EMM beyond the extra training", "dropout_only",
          "baseline_long", "emm"),
    Claim("kd_vs_dropout", "KD raises EMM beyond Anymodal Dropout", "basic_kd", "dropout_only", "emm"),
    Claim("kd_full_vs_dropout", "KD keeps full-modality mIoU within a point of Anymodal Dropout alone", "basic_kd",
          "dropout_only", "full", ">", -1.0),
    Claim("robustseg_vs_training", "RobustSeg raises EMM over the baseline trained as long", "robustseg",
          "baseline_long", "emm"),
    Claim("robustseg_full_vs_training", "RobustSeg keeps full-modality mIoU within a point of the baseline trained "
          "as long", "robustseg", "baseline_long", "full", ">", -1.0),
    Claim("robustseg_vs_dropout", "RobustSeg raises EMM beyond Anymodal Dropout", "robustseg", "dropout_only", "emm"),
    Claim("feedback_teacher_vs_training", "Feedback lifts the teacher's Event+LiDAR more than training it as long",
          "robustseg:teacher", "baseline_long", "event+lidar"),
)


def _value(res: CombinationResults, metric: str, protocol: str) -> float:
    if metric == "emm":
        return res.emm(protocol)
    if metric == "full":
        return res.full(protocol)
    return res.miou(protocol, tuple(m for m in res.modalities if m in metric.split("+")))


def _weights(run: Run) -> dict[str, float]:
    d = run.config.distill
    return {t.symbol: getattr(d, t.weight) for t in TERMS} if d.enabled else {}


@dataclass
class ClaimTable:
    """The verdicts (`rows`, one per claim and protocol) and the per-seed scores, loss weights and gradient
    shares of every row they rest on (`per_seed`)."""

    rows: list[dict]
    per_seed: list[dict]

    def format(self) -> str:
        """The claim table, the lambda line and (when they differ by row or seed) the loss weights."""
        parts = [format_claims(self.rows)]
        line = lambda_line(self.per_seed)
        if line:
            parts.append("KD's weight lambda (basic KD under Anymodal Dropout):\n" + format_lambda_line(line))
        weights = format_weights(self.per_seed)
        if weights.count("\n") > 0:
            parts.append("Loss weights per row and seed:\n" + weights)
        return "\n\n".join(parts)


def run_claims(profile: str = "quick", seeds: Sequence[int] = (0, 1, 2), overrides=None, split: str = "test",
               protocols: Sequence[str] = ("drop", "zero"), claims: Sequence[Claim] = CLAIMS,
               rows: Sequence[Row | str] = ROWS, out: str | Path | None = None, progress: bool = True,
               jobs: int | None = None) -> ClaimTable:
    """Train or reuse every row at every seed (seed-major: a partial study covers every row; the runs not
    trained yet first; `jobs` >= 2: side by side at one thread each, `Run.ensure_many`), evaluate them on
    `split`, and judge each claim under each protocol. `rows` (rows or their keys) limits the study to the
    claims that compare two of them. Writes the CSVs (the verdicts, and the per-seed rows with each row's loss
    weights and gradient shares in `<out>_seeds.csv`)."""
    rows = [row_named(r) if isinstance(r, str) else r for r in rows]
    seeds = distinct_seeds(seeds)
    available = {r.key for r in rows}
    claims = [c for c in claims if {c.a.partition(":")[0], c.b.partition(":")[0]} <= available]
    if not claims:
        raise ConfigError(f"no claim compares two of the rows {', '.join(sorted(available))}; add rows (all: "
                          f"{', '.join(r.key for r in ROWS)})")
    needed = {n.partition(":")[0] for c in claims for n in (c.a, c.b)}
    rows = [r for r in rows if r.key in needed or r.key in dict(LAMBDA_LINE).values()]
    preflight.split(config_of(rows[0].preset, profile, seeds[0], overrides), split)  # before any training
    Run.ensure_many([row.run(profile, seed, overrides, progress=progress) for seed in seeds for row in rows], jobs,
                    progress)
    results: dict[tuple[str, str, int], CombinationResults] = {}
    extra: dict[tuple[str, int], dict] = {}
    for seed in seeds:
        for row in rows:
            run = row.run(profile, seed, overrides, progress=progress).ensure(progress)
            results[(row.key, "model", seed)] = run.evaluation(split, progress=progress)
            if run.config.distill.feedback:
                results[(row.key, "teacher", seed)] = run.evaluation(split, "teacher", progress=progress)
            val = run.metrics().last_val
            extra[(row.key, seed)] = {**{f"weight_{k}": v for k, v in _weights(run).items()},
                                      **{f"share_{k.removeprefix('val/share/')}": v for k, v in val.items()
                                         if k.startswith("val/share/")}}
    per_seed, out_rows = [], []
    for (row, which, seed), res in results.items():
        for protocol in protocols:
            per_seed.append({"row": row if which == "model" else f"{row}:{which}", "seed": seed, "protocol": protocol,
                             "full": res.full(protocol), "emm": res.emm(protocol),
                             "event+lidar": _value(res, "event+lidar", protocol), **extra.get((row, seed), {})})

    def values(name: str, metric: str, protocol: str) -> list[float]:  # one per seed, in seed order
        row, _, which = name.partition(":")
        return [_value(results[(row, which or "model", s)], metric, protocol) for s in seeds]

    for claim in claims:
        for protocol in protocols:
            d = paired(values(claim.a, claim.metric, protocol), values(claim.b, claim.metric, protocol))
            out_rows.append({"claim": claim.key, "text": claim.text, "kind": "control" if claim.control else "paper",
                             "protocol": protocol, "metric": claim.metric, "a": claim.a, "b": claim.b, "seeds": d.n,
                             "difference": d.mean, "ci_low": d.low, "ci_high": d.high, "mde": d.mde,
                             "expected": f"{claim.direction} {claim.threshold:g}", "paper": claim.paper,
                             "verdict": verdict(d, claim.direction, claim.threshold)})
    out = Path(out) if out else figures_dir() / f"claims_{profile}.csv"
    write_csv(out, out_rows, digits=4)
    write_csv(out.with_name(out.stem + "_seeds.csv"), per_seed, digits=4)
    log.info("claims (%s, seeds %s) written: %s and %s", profile, ",".join(map(str, seeds)), out,
             out.with_name(out.stem + "_seeds.csv"))
    return ClaimTable(out_rows, per_seed)


def format_claims(rows: Sequence[dict]) -> str:
    """The claim table as text: one line per claim and protocol, the paper's claims first, then the controls."""
    lines = [f"{'claim':<30}{'protocol':<9}{'a - b (95% CI)':>26}{'MDE':>7}{'paper':>8}  verdict"]
    for kind in ("paper", "control"):
        part = [r for r in rows if r.get("kind", "paper") == kind]
        if part and kind == "control":
            lines.append("controls (the same training budget on both sides; not in the paper):")
        for r in part:
            ci = f"{r['difference']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
            paper = "" if r["paper"] != r["paper"] else f"{r['paper']:+8.2f}"
            lines.append(f"{r['claim']:<30}{r['protocol']:<9}{ci:>26}{r['mde']:>7.2f}{paper:>8}  {r['verdict']}")
    n = rows[0]["seeds"] if rows else 0
    lines.append(f"({n} seeds, paired by seed; MDE: the smallest true difference this design detects with 80% "
                 f"power at the 5% level)")
    return "\n".join(lines)


def lambda_line(per_seed: Sequence[dict], protocol: str = "drop") -> list[dict]:
    """KD's weight against full mIoU and EMM (`LAMBDA_LINE`), each lambda's paired difference to lambda = 0
    (Anymodal Dropout alone), from the per-seed rows of `run_claims`."""
    by = {(r["row"], int(r["seed"])): r for r in per_seed if r["protocol"] == protocol}
    base_key = LAMBDA_LINE[0][1]
    seeds = sorted(s for (row, s) in by if row == base_key)
    out = []
    for lam, key in LAMBDA_LINE:
        if not all((key, s) in by for s in seeds):
            continue
        row = {"lambda": lam, "row": key, "protocol": protocol, "seeds": len(seeds)}
        for metric in ("full", "emm"):
            vals = [float(by[(key, s)][metric]) for s in seeds]
            d = paired(vals, [float(by[(base_key, s)][metric]) for s in seeds])
            row |= {metric: sum(vals) / len(vals), f"{metric}_vs_0": d.mean, f"{metric}_vs_0_low": d.low,
                    f"{metric}_vs_0_high": d.high}
        out.append(row)
    return out


def format_lambda_line(rows: Sequence[dict]) -> str:
    lines = [f"{'lambda':>7}  {'row':<13}{'full':>7}{'  vs lambda 0 (95% CI)':>28}{'EMM':>8}{'  vs lambda 0 (95% CI)':>28}"]
    for r in rows:
        cells = []
        for m in ("full", "emm"):
            ci = f"{r[f'{m}_vs_0']:+.2f} [{r[f'{m}_vs_0_low']:+.2f}, {r[f'{m}_vs_0_high']:+.2f}]"
            cells.append(f"{r[m]:>7.2f}{ci:>28}" if m == "full" else f"{r[m]:>8.2f}{ci:>28}")
        lines.append(f"{r['lambda']:>7g}  {r['row']:<13}" + "".join(cells))
    lines.append(f"(protocol {rows[0]['protocol'] if rows else '-'}, {rows[0]['seeds'] if rows else 0} seeds; lambda 0 "
                 f"is Anymodal Dropout with CE alone)")
    return "\n".join(lines)


def format_weights(per_seed: Sequence[dict]) -> str:
    """The loss weights each row trained with, per seed (under gradient_share they differ by seed)."""
    keys = list(dict.fromkeys(k for r in per_seed for k in r if k.startswith("weight_")))
    seen, lines = set(), [f"{'row':<13}{'seed':>5}" + "".join(f"{k.removeprefix('weight_'):>10}" for k in keys)]
    for r in per_seed:
        vals = [r.get(k) for k in keys]
        if ":" in r["row"] or (r["row"], r["seed"]) in seen or not all(isinstance(v, (int, float)) for v in vals):
            continue
        seen.add((r["row"], r["seed"]))
        lines.append(f"{r['row']:<13}{r['seed']:>5}" + "".join(f"{float(v):>10.4g}" for v in vals))
    return "\n".join(lines)


def regime_table(tables: dict[str, Sequence[dict]], protocol: str = "drop") -> list[dict]:
    """One row per claim (the paper's first, then the controls) with, per regime (a name -> the verdict rows of
    one `run_claims`, e.g. read back from `figures/claims_study.csv`), the paired difference, its CI, the number
    of seeds and the verdict under `protocol`. A claim missing from a regime's table is left empty there."""
    if not tables:
        raise ConfigError("no regime given: name at least one claim CSV, e.g. pretrained=figures/claims_study.csv")
    order: list[str] = []
    cells: dict[tuple[str, str], dict] = {}
    kinds: dict[str, str] = {}
    for regime, rows in tables.items():
        for r in rows:
            if r["protocol"] != protocol:
                continue
            if r["claim"] not in kinds:
                order.append(r["claim"])
                kinds[r["claim"]] = r.get("kind", "paper")
            cells[(r["claim"], regime)] = r
    if not order:
        raise ConfigError(f"no claim under protocol {protocol!r} in the tables given; protocols: drop, zero")
    out = []
    for kind in ("paper", "control"):
        for claim in (c for c in order if kinds[c] == kind):
            row = {"claim": claim, "kind": kind}
            for regime in tables:
                r = cells.get((claim, regime))
                for key in ("difference", "ci_low", "ci_high", "seeds", "verdict"):
                    row[f"{regime}:{key}"] = "" if r is None else r[key]
            out.append(row)
    return out


def format_regime_table(rows: Sequence[dict], regimes: Sequence[str], protocol: str = "drop") -> str:
    """`regime_table` as text: one line per claim, one column per regime (difference [95% CI] verdict)."""
    short = {"reproduced": "reproduced", "contradicted": "contradicted", "inconclusive at this power": "inconclusive"}
    width = 40
    lines = [f"{'claim (' + protocol + ')':<30}" + "".join(f"{r:<{width}}" for r in regimes)]
    for kind in ("paper", "control"):
        part = [r for r in rows if r["kind"] == kind]
        if part and kind == "control":
            lines.append("controls (the same training budget on both sides; not in the paper):")
        for r in part:
            line = f"{r['claim']:<30}"
            for regime in regimes:
                d = r[f"{regime}:difference"]
                if d == "":
                    line += f"{'-':<{width}}"
                    continue
                cell = (f"{float(d):+.2f} [{float(r[f'{regime}:ci_low']):+.2f}, {float(r[f'{regime}:ci_high']):+.2f}] "
                        f"{short.get(r[f'{regime}:verdict'], r[f'{regime}:verdict'])}")
                line += f"{cell:<{width}}"
            lines.append(line.rstrip())
    seeds = {regime: {r[f"{regime}:seeds"] for r in rows} - {""} for regime in regimes}
    lines.append("(seeds per regime: " + "; ".join(f"{k} {', '.join(str(int(float(x))) for x in sorted(v))}"
                                                   for k, v in seeds.items()) + "; paired by seed within a regime)")
    return "\n".join(lines)
