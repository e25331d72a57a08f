import pytest
import torch
from torch.utils.data import DataLoader

from workbench import losses as L
from workbench.config import ConfigError, apply_overrides, preset
from workbench.data import Collate, dataset_from_config
from workbench.methods import Distiller
from workbench.models import build_model


def _setup(method="robustseg", **over):
    cfg = apply_overrides(preset(method, "tiny"), over)
    ds = dataset_from_config(cfg.data, "train", augment=False)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=Collate(ds.modalities))))
    torch.manual_seed(0)
    teacher = build_model(cfg.model, ds.modalities, ds.num_classes).eval()
    student = build_model(cfg.model, ds.modalities, ds.num_classes)
    student.load_state_dict(teacher.state_dict())
    return cfg, Distiller(cfg, student, teacher), batch


def test_student_step_gives_the_teacher_no_gradient_and_names_every_loss():
    cfg, method, batch = _setup("robustseg")
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    out = method.training_step(batch, torch.Generator().manual_seed(0))
    assert {"loss", "ce", "kd", "cp", "ifv"} <= set(out)
    out["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in method.teacher.state_dict().items())
    total = out["ce"] + cfg.distill.kd_weight * out["kd"] + cfg.distill.cp_weight * out["cp"] \
        + cfg.distill.ifv_weight * out["ifv"]
    torch.testing.assert_close(out["loss"].detach(), total)


def test_feedback_step_changes_only_non_primary_teacher_encoders():
    cfg, method, batch = _setup("robustseg")
    gen = torch.Generator().manual_seed(0)
    method.training_step(batch, gen)
    sim = method._cache["sim"]
    primary = L.asm_primary_batch(sim)
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    logs = method.after_step(batch, gen, lr=1e-3)
    after = method.teacher.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    mods = method.teacher.modalities
    non_primary = [m for m, p in zip(mods, primary.tolist()) if not p]
    assert non_primary and all(logs[f"feedback/trained/{m}"] == 1.0 for m in non_primary)
    for k in before:
        owner = k.split(".")[1] if k.startswith("encoders.") else None
        if owner in non_primary and before[k].is_floating_point() and before[k].numel() > 0:
            continue
        assert k not in changed, f"{k} changed but belongs to a primary encoder, the fusion or the head"
    assert any(k.startswith(f"encoders.{m}.") for k in changed for m in non_primary)
    assert all(p.requires_grad is False for p in method.teacher.parameters())


def test_without_feedback_the_teacher_never_changes():
    cfg, method, batch = _setup("hpd")
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    method.training_step(batch, gen)["loss"].backward()
    assert method.after_step(batch, gen, lr=1e-3) == {}
    assert all(torch.equal(before[k], v) for k, v in method.teacher.state_dict().items())


@pytest.mark.parametrize("method_name", ["basic_kd", "ifv_single", "ifv_cross", "cpd", "ifv_cpd", "hpd", "anyseg_approx"])
def test_every_ablation_row_trains_a_step(method_name):
    cfg, method, batch = _setup(method_name)
    out = method.training_step(batch, torch.Generator().manual_seed(1))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    expected = {"basic_kd": {"kd"}, "ifv_single": {"kd", "ifv"}, "ifv_cross": {"kd", "ifv"}, "cpd": {"kd", "cp"},
                "ifv_cpd": {"kd", "cp", "ifv"}, "hpd": {"kd", "cp", "ifv"}, "anyseg_approx": {"kd", "cp", "ifv"}}
    assert expected[method_name] <= set(out) and not ({"cp", "ifv"} - expected[method_name]) & set(out)


def test_identical_student_and_teacher_without_dropout_have_zero_distillation_losses():
    cfg, method, batch = _setup("ifv_cpd", **{"distill.dropout": "none", "distill.cp_pairing": "same",
                                              "model.head_dropout": 0.0})
    method.model.eval()  # same BN statistics as the teacher
    out = method.training_step(batch, torch.Generator().manual_seed(0))
    assert float(out["kd"]) == pytest.approx(0, abs=1e-6)
    assert float(out["cp"]) == pytest.approx(0, abs=1e-6) and float(out["ifv"]) == pytest.approx(0, abs=1e-6)


def test_shared_encoder_feedback_is_refused():
    with pytest.raises(ConfigError, match="shared_encoder"):
        apply_overrides(preset("robustseg", "tiny"), ["model.shared_encoder=true"])
