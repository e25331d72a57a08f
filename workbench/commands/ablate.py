"""`python -m workbench ablate`: the paper's ablation rows over seeds."""

from __future__ import annotations

import argparse

from workbench.commands.common import add_jobs, add_quiet, parse_list, parse_seeds
from workbench.config import PRESETS, PROFILES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="quick", help=f"the scale: {', '.join(PROFILES)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--methods", default=None, help=f"comma list; default every row: {', '.join(PRESETS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override applied to every row")
    p.add_argument("--out", default=None, help="CSV path (default figures/ablation_<profile>.csv)")
    add_quiet(p)
    add_jobs(p)


def run(args: argparse.Namespace) -> int:
    from workbench.study import format_summary, run_ablation

    seeds = parse_seeds(args.seeds)
    methods = parse_list(args.methods, "--methods") if args.methods is not None else None
    summary = run_ablation(args.profile, seeds, methods, overrides=args.set, out=args.out, progress=not args.quiet,
                           jobs=args.jobs)
    print(format_summary(summary))
    return 0
