"""The notebook suite: every notebook run headlessly with papermill, then one report of all it produced.

`python -m workbench suite [--profile smoke|quick|paper] [--only NAME ...]` (and `make suite` / `make smoke`):

1. makes sure a Jupyter kernel spec `python3` runs *this* interpreter (a private spec first on
   JUPYTER_PATH, so a fresh machine or another Python on PATH cannot take its place);
2. executes the notebooks in dependency order (training first; later notebooks reuse its cached runs)
   with the profile's parameters injected and a fixed number of threads (`--threads`, default 2: the
   same numbers on every machine), writing each executed notebook to `runs/suite/<profile>/`; a
   failing notebook stops only the notebooks that depend on it. While a notebook runs, its log records
   (the run being trained, each epoch, with an ETA) are shown here and kept in
   `runs/suite/<profile>/logs/<notebook>.log`, not in the notebook;
3. writes `figures/REPORT.md` and `figures/REPORT.html` (`workbench.report`): every table and figure
   the notebooks saved (`workbench.plotting.Figures` indexes, `figures/<profile>/<notebook>/`), the
   runs' configs, the versions and the git commit;
4. ends with the list of failures (executed notebook, failing cell, error) and exits non-zero if any.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbench import repro
from workbench.errors import ConfigError, UnknownName
from workbench.logs import SUITE_LOG_ENV, log_to_suite  # noqa: F401 (a kernel runs workbench.suite.log_to_suite)
from workbench.paths import REPO_ROOT, figures_dir, runs_dir
from workbench.report import clock, relative

log = logging.getLogger(__name__)

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PROFILES = ("smoke", "quick", "study", "paper")
KERNEL_NAME = "python3"
# Threads of every kernel (torch, OpenMP, MKL): CPU results are bitwise repeatable only for one thread count,
# so the committed figures are what `make suite` writes on any machine with this many threads.
THREADS = repro.REPRO_THREADS  # 2; WORKBENCH_REPRO=1 pins this count in every process (workbench.repro)


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
    Notebook("08_claims", ("01_training",)),
    Notebook("09_classroom", ("01_training",)),
    Notebook("10_main_table", ("01_training",)),
)

# Parameters injected per profile ("*": every notebook that declares them); the rest keep the notebook's own.
# The rows the suite's stories rest on (README, REPORT, the classroom's first prompt): the baseline and its
# compute-matched controls, basic KD and RobustSeg with its teacher after feedback, over seeds (notebook 08).
STORY_ROWS = ["baseline", "baseline_long", "dropout_only", "basic_kd", "robustseg"]

PROFILE_PARAMS: dict[str, dict[str, dict]] = {
    "smoke": {"02_ablations": {"methods": ["baseline", "basic_kd", "robustseg"]},  # three rows keep CI fast
              "08_claims": {"rows": STORY_ROWS, "seeds": [0, 1]}},
    # quick: 02 trains the paper's seven claim rows and the two controls once (seed 0: labelled so; ifv_single
    # and anyseg_approx: `-p methods=null` or `ablate`); 08 trains the story rows on 3 seeds (paper weights), so
    # what the README, the report and the classroom say holds over seeds; the full claim table is `study`
    "quick": {"02_ablations": {"methods": ["baseline", "baseline_long", "dropout_only", "basic_kd", "ifv_cross", "cpd",
                                           "ifv_cpd", "hpd", "robustseg"], "seeds": [0]},
              "08_claims": {"seeds": [0, 1, 2], "weighting": "paper", "rows": STORY_ROWS},
              "10_main_table": {"seeds": [0]}},
    "study": {"02_ablations": {"methods": None, "seeds": [0]}, "08_claims": {"seeds": [0, 1, 2, 3, 4]},
              "10_main_table": {"seeds": [0]}},
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
    started: float = 0.0  # time.time() when papermill was called (the kernel's start-up counts from here)
    log: Path | None = None  # the kernel's log records (JSON lines; `workbench.timing` records included)


# ----------------------------------------------------------------------------------------------
# Kernel and notebook discovery

def ensure_kernel(name: str = KERNEL_NAME, threads: int | None = THREADS) -> str:
    """A kernel spec `name` that starts `sys.executable -m ipykernel_launcher`, first on JUPYTER_PATH, with
    `threads` threads (None: the machine's default) and the workbench's log records sent to the suite."""
    import importlib.util

    if importlib.util.find_spec("ipykernel") is None:
        raise ConfigError(f"ipykernel is not installed for {sys.executable}; install the project with "
                           f"`pip install -e .[dev]` (jupyterlab brings ipykernel)")
    root = runs_dir() / "suite" / "jupyter"
    spec_dir = root / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    # the kernel's own log (a warning that local TCP is unencrypted, an interrupt at shutdown) would fill
    # the suite's output; errors in cells are reported from the executed notebook instead
    argv = [sys.executable, "-m", "ipykernel_launcher", "--log-level=CRITICAL",
            "--IPKernelApp.exec_lines=import workbench.suite; workbench.suite.log_to_suite()", "-f", "{connection_file}"]
    env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if threads else {}
    # the numerical mode's environment (workbench.repro), read when torch loads: explicit here, not only inherited
    env |= repro.environment() | ({repro.ENV_FLAG: "1"} if repro.enabled() else {})
    spec = {"argv": argv, "env": env, "display_name": "Python 3 (workbench)", "language": "python",
            "metadata": {"debugger": True}}
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
    dropped = sorted(k for k in extra if k not in declared)
    if dropped:
        log.warning("%s does not declare -p %s, so it is not passed to it (its parameters: %s)", name,
                    ", ".join(dropped), ", ".join(declared))
    return {k: v for k, v in wanted.items() if k in declared}


# ----------------------------------------------------------------------------------------------
# Progress: the kernel's log records, shown by the suite

_TRAINING = re.compile(r"^training (?P<run>.+?\(\w+, seed \d+\))")
_EPOCH = re.compile(r"^\S+ epoch (?P<epoch>\d+)/(?P<epochs>\d+): (?P<rest>.*)$", re.S)


class Progress:
    """Turns a kernel's log records into progress lines: which run is training, its epochs, an ETA."""

    def __init__(self, notebook: str, log_file: str = "the kernel's log"):
        self.notebook, self.log_file = notebook, log_file
        self.run, self.t_run = "", 0.0

    def line(self, rec: dict) -> str:
        message = str(rec.get("message", "")).replace(f"{REPO_ROOT}{os.sep}", "")
        t = float(rec.get("t", time.time()))
        if m := _TRAINING.match(message):
            self.run, self.t_run = m["run"], t
        elif (m := _EPOCH.match(message)) and self.run:
            epoch, epochs = int(m["epoch"]), int(m["epochs"])
            eta = (t - self.t_run) / epoch * (epochs - epoch)
            message = f"training {self.run}: epoch {epoch}/{epochs}, {m['rest']}" + (
                f", ETA {clock(eta)}" if epoch < epochs else f", done in {clock(t - self.t_run)}")
        lines = message.splitlines() or [""]
        more = f" (+{len(lines) - 1} lines in {self.log_file})" if len(lines) > 1 else ""
        return f"{self.notebook} | {lines[0]}{more}"


class Tail(threading.Thread):
    """Follows a kernel's log file while its notebook runs, showing each record through the suite's log."""

    def __init__(self, path: Path, notebook: str, every: float = 0.5):
        super().__init__(daemon=True)
        self.path, self.every, self.progress = path, every, Progress(notebook, relative(path))
        self._done, self._offset, self._partial = threading.Event(), 0, ""

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            f.seek(self._offset)
            text = self._partial + f.read()
            self._offset = f.tell()
        *lines, self._partial = text.split("\n")
        for raw in lines:
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if "timing" in rec:  # durations for `bench suite`, not progress
                continue
            level = logging.getLevelName(rec.get("level", "INFO"))
            log.log(level if isinstance(level, int) else logging.INFO, "%s", self.progress.line(rec))

    def run(self) -> None:
        while not self._done.wait(self.every):
            self.poll()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.poll()  # what was written after the last poll


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

    kernel_log = out_dir / "logs" / f"{nb.name}.log"
    outcome = Outcome(nb.name, executed=out_dir / src.name, started=time.time(), log=kernel_log)
    kernel_log.parent.mkdir(parents=True, exist_ok=True)
    kernel_log.write_text("")
    os.environ[SUITE_LOG_ENV] = str(kernel_log)  # the kernel inherits it: see log_to_suite
    tail = Tail(kernel_log, nb.name)
    tail.start()
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
    finally:
        tail.stop()
        os.environ.pop(SUITE_LOG_ENV, None)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def run_suite(notebooks: list[Notebook], notebooks_dir: Path, out_dir: Path, profile: str, extra: dict | None = None,
              progress: bool = False, log_output: bool = False, timeout: int | None = None,
              threads: int | None = THREADS) -> list[Outcome]:
    """Execute `notebooks` in order, each kernel with `threads` threads; a notebook whose dependency failed
    is skipped."""
    kernel = ensure_kernel(threads=threads)
    # the kernels inherit this: their `Figures` write the committed figures (a notebook run by hand writes
    # under runs/figures instead, `paths.notebook_figures_dir`)
    os.environ["WORKBENCH_FIGURES"] = str(figures_dir())
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


def parse_param(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise ConfigError(f"-p {item!r} must look like NAME=VALUE (VALUE is JSON, or a plain string)")
    k, v = item.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v
