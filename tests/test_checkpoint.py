"""Checkpoints are data, never code (docs/RELIABILITY.md): every load refuses pickled objects with a
clear message, final weights are also written as safetensors, non-finite weights are refused, and run
files are written atomically with the user's umask, without leftovers, and with a clear disk-full error."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.checkpoint import atomic_write_bytes, atomic_write_text, load_checkpoint
from workbench.cli import main
from workbench.config import apply_overrides, preset
from workbench.errors import CheckpointError, StorageError
from workbench.models import load_model
from workbench.paths import REPO_ROOT
from workbench.runs import Run
from workbench.train import train


class RunsCode:
    """Unpickling this runs code, as an attacker's payload would: here it only writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _tiny(**over):
    return apply_overrides(preset("tiny"), {"data.train_samples": 8, "data.val_samples": 4, "data.test_samples": 4,
                                            "train.epochs": 2, **over})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny baseline run (read-only for the tests: copy it before changing anything)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(_tiny(), run, progress=False)
    return run


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, trained) -> Path:
    """A finished tiny RobustSeg run (student + feedback-updated teacher) distilled from `trained`."""
    run = tmp_path_factory.mktemp("distilled") / "run"
    cfg = apply_overrides(preset("robustseg", "tiny"), {"data.train_samples": 8, "data.val_samples": 4,
                                                        "data.test_samples": 4, "train.epochs": 1})
    train(cfg, run, progress=False, teacher_checkpoint=trained / "final.pt")
    return run


def _poisoned(src: Path, dst: Path, marker: Path) -> Path:
    """`src` with one extra entry whose unpickling would run code."""
    state = load_checkpoint(src)
    state["notes"] = RunsCode(marker)
    torch.save(state, dst)
    return dst


def test_workbench_checkpoints_hold_only_plain_data(trained, distilled):
    for path in (trained / "final.pt", trained / "last.pt", distilled / "final.pt", distilled / "last.pt"):
        state = torch.load(path, weights_only=True)  # nothing allow-listed: tensors and plain types only
        assert type(state["run_info"]["versions"]["torch"]) is str
        assert {"model", "config", "classes", "modalities"} <= set(state)


def test_no_code_runs_on_any_load(trained, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = _poisoned(trained / "final.pt", tmp_path / "evil.pt", marker)
    # the library entry points
    for load in (load_checkpoint, load_model, Run.at):
        with pytest.raises(CheckpointError, match=r"evil\.pt.*refused.*pickled Python object \(exec\)"):
            load(evil)
    # evaluate and bench combos --checkpoint: one error line naming the file, no traceback
    assert main(["evaluate", str(evil), "--quiet"]) == 1
    assert main(["bench", "combos", "--checkpoint", str(evil), "--profiles", "tiny", "--robustness", "none"]) == 1
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "evil.pt" in err and "Traceback" not in err and "\x1b[" not in err
    # resume (train --resume and the run cache's automatic resume) reads last.pt
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "final.pt").unlink()
    _poisoned(trained / "last.pt", run / "last.pt", marker)
    with pytest.raises(CheckpointError, match="refused"):
        train(_tiny(), run, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="refused"):
        Run.from_config(_tiny(), run).ensure(progress=False)
    # the teacher of a distillation run
    with pytest.raises(CheckpointError, match="refused"):
        train(apply_overrides(preset("robustseg", "tiny"), {"distill.teacher": str(evil), "data.train_samples": 8}),
              tmp_path / "student", progress=False)
    assert not marker.exists(), "a checkpoint load ran code from the file"


def test_checkpoints_of_older_versions_still_load(trained, tmp_path):
    """Before checkpoints stored plain strings, run_info held torch's TorchVersion (a str subclass)."""
    state = load_checkpoint(trained / "final.pt")
    state["run_info"]["versions"]["torch"] = torch.__version__
    assert type(state["run_info"]["versions"]["torch"]) is not str
    torch.save(state, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").num_classes == 12


def test_final_weights_as_safetensors(trained, distilled, tmp_path):
    from safetensors import safe_open

    for run, names in ((trained, ["model"]), (distilled, ["model", "teacher"])):
        for which in names:
            path = run / f"{which}.safetensors"
            with safe_open(str(path), "pt") as f:
                assert f.metadata()["which"] == which
            a, b = load_model(path).state_dict(), load_model(run / "final.pt", which=which).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (trained / "teacher.safetensors").exists()
    # a shared model: config.json and the safetensors file only, opened as a run folder
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("config.json", "model.safetensors", "teacher.safetensors"):
        shutil.copy(distilled / name, shared / name)
    run = Run.at(shared)
    assert run.checkpoint == shared / "model.safetensors" and run.config.name == "robustseg"
    teacher = run.model("teacher", device="cpu").state_dict()
    ref = load_model(distilled / "final.pt", which="teacher").state_dict()
    assert all(torch.equal(teacher[k], ref[k]) for k in ref)
    # the same strict load: a tensor of the wrong shape is refused
    from safetensors.torch import load_file, save_file

    weights = load_file(str(shared / "model.safetensors"))
    key = next(iter(weights))
    weights[key] = torch.zeros(3)
    with safe_open(str(shared / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    save_file(weights, str(shared / "model.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_model(shared)


def test_non_finite_weights_are_refused(trained, tmp_path, capsys):
    state = load_checkpoint(trained / "final.pt")
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key][...] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=f"non-finite.*{key}"):
        load_model(tmp_path / "nan.pt")
    assert main(["evaluate", str(tmp_path / "nan.pt"), "--quiet"]) == 1
    assert "non-finite" in capsys.readouterr().err
    # the evaluation engine refuses a model in memory too
    from workbench.evaluate import evaluate_combinations

    model = load_model(trained / "final.pt")
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(CheckpointError, match="non-finite"):
        evaluate_combinations(model, Run.at(trained).loader("val"), progress=False)


def test_interrupted_writes_leave_no_temp_files(tmp_path):
    """A writer killed mid-write (kill -9) leaves its temp file; the next write to that folder removes it."""
    target = tmp_path / "last.pt"
    code = ("import os, signal, sys; from workbench.checkpoint import atomic_write_bytes\n"
            "atomic_write_bytes(sys.argv[1], lambda f: (f.write(b'x' * 1000), f.flush(), "
            "os.kill(os.getpid(), signal.SIGKILL)))")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO_ROOT,
                          env=os.environ | {"PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == -signal.SIGKILL
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".last.pt.") and stale[0].endswith(".tmp")
    atomic_write_text(tmp_path / "config.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_write_in_progress_elsewhere_is_not_removed(tmp_path):
    """Only temp files of writers that are gone are removed (this process is alive)."""
    seen = {}

    def write(f):
        seen["temps"] = sorted(p.name for p in tmp_path.iterdir())
        atomic_write_text(tmp_path / "other.json", "{}")  # a second write while the first is in progress
        seen["after"] = sorted(p.name for p in tmp_path.iterdir())
        f.write(b"data")

    atomic_write_bytes(tmp_path / "a.bin", write)
    assert len(seen["temps"]) == 1 and seen["temps"][0] in seen["after"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "other.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        run = tmp_path / "run"
        train(_tiny(**{"train.epochs": 1}), run, progress=False)
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    files = [tmp_path / "a.json"] + [p for p in run.iterdir() if p.is_file()]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(expected) for p in files}
    assert {"last.pt", "final.pt", "model.safetensors", "config.json", "metrics.jsonl"} <= {p.name for p in files}


def test_disk_full_is_a_clear_error(trained, tmp_path, monkeypatch, capsys):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match=r"no space left on the device.*last\.pt"):
        atomic_write_bytes(target, full)
    assert target.read_bytes() == b"the previous checkpoint" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    # from the command line: one error line, exit 1
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    over = ["--set", "data.train_samples=8", "--set", "data.val_samples=4", "--set", "train.epochs=1"]
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet", *over]) == 1
    err = capsys.readouterr().err
    assert "error: no space left on the device" in err and "Traceback" not in err
    # anywhere else too, e.g. the tables evaluate writes
    monkeypatch.undo()

    def write_text(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", write_text)
    assert main(["evaluate", str(trained), "--out", str(tmp_path / "tables"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"error: no space left on the device while writing {tmp_path / 'tables'}" in err and "Traceback" not in err


def test_import_mit_names_a_workbench_checkpoint(trained, tmp_path, capsys):
    assert main(["weights", "import-mit", str(trained / "final.pt"), "--variant", "b0",
                 "--out", str(tmp_path / "w.pth")]) == 1
    err = capsys.readouterr().err
    assert "is a workbench checkpoint" in err and "evaluate" in err and "distill.teacher" in err
    assert "truncated" not in err and "\x1b[" not in err and not (tmp_path / "w.pth").exists()


class _FullDisk:
    """A file whose writes fail with ENOSPC after `room` bytes, as a full disk's would (torch.save reports it
    as a RuntimeError "enforce fail at inline_container.cc", the OSError only as its context)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    """The second epoch's last.pt hits a full disk inside torch.save: one error line that names the file and
    says the previous checkpoint is intact; it is, and resuming from it gives the uninterrupted run."""
    real_fdopen, writes = os.fdopen, []

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if ".last.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            writes.append(fd)
            if len(writes) == 2:
                return _FullDisk(f, room=4096)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    run = tmp_path / "run"
    over = ["--set", "data.train_samples=8", "--set", "data.val_samples=4", "--set", "train.epochs=2",
            "--eval-split", "none", "--quiet"]
    assert main(["train", "--preset", "tiny", "--out", str(run), *over]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device while writing") and err.count("\n") == 1, err
    assert str(run / "last.pt") in err and "the previous checkpoint last.pt is intact" in err
    assert "Traceback" not in err and "inline_container" not in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 0 and not (run / "final.pt").exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")], "no temp file is left"
    monkeypatch.undo()
    assert main(["train", "--preset", "tiny", "--out", str(run), "--resume", *over]) == 0
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "ref"), *over]) == 0
    a, b = load_checkpoint(run / "final.pt")["model"], load_checkpoint(tmp_path / "ref" / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run equals the uninterrupted one"


def test_the_lock_message_gives_the_advice_that_fits_the_run(tmp_path, capsys):
    """A cached run is reused by the same command; a `train --out DIR` run needs --resume (the same command
    would refuse a folder that holds a run)."""
    import fcntl

    from workbench.checkpoint import run_lock
    from workbench.errors import RunLocked
    from workbench.runs import cache_dir

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        argv = ["train", "--preset", "tiny", "--out", str(out), "--quiet", "--eval-split", "none"]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: the run {out} is being written by") and err.count("\n") == 1
        assert f"`train --out {out} --resume`" in err and "the same command then" not in err
    cached = cache_dir(_tiny())
    cached.mkdir(parents=True)
    with open(cached / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RunLocked, match="the same command then reuses or resumes the run"), run_lock(cached):
            pass


class CallsSystem:
    """Unpickles as a call of os.system (torch 2.14 words this refusal differently from other globals)."""

    def __reduce__(self):
        return (os.system, ("true",))


def test_a_refused_checkpoint_names_the_object_in_each_of_torchs_wordings(trained, tmp_path):
    import functools

    state = load_checkpoint(trained / "final.pt")
    for payload, name in ((CallsSystem(), os.system.__module__ + ".system"), (functools.partial(print, 1),
                                                                               "functools.partial")):
        torch.save({**state, "notes": payload}, tmp_path / "evil.pt")
        with pytest.raises(CheckpointError, match=rf"pickled Python object \({name}\) that would run code"):
            load_checkpoint(tmp_path / "evil.pt")


def _resaved(src: Path, dst: Path, weights=None, **meta) -> Path:
    """The safetensors file `src` written again with other weights and/or header entries (None drops one)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header = {k: v for k, v in {**header, **meta}.items() if v is not None}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights(tensors) if weights else tensors, str(dst), metadata=header)
    return dst


@pytest.mark.parametrize("dtype", [torch.float16, torch.int32, torch.float64])
def test_safetensors_weights_of_another_dtype_are_refused(trained, tmp_path, capsys, dtype):
    """Before, a model whose weights were cast (here: every tensor) was evaluated as if nothing happened."""
    cast = _resaved(trained / "model.safetensors", tmp_path / "cast" / "model.safetensors",
                    weights=lambda w: {k: v.to(dtype) if v.is_floating_point() else v for k, v in w.items()})
    with pytest.raises(CheckpointError, match=rf"do not have the model's dtypes: .*checkpoint {str(dtype)[6:]} vs "
                                              rf"float32"):
        load_model(cast)
    assert main(["evaluate", str(cast), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the checkpoint's tensors do not have the model's dtypes") and err.count("\n") == 1


def test_each_kind_of_unusable_checkpoint_gets_its_own_message(trained, tmp_path, capsys):
    import pickle

    state = load_checkpoint(trained / "final.pt")
    cases = {}
    # a pickle that is not a zip archive is not "truncated or corrupt"
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with open(tmp_path / "pickled.pt", "wb") as f:
        pickle.dump({"model": {}}, f)
    for name in ("legacy.pt", "pickled.pt"):
        cases[name] = (tmp_path / name, ["is a plain pickle file", "torch.save(state, path)"])
    # a folder is not "does not exist"
    cases["folder"] = (trained, [f"{trained} is a folder, not a checkpoint file", f"give {trained / 'final.pt'}"])
    # a list-shaped config.json beside a safetensors file without a config in its header names the file
    shared = tmp_path / "shared"
    _resaved(trained / "model.safetensors", shared / "model.safetensors", config=None)
    (shared / "config.json").write_text("[1, 2]")
    cases["config list"] = (shared / "model.safetensors", [f"{shared / 'config.json'} holds a JSON list"])
    # a modality the dataset does not have, in the header
    odd = _resaved(trained / "model.safetensors", tmp_path / "odd" / "model.safetensors",
                   modalities='["rgb", "depth", "event", "thermal"]')
    cases["modality"] = (odd, ["'thermal' is not a modality of its dataset synthetic", "rgb, depth, event, lidar"])
    for what, (path, words) in cases.items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path) if what == "folder" else load_model(path)
        for w in words:
            assert w in str(e.value), (what, w, str(e.value))
        assert "truncated or corrupt" not in str(e.value) and "does not exist" not in str(e.value), what
    # folders given for a file on the command line: a config, pretrained weights
    assert main(["train", "--config", str(trained)]) == 2
    assert capsys.readouterr().err == f"error: --config {trained} is a folder, not a config file; give " \
                                      f"{trained / 'config.json'}\n"
    assert main(["train", "--preset", "tiny", "--set", f"model.weights={tmp_path}", "--out", str(tmp_path / "w"),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: weights {tmp_path} is a folder, not a weights file") and err.count("\n") == 1


def test_a_config_file_that_is_not_an_object_names_the_file(tmp_path, capsys):
    (tmp_path / "list.json").write_text('["name", "baseline"]')
    (tmp_path / "typo.json").write_text('{"trian": {}}')
    assert main(["train", "--config", str(tmp_path / "list.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --config {tmp_path / 'list.json'} holds a JSON list, not a config object")
    assert main(["train", "--config", str(tmp_path / "typo.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --config {tmp_path / 'typo.json'}: unknown config key trian")


def test_safetensors_files_are_byte_identical_for_the_same_weights(trained, tmp_path):
    """safetensors writes its header's metadata in hash-map order; the workbench sorts it, so two identical
    runs (or two saves of one) give the same bytes, and the file still loads the same weights."""
    from safetensors import safe_open

    from workbench.checkpoint import save_weights

    state = load_checkpoint(trained / "final.pt")
    meta = (state["config"], state["classes"], state["modalities"])
    files = [save_weights(tmp_path / f"{i}.safetensors", state["model"], "model", *meta).read_bytes()
             for i in range(8)]
    assert all(f == files[0] for f in files)
    n = int.from_bytes(files[0][:8], "little")
    header = json.loads(files[0][8:8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"]) and (8 + n) % 8 == 0
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata()["which"] == "model" and json.loads(f.metadata()["config"]) == json.loads(json.dumps(state["config"]))
    loaded = load_model(tmp_path / "0.safetensors").state_dict()
    assert all(torch.equal(loaded[k], state["model"][k]) for k in state["model"])
    assert (trained / "model.safetensors").read_bytes() == files[0], "train wrote the same bytes"
