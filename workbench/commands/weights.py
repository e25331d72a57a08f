"""`python -m workbench weights import-mit SRC --variant b0 --out DST`: pretrained encoder weights."""

from __future__ import annotations

import argparse

from workbench.models import mit_weights


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do with weights")
    mit_weights.add_arguments(sub.add_parser("import-mit", help="convert an official SegFormer MiT checkpoint"))


def run(args: argparse.Namespace) -> int:
    return mit_weights.run(args)
