import json

import pytest
import torch

from workbench.checkpoint import CheckpointError, load_checkpoint
from workbench.config import apply_overrides
from workbench.data import build_dataset
from workbench.data.base import check_label
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


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    train(tiny_cfg, tmp_path / "r", progress=False)
    good = (tmp_path / "r" / "last.pt").read_bytes()
    from workbench import methods

    orig = methods.Supervised.training_step
    calls = {"n": 0}

    def poisoned(self, batch, gen):
        out = orig(self, batch, gen)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(methods.Supervised, "training_step", poisoned)
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
