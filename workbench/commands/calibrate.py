"""`python -m workbench calibrate`: the synthetic benchmark's modality profile beside DeLiVER's."""

from __future__ import annotations

import argparse

from workbench.commands.common import add_quiet, parse_list, parse_seeds
from workbench.paths import figures_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    from workbench.calibration import SUBSETS

    p.description = ("Train (or reuse) baselines on modality subsets and the full-modality baseline, evaluate "
                     "them on every combination, and print the calibration table: the benchmark's measured "
                     "profile against DeLiVER's published figures (docs/BENCHMARK.md). Only baselines: no "
                     "distilled model is trained or read.")
    p.add_argument("--profile", default="quick", help="the scale (quick: 64x64, 10 epochs)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--subsets", default=",".join(SUBSETS), help=f"comma-separated, from {', '.join(SUBSETS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every baseline, e.g. --set train.epochs=30")
    p.add_argument("--out", default=None, help="CSV path (default: figures/calibration_<profile>.csv; with "
                                               "--set model.init=pretrained: calibration_<profile>_pretrained.csv)")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from workbench.calibration import calibrate
    from workbench.runs import as_overrides

    overrides = as_overrides(args.set)
    cal = calibrate(args.profile, parse_seeds(args.seeds), parse_list(args.subsets, "--subsets"), overrides,
                    progress=not args.quiet)
    print(cal.format_table())
    regime = "" if cal.init == "scratch" else f"_{cal.init}"  # the pretrained regime does not overwrite scratch's
    out = cal.save_csv(args.out or figures_dir() / f"calibration_{args.profile}{regime}.csv")
    print(f"written: {out}")
    return 0
