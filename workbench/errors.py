"""The workbench's own error types: a problem with the user's input, said with how to fix it.

The command line prints these as one `error: ...` line and exits non-zero; anything else (an internal
bug) keeps its traceback. Each type also subclasses the built-in a caller would expect (`ValueError`,
`KeyError`, `RuntimeError`), so `except ValueError` keeps working around the library.
"""

from __future__ import annotations


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
