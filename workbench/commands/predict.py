"""`python -m workbench predict CHECKPOINT --input DIR_OR_SPLIT --out DIR`: a trained model's predictions on a
folder of its dataset (or a synthetic split), for the full modality set and each `--modalities` subset.

Per sample and subset, `DIR/<subset>/` gets the coloured prediction, the error map (labelled samples) and
the inputs side by side; `DIR/per_sample.csv` the per-sample mIoU of every subset, `DIR/summary.csv` each
subset's mIoU over the samples. See `workbench.predict`.
"""

from __future__ import annotations

import argparse

from workbench.commands.common import add_quiet
from workbench.options import Protocol, Which, choices
from workbench.predict import SPLITS, predict


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("checkpoint", help="a checkpoint (final.pt / last.pt) or the run folder that holds final.pt")
    p.add_argument("--input", required=True, metavar="DIR_OR_SPLIT",
                   help=f"a folder laid out like the checkpoint's dataset (e.g. data/DELIVER), or a split name "
                        f"({', '.join(SPLITS)}) of its synthetic benchmark")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the images and CSVs (created)")
    p.add_argument("--modalities", action="append", default=[], metavar="M1,M2",
                   help="also predict with only these modalities, e.g. rgb,depth (repeatable; the full set always)")
    p.add_argument("--protocol", default="drop", choices=choices(Protocol),
                   help="a left-out modality is not encoded (drop) or zeroed and encoded (zero); docs/METHOD.md")
    p.add_argument("--which", default="model", choices=choices(Which),
                   help="teacher: the (feedback-updated) teacher stored with a distillation run")
    p.add_argument("--split", default=None, help="which split of a folder (default: test, else val, else train)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N samples")
    p.add_argument("--batch-size", type=int, default=None, help="samples per forward (default: the run's batch size)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-images", action="store_true", help="write only the CSVs")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    res = predict(args.checkpoint, args.input, args.out, modalities=args.modalities, protocol=args.protocol,
                  which=args.which, split=args.split, batch_size=args.batch_size, device=args.device,
                  limit=args.limit, images=not args.no_images, progress=not args.quiet)
    print(f"{len(res.rows)} sample(s) of {res.source}, {args.protocol} protocol (sample mIoU: present convention; "
          f"mIoU over the samples: deliver convention):")
    print(res.format())
    print(f"written: {res.out}/<subset>/, {res.files['per_sample']}, {res.files['summary']}")
    return 0
