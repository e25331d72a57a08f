"""The notebook suite: every notebook run headlessly with papermill, then one report of all it produced.

`python -m workbench suite [--profile smoke|quick|paper] [--only NAME ...]` (and `make suite` / `make smoke`):

1. makes sure a Jupyter kernel spec `python3` runs *this* interpreter (a private spec first on
   JUPYTER_PATH, so a fresh machine or another Python on PATH cannot take its place);
2. executes the notebooks in dependency order (training first; later notebooks reuse its cached runs)
   with the profile's parameters injected, writing each executed notebook to `runs/suite/<profile>/`;
   a failing notebook stops only the notebooks that depend on it;
3. writes `figures/REPORT.md` and `figures/REPORT.html` (`workbench.report`): every table and figure
   the notebooks saved (`workbench.plotting.Figures` indexes, `figures/<profile>/<notebook>/`), the
   runs' configs, the versions and the git commit;
4. ends with the list of failures (executed notebook, failing cell, error) and exits non-zero if any.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import ConfigError, MissingFile, UnknownName
from workbench.paths import REPO_ROOT, figures_dir, runs_dir
from workbench.report import clock, relative, write_report

log = logging.getLogger(__name__)

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
    Notebook("10_main_table", ("01_training",)),
)

# Parameters injected per profile ("*": every notebook that declares them); the rest keep the notebook's own.
PROFILE_PARAMS: dict[str, dict[str, dict]] = {
    "smoke": {},
    "quick": {"02_ablations": {"methods": None, "seeds": [0]}, "10_main_table": {"seeds": [0]}},
    "paper": {"*": {"dataset": "deliver", "data_root": "data/DELIVER"},
              "02_ablations": {"methods": None, "seeds": [0]}, "10_main_table": {"seeds": [0]}},
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
        raise ConfigError(f"ipykernel is not installed for {sys.executable}; install the project with "
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
            raise UnknownName(f"--only {want!r} matches {'no' if not hits else 'several'} notebooks; valid: {valid}")
        if hits[0] not in chosen:
            chosen.append(hits[0])
    return [nb for nb in notebooks if nb in chosen]  # keep dependency order


def parameters_for(path: Path, name: str, profile: str, extra: dict) -> dict:
    """The parameters injected into one notebook: the profile's, then `-p` ones, limited to the names
    its `parameters` cell declares (papermill would otherwise inject unknown names with a warning)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(path))
    if not declared:
        raise ConfigError(f"{path} has no cell tagged 'parameters'; tag the cell that holds its parameters")
    table = PROFILE_PARAMS.get(profile, {})
    wanted = {"profile": profile, **table.get("*", {}), **table.get(name, {}), **extra}
    return {k: v for k, v in wanted.items() if k in declared}


# ----------------------------------------------------------------------------------------------
# Execution

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
    """Execute `notebooks` in order; a notebook whose dependency failed is skipped."""
    kernel = ensure_kernel()
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Outcome] = {}
    t_start, n = time.perf_counter(), len(notebooks)
    for i, nb in enumerate(notebooks, 1):
        failed = [d for d in nb.needs if d in outcomes and outcomes[d].status != "ok"]
        head = f"({i}/{n}) {nb.name}"
        if failed:
            outcomes[nb.name] = Outcome(nb.name, "skipped", error=f"needs {', '.join(failed)}, which did not succeed")
            log.warning("%s: skipped (needs %s)", head, ", ".join(failed))
            continue
        log.info("%s: running (elapsed %s)", head, clock(time.perf_counter() - t_start))
        o = execute(nb, notebooks_dir / f"{nb.name}.ipynb", out_dir, profile, kernel, extra or {}, progress,
                    log_output, timeout)
        outcomes[nb.name] = o
        status = "ok" if o.status == "ok" else f"FAILED ({o.error.splitlines()[0] if o.error else 'error'})"
        log.info("%s: %s in %.1f s (elapsed %s)", head, status, o.seconds, clock(time.perf_counter() - t_start))
    return list(outcomes.values())


def _param(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise ConfigError(f"-p {item!r} must look like NAME=VALUE (VALUE is JSON, or a plain string)")
    k, v = item.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


# ----------------------------------------------------------------------------------------------
# Command line: python -m workbench suite

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
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


def run(args: argparse.Namespace) -> int:
    notebooks = select(discover(args.notebooks), args.only)
    extra = dict(_param(x) for x in args.param)
    if not notebooks:
        raise MissingFile(f"no notebooks in {args.notebooks}")
    if args.list:
        for nb in notebooks:
            print(nb.name + (f"  (after {', '.join(nb.needs)})" if nb.needs else ""))
        return 0
    out_dir = args.out or runs_dir() / "suite" / args.profile
    log.info("profile %s: %d notebooks -> %s; figures -> %s", args.profile, len(notebooks), relative(out_dir),
             relative(figures_dir()))
    t0 = time.perf_counter()
    outcomes = run_suite(notebooks, args.notebooks, out_dir, args.profile, extra, args.cell_progress,
                         args.log_output, args.timeout)
    seconds = time.perf_counter() - t0
    if not args.no_report:
        paths = write_report(outcomes, args.profile, seconds)
        log.info("report: %s and %s", relative(paths["md"]), relative(paths["html"]))
    ok = sum(o.status == "ok" for o in outcomes)
    log.info("%d/%d notebooks ok in %s (%.1f s)", ok, len(outcomes), clock(seconds), seconds)
    failures = [o for o in outcomes if o.status != "ok"]
    for o in failures:
        log.error("FAILED %s (%s): %s%s", o.name, o.status, o.error, f"\n    executed notebook: {relative(o.executed)}"
                  f"\n    failing {o.cell}".replace("\n", "\n      ") if o.status == "failed" else "")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m workbench suite ...` from Python (tests): the same as the command line."""
    from workbench.cli import main as cli_main

    return cli_main(["suite", *(argv or [])])
