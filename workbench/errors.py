"""The workbench's own error types: a problem with the user's input, said with how to fix it.

The command line prints these as one `error: ...` line and exits non-zero; anything else (an internal
bug) keeps its traceback. Each type also subclasses the built-in a caller would expect (`ValueError`,
`KeyError`, `RuntimeError`), so `except ValueError` keeps working around the library.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class WorkbenchError(Exception):
    """Base class. `exit_code` is what the command line returns for it: 2 for a wrong option or name
    (a usage error), 1 for a file, dataset or run that cannot be used."""

    exit_code = 1


class ConfigError(WorkbenchError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""

    exit_code = 2


class UnknownName(WorkbenchError, KeyError):
    """A name looked up in a registry (preset, dataset, encoder, ...) does not exist; the message lists
    the valid names. Printed as the message itself (a plain KeyError would print its repr)."""

    exit_code = 2

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingFile(WorkbenchError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class DataError(WorkbenchError, ValueError):
    """A dataset folder, file or sample cannot be used as it is."""


class WeightsError(WorkbenchError, ValueError):
    """A pretrained-weights file cannot be read or does not fit the encoder."""


class CheckpointError(WorkbenchError, RuntimeError):
    """A checkpoint is missing, truncated, unsafe, non-finite or does not match the model."""


class TrainingDiverged(WorkbenchError, RuntimeError):
    """The loss or the weights became NaN or inf; the last good checkpoint is left untouched."""


class RunLocked(WorkbenchError, RuntimeError):
    """Another process is writing the same run folder (one writer per run); the message names it."""


class StorageError(WorkbenchError, OSError):
    """A file could not be written: the disk is full, read-only, or the path is not writable."""


def storage_error(e: OSError, path) -> StorageError | None:
    """A clear StorageError for a disk-full or not-writable OSError while writing `path`, else None."""
    path = Path(path)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = next((p for p in (path.parent, *path.parents) if p.is_dir()), path.parent)
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free in {folder}"
        except OSError:
            free = str(folder)
        what = "checkpoint" if path.suffix in (".pt", ".safetensors") else "file"
        kept = f"the previous {what} {path.name} is intact" if path.exists() else "nothing was written"
        return StorageError(f"no space left on the device while writing {path} ({free}); {kept}. Free some space "
                            f"or write the runs elsewhere (WORKBENCH_RUNS=DIR, or train --out DIR)")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(f"cannot write {path}: {e.strerror}. Choose a folder you can write to (WORKBENCH_RUNS=DIR, "
                            f"or --out DIR)")
    return None
