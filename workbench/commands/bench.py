"""`python -m workbench bench NAME`: the speed claims, each against the naive way in one run."""

from __future__ import annotations

import argparse
import importlib

from workbench.bench import BENCHES


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="NAME",
                           help="the benchmark (`bench NAME --help` lists its options)")
    for name, module in BENCHES.items():
        mod = importlib.import_module(module)
        sp = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_arguments(sp)
        sp.set_defaults(bench_run=mod.run)


def run(args: argparse.Namespace) -> int:
    return args.bench_run(args)
