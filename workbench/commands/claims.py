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
    add_quiet(p)
    add_jobs(p)


def run(args: argparse.Namespace) -> int:
    from workbench.claims import run_claims

    seeds = parse_seeds(args.seeds)
    table = run_claims(args.profile, seeds, overrides=args.set, split=args.split, out=args.out,
                       progress=not args.quiet, jobs=args.jobs)
    print(table.format())
    return 0
