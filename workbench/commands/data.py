"""`python -m workbench data check ROOT --dataset NAME`: check a real dataset tree."""

from __future__ import annotations

import argparse

from workbench.data import checks


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do with a dataset")
    checks.add_arguments(sub.add_parser("check", help="check a real dataset tree against its layout"))


def run(args: argparse.Namespace) -> int:
    return checks.run(args)
