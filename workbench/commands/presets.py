"""`python -m workbench presets`: the profiles, methods and tuned weights; `--show NAME` prints a config."""

from __future__ import annotations

import argparse
import sys

from workbench.config import METHODS, PROFILES, TUNED, preset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show", default=None, metavar="NAME", help="print this preset's full config as JSON (stdout)")
    p.add_argument("--profile", default=None, help="the scale for a method preset (default quick)")


def tuned_table() -> str:
    lines = ["tuned weights (applied on top of the paper's defaults; tuned on val):"]
    for profile, entries in TUNED.items():
        for key, (value, source) in entries.items():
            lines.append(f"  {profile:<7} {key} = {value}   ({source})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.show:
        cfg = preset(args.show, args.profile)
        print(cfg.to_json())  # stdout holds only the JSON, so it can be piped or saved as --config FILE
        tuned = TUNED.get(cfg.profile, {})
        if tuned:
            print("# tuned for " + cfg.profile + ": " + ", ".join(f"{k}={v}" for k, (v, _) in tuned.items()),
                  file=sys.stderr)
        return 0
    print("profiles:", ", ".join(PROFILES))
    print("methods: ", ", ".join(METHODS))
    print(tuned_table())
    return 0
