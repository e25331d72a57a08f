"""`python -m workbench suite`: every notebook headlessly with papermill, then figures/REPORT.md
(`workbench.suite` says what it does, step by step)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from workbench import repro, selfcheck
from workbench import suite as S
from workbench.checkpoint import git_commit
from workbench.errors import MissingFile
from workbench.paths import figures_dir, runs_dir
from workbench.report import clock, relative, write_report

log = logging.getLogger("workbench.suite")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = S.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--profile", default="quick", choices=S.PROFILES, help="scale of every notebook (default quick)")
    p.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                   help="run only these notebooks (name or unique prefix, e.g. 01 03_combinations)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="inject a parameter into every notebook that declares it (VALUE as JSON), e.g. -p seed=1")
    p.add_argument("--notebooks", type=Path, default=S.NOTEBOOKS_DIR, help="folder of the notebooks")
    p.add_argument("--out", type=Path, default=None, help="executed notebooks (default runs/suite/<profile>)")
    p.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    p.add_argument("--threads", type=int, default=S.THREADS,
                   help=f"threads of each notebook's kernel (default {S.THREADS}; results are bitwise repeatable "
                        f"for one thread count, so the committed figures use this one; 0: the machine's default)")
    p.add_argument("--cell-progress", action="store_true", help="papermill's per-cell progress bar")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' outputs to this terminal")
    p.add_argument("--no-report", action="store_true", help="skip figures/REPORT.md / REPORT.html")
    p.add_argument("--list", action="store_true", help="list the notebooks in order and exit")


def run(args: argparse.Namespace) -> int:
    notebooks = S.select(S.discover(args.notebooks), args.only)
    extra = dict(S.parse_param(x) for x in args.param)
    if not notebooks:
        raise MissingFile(f"no notebooks in {args.notebooks}")
    if args.list:
        for nb in notebooks:
            print(nb.name + (f"  (after {', '.join(nb.needs)})" if nb.needs else ""))
        return 0
    out_dir = args.out or runs_dir() / "suite" / args.profile
    threads = args.threads or None
    if repro.enabled() and threads != repro.REPRO_THREADS:  # the mode's bits are those of its thread count
        log.warning("WORKBENCH_REPRO=1 pins %d threads per kernel (--threads %s is ignored)", repro.REPRO_THREADS,
                    args.threads)
        threads = repro.REPRO_THREADS
    log.info("profile %s: %d notebooks -> %s; figures -> %s; %s; numerical mode %s", args.profile, len(notebooks),
             relative(out_dir), relative(figures_dir()),
             f"{threads} threads per kernel" if threads else "the machine's thread count", repro.mode_name())
    committed = selfcheck.snapshot(figures_dir(), args.profile)  # the figures as they were before this run
    t0 = time.perf_counter()
    outcomes = S.run_suite(notebooks, args.notebooks, out_dir, args.profile, extra, args.cell_progress,
                           args.log_output, args.timeout, threads)
    seconds = time.perf_counter() - t0
    check = None
    if committed and all(o.status == "ok" for o in outcomes) and not args.only:
        spread = [p.read_text() for p in sorted(figures_dir().glob(f"claims_{args.profile}*_seeds.csv"))]
        check = selfcheck.compare(committed, figures_dir(), spread)
        log.info("%s", selfcheck.format_check(check))
    if not args.no_report:
        paths = write_report(outcomes, args.profile, threads=threads,
                             check=selfcheck.check_markdown(check) if check else ())
        log.info("report: %s and %s", relative(paths["md"]), relative(paths["html"]))
        commit = git_commit()
        if commit.endswith("+dirty"):
            log.warning("the code has uncommitted changes (outside figures/): the figures may not be reproducible "
                        "from commit %s, and the report says so; commit, then run the suite again",
                        commit.removesuffix("+dirty")[:12])
    ok = sum(o.status == "ok" for o in outcomes)
    log.info("%d/%d notebooks ok in %s (%.1f s)", ok, len(outcomes), clock(seconds), seconds)
    failures = [o for o in outcomes if o.status != "ok"]
    for o in failures:
        log.error("FAILED %s (%s): %s%s", o.name, o.status, o.error, f"\n    executed notebook: {relative(o.executed)}"
                  f"\n    failing {o.cell}".replace("\n", "\n      ") if o.status == "failed" else "")
    return 1 if failures else 0
