import json

import pytest
import torch

from workbench.checkpoint import CheckpointError, load_checkpoint
from workbench.config import apply_overrides, preset
from workbench.data import build_dataset
from workbench.data.base import check_label
from workbench.errors import ConfigError, RunLocked
from workbench.models import load_model
from workbench.train import TrainingDiverged, lr_factor, train


def _losses(result):
    return [h["train/loss"] for h in result.history if "train/loss" in h]


def test_same_seed_same_loss_history(tiny_cfg, tmp_path):
    a = train(tiny_cfg, tmp_path / "a", progress=False)
    b = train(tiny_cfg, tmp_path / "b", progress=False)
    assert len(_losses(a)) == 4 and _losses(a) == _losses(b)
    c = train(apply_overrides(tiny_cfg, ["train.seed=1"]), tmp_path / "c", progress=False)
    assert _losses(c) != _losses(a)


def test_resume_equals_uninterrupted(tiny_cfg, tmp_path, monkeypatch):
    cfg = apply_overrides(tiny_cfg, ["train.epochs=3", "data.augment=true", "model.head_dropout=0.5"])
    full = train(cfg, tmp_path / "full", progress=False)
    # the same run killed in the middle of epoch 2 (Ctrl-C), then resumed from its last.pt
    from workbench import methods

    orig, calls = methods.Supervised.training_step, {"n": 0}

    def killed(self, batch, gen):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return orig(self, batch, gen)

    monkeypatch.setattr(methods.Supervised, "training_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 0 and not (tmp_path / "cut" / "final.pt").exists()
    monkeypatch.setattr(methods.Supervised, "training_step", orig)
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert len(_losses(full)) == 6 and _losses(resumed) == _losses(full)
    a, b = load_checkpoint(full.checkpoint)["model"], load_checkpoint(resumed.checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [x.get("train/loss") for x in lines] == [x.get("train/loss") for x in full.history]


def test_run_dir_has_config_versions_and_commit(tiny_cfg, tmp_path):
    res = train(tiny_cfg, tmp_path / "r", progress=False)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["name"] == "baseline"
    info = json.loads((tmp_path / "r" / "run_info.json").read_text())
    assert {"torch", "timm", "python"} <= set(info["versions"]) and info["git_commit"]
    assert res.last_val is not None and 0 <= res.last_val["val/miou_full"] <= 100
    model = load_model(res.checkpoint)
    assert model.modalities == ("rgb", "depth", "event", "lidar")


def _poison_third_step(monkeypatch) -> None:
    """The supervised step's loss becomes NaN at its third call (step 2), as a diverging run's would."""
    from workbench import methods

    orig, calls = methods.Supervised.training_step, {"n": 0}

    def poisoned(self, batch, gen):
        out = orig(self, batch, gen)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(methods.Supervised, "training_step", poisoned)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    train(tiny_cfg, tmp_path / "r", progress=False)
    good = (tmp_path / "r" / "last.pt").read_bytes()
    _poison_third_step(monkeypatch)
    cfg = apply_overrides(tiny_cfg, ["train.epochs=3"])
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 2.*last good checkpoint"):
        train(cfg, tmp_path / "r2", progress=False)
    assert (tmp_path / "r2" / "last.pt").exists()  # epoch 1 finished before the NaN at step 3
    assert load_checkpoint(tmp_path / "r2" / "last.pt")["epoch"] == 0
    assert (tmp_path / "r" / "last.pt").read_bytes() == good


def test_truncated_or_mismatched_checkpoints_fail_clearly(tiny_cfg, tmp_path):
    res = train(tiny_cfg, tmp_path / "r", progress=False)
    data = res.checkpoint.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(bad)
    state = load_checkpoint(res.checkpoint)
    state["config"]["model"]["head_dim"] = 32
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_model(state)
    state = load_checkpoint(res.checkpoint)
    state["model"].pop(next(iter(state["model"])))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model(state)
    with pytest.raises(CheckpointError, match="different config"):
        train(apply_overrides(tiny_cfg, ["train.lr=0.5"]), tmp_path / "r", resume=True, progress=False)


def test_labels_outside_the_classes_name_the_sample():
    with pytest.raises(ValueError, match="sample val/000003 has label values \\[12\\]"):
        check_label(torch.tensor([[0, 12, 255]]), 12, {"file": "val/000003"})
    ds = build_dataset("synthetic", "val", size=32, num_samples=2)
    ds.classes = ds.classes[:3]  # pretend only 3 classes exist
    with pytest.raises(ValueError, match="outside 0..2"):
        ds[0]


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(i, 100, 10, 0.9) for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[10] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:11])) and all(a >= b for a, b in zip(f[10:], f[11:]))


def test_non_finite_weights_are_never_checkpointed(tiny_cfg, tmp_path, monkeypatch):
    """Weights that turn NaN on a step whose loss was finite (here: the last step of epoch 2) stop the run
    before validation and before the checkpoint: last.pt stays the good one of epoch 1."""
    from workbench import methods

    orig, calls = methods.Supervised.after_step, {"n": 0}

    def poisoned(self, batch, gen, lr):
        calls["n"] += 1
        if calls["n"] == 4:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return orig(self, batch, gen, lr)

    monkeypatch.setattr(methods.Supervised, "after_step", poisoned)
    run = tmp_path / "r"
    with pytest.raises(TrainingDiverged) as e:
        train(apply_overrides(tiny_cfg, ["train.epochs=3"]), run, progress=False)
    msg = str(e.value)
    assert "non-finite weights after step 4" in msg and "ce=" in msg and str(run / "last.pt") in msg
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run / "final.pt").exists()


def test_huge_learning_rate_stops_with_only_finite_checkpoints(tiny_cfg, tmp_path):
    """lr=1000 on the tiny preset diverges (seed 1: the weights turn NaN at the end of epoch 2 while the loss
    of that step is finite); the stop names the step, the loss terms and the good checkpoint that remains."""
    run = tmp_path / "r"
    with pytest.raises(TrainingDiverged) as e:
        train(apply_overrides(tiny_cfg, ["train.lr=1000", "train.epochs=4", "train.seed=1"]), run, progress=False)
    msg = str(e.value)
    assert "step " in msg and "ce=" in msg and "last good checkpoint" in msg
    assert str(run / "last.pt") in msg and not (run / "final.pt").exists()
    state = load_checkpoint(run / "last.pt")
    bad = [k for k, v in state["model"].items() if not torch.isfinite(v).all()]
    assert bad == [], f"the checkpoint the message calls good holds {len(bad)} non-finite tensors"
    load_model(run / "last.pt")


def test_distillation_resume_gives_the_same_records(tiny_cfg, tmp_path, monkeypatch):
    """RobustSeg's ASM statistics between validations are part of the checkpoint: a run killed in the middle
    of epoch 2 (val every 2 epochs) and resumed writes the same metrics.jsonl and weights as an uninterrupted one."""
    from workbench import methods

    teacher = train(tiny_cfg, tmp_path / "teacher", progress=False).checkpoint
    cfg = apply_overrides(preset("robustseg", "tiny"), {"data.train_samples": 8, "data.val_samples": 4,
                                                        "data.test_samples": 4, "train.epochs": 3,
                                                        "train.val_every": 2})
    full = train(cfg, tmp_path / "full", progress=False, teacher_checkpoint=teacher)
    orig, calls = methods.Distiller.training_step, {"n": 0}

    def killed(self, batch, gen):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return orig(self, batch, gen)

    monkeypatch.setattr(methods.Distiller, "training_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False, teacher_checkpoint=teacher)
    monkeypatch.setattr(methods.Distiller, "training_step", orig)
    train(cfg, tmp_path / "cut", resume=True, progress=False, teacher_checkpoint=teacher)

    def records(run):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in x.items() if k != "img_per_s"} for x in lines]

    assert any("val/primary/rgb" in r for r in records(tmp_path / "full"))
    assert records(tmp_path / "cut") == records(tmp_path / "full")
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(tmp_path / "cut" / "final.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["method"]["teacher"][k], b["method"]["teacher"][k]) for k in a["method"]["teacher"])


def test_one_writer_per_run(tiny_cfg, tmp_path):
    """A second writer of a run stops at once, naming the run and the process that holds it."""
    import subprocess
    import sys

    run = tmp_path / "r"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0); f.write(str(os.getpid())); f.flush(); "
         "print('locked', flush=True); time.sleep(60)", str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"{run}.*process {holder.pid}"):
            train(tiny_cfg, run, progress=False)
        assert not (run / "metrics.jsonl").exists() and not (run / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    train(tiny_cfg, run, progress=False)  # the lock went with its holder
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6


def test_eval_size_below_the_encoder_stride_is_refused_before_training():
    with pytest.raises(ConfigError, match="data.eval_size=16"):
        apply_overrides(preset("tiny"), ["data.eval_size=16"])
    assert apply_overrides(preset("tiny"), ["data.eval_size=32"]).data.eval_size == 32


def test_run_dir_that_is_a_file_is_a_clear_error(tiny_cfg, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file"):
        train(tiny_cfg, tmp_path / "file", progress=False)
    with pytest.raises(ConfigError, match="is a file"):
        train(tiny_cfg, tmp_path / "file" / "run", progress=False)


def test_deferred_logging_records_every_step_as_before(tiny_cfg, tmp_path):
    """train.log_every only sets how many steps' loss terms are copied to the host at once: metrics.jsonl
    and the history hold the same records (every step, the same numbers) for any value, and a RobustSeg
    student's feedback terms and ASM counts (kept on the device) come out the same."""
    teacher = train(tiny_cfg, tmp_path / "teacher", progress=False).checkpoint
    cfg = apply_overrides(preset("robustseg", "tiny"), {"data.train_samples": 12, "data.val_samples": 4,
                                                        "data.test_samples": 4, "train.epochs": 2})

    def records(log_every):
        run = tmp_path / f"every{log_every}"
        res = train(apply_overrides(cfg, {"train.log_every": log_every}), run, progress=False,
                    teacher_checkpoint=teacher)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert lines == res.history
        return [{k: v for k, v in x.items() if k != "img_per_s"} for x in lines]

    one = records(1)
    train_steps = [r["step"] for r in one if "train/loss" in r]
    assert train_steps == list(range(1, 7)), "every step has its record"
    assert all(isinstance(r["train/feedback/ce"], float) for r in one if "train/loss" in r)
    assert any("val/primary/rgb" in r for r in one)
    assert records(4) == one and records(100) == one


def test_a_stop_writes_the_steps_before_it(tiny_cfg, tmp_path, monkeypatch):
    """Records still waiting for their host copy are written before a non-finite loss stops the run."""
    _poison_third_step(monkeypatch)
    cfg = apply_overrides(tiny_cfg, {"train.epochs": 3, "train.log_every": 100})
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 2 \(epoch 2\): loss=nan, ce="):
        train(cfg, tmp_path / "r", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "train/loss" in x] == [1, 2]
