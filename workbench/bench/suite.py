"""`python -m workbench bench suite`: the cold notebook suite's wall time by part.

Runs the suite (`workbench.suite`, all notebooks of `--profile`, or `--only` some) with a fresh runs folder
and a scratch figures folder (cold: nothing trained, nothing rendered; `--runs` reuses a folder), writes its
report there, then adds up, per notebook, the timers the kernels logged (`workbench.timing`): kernel
start-up (papermill's call to the kernel's first record), rendering the synthetic data, each training run
(its periodic validation apart), evaluation (test-split combinations, RMM, NM), the gradient-share probe,
t-SNE, writing figures, and
`other` (the rest of the notebook's wall time: imports, plotting, predictions, kernel shut-down). Each
second is counted once, under the innermost timer that holds it (rendering inside a training run counts
as rendering). Trainings run side by side (`Run.ensure_many`) count as one `training` block of wall time;
their per-run times are listed after the table, marked `(side by side)`. Prints the table, the runs, the
machine's load, and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

COLUMNS = ("kernel", "render", "training", "validation", "probe", "evaluation", "tsne", "figures", "report")


def _records(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "timing" in rec:
            out.append(rec)
    return out


def breakdown(outcomes) -> dict:
    """Per notebook: seconds by kind (each second once; `other` the rest of its wall time) and its training
    runs; from each outcome's kernel log (`Outcome.log`) and start time (`Outcome.started`)."""
    notebooks, runs = [], []
    for o in outcomes:
        parts: dict[str, float] = defaultdict(float)
        validating: dict[bool, float] = defaultdict(float)  # validations since the last run ended, by process kind
        for rec in _records(o.log):
            t = rec["timing"]
            if t["kind"] == "ready":
                parts["kernel"] += max(0.0, float(rec["t"]) - o.started)
                continue
            if t["kind"] == "validation":  # inside the run whose record comes next (a teacher's before its student's)
                validating[bool(t["child"])] += t["seconds"]
            if t["kind"] == "training":
                own = t["self"] + sum(t["parts"].values()) + validating.pop(bool(t["child"]), 0.0)
                runs.append({"notebook": o.name, "run": t["label"], "side_by_side": bool(t["child"]), "seconds": own})
            if t["child"]:  # a process beside others: its parent's timer holds the wall time
                continue
            parts[t["kind"]] += t["self"]
            for kind, seconds in t["parts"].items():
                parts[kind] += seconds
        parts["other"] = max(0.0, o.seconds - sum(parts.values()))
        notebooks.append({"notebook": o.name, "status": o.status, "seconds": o.seconds, **parts})
    return {"notebooks": notebooks, "runs": runs}


def format_breakdown(result: dict) -> str:
    kinds = [k for k in (*COLUMNS, *sorted({k for r in result["notebooks"] for k in r} - {*COLUMNS, "other",
             "notebook", "status", "seconds"}), "other") if any(r.get(k, 0) for r in result["notebooks"]) or
             k in ("kernel", "training", "other")]
    head = f"{'notebook':<17}{'total s':>9}" + "".join(f"{k:>11}" for k in kinds)
    lines = [head]
    total = defaultdict(float)
    for r in result["notebooks"]:
        lines.append(f"{r['notebook']:<17}{r['seconds']:>9.1f}" + "".join(f"{r.get(k, 0.0):>11.1f}" for k in kinds)
                     + ("" if r["status"] == "ok" else f"  ({r['status']})"))
        total["seconds"] += r["seconds"]
        for k in kinds:
            total[k] += r.get(k, 0.0)
    lines.append(f"{'all notebooks':<17}{total['seconds']:>9.1f}" + "".join(f"{total[k]:>11.1f}" for k in kinds))
    if total["seconds"] > 0:
        lines.append(f"{'share':<17}{'':>9}" + "".join(f"{100 * total[k] / total['seconds']:>10.0f}%" for k in kinds))
    if result["runs"]:
        lines.append(f"training runs ({len(result['runs'])}, seconds each, its rendering and validation included):")
        for r in result["runs"]:
            lines.append(f"  {r['notebook']:<17}{r['run']:<36}{r['seconds']:>8.1f}"
                         + ("  (side by side)" if r["side_by_side"] else ""))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from workbench import suite as S

    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--profile", default="quick", choices=S.PROFILES, help="the suite's profile (default quick)")
    p.add_argument("--only", nargs="+", action="extend", metavar="NAME", help="only these notebooks (as `suite`)")
    p.add_argument("--threads", type=int, default=S.THREADS, help=f"threads per kernel (default {S.THREADS})")
    p.add_argument("--runs", type=Path, default=None,
                   help="runs folder to use (default: a fresh one, removed afterwards: a cold suite)")
    p.add_argument("--figures", type=Path, default=None, help="figures folder (default: a scratch one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch runs and figures folders")


def run(args: argparse.Namespace) -> int:
    from workbench import suite as S
    from workbench.report import write_report

    scratch = Path(tempfile.mkdtemp(prefix="workbench-bench-suite-"))
    env = {"WORKBENCH_RUNS": str(args.runs or scratch / "runs"), "WORKBENCH_FIGURES": str(args.figures or scratch /
                                                                                            "figures")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    load_before = os.getloadavg()
    try:
        notebooks = S.select(S.discover(S.NOTEBOOKS_DIR), args.only)
        out_dir = Path(env["WORKBENCH_RUNS"]) / "suite" / args.profile
        t0 = time.perf_counter()
        outcomes = S.run_suite(notebooks, S.NOTEBOOKS_DIR, out_dir, args.profile, threads=args.threads or None)
        t_report = time.perf_counter()
        write_report(outcomes, args.profile, threads=args.threads or None)
        t_end = time.perf_counter()
        result = breakdown(outcomes)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()
    result.update(profile=args.profile, threads=args.threads, wall_s=t_end - t0, report_s=t_end - t_report,
                  load_before=[round(x, 2) for x in load_before], load_after=[round(x, 2) for x in load_after],
                  cpus=os.cpu_count(), ok=all(o.status == "ok" for o in outcomes))
    print(format_breakdown(result))
    print(f"suite {result['wall_s']:.1f} s wall (report {result['report_s']:.1f} s), profile {args.profile}, "
          f"{args.threads} threads per kernel, {os.cpu_count()} CPUs; load average (1/5/15 min) before "
          f"{'/'.join(f'{x:.2f}' for x in load_before)}, after {'/'.join(f'{x:.2f}' for x in load_after)}"
          + ("" if result["ok"] else "; FAILED notebooks: " + ", ".join(o.name for o in outcomes if o.status != "ok")))
    totals = defaultdict(float)
    for r in result["notebooks"]:
        for k, v in r.items():
            if isinstance(v, float):
                totals[k] += v
    print(json.dumps({"bench": "suite", "profile": args.profile, "wall_s": round(result["wall_s"], 1),
                      "by_kind": {k: round(v, 1) for k, v in totals.items() if k != "seconds"},
                      "training_runs": len(result["runs"]), **{k: result[k] for k in
                      ("threads", "cpus", "load_before", "load_after", "ok", "notebooks", "runs")}}))
    return 0 if result["ok"] else 1


__all__ = ["breakdown", "format_breakdown"]
