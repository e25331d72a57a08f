"""Command line: `python -m workbench {train,evaluate,ablate,sweep,bench,suite,data,weights,presets} ...`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from workbench.config import METHODS, PROFILES, ConfigError, apply_overrides, preset


def _config(args):
    cfg = preset(args.preset, args.profile)
    return apply_overrides(cfg, args.set or [])


def cmd_train(args) -> int:
    from workbench import pipeline
    from workbench.evaluate import evaluate_checkpoint
    from workbench.train import train

    cfg = _config(args)
    print(f"[train] {cfg.name} / profile {cfg.profile} / seed {cfg.train.seed} / config hash {cfg.hash()}")
    if args.out:
        teacher = None
        if cfg.distill.enabled and cfg.distill.teacher is None:
            teacher = pipeline.run(cfg.teacher_config(), progress=not args.quiet).checkpoint
        result = train(cfg, Path(args.out), resume=args.resume, progress=not args.quiet, teacher_checkpoint=teacher)
    else:
        result = pipeline.run(cfg, progress=not args.quiet, retrain=args.retrain)
    print(f"[train] checkpoint: {result.checkpoint}")
    if args.eval_split != "none" and int(os.environ.get("RANK", "0")) == 0:
        res = evaluate_checkpoint(result.checkpoint, split=args.eval_split, progress=not args.quiet)
        paths = res.save(result.run_dir, prefix=f"combos_{args.eval_split}")
        print(f"\nAll-combination mIoU (%) on {args.eval_split}, {res.convention} convention:")
        print(res.format_table())
        print(f"[train] tables: {paths['csv']}")
    return 0


def cmd_evaluate(args) -> int:
    from workbench.evaluate import evaluate_checkpoint

    protocols = ("zero", "drop") if args.protocol == "both" else (args.protocol,)
    res = evaluate_checkpoint(args.checkpoint, split=args.split, protocols=protocols, which=args.which,
                              device=args.device, one_pass=not args.naive, convention=args.convention,
                              progress=not args.quiet, window=args.window)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    paths = res.save(out, prefix=f"combos_{args.split}_{args.which}")
    print(f"All-combination mIoU (%) on {args.split} ({args.which}, {res.convention} convention):")
    print(res.format_table())
    for p in res.protocols:
        print(f"per condition ({p}, all modalities): " +
              ", ".join(f"{k}={v:.2f}" for k, v in res.per_condition(p).items()))
    print(f"written: {paths['csv']}, {paths['json']}")
    return 0


def cmd_ablate(args) -> int:
    from workbench.study import run_ablation

    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",") if args.methods else None
    run_ablation(args.profile, seeds, methods, overrides=args.set or [], out=args.out, progress=not args.quiet)
    return 0


def cmd_sweep(args) -> int:
    from workbench.study import run_sweep

    grid = {}
    for item in args.grid:
        key, values = item.split("=", 1)
        grid[key] = values.split(",")
    run_sweep(args.method, args.profile, grid, seed=args.seed, split=args.split, overrides=args.set or [],
              out=args.out, progress=not args.quiet)
    return 0


def cmd_bench(args, rest) -> int:
    import importlib

    mod = importlib.import_module(f"workbench.bench.{args.what}")
    return mod.main(rest)


def cmd_suite(args, rest) -> int:
    from workbench.suite import main as suite_main

    return suite_main(rest)


def cmd_data(args, rest) -> int:
    if args.action != "check":
        raise SystemExit(f"unknown data action {args.action!r}; valid: check")
    from workbench.data.checks import main as check_main

    return check_main(rest)


def cmd_weights(args, rest) -> int:
    from workbench.models.mit_weights import main as weights_main

    return weights_main([args.action, *rest])


def cmd_presets(args) -> int:
    print("profiles:", ", ".join(PROFILES))
    print("methods: ", ", ".join(METHODS))
    if args.show:
        print(preset(args.show, args.profile).to_json())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a preset (cached by config), then evaluate every combination")
    t.add_argument("--preset", default="quick", help=f"profile ({', '.join(PROFILES)}) or method ({', '.join(METHODS)})")
    t.add_argument("--profile", default=None, help="scale for a method preset (default quick)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set train.epochs=5")
    t.add_argument("--out", default=None, help="train into this folder instead of the config-keyed cache")
    t.add_argument("--resume", action="store_true", help="with --out: continue from OUT/last.pt")
    t.add_argument("--retrain", action="store_true", help="ignore a cached result of this config")
    t.add_argument("--eval-split", default="test", choices=("test", "val", "none"))
    t.add_argument("--quiet", action="store_true")

    e = sub.add_parser("evaluate", help="all-combination evaluation of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--protocol", default="both", choices=("zero", "drop", "both"))
    e.add_argument("--split", default="test")
    e.add_argument("--which", default="model", choices=("model", "teacher"),
                   help="teacher: the (feedback-updated) teacher stored with a distillation run")
    e.add_argument("--convention", default="deliver", choices=("deliver", "present"))
    e.add_argument("--device", default="auto")
    e.add_argument("--naive", action="store_true", help="one forward per combination (reference)")
    e.add_argument("--window", type=int, default=None, help="sliding-window inference with this window (pixels)")
    e.add_argument("--out", default=None)
    e.add_argument("--quiet", action="store_true")

    a = sub.add_parser("ablate", help="the paper's ablation rows over seeds (issue: RobustSeg method)")
    a.add_argument("--profile", default="quick")
    a.add_argument("--seeds", default="0,1,2")
    a.add_argument("--methods", default=None, help=f"comma list; default all: {', '.join(METHODS)}")
    a.add_argument("--set", action="append", metavar="KEY=VALUE")
    a.add_argument("--out", default=None, help="CSV path (default figures/ablation_<profile>.csv)")
    a.add_argument("--quiet", action="store_true")

    sw = sub.add_parser("sweep", help="grid search of loss weights on the val split")
    sw.add_argument("--method", default="hpd")
    sw.add_argument("--profile", default="quick")
    sw.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2", help="e.g. distill.cp_weight=10,100")
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--split", default="val")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE")
    sw.add_argument("--out", default=None)
    sw.add_argument("--quiet", action="store_true")

    b = sub.add_parser("bench", help="benchmarks: combos | losses | step (pass --help after the name)")
    b.add_argument("what", choices=("combos", "losses", "step"))

    sub.add_parser("suite", help="run the notebook suite with papermill (pass --help after it)")

    d = sub.add_parser("data", help="dataset tools: check ROOT --dataset NAME")
    d.add_argument("action", choices=("check",))

    w = sub.add_parser("weights", help="weights tools: import-mit SRC --variant b0 --out DST")
    w.add_argument("action", choices=("import-mit",))

    s = sub.add_parser("presets", help="list presets, or --show NAME")
    s.add_argument("--show", default=None)
    s.add_argument("--profile", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # subcommands with their own parsers get the rest of the line untouched
    passthrough = {"bench": 2, "suite": 1, "data": 2, "weights": 2}
    try:
        if argv and argv[0] in passthrough and len(argv) >= passthrough[argv[0]] and "-h" not in argv[:passthrough[argv[0]]]:
            n = passthrough[argv[0]]
            args, rest = parser.parse_args(argv[:n]), argv[n:]
            return {"bench": cmd_bench, "suite": cmd_suite, "data": cmd_data, "weights": cmd_weights}[args.command](
                args, rest)
        args = parser.parse_args(argv)
        return {"train": cmd_train, "evaluate": cmd_evaluate, "ablate": cmd_ablate, "sweep": cmd_sweep,
                "presets": cmd_presets}[
            args.command](args)
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from workbench.checkpoint import CheckpointError
        from workbench.train import TrainingDiverged

        if isinstance(e, (CheckpointError, TrainingDiverged)):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
