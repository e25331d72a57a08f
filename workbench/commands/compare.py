"""`python -m workbench compare`: the paper's main table (M-SegFormer, CMNeXt, MAGIC, AnySeg, RobustSeg)."""

from __future__ import annotations

import argparse

from workbench.commands.common import add_jobs, add_quiet, parse_list, parse_seeds
from workbench.config import PROFILES

MAIN = "baseline,cmnext,magic,anyseg,robustseg"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="quick", help=f"the scale: {', '.join(PROFILES)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (paired across methods)")
    p.add_argument("--methods", default=None, help=f"comma list of method presets; default the paper's rows: {MAIN}")
    p.add_argument("--split", default="test", help="the split every method is evaluated on")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every method, e.g. data.root=data/DELIVER")
    p.add_argument("--out", default=None, help="CSV path (default figures/compare_<profile>.csv)")
    add_quiet(p)
    add_jobs(p)


def run(args: argparse.Namespace) -> int:
    from workbench.compare import format_table, run_compare

    seeds = parse_seeds(args.seeds)
    methods = parse_list(args.methods, "--methods") if args.methods is not None else None
    cmp = run_compare(args.profile, seeds, methods, overrides=args.set, out=args.out, split=args.split,
                      progress=not args.quiet, jobs=args.jobs)
    print(format_table(cmp))
    return 0
