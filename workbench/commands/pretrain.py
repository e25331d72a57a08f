"""`python -m workbench pretrain`: the synthetic world's RGB encoder that `model.init=pretrained` starts from."""

from __future__ import annotations

import argparse

from workbench.commands.common import add_quiet


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Pretrain the encoder that model.init=pretrained starts every encoder from: supervised "
                     "segmentation of RGB on a synthetic world of its own (model.pretrain.world_seed, disjoint from "
                     "the benchmark's), cached under runs/pretrain/ by its config hash (docs/BENCHMARK.md, section "
                     "6). Runs with model.init=pretrained build it themselves when it is missing.")
    p.add_argument("--profile", default="quick", help="the profile whose encoder and model.pretrain spec to use")
    p.add_argument("--seed", type=int, default=None, help="the pretraining seed (model.pretrain.seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.pretrain.epochs=20 (repeatable)")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from workbench.config import apply_overrides, preset
    from workbench.pretrain import read_metadata
    from workbench.runs import ensure_pretrained

    over = list(args.set) + ([f"model.pretrain.seed={args.seed}"] if args.seed is not None else [])
    model_cfg = apply_overrides(preset("baseline", args.profile), over).model
    path = ensure_pretrained(model_cfg, progress=not args.quiet)
    meta = read_metadata(path)
    print(f"encoder: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    for key in ("command", "seed", "config_hash", "task"):
        print(f"{key}: {meta[key]}")
    return 0
