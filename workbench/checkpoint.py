"""Checkpoints and run records: atomic writes, safe strict loads, one writer per run, and the config,
versions and git commit beside every checkpoint (docs/RELIABILITY.md lists each guarantee and its test).

A checkpoint is data, never code. Checkpoints hold only tensors, numbers, strings, lists and dicts,
and every load goes through `load_checkpoint`, which reads with `torch.load(weights_only=True)` (a file
that holds any other Python object is refused, naming the object, before anything of it runs) and
checks the archive's CRCs (torch itself does not: a damaged tensor would load as wrong numbers). The
final weights are also written as safetensors (`save_weights`), which `load_checkpoint` reads too.

Writes go through `atomic_write_bytes`: a temp file in the same folder, fsync, rename. The temp file
is created with mode 0666 so that the user's umask applies, as for any file they write; its name
carries the writer's process id, so the next write into the folder removes the temp files of writers
that died (kill -9) without touching a write in progress. `run_lock` is the one-writer-per-run lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import platform
import re
import secrets
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench.errors import CheckpointError, ConfigError, RunLocked, storage_error
from workbench.paths import REPO_ROOT, run_cache_dir

if TYPE_CHECKING:
    pass

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer per run is then the user's job
    fcntl = None

__all__ = ["CheckpointError", "atomic_write_bytes", "atomic_write_text", "save_checkpoint", "load_checkpoint",
           "save_weights", "checkpoint_problem", "non_finite", "describe_mismatches", "load_state_strict",
           "ensure_folder", "storage_error", "run_lock", "git_commit", "versions", "write_run_info"]

REQUIRED = ("model", "config", "classes", "modalities")  # what every workbench checkpoint holds
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"^\..+\.(\d+)@([0-9a-f]{8})\.[0-9a-f]+\.tmp$")  # .<name>.<pid>@<host>.<random>.tmp
_OLD_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp's names, written before the pid was
_OLD_TEMP_AGE_S = 3600  # such a temp file older than this belongs to a writer that is gone
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Written by earlier versions inside run_info (torch.__version__ itself, a str subclass that unpickles
# as a plain string); allowed so that existing runs keep loading. Nothing else is allowed.
_LEGACY_SAFE = [torch.torch_version.TorchVersion]


# ----------------------------------------------------------------------------------------------
# Files and folders

def ensure_folder(path: str | Path) -> Path:
    """`mkdir -p path`, with a ConfigError when `path` or one of its parents is a file."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        where = f"{blocker} is a file" if blocker == path else f"{path}: {blocker} is a file"
        raise ConfigError(f"{where}, not a folder; give a folder path (a run, --out, WORKBENCH_RUNS)") from None
    except OSError as e:
        raise storage_error(e, path) or e from e
    return path


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temp files of interrupted atomic writes in `folder` whose writer is gone (a dead process
    on this host, or an old-style temp file older than an hour); a write in progress is left alone."""
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m:
            stale = m[2] == _HOST and not _writer_alive(int(m[1]))
        else:
            try:
                stale = bool(_OLD_TEMP.match(entry.name)) and time.time() - entry.stat().st_mtime > _OLD_TEMP_AGE_S
            except OSError:
                stale = False
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def atomic_write_bytes(path: str | Path, write_fn) -> None:
    """Write through a temp file in the same folder, then rename: a crash never leaves half a file, and the
    previous file stays as it was until the rename. Stale temp files of dead writers are removed first."""
    path = Path(path)
    ensure_folder(path.parent)
    remove_stale_temps(path.parent)
    tmp = path.parent / f".{path.name}.{os.getpid()}@{_HOST}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 & ~umask, as open() would
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = _os_error(e)  # torch.save wraps a failed write in a RuntimeError ("enforce fail at inline_container")
        if cause is not None and (clear := storage_error(cause, path)) is not None:
            raise clear from e
        raise


def _os_error(e: BaseException | None) -> OSError | None:
    """`e` itself or the OSError it was raised from or while handling (its `__cause__` / `__context__`)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the run's lock (`<run>/.lock`, an exclusive `flock`) while writing the run. A second writer
    stops at once with a RunLocked naming the run and the holder's process id; the lock goes with its
    holder's process (also when it is killed), so it is never stale."""
    run_dir = ensure_folder(run_dir)
    path = run_dir / ".lock"
    if fcntl is None:
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            who = f"process {holder[0]}" + (f" on {holder[1]}" if len(holder) > 1 else "") if holder else \
                "another process"
            raise RunLocked(f"the run {run_dir} is being written by {who} (lock {path}); wait until it finishes "
                            f"({_after_lock(run_dir)}) or stop that process") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _after_lock(run_dir: Path) -> str:
    """What to run once the holder of a run's lock has finished: a cached run is reused or resumed by the
    same command; a run in a folder of the user's (`train --out DIR`) is continued with --resume."""
    cache = run_cache_dir().resolve()
    if run_dir.resolve().is_relative_to(cache):
        return "the same command then reuses or resumes the run"
    return (f"then `train --out {run_dir} --resume` continues it if it stopped early, or --force trains it again "
            f"from scratch")


# ----------------------------------------------------------------------------------------------
# Checkpoints

_PLAIN = (str, int, float, bool, type(None))


def _check_plain(obj, where: str = "checkpoint") -> None:
    """Checkpoints hold only tensors and plain values (what a weights-only load reads back)."""
    if isinstance(obj, _PLAIN) or torch.is_tensor(obj):
        if isinstance(obj, str) and type(obj) is not str:
            raise TypeError(f"{where} is a {type(obj).__name__} (a str subclass): store it as str(...)")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(obj).__name__}: a checkpoint holds only tensors, numbers, strings, lists "
                        f"and dicts (loads refuse anything else)")


def save_checkpoint(path: str | Path, state: dict) -> Path:
    path = Path(path)
    _check_plain(state)
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    return path


def save_weights(path: str | Path, weights: dict[str, torch.Tensor], which: str, config: dict, classes, modalities
                 ) -> Path:
    """One set of weights as safetensors (no pickle), with the config, classes and modalities in its header
    so that `load_checkpoint` / `load_model` rebuild the model from the file alone."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}  # no shared storage
    header = {"format": "pt", "workbench": "1", "which": which, "config": json.dumps(config, sort_keys=True),
              "classes": json.dumps(list(classes)), "modalities": json.dumps(list(modalities))}
    atomic_write_bytes(path, lambda f: f.write(_sorted_header(save(tensors, metadata=header))))
    return path


def _sorted_header(data: bytes) -> bytes:
    """A safetensors file with its header's metadata in sorted key order: safetensors writes the metadata
    from a hash map, in an order that changes from one call to the next, so the same weights would give
    different bytes. The layout (8-byte little-endian header length, JSON header padded with spaces to a
    multiple of 8, then the tensor data) and the tensors' offsets are unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def _plain_message(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()
    return text.splitlines()[0].rstrip(".") if text else type(e).__name__


def _damaged(path: Path, reason: str) -> CheckpointError:
    if path.name == "final.pt":
        advice = (f"delete {path}: running the same configuration again (train, or Run.ensure) rebuilds it from "
                  f"last.pt beside it")
    elif path.name == "last.pt":
        advice = f"delete {path} to train the run again from scratch (or train with --force)"
    else:
        advice = "copy it again from its source, or train it again"
    return CheckpointError(f"checkpoint {path} is truncated or corrupt ({reason}); {advice}")


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` is not an intact checkpoint archive (truncated, or a member failing its CRC), else None.
    Reads the file; unpickles nothing. torch.load checks no CRC, so damaged tensor bytes load as numbers."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return None  # its header check is the load itself
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"not a complete zip archive: {_plain_message(e)}"
    return f"{bad} fails its CRC check" if bad else None


def _plain_pickle(path: Path) -> bool:
    """Whether `path` is a pickle stream (protocol 2 or later, which starts with PROTO) rather than a zip
    archive: damage does not turn a zip archive into one."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and not zipfile.is_zipfile(path)


def _refused(path: Path, e: BaseException) -> CheckpointError:
    text = _ANSI.sub("", str(e))
    # torch names the object in several wordings: "Unsupported global: GLOBAL x.y was not an allowed global",
    # "Trying to load unsupported GLOBAL posix.system whose module posix is blocked" (2.14), "... but got <class 'x'>"
    m = re.search(r"GLOBAL ([A-Za-z_][\w.]*)", text) or re.search(r"got <class '([^']+)'>", text)
    what = m[1] if m else next((line.split("error:", 1)[1].strip() for line in text.splitlines()
                                if "WeightsUnpickler error:" in line), "an object other than tensors and plain values")
    return CheckpointError(
        f"checkpoint {path} was refused: it holds a pickled Python object ({what}) that would run code when loaded. "
        f"Workbench checkpoints hold only tensors, numbers, strings, lists and dicts. Do not load a file you do not "
        f"trust; if this one is yours, save its plain parts again (e.g. torch.save(model.state_dict(), ...))")


def _load_safetensors(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            meta = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for a damaged header or body
        raise _damaged(path, _plain_message(e)) from e
    state = {"model": weights, "which": meta.get("which", "model"), "format": "safetensors"}
    for key in ("config", "classes", "modalities"):
        if key in meta:
            try:
                state[key] = json.loads(meta[key])
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: the {key!r} entry of its header is not valid JSON ({e})") from None
    config_json = path.with_name("config.json")
    if "config" not in state and config_json.is_file():  # a file written elsewhere: its run's config beside it
        try:
            state["config"] = json.loads(config_json.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config_json} is not valid JSON ({e})") from None
        if not isinstance(state["config"], dict):
            raise CheckpointError(f"{config_json} holds a JSON {type(state['config']).__name__}, not a config "
                                  f"object ({{\"name\": ..., \"data\": {{...}}, ...}}); copy the run's own config.json")
    return state


def _legacy_safe_globals():
    """`_LEGACY_SAFE` allowed for one load (torch >= 2.5), or registered once (torch 2.4 has no context)."""
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(_LEGACY_SAFE)
    torch.serialization.add_safe_globals(_LEGACY_SAFE)
    return contextlib.nullcontext()


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A workbench checkpoint (`.pt` or `.safetensors`), loaded without running any code from it: a file
    that is missing, truncated, damaged, holds pickled objects or lacks what a workbench checkpoint holds
    (`REQUIRED`) is a CheckpointError that names it and says what to do."""
    path = Path(path)
    if path.is_dir():
        inside = [n for n in ("final.pt", "model.safetensors", "last.pt") if (path / n).is_file()]
        hint = f"give {path / inside[0]}" if inside else "it holds no final.pt, last.pt or model.safetensors"
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `python -m workbench train` "
                              f"or pass the path printed at the end of a run")
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
    else:
        if _plain_pickle(path):
            raise CheckpointError(
                f"checkpoint {path} is a plain pickle file (written by pickle.dump, or by torch.save with "
                f"_use_new_zipfile_serialization=False), not torch's zip archive: the workbench reads only zip "
                f"checkpoints, whose contents it can check before loading. If you trust the file, load it in "
                f"Python and save it again with torch.save(state, path)")
        problem = checkpoint_problem(path)
        if problem:
            raise _damaged(path, problem)
        try:
            with _legacy_safe_globals():
                state = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only load failed" in str(e).lower():
                raise _refused(path, e) from None
            raise _damaged(path, _plain_message(e)) from e
        except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as e:
            raise _damaged(path, _plain_message(e)) from e
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a workbench checkpoint: it lacks {', '.join(map(repr, missing))} (a run's final.pt or "
            f"last.pt holds {', '.join(REQUIRED)}). Pretrained encoder weights are given as model.weights=FILE")
    return state


def non_finite(state_dict: dict) -> list[str]:
    """The names of the floating-point tensors in `state_dict` (nested dicts too) holding NaN or inf."""
    bad = []
    for k, v in state_dict.items():
        if isinstance(v, dict):
            bad += [f"{k}.{name}" for name in non_finite(v)]
        elif torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad.append(str(k))
    return bad


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


def dtype_mismatches(target: dict, state_dict: dict) -> list[str]:
    """`key: checkpoint DTYPE vs model DTYPE` for each tensor of `state_dict` whose dtype differs from the
    same tensor of `target` (load_state_dict would cast it silently: integers or float16 for float32)."""
    return [f"{k}: checkpoint {str(state_dict[k].dtype).removeprefix('torch.')} vs "
            f"{str(v.dtype).removeprefix('torch.')}" for k, v in target.items()
            if k in state_dict and torch.is_tensor(state_dict[k]) and state_dict[k].dtype != v.dtype]


def load_state_strict(module: torch.nn.Module, state_dict: dict, what: str = "model") -> None:
    """load_state_dict(strict=True) with an error that lists what does not match: names and shapes, and
    dtypes (a weight is never cast on the way in)."""
    target = module.state_dict()
    problems = describe_mismatches(target, state_dict, what)
    if problems:
        raise CheckpointError(f"the checkpoint does not match the {what}: {problems}. Build the model "
                              f"from the checkpoint's own config (its 'config' entry / config.json)")
    cast = dtype_mismatches(target, state_dict)
    if cast:
        raise CheckpointError(f"the checkpoint's tensors do not have the {what}'s dtypes: {', '.join(cast[:3])}"
                              f"{', ...' if len(cast) > 3 else ''} ({len(cast)} of {len(target)} tensors). The workbench "
                              f"writes its weights unconverted (float32); these were cast, which loses or destroys "
                              f"them: use the run's own final.pt or model.safetensors")
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

    # plain strings (torch.__version__ is a str subclass, which a weights-only load would refuse)
    return {"python": platform.python_version(), "torch": str(torch.__version__), "timm": str(timm.__version__),
            "numpy": str(numpy.__version__), "workbench": str(workbench.__version__),
            "cuda": str(torch.version.cuda) if torch.cuda.is_available() else None, "platform": platform.platform()}


def write_run_info(run_dir: Path, cfg_json: str, extra: dict | None = None) -> dict:
    """config.json and run_info.json (versions, git commit, the numerical mode and CPU (`workbench.repro.mode`),
    and `extra`) next to the checkpoints."""
    from workbench import repro

    ensure_folder(run_dir)
    atomic_write_text(run_dir / "config.json", cfg_json)
    info = {"versions": versions(), "git_commit": git_commit(), "numerics": repro.mode(), **(extra or {})}
    atomic_write_text(run_dir / "run_info.json", json.dumps(info, indent=2))
    return info
