"""`workbench.weighting`: the gradient shares and the `gradient_share` rule, on the tiny profile."""

import math

import pytest

from workbench.runs import Run
from workbench.weighting import shares

OVER = {"data.train_samples": 8, "data.val_samples": 4, "data.test_samples": 4, "train.epochs": 1,
        "distill.weighting": "gradient_share", "distill.probe_batches": 2}


def test_shares_from_norms_and_weights():
    norms = {"ce": 2.0, "kd": 0.1, "cp": 0.5, "ifv": 0.02}
    sh = shares(norms, {"kd": 50.0, "cp": 4.0, "ifv": 10.0})
    assert sh["kd"] == pytest.approx(50 * 0.1 / 2) and sh["cp"] == pytest.approx(4 * 0.5 / 5)
    assert sh["ifv"] == pytest.approx(10 * 0.02 / 5)


def test_gradient_share_sets_the_weights_to_the_stated_shares_and_every_row_gets_the_same():
    hpd = Run.of("hpd", "tiny", 0, {**OVER, "distill.share_cp": 0.25, "distill.share_ifv": 0.5})
    lw = hpd.loss_weights()
    assert set(lw.norms) == {"ce", "kd", "cp", "ifv"} and all(v > 0 for v in lw.norms.values())
    assert lw.kd_weight == 50.0, "share_kd=None keeps lambda"
    assert lw.shares()["cp"] == pytest.approx(0.25) and lw.shares()["ifv"] == pytest.approx(0.5)
    other = Run.of("ifv_cross", "tiny", 0, {**OVER, "distill.share_cp": 0.25, "distill.share_ifv": 0.5})
    assert other.loss_weights().as_dict() == lw.as_dict(), "measured on the full method: the same for every row"
    kd = Run.of("basic_kd", "tiny", 0, {**OVER, "distill.share_kd": 1.0}).loss_weights()
    assert kd.shares()["kd"] == pytest.approx(1.0)


def test_a_gradient_share_run_trains_with_those_weights_and_logs_the_shares():
    run = Run.of("hpd", "tiny", 0, OVER).ensure(progress=False)
    weights = run.state()["method"]["weights"]
    assert weights == pytest.approx(run.loss_weights().as_dict())
    val = run.metrics().last_val
    assert {"val/share/kd", "val/share/cp", "val/share/ifv", "val/grad/ce"} <= set(val)
    assert all(math.isfinite(val[k]) for k in val if k.startswith("val/share/"))


def test_a_row_keeps_the_terms_its_preset_switches_off(caplog):
    """gradient_share sets lambda, alpha, beta for the terms a row uses; basic_kd (alpha = beta = 0) and cpd
    (beta = 0) keep those terms off, so they do not become HPD under another name. A run trained by the
    older rule (its run_info.json records other weights) is trained again, not reused."""
    import json

    import torch

    rows = {r: Run.of(r, "tiny", 0, OVER).ensure(progress=False) for r in ("basic_kd", "cpd", "hpd")}
    lw = rows["hpd"].loss_weights().as_dict()
    w = {r: run.state()["method"]["weights"] for r, run in rows.items()}
    assert w["basic_kd"] == pytest.approx({"kd": lw["kd"], "cp": 0.0, "ifv": 0.0})
    assert w["cpd"] == pytest.approx({"kd": lw["kd"], "cp": lw["cp"], "ifv": 0.0})
    assert w["hpd"] == pytest.approx(lw)
    kd_state, hpd_state = rows["basic_kd"].state()["model"], rows["hpd"].state()["model"]
    assert any(not torch.equal(kd_state[k], hpd_state[k]) for k in kd_state), "basic_kd trained as HPD"

    run = rows["basic_kd"]
    info_path = run.dir / "run_info.json"
    info = json.loads(info_path.read_text())
    info["loss_weights"] = lw  # what the old rule recorded: every term on
    info_path.write_text(json.dumps(info))
    before = run.checkpoint.stat().st_mtime_ns
    again = Run.of("basic_kd", "tiny", 0, OVER).ensure(progress=False)
    assert "training it again" in caplog.text
    assert again.checkpoint.stat().st_mtime_ns != before
    assert json.loads(info_path.read_text())["loss_weights"] == pytest.approx(w["basic_kd"])
    assert Run.of("basic_kd", "tiny", 0, OVER).ensure(progress=False).checkpoint.stat().st_mtime_ns == \
        again.checkpoint.stat().st_mtime_ns, "a run trained with the current rule is reused"


def test_the_probe_distils_from_the_rows_own_teacher():
    """The probe point is one epoch of basic distillation from the teacher the row distils (trained for the
    row's whole schedule), not from a baseline trained for the probe's single epoch."""
    from workbench.weighting import probe_config

    run = Run.of("hpd", "tiny", 0, {**OVER, "train.epochs": 2})
    run.loss_weights()
    probe = Run.from_config(probe_config(run.config, run.teacher.checkpoint))
    assert probe.done and probe.config.train.epochs == 1
    assert probe.teacher.checkpoint == run.teacher.checkpoint and run.teacher.config.train.epochs == 2
