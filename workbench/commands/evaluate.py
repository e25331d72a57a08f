"""`python -m workbench evaluate CHECKPOINT`: a trained model under the evaluation protocols of
`workbench.protocols.PROTOCOLS`.

`--protocol zero|drop|both` (default both): every modality combination under the missing-modality
protocols, with EMM, the failure-weighted expectations, Shapley values and the per-condition and
per-case breakdowns; `--protocol rmm|nm`: the robustness benchmark's random-missing and noisy-modality
protocols (`workbench.robustness`), each with its own options; `--protocol all`: each of them. Results
are cached beside the run.
"""

from __future__ import annotations

import argparse
import dataclasses

from workbench.checkpoint import ensure_folder
from workbench.commands.common import add_quiet, parse_list
from workbench.errors import ConfigError, StorageError
from workbench.evalcache import not_writable
from workbench.evaluate import TTA
from workbench.options import Convention, Metric, choices
from workbench.paths import child
from workbench.protocols import GROUPS, PROTOCOLS, expand
from workbench.runs import Run
from workbench.train import resolve_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("checkpoint", help="a checkpoint (final.pt / last.pt) or the run folder that holds final.pt")
    p.add_argument("--protocol", default="both", choices=(*PROTOCOLS, *GROUPS),
                   help="; ".join(f"{n}: {q.title}" for n, q in PROTOCOLS.items())
                        + "; " + "; ".join(f"{g}: {', '.join(ps)}" for g, ps in GROUPS.items()))
    p.add_argument("--split", default="test", help="the split of the run's own dataset")
    p.add_argument("--which", default="model", choices=("model", "teacher"),
                   help="teacher: the (feedback-updated) teacher stored with a distillation run")
    p.add_argument("--case", default=None, help="only samples of this sensor-failure case or condition (e.g. "
                   "overexposure, night; DeLiVER/synthetic) or MUSES weather/daytime (fog, night, fog_night)")
    p.add_argument("--metric", default="miou", choices=choices(Metric), help="the score of the combination table")
    p.add_argument("--convention", default="deliver", choices=choices(Convention),
                   help="mean over all classes (deliver) or over classes present (present)")
    p.add_argument("--tta", action="store_true", help="multi-scale (0.5-1.75) + flip test-time augmentation "
                   "(DeLiVER's evaluate_msf)")
    p.add_argument("--window", type=int, default=None, help="sliding-window inference with this window (pixels)")
    for q in PROTOCOLS.values():  # each robustness protocol's own options (default: the protocol's)
        for o in q.options:
            p.add_argument(f"--{o.flag}", default=None,
                           help=f"{o.help} (default {','.join(map(str, o.default))}; only with --protocol {q.name})")
    p.add_argument("--seed", type=int, default=None, help="robustness protocols only: the seed of the random "
                   "corruption (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--naive", action="store_true", help="one forward per setting (the reference way)")
    p.add_argument("--out", default=None, help="folder for the CSV/JSON tables (default: the checkpoint's folder)")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    wanted = expand(args.protocol)
    combos = tuple(p for p in wanted if PROTOCOLS[p].kind == "combinations")
    # every option is checked before anything is loaded (a cached result would skip the device, for one)
    resolve_device(args.device)
    if args.window is not None:
        if args.window < 32:
            raise ConfigError(f"--window {args.window}: sliding-window inference needs windows of at least 32 "
                              f"pixels (the encoder's stride); leave --window out to evaluate whole images")
        if not combos:
            raise ConfigError(f"--window applies to the zero and drop protocols (every combination); --protocol "
                              f"{args.protocol} evaluates whole images: leave --window out")
    # an option the chosen protocols do not read is an error, not silently ignored
    robust = [n for n in PROTOCOLS if PROTOCOLS[n].kind == "robustness"]
    for option, value, needs in [*((f"--{o.flag}", getattr(args, o.flag), (n,)) for n in robust
                                   for o in PROTOCOLS[n].options), ("--seed", args.seed, tuple(robust))]:
        if value is not None and not set(wanted) & set(needs):
            raise ConfigError(f"{option} applies to --protocol {' or '.join(needs)} (or all); --protocol "
                              f"{args.protocol} does not use it: leave {option} out or choose --protocol {needs[0]}")
    seed = args.seed if args.seed is not None else 0
    r = Run.at(args.checkpoint)
    if args.out:  # tables, and the evaluation cache when the run's folder cannot be written, go to --out
        out = ensure_folder(args.out)
        r = dataclasses.replace(r, eval_dir=out / "eval")
    else:
        out = r.checkpoint.parent
        problem = not_writable(out)
        if problem is not None:
            raise StorageError(f"cannot write the tables into the run's folder {out} ({problem.strerror}); give "
                               f"--out DIR, a folder you can write, for the tables (the evaluation cache goes there too)")
    data = {"case": args.case} if args.case else None
    suffix = f"{args.split}_{args.which}" + (f"_{args.case}" if args.case else "")
    child(out, f"combos_{suffix}.csv", "the tables")  # a split or case that is not a plain name is refused here
    common = dict(split=args.split, which=args.which, convention=args.convention, device=args.device, data=data,
                  progress=not args.quiet)
    if combos:
        res = r.evaluation(protocols=combos, window=args.window, tta=TTA() if args.tta else None,
                           one_pass=not args.naive, **common)
        paths = res.save(out, prefix=f"combos_{suffix}")
        print(f"All-combination {args.metric} (%) on {args.split}{f' ({args.case})' if args.case else ''} "
              f"({args.which}, {res.convention} convention):")
        print(res.format_table(args.metric))
        for p in res.protocols:
            for by in ("condition", "case"):
                print(f"\nper {by} ({p}):\n{res.format_breakdown(p, by=by)}")
        print(f"written: {paths['csv']}, {paths['json']}")
    for name in wanted:
        q = PROTOCOLS[name]
        if q.kind != "robustness":
            continue
        options = {o.flag: tuple(parse_list(getattr(args, o.flag), f"--{o.flag}", o.kind))
                   if getattr(args, o.flag) is not None else o.default for o in q.options}
        res = r.robustness(name, seed=seed, one_pass=not args.naive, **options, **common)
        print(f"\n{name.upper()} ({q.title}):\n{res.format_table()}\nwritten: {res.save(out, prefix=f'{name}_{suffix}')}")
    return 0
