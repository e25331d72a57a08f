"""The notebook suite: every notebook run headlessly with papermill, then one report of all it produced.

`python -m workbench suite [--profile smoke|quick|paper] [--only NAME ...]` (and `make suite` / `make smoke`):

1. makes sure a Jupyter kernel spec `python3` runs *this* interpreter (a private spec first on
   JUPYTER_PATH, so a fresh machine or another Python on PATH cannot take its place);
2. executes the notebooks in dependency order (training first; later notebooks reuse its cached runs)
   with the profile's parameters injected, writing each executed notebook to `runs/suite/<profile>/`;
   a failing notebook stops only the notebooks that depend on it;
3. writes `figures/REPORT.md` and `figures/REPORT.html`: every table and figure the notebooks saved
   (`workbench.plotting.Figures` indexes, `figures/<profile>/<notebook>/`), the runs' configs, the
   versions and the git commit;
4. ends with the list of failures (executed notebook, failing cell, error) and exits non-zero if any.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbench.paths import REPO_ROOT, figures_dir, runs_dir

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PROFILES = ("smoke", "quick", "paper")
KERNEL_NAME = "python3"


@dataclass(frozen=True)
class Notebook:
    name: str
    needs: tuple[str, ...] = ()  # notebooks whose trained runs it reuses: skipped when one of them failed


# Dependency order: 01 trains the teacher and the RobustSeg student that the others reuse.
NOTEBOOKS = (
    Notebook("01_training"),
    Notebook("02_ablations", ("01_training",)),
    Notebook("03_combinations", ("01_training",)),
    Notebook("04_tsne", ("01_training",)),
    Notebook("05_ifv_maps", ("01_training",)),
    Notebook("06_sliders", ("01_training",)),
    Notebook("07_feedback", ("01_training",)),
)

# Parameters injected per profile ("*": every notebook that declares them); the rest keep the notebook's own.
PROFILE_PARAMS: dict[str, dict[str, dict]] = {
    "smoke": {},
    "quick": {"02_ablations": {"methods": None, "seeds": [0]}},
    "paper": {"*": {"dataset": "deliver", "data_root": "data/DELIVER"},
              "02_ablations": {"methods": None, "seeds": [0]}},
}


@dataclass
class Outcome:
    name: str
    status: str = "pending"  # ok | failed | skipped
    seconds: float = 0.0
    executed: Path | None = None
    parameters: dict = field(default_factory=dict)
    error: str = ""
    cell: str = ""  # the failing cell: index, execution count, first lines of its source


# ----------------------------------------------------------------------------------------------
# Kernel and notebook discovery

def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """A kernel spec `name` that starts `sys.executable -m ipykernel_launcher`, first on JUPYTER_PATH."""
    import importlib.util

    if importlib.util.find_spec("ipykernel") is None:
        raise RuntimeError(f"ipykernel is not installed for {sys.executable}; install the project with "
                           f"`pip install -e .[dev]` (jupyterlab brings ipykernel)")
    root = runs_dir() / "suite" / "jupyter"
    spec_dir = root / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    # the kernel's own log (a warning that local TCP is unencrypted, an interrupt at shutdown) would fill
    # the suite's output; errors in cells are reported from the executed notebook instead
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "--log-level=CRITICAL", "-f", "{connection_file}"],
            "display_name": "Python 3 (workbench)", "language": "python", "metadata": {"debugger": True}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if str(root) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root), *paths])
    from jupyter_client.kernelspec import KernelSpecManager

    found = KernelSpecManager().get_kernel_spec(name)
    if found.argv[0] != sys.executable:
        raise RuntimeError(f"kernel spec {name!r} resolves to {found.argv[0]}, not {sys.executable}; check JUPYTER_PATH")
    return name


def discover(notebooks_dir: Path) -> list[Notebook]:
    """The registered notebooks found in `notebooks_dir`, then any other notebook there (independent)."""
    present = {p.stem for p in notebooks_dir.glob("*.ipynb")}
    known = [nb for nb in NOTEBOOKS if nb.name in present]
    names = {nb.name for nb in known}
    return known + [Notebook(stem) for stem in sorted(present - names)]


def select(notebooks: list[Notebook], only: list[str] | None) -> list[Notebook]:
    """`--only` names: an exact notebook name, or a unique prefix such as `03` or `03_comb`."""
    if not only:
        return notebooks
    chosen = []
    for want in only:
        want = Path(want).stem
        exact = [nb for nb in notebooks if nb.name == want]
        hits = exact or [nb for nb in notebooks if nb.name.startswith(want)]
        if len(hits) != 1:
            valid = ", ".join(nb.name for nb in notebooks)
            raise ValueError(f"--only {want!r} matches {'no' if not hits else 'several'} notebooks; valid: {valid}")
        if hits[0] not in chosen:
            chosen.append(hits[0])
    return [nb for nb in notebooks if nb in chosen]  # keep dependency order


def parameters_for(path: Path, name: str, profile: str, extra: dict) -> dict:
    """The parameters injected into one notebook: the profile's, then `-p` ones, limited to the names
    its `parameters` cell declares (papermill would otherwise inject unknown names with a warning)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(path))
    if not declared:
        raise ValueError(f"{path} has no cell tagged 'parameters'; tag the cell that holds its parameters")
    table = PROFILE_PARAMS.get(profile, {})
    wanted = {"profile": profile, **table.get("*", {}), **table.get(name, {}), **extra}
    return {k: v for k, v in wanted.items() if k in declared}


# ----------------------------------------------------------------------------------------------
# Execution

def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _first_lines(source: str, n: int = 3) -> str:
    lines = source.strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


def execute(nb: Notebook, src: Path, out_dir: Path, profile: str, kernel: str, extra: dict,
            progress: bool = False, log_output: bool = False, timeout: int | None = None) -> Outcome:
    """Run one notebook with papermill; the executed copy is written even when it fails."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    outcome = Outcome(nb.name, executed=out_dir / src.name)
    t0 = time.perf_counter()
    try:
        outcome.parameters = parameters_for(src, nb.name, profile, extra)
        pm.execute_notebook(str(src), str(outcome.executed), parameters=outcome.parameters, kernel_name=kernel,
                            cwd=str(REPO_ROOT), progress_bar=progress, log_output=log_output,
                            execution_timeout=timeout)
        outcome.status = "ok"
    except PapermillExecutionError as e:
        outcome.status = "failed"
        outcome.error = f"{e.ename}: {e.evalue}"
        outcome.cell = f"cell {e.cell_index} (In [{e.exec_count}]):\n{_first_lines(e.source)}"
    except Exception as e:  # kernel died, timeout, unreadable notebook: still one line per failure
        outcome.status = "failed"
        outcome.error = f"{type(e).__name__}: {e}".strip()
        outcome.cell = "(no cell: the notebook could not be executed)"
    outcome.seconds = time.perf_counter() - t0
    return outcome


def run_suite(notebooks: list[Notebook], notebooks_dir: Path, out_dir: Path, profile: str, extra: dict | None = None,
              progress: bool = False, log_output: bool = False, timeout: int | None = None) -> list[Outcome]:
    kernel = ensure_kernel()
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Outcome] = {}
    t_start, n = time.perf_counter(), len(notebooks)
    for i, nb in enumerate(notebooks, 1):
        failed = [d for d in nb.needs if d in outcomes and outcomes[d].status != "ok"]
        head = f"[suite] ({i}/{n}) {nb.name}"
        if failed:
            outcomes[nb.name] = Outcome(nb.name, "skipped", error=f"needs {', '.join(failed)}, which did not succeed")
            print(f"{head}: skipped (needs {', '.join(failed)})", flush=True)
            continue
        print(f"{head}: running (elapsed {_clock(time.perf_counter() - t_start)})", flush=True)
        o = execute(nb, notebooks_dir / f"{nb.name}.ipynb", out_dir, profile, kernel, extra or {}, progress,
                    log_output, timeout)
        outcomes[nb.name] = o
        status = "ok" if o.status == "ok" else f"FAILED ({o.error.splitlines()[0] if o.error else 'error'})"
        print(f"{head}: {status} in {o.seconds:.1f} s (elapsed {_clock(time.perf_counter() - t_start)})", flush=True)
    return list(outcomes.values())


# ----------------------------------------------------------------------------------------------
# Report

def _read_csv(path: Path) -> list[dict]:
    def num(v: str):
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _runs(profile: str, outcomes: list[Outcome]) -> list[dict]:
    """The cached runs the notebooks use: every method preset of this profile (and the students' teacher)
    at the seeds the notebooks ran with (`seed`, and `seeds` of the ablation), identified by config hash,
    so sweeps and stale caches in the same folder stay out of the report."""
    from workbench.config import METHODS, Config
    from workbench.study import config_for

    seeds = {0}
    for o in outcomes:
        seeds.add(int(o.parameters.get("seed", 0)))
        seeds.update(int(x) for x in (o.parameters.get("seeds") or []))
    try:
        cfgs = [config_for(m, profile, s) for m in METHODS for s in sorted(seeds)]
        wanted = {c.hash() for c in cfgs} | {c.teacher_config().hash() for c in cfgs if c.distill.enabled}
    except Exception:  # a profile whose data cannot be described here: list nothing rather than fail the report
        return []
    preset_profile = "tiny" if profile == "smoke" else profile
    out = []
    for d in sorted((runs_dir() / "cache").glob("*")):
        cfg_path = d / "config.json"
        if not (cfg_path.exists() and (d / "final.pt").exists()):
            continue
        try:
            cfg = Config.from_dict(json.loads(cfg_path.read_text()))
        except Exception:  # written by an incompatible version: not part of this report
            continue
        if cfg.profile != preset_profile or not d.name.endswith(cfg.hash()) or cfg.hash() not in wanted:
            continue
        last_val = {}
        metrics = d / "metrics.jsonl"
        if metrics.exists():
            vals = [json.loads(x) for x in metrics.read_text().splitlines() if '"val/' in x]
            last_val = vals[-1] if vals else {}
        out.append({"run": d.name, "method": cfg.name, "seed": cfg.train.seed, "hash": cfg.hash(),
                    "val_miou_full": last_val.get("val/miou_full", float("nan")),
                    "val_emm": last_val.get("val/emm", float("nan")), "config": cfg.to_json(), "path": str(d)})
    return out


def _entries(profile: str, outcomes: list[Outcome], root: Path) -> dict[str, list[dict]]:
    """What each notebook saved: those of this run first, then (after `--only`) the other notebooks'
    figures of this profile from an earlier run, so the report stays complete."""
    names = [o.name for o in outcomes]
    names += sorted(p.parent.name for p in (root / profile).glob("*/index.json") if p.parent.name not in names)
    out = {}
    for name in names:
        index = root / profile / name / "index.json"
        if index.exists():
            out[name] = json.loads(index.read_text())["entries"]
    return out


def write_report(outcomes: list[Outcome], profile: str, seconds: float, root: Path | None = None) -> dict[str, Path]:
    """figures/REPORT.md and REPORT.html: status, versions, runs and configs, then every table and figure."""
    from workbench.checkpoint import git_commit, versions
    from workbench.plotting import html_table, markdown_table

    root = Path(root or figures_dir())
    root.mkdir(parents=True, exist_ok=True)
    vers, commit = versions(), git_commit()
    runs = _runs(profile, outcomes)
    entries = _entries(profile, outcomes, root)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    status_rows = [{"notebook": o.name, "status": o.status, "seconds": round(o.seconds, 1),
                    "executed notebook": str(o.executed) if o.executed else "",
                    "parameters": json.dumps(o.parameters)} for o in outcomes]
    run_rows = [{k: r[k] for k in ("method", "seed", "hash", "val_miou_full", "val_emm", "run")} for r in runs]
    failures = [o for o in outcomes if o.status != "ok"]

    md = [f"# RobustSeg workbench: notebook suite report ({profile})", "",
          f"Generated {when}; git commit `{commit}`; suite time {_clock(seconds)} "
          f"({sum(o.status == 'ok' for o in outcomes)}/{len(outcomes)} notebooks ok).", "",
          "## Notebooks", "", markdown_table(status_rows), ""]
    if failures:
        md += ["## Failures", ""]
        for o in failures:
            md += [f"- **{o.name}** ({o.status}): {o.error}", f"  - executed notebook: `{o.executed}`",
                   "  - failing cell:", "", "```", o.cell or "-", "```", ""]
    md += ["## Versions", "", markdown_table([{"package": k, "version": str(v)} for k, v in vers.items()]), "",
           "## Trained runs and their configs", "", markdown_table(run_rows) if run_rows else "(none)", ""]
    for r in runs:
        md += [f"<details><summary>{r['run']} config</summary>", "", "```json", r["config"], "```", "", "</details>", ""]
    ran = {o.name for o in outcomes}
    for name, items in entries.items():
        md += [f"## {name}", ""] + ([] if name in ran else ["(not run this time: figures from an earlier run)", ""])
        for e in items:
            md += [f"### {e['title']}", ""] + ([e["caption"], ""] if e.get("caption") else [])
            files = {k: f"{profile}/{name}/{v}" for k, v in e["files"].items()}
            if e["kind"] == "figure":
                md += [f"![{e['title']}]({files['png']})", ""]
            elif e["kind"] == "table":
                md += [(root / files["md"]).read_text().strip(), ""]
            links = " · ".join(f"[{k.upper()}]({v})" for k, v in files.items() if k != "md")
            md += [f"Files: {links}", ""]
    md_path = root / "REPORT.md"
    md_path.write_text("\n".join(md) + "\n")

    esc = html.escape
    parts = [f"<h1>RobustSeg workbench: notebook suite report ({esc(profile)})</h1>",
             f"<p>Generated {esc(when)}; git commit <code>{esc(commit)}</code>; suite time {_clock(seconds)} "
             f"({sum(o.status == 'ok' for o in outcomes)}/{len(outcomes)} notebooks ok).</p>",
             "<h2>Notebooks</h2>", html_table(status_rows)]
    if failures:
        parts.append("<h2>Failures</h2><ul>")
        for o in failures:
            parts.append(f"<li><b>{esc(o.name)}</b> ({esc(o.status)}): {esc(o.error)}<br>executed notebook: "
                         f"<code>{esc(str(o.executed))}</code><pre>{esc(o.cell or '-')}</pre></li>")
        parts.append("</ul>")
    parts += ["<h2>Versions</h2>", html_table([{"package": k, "version": str(v)} for k, v in vers.items()]),
              "<h2>Trained runs and their configs</h2>", html_table(run_rows) if run_rows else "<p>(none)</p>"]
    parts += [f"<details><summary>{esc(r['run'])} config</summary><pre>{esc(r['config'])}</pre></details>" for r in runs]
    for name, items in entries.items():
        parts.append(f"<h2>{esc(name)}</h2>" + ("" if name in ran else
                                                "<p>(not run this time: figures from an earlier run)</p>"))
        for e in items:
            files = {k: f"{profile}/{name}/{v}" for k, v in e["files"].items()}
            parts.append(f"<h3>{esc(e['title'])}</h3>" + (f"<p>{esc(e['caption'])}</p>" if e.get("caption") else ""))
            if e["kind"] == "figure":
                parts.append(f"<img src='{esc(files['png'])}' alt='{esc(e['title'])}'>")
            elif e["kind"] == "table":
                parts.append(html_table(_read_csv(root / files["csv"]), e.get("digits", 2)))
            elif e["kind"] == "plotly":
                parts.append(f"<p><a href='{esc(files['html'])}'>open the interactive figure</a></p>")
            links = " · ".join(f"<a href='{esc(v)}'>{k.upper()}</a>" for k, v in files.items() if k != "md")
            parts.append(f"<p class='files'>Files: {links}</p>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}img{max-width:100%}"
             "table.wb-table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
             "table.wb-table td,table.wb-table th{border:1px solid #ccc;padding:2px 6px}"
             "pre{background:#f6f6f6;padding:0.5em;overflow-x:auto}.files{font-size:0.8em;color:#555}")
    html_path = root / "REPORT.html"
    html_path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>RobustSeg suite report "
                         f"({esc(profile)})</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    return {"md": md_path, "html": html_path}


# ----------------------------------------------------------------------------------------------
# Command line

def _param(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise ValueError(f"-p {item!r} must look like NAME=VALUE (VALUE is JSON, or a plain string)")
    k, v = item.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="quick", choices=PROFILES, help="scale of every notebook (default quick)")
    p.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                   help="run only these notebooks (name or unique prefix, e.g. 01 03_combinations)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="inject a parameter into every notebook that declares it (VALUE as JSON), e.g. -p seed=1")
    p.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR, help="folder of the notebooks")
    p.add_argument("--out", type=Path, default=None, help="executed notebooks (default runs/suite/<profile>)")
    p.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    p.add_argument("--cell-progress", action="store_true", help="papermill's per-cell progress bar")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' outputs to this terminal")
    p.add_argument("--no-report", action="store_true", help="skip figures/REPORT.md / REPORT.html")
    p.add_argument("--list", action="store_true", help="list the notebooks in order and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        notebooks = select(discover(args.notebooks), args.only)
        extra = dict(_param(x) for x in args.param)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not notebooks:
        print(f"error: no notebooks in {args.notebooks}", file=sys.stderr)
        return 2
    if args.list:
        for nb in notebooks:
            print(nb.name + (f"  (after {', '.join(nb.needs)})" if nb.needs else ""))
        return 0
    out_dir = args.out or runs_dir() / "suite" / args.profile
    print(f"[suite] profile {args.profile}: {len(notebooks)} notebooks -> {out_dir}; figures -> {figures_dir()}",
          flush=True)
    t0 = time.perf_counter()
    outcomes = run_suite(notebooks, args.notebooks, out_dir, args.profile, extra, args.cell_progress,
                         args.log_output, args.timeout)
    seconds = time.perf_counter() - t0
    if not args.no_report:
        paths = write_report(outcomes, args.profile, seconds)
        print(f"[suite] report: {paths['md']} and {paths['html']}", flush=True)
    ok = sum(o.status == "ok" for o in outcomes)
    print(f"[suite] {ok}/{len(outcomes)} notebooks ok in {_clock(seconds)} ({seconds:.1f} s)", flush=True)
    failures = [o for o in outcomes if o.status != "ok"]
    if failures:
        print("[suite] FAILURES:", flush=True)
        for o in failures:
            print(f"  {o.name} ({o.status}): {o.error}")
            if o.status == "failed":
                print(f"    executed notebook: {o.executed}")
                print("    failing " + o.cell.replace("\n", "\n      "))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
