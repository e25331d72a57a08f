import pytest
import torch
from torch.utils.data import DataLoader

from workbench import losses as L
from workbench.config import ConfigError, apply_overrides, preset
from workbench.data import Collate, dataset_from_config
from workbench.methods import Distiller, Draws
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
    out = method.training_step(batch, Draws.for_epoch(0, 0))
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
    gen = Draws.for_epoch(0, 0)
    method.training_step(batch, gen)
    sim = method._cache["sim"]
    primary = L.asm_primary(sim.mean(0))
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
    gen = Draws.for_epoch(0, 0)
    method.training_step(batch, gen)["loss"].backward()
    assert method.after_step(batch, gen, lr=1e-3) == {}
    assert all(torch.equal(before[k], v) for k, v in method.teacher.state_dict().items())


@pytest.mark.parametrize("method_name", ["basic_kd", "ifv_single", "ifv_cross", "cpd", "ifv_cpd", "hpd", "anyseg_approx"])
def test_every_ablation_row_trains_a_step(method_name):
    cfg, method, batch = _setup(method_name)
    out = method.training_step(batch, Draws.for_epoch(1, 0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    expected = {"basic_kd": {"kd"}, "ifv_single": {"kd", "ifv"}, "ifv_cross": {"kd", "ifv"}, "cpd": {"kd", "cp"},
                "ifv_cpd": {"kd", "cp", "ifv"}, "hpd": {"kd", "cp", "ifv"}, "anyseg_approx": {"kd", "cp", "ifv"}}
    assert expected[method_name] <= set(out) and not ({"cp", "ifv"} - expected[method_name]) & set(out)


def test_identical_student_and_teacher_without_dropout_have_zero_distillation_losses():
    cfg, method, batch = _setup("ifv_cpd", **{"distill.dropout": "none", "distill.cp_pairing": "same",
                                              "model.head_dropout": 0.0})
    method.model.eval()  # same BN statistics as the teacher
    out = method.training_step(batch, Draws.for_epoch(0, 0))
    assert float(out["kd"]) == pytest.approx(0, abs=1e-6)
    assert float(out["cp"]) == pytest.approx(0, abs=1e-6) and float(out["ifv"]) == pytest.approx(0, abs=1e-6)


def test_shared_encoder_feedback_is_refused():
    with pytest.raises(ConfigError, match="shared_encoder"):
        apply_overrides(preset("robustseg", "tiny"), ["model.shared_encoder=true"])


def test_every_method_sees_the_same_dropout_draws_for_a_seed():
    """Rows of a study are paired by seed: the Anymodal Dropout subsets do not depend on what else a
    method draws (CPD and cross-modal IFV pairings come from their own generator)."""
    kept = {}
    for method in ("basic_kd", "cpd", "ifv_cross"):
        _, m, batch = _setup(method)
        draws = Draws.for_epoch(3, 1)
        for _ in range(3):
            m.training_step(batch, draws)
        kept[method] = m.counts["kept"].clone()
    assert torch.equal(kept["basic_kd"], kept["cpd"]) and torch.equal(kept["basic_kd"], kept["ifv_cross"])


def test_public_conventions_switch_sets_each_convention_and_a_step_runs():
    cfg = apply_overrides(preset("hpd", "tiny"), ["distill.conventions=public"])
    d = cfg.distill
    assert [d.option(k) for k in ("kd_pixels", "cp_pairing", "cp_prototypes", "ifv_divergence")] == [
        "all", "iid", "public", "kl_width"]
    assert preset("hpd", "tiny").distill.option("cp_pairing") == "permutation"
    mixed = apply_overrides(cfg, ["distill.ifv_divergence=mse"])  # one field set by hand wins over the switch
    assert mixed.distill.option("ifv_divergence") == "mse" and mixed.distill.option("cp_pairing") == "iid"
    _, method, batch = _setup("hpd", **{"distill.conventions": "public"})
    out = method.training_step(batch, Draws.for_epoch(0, 0))
    assert torch.isfinite(out["loss"]) and {"kd", "cp", "ifv"} <= set(out)


def test_student_init_from_teacher_or_from_the_teachers_initial_weights(tiny_cfg, tmp_path):
    """`same_init`: the student starts from the weights the teacher started from (same seed, same build
    order); `from_teacher`: from the trained teacher."""
    from workbench.methods import build_method
    from workbench.models import load_model
    from workbench.train import train

    teacher_run = train(tiny_cfg, tmp_path / "teacher", progress=False)
    ds = dataset_from_config(tiny_cfg.data, "train")
    torch.manual_seed(tiny_cfg.train.seed)
    initial = build_model(tiny_cfg.model, ds.modalities, ds.num_classes).state_dict()
    trained = load_model(teacher_run.checkpoint).state_dict()
    for init, expected in (("from_teacher", trained), ("same_init", initial)):
        cfg = apply_overrides(tiny_cfg, {"distill.enabled": True, "distill.student_init": init})
        torch.manual_seed(cfg.train.seed)  # as train() does before building the method
        method = build_method(cfg, ds, torch.device("cpu"), teacher_checkpoint=teacher_run.checkpoint)
        student = method.model.state_dict()
        assert all(torch.equal(student[k], expected[k]) for k in expected), init
    assert not all(torch.equal(initial[k], trained[k]) for k in initial)


def test_measuring_gradient_norms_leaves_the_model_as_it_was():
    """The per-term gradient norms logged at validation change nothing: weights, BN statistics, RNG."""
    _, method, batch = _setup("hpd")
    method.train()
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    rng = torch.get_rng_state()
    norms = method.term_gradient_norms(batch, Draws.for_epoch(0, 0))
    assert set(norms) == {"ce", "kd", "cp", "ifv"} and all(v >= 0 for v in norms.values())
    after = method.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "BN running statistics must be restored"
    assert torch.equal(rng, torch.get_rng_state()) and all(p.grad is None for p in method.model.parameters())
