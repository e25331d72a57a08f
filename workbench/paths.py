"""Where runs, checkpoints, caches and figures live (runs/ is git-ignored), and the checks that keep every
path the workbench makes under the folder the user named (docs/RELIABILITY.md, "Where runs are written")."""

from __future__ import annotations

import os
import re
from pathlib import Path

from workbench.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

# A run's name and profile become part of its folder's name: letters, digits and _ only (no separator, no
# dot, no `..`), so that `<name>-<profile>-s<seed>-<hash>` is one folder and reads back unambiguously.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}")


def runs_dir() -> Path:
    """Root for runs and caches; override with the WORKBENCH_RUNS environment variable."""
    return Path(os.environ.get("WORKBENCH_RUNS", REPO_ROOT / "runs")).expanduser()


def run_cache_dir() -> Path:
    """The run cache: `runs/cache/`, or `runs/cache-repro/` with WORKBENCH_REPRO=1 (`workbench.repro`)."""
    from workbench import repro

    return runs_dir() / repro.cache_folder_name()


def figures_dir() -> Path:
    """Committed final figures; override with WORKBENCH_FIGURES (tests write elsewhere)."""
    return Path(os.environ.get("WORKBENCH_FIGURES", REPO_ROOT / "figures")).expanduser()


def notebook_figures_dir() -> Path:
    """Where a notebook's figures and tables go (`workbench.plotting.Figures`): WORKBENCH_FIGURES when it is
    set, which the notebook suite does for its kernels (to `figures_dir()`), else `runs/figures`. So only
    the suite (or whoever sets WORKBENCH_FIGURES) writes the committed figures; a notebook run by hand in
    JupyterLab writes under runs/, which git ignores."""
    env = os.environ.get("WORKBENCH_FIGURES")
    return Path(env).expanduser() if env else runs_dir() / "figures"


def check_name(key: str, value: str) -> str:
    """`value` if it is a safe name (`SAFE_NAME`), else a ConfigError that names `key` and the rule."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ConfigError(f"{key}={value!r} is not a valid name: use 1 to 64 letters, digits and _ (starting with a "
                          f"letter or digit; no /, \\, '.' or '-'), e.g. {key}=my_run")
    return value


def inside(root: str | Path, path: str | Path, what: str = "a run") -> Path:
    """`path`, after checking that it resolves (symbolic links and `..` followed) to `root` or a path under
    it; a ConfigError otherwise. The workbench writes a run, a cache entry or a table only after this check."""
    root, path = Path(root), Path(path)
    real_root, real = root.resolve(), path.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise ConfigError(f"refusing to write {what} at {path}: it resolves to {real}, outside {root} (the folder "
                          f"named by WORKBENCH_RUNS or --out)")
    return path


def child(folder: str | Path, name: str, what: str = "a file") -> Path:
    """`folder / name` for a file name made from user input (a split, a case, a sample): a ConfigError
    when `name` holds a separator or is `.`/`..`, or when the result would resolve outside `folder`."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ConfigError(f"{name!r} cannot be part of a file name ({what} in {folder}); use letters, digits, _ "
                          f"and -")
    return inside(folder, Path(folder) / name, what)
