"""Command line: `python -m workbench COMMAND ...` (`python -m workbench COMMAND --help` for each).

Every command is a module with `add_arguments(parser)` and `run(args)`, registered in `COMMANDS`;
only the module of the command being run is imported. Library messages go through `logging` and are
shown here (`--quiet` keeps only warnings). A problem with the user's input (`WorkbenchError`), and a
full disk or read-only folder, is printed as one `error: ...` line with its exit status; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from workbench.errors import WorkbenchError, storage_error
from workbench.logs import setup_logging

DESCRIPTION = """RobustSeg workbench: train, evaluate and study robust multi-modal semantic segmentation.

Progress and messages go to stderr (`--quiet`: warnings only); results go to stdout. A mistake in the
input ends with one `error: ...` line that says how to fix it."""

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("workbench.commands.train", "train a preset (cached by config, or into --out), then evaluate it"),
    "evaluate": ("workbench.commands.evaluate", "evaluate a checkpoint on every modality combination"),
    "predict": ("workbench.commands.predict", "predictions of a checkpoint on a dataset folder or split, as images and CSV"),
    "ablate": ("workbench.commands.ablate", "the paper's ablation rows over seeds, beside the paper's figures"),
    "compare": ("workbench.commands.compare", "the paper's main table: CMNeXt, MAGIC, AnySeg, M-SegFormer, RobustSeg"),
    "sweep": ("workbench.commands.sweep", "grid search of config values on the val split"),
    "claims": ("workbench.commands.claims", "the paper's claims as paired-seed differences with CIs and verdicts"),
    "calibrate": ("workbench.commands.calibrate", "the synthetic benchmark's modality profile beside DeLiVER's"),
    "pretrain": ("workbench.commands.pretrain", "the synthetic world's RGB encoder that model.init=pretrained starts from"),
    "probe": ("workbench.commands.probe", "gradient share of each loss term in the student's encoders"),
    "suite": ("workbench.commands.suite", "run every notebook headlessly with papermill and write figures/REPORT.md"),
    "bench": ("workbench.commands.bench", "speed benchmarks, each against the naive way"),
    "data": ("workbench.commands.data", "dataset tools: data check ROOT --dataset NAME"),
    "weights": ("workbench.commands.weights", "weights tools: weights import-mit SRC --variant bN --out DST"),
    "presets": ("workbench.commands.presets", "list profiles, methods and tuned weights; --show NAME prints a config"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; `command` limits the imports to that command's module ("" imports none)."""
    p = argparse.ArgumentParser(prog="python -m workbench", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="what to do (`python -m workbench COMMAND --help` lists its options)")
    for name, (module, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if command is None or command == name:
            mod = importlib.import_module(module)
            mod.add_arguments(sp)
            sp.set_defaults(command_run=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else ""
    args = build_parser(command).parse_args(argv)
    setup_logging(quiet=getattr(args, "quiet", False))
    try:
        return args.command_run(args)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full disk (or a read-only folder) anywhere, e.g. writing a table or a figure
        clear = storage_error(e, e.filename) if e.filename else None
        if clear is None:
            raise
        print(f"error: {clear}", file=sys.stderr)
        return clear.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
