"""Where a run's evaluations are cached (docs/RELIABILITY.md, "Read-only runs").

An entry goes to `<run>/eval/` beside the checkpoint it was computed from. When the run's folder cannot be
written (read-only storage, another user's run), it goes to a fallback folder the user can write: the
one the caller names (`evaluate --out DIR` gives `DIR/eval`), else `<runs>/eval-cache/<run>-<digest of the
run's path>/` under WORKBENCH_RUNS. Reads look in the run's own folder first, then in the fallback, so an
entry that a read-only run already holds is used as it is.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from workbench.checkpoint import atomic_write_text
from workbench.errors import StorageError
from workbench.paths import child, runs_dir

log = logging.getLogger(__name__)

NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def not_writable(folder: str | Path) -> OSError | None:
    """The error of writing a file into `folder` (created if missing) when it is read-only or not ours,
    else None: a real probe (a temp file created and removed), so it also holds for root on a read-only
    mount."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        if e.errno in NOT_WRITABLE:
            return e
        raise
    return None


def fallback_dir(run_dir: str | Path) -> Path:
    """The user's cache folder for the evaluations of the run in `run_dir`: one per run path."""
    real = Path(run_dir).resolve()
    digest = hashlib.sha256(str(real).encode()).hexdigest()[:10]
    return child(runs_dir() / "eval-cache", f"{real.name or 'run'}-{digest}", "an evaluation cache")


def read(folders: list[Path], name: str, key: dict, source: dict, load):
    """The cached result `name` computed for `key` from `source`, from the first folder that holds it, else
    None. An unreadable entry is logged and skipped."""
    for folder in folders:
        path = child(folder, name, "an evaluation cache entry")
        if not path.exists():
            continue
        try:
            entry = json.loads(path.read_text())
            if entry["key"] == key and entry["source"] == source:
                return load(entry["results"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            log.warning("evaluation cache %s is unreadable (%s); computing it again", path, e)
    return None


def write(folders: list[Path], name: str, payload: dict) -> Path:
    """Write the entry into the first of `folders` that can be written (atomically); a StorageError when
    none can, that says where it tried and how to choose another place."""
    text, tried = json.dumps(payload), []
    for folder in folders:
        path = child(folder, name, "an evaluation cache entry")
        try:
            atomic_write_text(path, text)
            if tried:
                log.info("%s cannot be written (%s); the evaluation is cached in %s", tried[0][0], tried[0][1], folder)
            return path
        except StorageError as e:
            cause = e.__cause__
            if not (isinstance(cause, OSError) and cause.errno in NOT_WRITABLE):
                raise
            tried.append((folder, os.strerror(cause.errno)))
    where = "; ".join(f"{f} ({why})" for f, why in tried)
    raise StorageError(f"cannot cache the evaluation anywhere: {where}. Set WORKBENCH_RUNS to a folder you can write "
                       f"(or give evaluate --out DIR)")
