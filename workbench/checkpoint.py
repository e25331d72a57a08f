"""Checkpoints and run records: atomic writes, strict loads, config/versions/git commit beside them."""

from __future__ import annotations

import json
import os
import pickle
import platform
import subprocess
import tempfile
import zipfile
from pathlib import Path

import torch

from workbench.errors import CheckpointError
from workbench.paths import REPO_ROOT

__all__ = ["CheckpointError", "atomic_write_bytes", "atomic_write_text", "save_checkpoint", "load_checkpoint",
           "describe_mismatches", "load_state_strict", "git_commit", "versions", "write_run_info"]


def atomic_write_bytes(path: Path, write_fn) -> None:
    """Write through a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, state: dict) -> Path:
    path = Path(path)
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `python -m workbench train` "
                              f"or pass the path printed at the end of a run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or not a PyTorch checkpoint ({type(e).__name__}: "
                              f"{e}); re-run training with --resume from an intact checkpoint") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a workbench checkpoint (no 'model' entry)")
    return state


def describe_mismatches(target: dict, state_dict: dict, target_name: str = "model", listed: int = 8) -> str:
    """What keeps `state_dict` from loading strictly into `target` ('' when nothing): missing keys,
    unexpected keys and shape mismatches, each counted with the first few named."""

    def listing(items: list[str]) -> str:
        more = f", ... ({len(items) - listed} more)" if len(items) > listed else ""
        return f"{', '.join(sorted(items)[:listed])}{more} ({len(items)})"

    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    shape = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs {target_name} {tuple(v.shape)}"
             for k, v in target.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    parts = [f"missing keys (in the {target_name}, not in the checkpoint): {listing(missing)}" if missing else "",
             f"unexpected keys (in the checkpoint, not in the {target_name}): {listing(unexpected)}" if unexpected
             else "",
             f"shape mismatches: {listing(shape)}" if shape else ""]
    return "; ".join(p for p in parts if p)


def load_state_strict(module: torch.nn.Module, state_dict: dict, what: str = "model") -> None:
    """load_state_dict(strict=True) with an error that lists what does not match."""
    problems = describe_mismatches(module.state_dict(), state_dict, what)
    if problems:
        raise CheckpointError(f"the checkpoint does not match the {what}: {problems}. Build the model "
                              f"from the checkpoint's own config (its 'config' entry / config.json)")
    module.load_state_dict(state_dict, strict=True)


# Files the suite writes: regenerating them does not change the code, so they neither move the stamped
# commit nor make the tree "dirty".
GENERATED = ("figures",)


def git_commit(root: str | Path = REPO_ROOT) -> str:
    """The code's commit (of the checkout at `root`): the last commit that changed a file outside `figures/` (so a commit of
    regenerated figures alone stamps the same code), `+dirty` when tracked files outside `figures/`
    have uncommitted changes, or "unknown" outside a git checkout."""
    outside = ["--", ".", *(f":(exclude){d}" for d in GENERATED)]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=5).stdout.strip()

    try:
        sha = git("log", "-1", "--format=%H", *outside) or git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", *outside)
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import numpy
    import timm

    import workbench

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "workbench": workbench.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None, "platform": platform.platform()}


def write_run_info(run_dir: Path, cfg_json: str, extra: dict | None = None) -> dict:
    """config.json and run_info.json (versions, git commit, and `extra`) next to the checkpoints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", cfg_json)
    info = {"versions": versions(), "git_commit": git_commit(), **(extra or {})}
    atomic_write_text(run_dir / "run_info.json", json.dumps(info, indent=2))
    return info
