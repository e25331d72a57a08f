"""The compute-matched controls and the options they need (docs/METHOD.md, "Controls"): a student's own
epochs after the teacher's, Anymodal Dropout's P(full), and the control presets."""

import itertools
import math

import pytest
import torch
from torch.utils.data import DataLoader

from workbench import losses as L
from workbench.config import ConfigError, apply_overrides, preset
from workbench.data import Collate, dataset_from_config
from workbench.methods import Distiller, Draws
from workbench.models import build_model
from workbench.runs import Run

TINY = {"data.train_samples": 8, "data.val_samples": 4, "data.test_samples": 4, "train.epochs": 2}


def _law(m: int, p_full: float | None) -> dict[tuple[bool, ...], float]:
    """The exact probability of every keep-mask, written from the definition (a loop over k and subsets)."""
    out = {}
    for k in range(1, m + 1):
        for keep in itertools.combinations(range(m), k):
            mask = tuple(j in keep for j in range(m))
            if p_full is None:
                out[mask] = 1 / m / math.comb(m, k)
            else:
                out[mask] = p_full if k == m else (1 - p_full) / (m - 1) / math.comb(m, k)
    return out


@pytest.mark.parametrize("p_full", [None, 0.5, 0.25])
def test_anymodal_dropout_draws_the_stated_law(p_full):
    n, m = 60_000, 4
    mask = L.anymodal_dropout(n, m, torch.Generator().manual_seed(1), p_full=p_full)
    assert mask.any(1).all()
    law = _law(m, p_full)
    assert sum(law.values()) == pytest.approx(1.0)
    counts = {}
    for row in map(tuple, mask.tolist()):
        counts[row] = counts.get(row, 0) + 1
    for pattern, p in law.items():  # each frequency within 4 standard errors of its probability
        assert abs(counts.get(pattern, 0) / n - p) < 4 * math.sqrt(p * (1 - p) / n), pattern


def test_the_papers_law_is_unchanged_by_the_option():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(L.anymodal_dropout(16, 4, g1), L.anymodal_dropout(16, 4, g2, p_full=None))


def test_a_student_trains_its_own_epochs_after_the_teachers():
    cfg = apply_overrides(preset("basic_kd", "tiny"), {**TINY, "distill.epochs": 1})
    assert cfg.epochs == 1 and cfg.teacher_config().epochs == 2
    run = Run.from_config(cfg).ensure(progress=False)
    steps = [h for h in run.metrics().train]
    teacher_steps = [h for h in run.teacher.metrics().train]
    assert max(h["epoch"] for h in steps) == 1 and max(h["epoch"] for h in teacher_steps) == 2
    # options added later hash as before while unset
    base = preset("robustseg", "tiny")
    assert base.distill.epochs is None and base.distill.dropout_p_full is None
    unset = apply_overrides(base, {"distill.epochs": 3})  # set, then unset again: the hash it had
    assert apply_overrides(unset, {"distill.epochs": None}).hash() == base.hash() != unset.hash()
    with pytest.raises(ConfigError, match="dropout_p_full"):
        apply_overrides(base, {"distill.dropout_p_full": 1.5})


def test_the_control_presets_are_students_without_distillation_terms():
    for name, dropout in (("baseline_long", "none"), ("dropout_only", "sample")):
        cfg = apply_overrides(preset(name, "tiny"), TINY)
        d = cfg.distill
        assert d.enabled and (d.kd_weight, d.cp_weight, d.ifv_weight) == (0, 0, 0) and d.dropout == dropout
        assert not d.feedback and cfg.teacher_config() == apply_overrides(preset("baseline", "tiny"), TINY)
        ds = dataset_from_config(cfg.data, "train", augment=False)
        batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=Collate(ds.modalities))))
        model = build_model(cfg.model, ds.modalities, ds.num_classes)
        method = Distiller(cfg, model, build_model(cfg.model, ds.modalities, ds.num_classes))
        out = method.training_step(batch, Draws.for_epoch(0, 0))
        assert set(k for k in out if not k.startswith("primary/")) == {"loss", "ce"}
        assert torch.equal(out["loss"].detach(), out["ce"])


def test_gradient_share_leaves_a_control_without_a_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))  # its own runs folder: other tests make probes
    cfg = apply_overrides(preset("dropout_only", "tiny"), {**TINY, "distill.weighting": "gradient_share"})
    run = Run.from_config(cfg, progress=False)
    assert run.config.distill.weights_resolved and run.config.distill.kd_weight == 0.0
    assert run.dir.is_relative_to(tmp_path)
    assert not (run.dir.parent).exists() or not any(p.name.startswith("probe-") for p in run.dir.parent.iterdir())
