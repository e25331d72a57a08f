"""`python -m workbench claims`: the paper's claims as paired-seed comparisons, with verdicts."""

from __future__ import annotations

import argparse

from workbench.commands.common import add_jobs, add_quiet, parse_seeds
from workbench.config import PROFILES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Train (or reuse) the ablation rows and the compute-matched controls (baseline_long, "
                     "dropout_only) at every seed and print, per claim of the paper and per control claim and "
                     "protocol, the paired difference with its 95% CI, the smallest difference the design can "
                     "detect, the paper's difference and a verdict (reproduced / contradicted / inconclusive at "
                     "this power); then KD's weight lambda (0, 5, 50) against full mIoU and EMM, and the loss "
                     "weights of every row and seed.")
    p.add_argument("--profile", default="quick", help=f"the scale: {', '.join(PROFILES)}")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training seeds (the pairing unit)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every row, e.g. --set distill.weighting=gradient_share")
    p.add_argument("--split", default="test", help="the split the rows are scored on")
    p.add_argument("--out", default=None, help="CSV path (default figures/claims_<profile>.csv)")
    p.add_argument("--regimes", nargs="+", default=None, metavar="NAME=CSV",
                   help="train nothing: print one table, claim x regime, from claim CSVs written before, e.g. "
                        "--regimes pretrained=figures/claims_study.csv scratch=figures/claims_study_scratch.csv "
                        "(with --out: also as CSV)")
    p.add_argument("--figure", default=None, metavar="PNG",
                   help="with --regimes: also draw the table, one panel per regime (a PNG path)")
    p.add_argument("--protocol", default="drop", choices=("drop", "zero"), help="the protocol of --regimes' table")
    add_quiet(p)
    add_jobs(p)


def _regimes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workbench.claims import format_regime_table, regime_table
    from workbench.errors import ConfigError
    from workbench.tables import read_csv, write_csv

    tables = {}
    for item in args.regimes:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--regimes takes NAME=CSV, got {item!r}; e.g. pretrained=figures/claims_study.csv")
        if name in tables:
            raise ConfigError(f"regime {name!r} named twice in --regimes; give each regime once")
        if not Path(path).is_file():
            raise ConfigError(f"{path} does not exist: write it first with `python -m workbench claims ... --out {path}`")
        rows = read_csv(path)
        if not rows or "claim" not in rows[0] or "verdict" not in rows[0]:
            raise ConfigError(f"{path} is not a claim table (no claim/verdict columns): give the CSV that "
                              f"`python -m workbench claims` wrote, not its _seeds.csv")
        tables[name] = rows
    rows = regime_table(tables, args.protocol)
    print(format_regime_table(rows, list(tables), args.protocol))
    if args.out:
        write_csv(args.out, rows, digits=4)
    if args.figure:
        from workbench import plotting

        panels = [{**r, "regime": name} for name, table in tables.items() for r in table
                  if r["protocol"] == args.protocol]
        fig = plotting.plot_claims(panels, title=f"The paper's claims and the controls, by regime (protocol "
                                                 f"{args.protocol}): paired differences over seeds", panel="regime")
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=110, bbox_inches="tight", metadata=plotting.PNG_METADATA)
    return 0


def run(args: argparse.Namespace) -> int:
    from workbench.claims import run_claims

    if args.regimes:
        return _regimes(args)
    if args.figure:
        from workbench.errors import ConfigError

        raise ConfigError("--figure draws the --regimes table; the claim table's figure is notebook 08's")

    seeds = parse_seeds(args.seeds)
    table = run_claims(args.profile, seeds, overrides=args.set, split=args.split, out=args.out,
                       progress=not args.quiet, jobs=args.jobs)
    print(table.format())
    return 0
