"""`Run`, the one way into a trained run: its cached evaluations survive corruption, `--retrain` never
loses the old run, and a corrupt cached checkpoint is rebuilt instead of reused (docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from workbench import methods
from workbench.checkpoint import load_checkpoint
from workbench.config import apply_overrides, preset
from workbench.runs import Run


def _tiny():
    return apply_overrides(preset("tiny"), {"data.train_samples": 8, "data.val_samples": 4, "data.test_samples": 4,
                                            "train.epochs": 2})


def _weights(path):
    return load_checkpoint(path)["model"]


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_evaluation_cache_is_reported_and_recomputed(tmp_path, caplog):
    run = Run.from_config(_tiny(), tmp_path / "run").ensure(progress=False)
    first = run.evaluation("val")
    (entry,) = (tmp_path / "run" / "eval").iterdir()
    text = entry.read_text()
    entry.write_text(text[: len(text) // 2])  # a crash in the middle of a (non-atomic) write
    with caplog.at_level(logging.WARNING, logger="workbench.runs"):
        again = run.evaluation("val")
    assert str(entry) in caplog.text and "computing it again" in caplog.text
    assert again.summary("zero") == first.summary("zero") and again.summary("drop") == first.summary("drop")
    assert json.loads(entry.read_text())["results"] == json.loads(text)["results"]
    assert [p.name for p in (tmp_path / "run" / "eval").iterdir()] == [entry.name], "no temp file left"


def test_a_crash_while_retraining_leaves_the_old_run(tmp_path, monkeypatch):
    run = Run.from_config(_tiny(), tmp_path / "run").ensure(progress=False)
    before = {p.name: p.read_bytes() for p in run.dir.iterdir() if p.is_file()}
    weights = _weights(run.checkpoint)
    orig, calls = methods.Supervised.training_step, {"n": 0}

    def crash(self, batch, gen):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        return orig(self, batch, gen)

    monkeypatch.setattr(methods.Supervised, "training_step", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        run.ensure(progress=False, retrain=True)
    assert {p.name: p.read_bytes() for p in run.dir.iterdir() if p.is_file()} == before
    monkeypatch.setattr(methods.Supervised, "training_step", orig)
    run.ensure(progress=False, retrain=True)  # finishes, then replaces the old run
    assert _equal(_weights(run.checkpoint), weights)  # the same config and seed: the same weights
    assert [p.name for p in tmp_path.iterdir()] == ["run"], "no .retrain / .old folder left"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_cached_checkpoint_is_rebuilt(tmp_path, caplog, damage):
    """A cached final.pt that cannot be read is not reused: it is rebuilt from last.pt (the finished state),
    and the warning names the file."""
    run = Run.from_config(_tiny(), tmp_path / "run").ensure(progress=False)
    good = _weights(run.checkpoint)
    data = run.checkpoint.read_bytes()
    if damage == "truncated":
        run.checkpoint.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        run.checkpoint.write_bytes(data[:middle] + bytes(1000) + data[middle + 1000:])
    with caplog.at_level(logging.WARNING, logger="workbench.runs"):
        again = Run.from_config(_tiny(), tmp_path / "run").ensure(progress=False)
    assert str(run.checkpoint) in caplog.text
    assert _equal(_weights(again.checkpoint), good)
    again.model(device="cpu")


def test_corrupt_last_checkpoint_says_what_to_delete(tmp_path):
    from workbench.errors import CheckpointError

    run = Run.from_config(_tiny(), tmp_path / "run").ensure(progress=False)
    last = run.dir / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    run.checkpoint.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"delete {last}"):
        Run.from_config(_tiny(), tmp_path / "run").ensure(progress=False)


@pytest.fixture
def read_only(monkeypatch):
    """`read_only(folder)`: writes into `folder` fail with EROFS, as on a read-only mount (the tests run as
    root, for whom a chmod changes nothing)."""
    import errno
    import os
    from pathlib import Path

    folders = []
    real_open, real_mkdir = os.open, os.mkdir

    def blocked(path) -> bool:
        p = Path(os.fsdecode(path)).resolve()
        return any(p == f or p.is_relative_to(f) for f in folders)

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and blocked(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if blocked(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return lambda folder: folders.append(Path(folder).resolve())


def test_a_read_only_run_can_be_evaluated(tmp_path, read_only, capsys):
    """The evaluation cache falls back to --out (or to the runs folder); without --out the tables have
    nowhere to go and the one error line says to give --out; an entry the run already holds is read."""
    from workbench.cli import main
    from workbench.paths import runs_dir

    run = Run.from_config(_tiny(), tmp_path / "run").ensure(progress=False)
    held = run.evaluation("val", protocols=("zero",))  # cached in the run before it became read-only
    before = sorted(p.name for p in run.dir.rglob("*"))
    read_only(run.dir)
    capsys.readouterr()  # the training's log lines
    out = tmp_path / "tables"
    assert main(["evaluate", str(run.dir), "--split", "test", "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    assert {p.name.split("-")[0] for p in (out / "eval").iterdir()} == {"combos"}
    assert (out / "combos_test_model.csv").exists()
    assert main(["evaluate", str(run.dir), "--split", "test", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the tables into the run's folder {run.dir}") and "--out DIR" in err
    assert err.count("\n") == 1 and "WORKBENCH_RUNS" not in err
    # the library: a new entry goes to the user's runs folder, an existing one is read where it is
    again = Run.at(run.dir)
    res = again.evaluation("test", protocols=("drop",))
    assert [p.parent.parent.name for p in (runs_dir() / "eval-cache").rglob("*.json")] == ["eval-cache"]
    assert res.full("drop") == again.evaluation("test", protocols=("drop",)).full("drop")
    assert again.evaluation("val", protocols=("zero",)).summary("zero") == held.summary("zero")
    assert sorted(p.name for p in run.dir.rglob("*")) == before, "nothing was written into the run"
def _side_by_side_runs(overrides):
    small = {"data.train_samples": 8, "data.val_samples": 4, "data.test_samples": 4, "train.epochs": 2}
    return [Run.of("robustseg", "tiny", 0, small | overrides), Run.of("baseline", "tiny", 1, small | overrides),
            Run.of("basic_kd", "tiny", 0, small | overrides)]


def _one_thread_one_after_another(runs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [r.ensure(progress=False) for r in runs]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_runs_trained_side_by_side_equal_runs_trained_one_after_another_at_one_thread(monkeypatch, tmp_path):
    """`Run.ensure_many(jobs=2)`: two processes at one thread each (the students wait for their teacher, which
    trains once) give bitwise the weights of `ensure()` at one thread, one run after another."""
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "side"))
    side = Run.ensure_many(_side_by_side_runs({}), jobs=2)
    assert all(r.done for r in side) and side[0].teacher.done
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "seq"))
    seq = _one_thread_one_after_another(_side_by_side_runs({}))
    for a, b in zip(side, seq):
        assert _equal(_weights(a.checkpoint), _weights(b.checkpoint)), a
    assert _equal(load_checkpoint(side[0].checkpoint)["method"]["teacher"],
                  load_checkpoint(seq[0].checkpoint)["method"]["teacher"])


def test_ensure_many_by_default_trains_here_as_ensure(monkeypatch, tmp_path):
    """The default (jobs=1): one run after another in this process, at its thread count, bitwise `ensure()`."""
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "one"))
    runs = _side_by_side_runs({})[1:2]
    assert Run.ensure_many(runs) == runs and runs[0].done
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "seq"))
    (ref,) = [r.ensure(progress=False) for r in _side_by_side_runs({})[1:2]]
    assert _equal(_weights(runs[0].checkpoint), _weights(ref.checkpoint))
    assert Run.ensure_many(runs, jobs=2) == runs, "nothing left to train: no process is started"
