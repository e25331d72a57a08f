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
