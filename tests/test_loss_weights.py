"""Loss weights (docs/METHOD.md, "Loss weights"): the gradient shares, and the `gradient_share` rule deciding
lambda, alpha, beta once, before a run starts, into its config (`workbench.runs.resolve_weights`)."""

import json
import math

import pytest
import torch

from workbench.config import Config, ConfigError, apply_overrides, preset
from workbench.methods.robustseg import TERMS, configured_weights, probe_config, rule_weights, shares
from workbench.runs import Run, probe_norms
from workbench.train import train

OVER = {"data.train_samples": 8, "data.val_samples": 4, "data.test_samples": 4, "train.epochs": 1,
        "distill.weighting": "gradient_share", "distill.probe_batches": 2}


def test_shares_from_norms_and_weights():
    norms = {"ce": 2.0, "kd": 0.1, "cp": 0.5, "ifv": 0.02}
    sh = shares(norms, {"kd": 50.0, "cp": 4.0, "ifv": 10.0})
    assert sh["kd"] == pytest.approx(50 * 0.1 / 2) and sh["cp"] == pytest.approx(4 * 0.5 / 5)
    assert sh["ifv"] == pytest.approx(10 * 0.02 / 5)


def test_the_rule_by_hand():
    norms = {"ce": 2.0, "kd": 0.1, "cp": 0.5, "ifv": 0.02}
    d = apply_overrides(preset("hpd", "tiny"), {"distill.share_cp": 0.25, "distill.share_ifv": 0.5}).distill
    w = rule_weights(d, norms)
    assert w == pytest.approx({"kd": 50.0, "cp": 0.25 * 50 * 0.1 / 0.5, "ifv": 0.5 * 50 * 0.1 / 0.02})
    d1 = apply_overrides(preset("hpd", "tiny"), {"distill.share_kd": 1.0}).distill
    assert rule_weights(d1, norms)["kd"] == pytest.approx(1.0 * 2.0 / 0.1)
    assert shares(norms, rule_weights(d1, norms))["kd"] == pytest.approx(1.0)


def test_gradient_share_writes_the_weights_into_the_config_and_every_row_gets_the_same():
    over = {**OVER, "distill.share_cp": 0.25, "distill.share_ifv": 0.5}
    hpd = Run.of("hpd", "tiny", 0, over, progress=False)
    d = hpd.config.distill
    assert d.weighting == "gradient_share" and d.weights_resolved
    norms = probe_norms(apply_overrides(preset("hpd", "tiny"), over), progress=False)
    assert set(norms) == {"ce", *(t.name for t in TERMS)} and all(v > 0 for v in norms.values())
    w = configured_weights(d)
    assert w["kd"] == 50.0, "share_kd=None keeps lambda"
    assert shares(norms, w)["cp"] == pytest.approx(0.25) and shares(norms, w)["ifv"] == pytest.approx(0.5)
    other = Run.of("ifv_cross", "tiny", 0, over, progress=False)
    ow = configured_weights(other.config.distill)  # ifv_cross uses kd and ifv (its alpha is 0)
    assert (ow["kd"], ow["cp"], ow["ifv"]) == (w["kd"], 0.0, w["ifv"]), "measured on the full method: the same for every row"
    assert hpd.config.hash() != apply_overrides(preset("hpd", "tiny"), over).hash()


def test_a_gradient_share_run_trains_with_its_configs_weights_and_a_config_rerun_needs_no_probe(tmp_path):
    run = Run.of("hpd", "tiny", 0, OVER, progress=False).ensure(progress=False)
    saved = Config.from_dict(json.loads((run.dir / "config.json").read_text()))
    assert saved == run.config and saved.distill.weights_resolved
    val = run.metrics().last_val
    assert {"val/share/kd", "val/share/cp", "val/share/ifv", "val/grad/ce"} <= set(val)
    assert all(math.isfinite(val[k]) for k in val if k.startswith("val/share/"))
    # a --config rerun of config.json: the weights are already in it, so it is the same run (same hash, folder)
    assert Run.from_config(saved).dir == run.dir
    # training it elsewhere gives the same weights bit for bit
    again = train(saved, tmp_path / "again", progress=False, teacher_checkpoint=run.teacher.checkpoint)
    a, b = torch.load(run.checkpoint, weights_only=True)["model"], torch.load(again.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_unresolved_gradient_share_config_is_refused_by_train(tmp_path):
    cfg = apply_overrides(preset("hpd", "tiny"), OVER)
    teacher = Run.from_config(cfg.teacher_config()).ensure(progress=False)
    with pytest.raises(ConfigError, match="decided before training"):
        train(cfg, tmp_path / "x", progress=False, teacher_checkpoint=teacher.checkpoint)
    with pytest.raises(ConfigError, match="weights_resolved"):
        apply_overrides(preset("hpd", "tiny"), {"distill.weights_resolved": True})


def test_a_row_keeps_the_terms_its_preset_switches_off():
    """gradient_share sets lambda, alpha, beta for the terms a row uses; basic_kd (alpha = beta = 0) and cpd
    (beta = 0) keep those terms off, so they do not become HPD under another name."""
    rows = {r: Run.of(r, "tiny", 0, OVER, progress=False).ensure(progress=False) for r in ("basic_kd", "cpd", "hpd")}
    w = {r: configured_weights(run.config.distill) for r, run in rows.items()}
    assert w["basic_kd"] == {"kd": w["hpd"]["kd"], "cp": 0.0, "ifv": 0.0}
    assert w["cpd"] == {"kd": w["hpd"]["kd"], "cp": w["hpd"]["cp"], "ifv": 0.0}
    assert w["hpd"]["cp"] > 0 and w["hpd"]["ifv"] > 0
    kd_state, hpd_state = rows["basic_kd"].state()["model"], rows["hpd"].state()["model"]
    assert any(not torch.equal(kd_state[k], hpd_state[k]) for k in kd_state), "basic_kd trained as HPD"


def test_paper_weighting_hashes_as_before_the_field_existed():
    """`weights_resolved` counts only under gradient_share: a paper-weighted run keeps its cache folder."""
    cfg = preset("robustseg", "quick")
    d = cfg.to_dict()
    d.pop("name"), d.pop("profile")
    for k in ("device", "val_every", "ckpt_every", "log"):
        d["train"].pop(k)
    assert "weights_resolved" in d["distill"]
    assert cfg.hash() == apply_overrides(cfg, {"distill.weights_resolved": False}).hash()


def test_the_probe_distils_from_the_rows_own_teacher():
    """The probe point is one epoch of basic distillation from the teacher the row distils (trained for the
    row's whole schedule), not from a baseline trained for the probe's single epoch."""
    cfg = apply_overrides(preset("hpd", "tiny"), {**OVER, "train.epochs": 2})
    run = Run.from_config(cfg, progress=False)
    probe = Run.from_config(probe_config(cfg, run.teacher.checkpoint))
    assert probe.done and probe.config.train.epochs == 1
    assert probe.teacher.checkpoint == run.teacher.checkpoint and run.teacher.config.train.epochs == 2
