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
