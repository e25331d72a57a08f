"""`python -m workbench evaluate CHECKPOINT`: every modality combination of a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.commands.common import add_quiet
from workbench.options import Convention, choices
from workbench.runs import Run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint (final.pt / last.pt) or the run folder that holds final.pt")
    p.add_argument("--protocol", default="both", choices=("zero", "drop", "both"),
                   help="how absent modalities are treated (docs/METHOD.md); both: each")
    p.add_argument("--split", default="test", help="the split of the run's own dataset")
    p.add_argument("--which", default="model", choices=("model", "teacher"),
                   help="teacher: the (feedback-updated) teacher stored with a distillation run")
    p.add_argument("--convention", default="deliver", choices=choices(Convention),
                   help="mIoU over all classes (deliver) or over classes present (present)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--naive", action="store_true", help="one forward per combination (the reference way)")
    p.add_argument("--window", type=int, default=None, help="sliding-window inference with this window (pixels)")
    p.add_argument("--out", default=None, help="folder for the CSV/JSON tables (default: the checkpoint's folder)")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    protocols = ("zero", "drop") if args.protocol == "both" else (args.protocol,)
    r = Run.at(args.checkpoint)
    res = r.evaluation(args.split, args.which, protocols, args.convention, args.device, window=args.window,
                       one_pass=not args.naive, progress=not args.quiet)
    out = Path(args.out) if args.out else r.checkpoint.parent
    paths = res.save(out, prefix=f"combos_{args.split}_{args.which}")
    print(f"All-combination mIoU (%) on {args.split} ({args.which}, {res.convention} convention):")
    print(res.format_table())
    for p in res.protocols:
        print(f"per condition ({p}, all modalities): " +
              ", ".join(f"{k}={v:.2f}" for k, v in res.per_condition(p).items()))
    print(f"written: {paths['csv']}, {paths['json']}")
    return 0
