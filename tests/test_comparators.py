"""One training step of each comparator method runs, with finite losses and gradients."""

import torch

from workbench.config import apply_overrides
from workbench.methods import AnySegDistiller, Draws, MagicMethod
from workbench.models import Segmentor
from workbench.models.magic import MAGIC

MODS = ("rgb", "depth", "event", "lidar")


def _batch(b=2, size=32):
    g = torch.Generator().manual_seed(0)
    batch = {m: torch.randn(b, 3, size, size, generator=g) for m in MODS}
    batch["label"] = torch.randint(0, 5, (b, size, size), generator=g)
    batch["present"] = torch.ones(b, 4, dtype=torch.bool)
    return batch


def _grads(model):
    return [p.grad for p in model.parameters() if p.requires_grad]


def test_anyseg_step(tiny_cfg):
    cfg = apply_overrides(tiny_cfg, {"distill.enabled": True})
    teacher = Segmentor(MODS, 5, head_dim=16, shared_encoder=True)
    student = Segmentor(MODS, 5, head_dim=16, shared_encoder=True)
    student.load_state_dict(teacher.state_dict())
    method = AnySegDistiller(cfg, student, teacher)
    method.train()
    out = method.training_step(_batch(), Draws.for_epoch(0, 0))
    assert {"loss", "ce", "kd", "umd", "cmd"} <= set(out) and all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert all(g is not None and torch.isfinite(g).all() for g in _grads(student))
    assert all(p.grad is None for p in teacher.parameters())
    assert method.after_step(_batch(), Draws.for_epoch(0, 0), 1e-3) == {}
    assert set(method.validation_logs()) == {f"kept/{m}" for m in MODS}
    method.load_state_dict(method.state_dict())


def test_magic_step(tiny_cfg):
    model = MAGIC(MODS, 5, head_dim=16)
    method = MagicMethod(tiny_cfg, model)
    method.train()
    out = method.training_step(_batch(), Draws.for_epoch(0, 0))
    assert {"loss", "aggregated", "selected", "consistency"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert all(g is not None and torch.isfinite(g).all() for g in _grads(model))
    logs = method.validation_logs()
    assert abs(sum(v for k, v in logs.items() if k.startswith("robust/")) - 1) < 1e-6
