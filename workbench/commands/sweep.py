"""`python -m workbench sweep`: a grid of config values, scored on the val split."""

from __future__ import annotations

import argparse

from workbench.commands.common import add_quiet
from workbench.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="hpd", help="the method preset whose values are swept")
    p.add_argument("--profile", default="quick", help="the scale")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                   help="values of one config key, e.g. distill.cp_weight=10,100 (repeatable: the product)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--split", default="val", help="the split that scores each setting")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every setting")
    p.add_argument("--out", default=None, help="CSV path (default figures/sweep_<method>_<profile>.csv)")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from workbench.study import run_sweep

    grid = {}
    for item in args.grid:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} must look like KEY=V1,V2, e.g. distill.cp_weight=10,100")
        key, values = item.split("=", 1)
        grid[key] = values.split(",")
    run_sweep(args.method, args.profile, grid, seed=args.seed, split=args.split, overrides=args.set, out=args.out,
              progress=not args.quiet)
    return 0
