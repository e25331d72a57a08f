"""`python -m workbench train`: train a configuration (or reuse its cached run), then evaluate it."""

from __future__ import annotations

import argparse
import logging
import os
from datetime import datetime

from workbench.commands.common import add_config_arguments, add_quiet, config_from_args
from workbench.errors import ConfigError
from workbench.runs import Run

log = logging.getLogger("workbench.train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="train into this folder instead of the config-keyed cache (runs/cache/...)")
    p.add_argument("--resume", action="store_true", help="with --out: continue the run in DIR from its last.pt")
    p.add_argument("--force", "--retrain", dest="retrain", action="store_true",
                   help="train again from scratch even if the run (cached or in --out) is finished")
    p.add_argument("--eval-split", default="test", choices=("test", "val", "none"),
                   help="evaluate every combination on this split afterwards (none: skip)")
    add_quiet(p)


def _stamp(path) -> tuple[int, int] | None:
    """(mtime in ns, size) of a finished run's checkpoint, or None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    r = Run.from_config(cfg, args.out)
    if args.out and not (args.resume or args.retrain) and ((r.dir / "last.pt").exists() or r.done):
        raise ConfigError(f"{r.dir} already holds a run; add --resume to continue it or --force to train it again "
                          f"from scratch (the old run is replaced only when the new one finishes)")
    log.info("%s / profile %s / seed %d / config hash %s", cfg.name, cfg.profile, cfg.train.seed, r.config.hash())
    before = _stamp(r.checkpoint)
    r.ensure(progress=not args.quiet, retrain=args.retrain)
    if before is not None and _stamp(r.checkpoint) == before:  # nothing was trained: say so, and when it was
        trained = datetime.fromtimestamp(before[0] / 1e9).strftime("%Y-%m-%d %H:%M")
        log.info("reused %s (trained %s); --force trains it again", r.name, trained)
    print(f"checkpoint: {r.checkpoint}")
    if args.eval_split != "none" and int(os.environ.get("RANK", "0")) == 0:
        res = r.evaluation(args.eval_split, progress=not args.quiet)
        paths = res.save(r.dir, prefix=f"combos_{args.eval_split}")
        print(f"\nAll-combination mIoU (%) on {args.eval_split}, {res.convention} convention:")
        print(res.format_table())
        print(f"tables: {paths['csv']}")
    return 0
