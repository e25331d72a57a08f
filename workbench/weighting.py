"""Loss weights of the distillation terms: the paper's numbers, or the `gradient_share` rule, and the
gradient shares that every results table prints beside it (docs/METHOD.md, "Loss weights").

A term's *gradient share* is the norm of the gradient its weighted value sends into the student's
encoders, relative to the KD term's (KD's own share is relative to CE's):

    share_KD = ||grad lambda L_KL|| / ||grad L_CE||,   share_t = ||grad w_t L_t|| / ||grad lambda L_KL||  (t = cp, ifv)

`gradient_share` never looks at a result. At the *probe point* -- the student after one epoch of basic
distillation (L_CE + lambda L_KL under Anymodal Dropout, started as configured), a deterministic function
of the configuration and seed -- it measures, over `distill.probe_batches` training batches, the gradient
norm g_t of each unweighted term of the full method (HPD: primary-modality IFV and CPD, with the row's
conventions), and sets

    lambda = share_kd * g_CE / g_KL   (kept as configured when share_kd is None)
    alpha  = share_cp * lambda * g_KL / g_cp,    beta = share_ifv * lambda * g_KL / g_ifv

(each g the mean over the probe batches). Every row of a study at one profile and seed shares the probe
point and the full method's terms, so every row gets the same weights for the terms it uses; a term that a
row switches off (weight 0 in its preset, e.g. basic_kd's alpha and beta) stays off (`methods.applied`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from workbench.comparators import build_method
from workbench.config import METHODS, Config, apply_overrides
from workbench.data import Collate, dataset_from_config
from workbench.distributed import EpochSampler
from workbench.methods import Distiller, Draws
from workbench.models import load_model

__all__ = ["LossWeights", "probe_config", "measure_config", "measure", "shares", "describe"]


@dataclass
class LossWeights:
    """lambda, alpha, beta as chosen, with the probe's mean gradient norms per unweighted term."""

    kd_weight: float
    cp_weight: float
    ifv_weight: float
    norms: dict[str, float] = field(default_factory=dict)  # term -> mean ||grad|| into the student's encoders

    def as_dict(self) -> dict[str, float]:
        return {"kd": self.kd_weight, "cp": self.cp_weight, "ifv": self.ifv_weight}

    def state(self) -> dict:
        return {"kd_weight": self.kd_weight, "cp_weight": self.cp_weight, "ifv_weight": self.ifv_weight,
                "norms": self.norms}

    @classmethod
    def from_state(cls, s: dict) -> LossWeights:
        return cls(s["kd_weight"], s["cp_weight"], s["ifv_weight"], dict(s["norms"]))

    def shares(self) -> dict[str, float]:
        return shares(self.norms, self.as_dict())


def shares(norms: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """Gradient shares (see the module docstring) from unweighted gradient norms and the weights."""
    out = {}
    kd = weights.get("kd", 0.0) * norms.get("kd", 0.0)
    if "kd" in norms and norms.get("ce", 0.0) > 0:
        out["kd"] = kd / norms["ce"]
    for term in ("cp", "ifv"):
        if term in norms and kd > 0:
            out[term] = weights.get(term, 0.0) * norms[term] / kd
    return out


def measure_config(cfg: Config) -> Config:
    """The full method's terms at the row's conventions: what the probe measures (paper weights, so every
    term is computed; no feedback)."""
    return apply_overrides(cfg, {**METHODS["hpd"], "distill.cp_pairing": None,
                                 "distill.kd_weight": cfg.distill.kd_weight or 50.0, "distill.cp_weight": 100.0,
                                 "distill.ifv_weight": 12.0, "distill.feedback": False, "distill.weighting": "paper"})


def probe_config(cfg: Config, teacher_checkpoint: str | Path | None = None) -> Config:
    """The probe point's run: basic distillation (CE + lambda KD) for one epoch from the row's teacher
    (`teacher_checkpoint`: the trained baseline of the row's full schedule; without it the probe would
    distil from a baseline trained for its own single epoch)."""
    m = measure_config(cfg)
    teacher = str(teacher_checkpoint) if teacher_checkpoint is not None else m.distill.teacher
    return replace(m, name="probe", distill=replace(m.distill, cp_weight=0.0, ifv_weight=0.0, teacher=teacher),
                   train=replace(m.train, epochs=1, val_every=1))


def measure(cfg: Config, probe_checkpoint: str | Path, teacher_checkpoint: str | Path,
            device: str | torch.device = "cpu") -> LossWeights:
    """The gradient_share weights of `cfg`, measured at the probe point (see the module docstring)."""
    d = cfg.distill
    mcfg = measure_config(cfg)
    torch.manual_seed(mcfg.train.seed)  # head dropout during the probe: the same draws for every row
    ds = dataset_from_config(mcfg.data, "train", aug_seed=mcfg.train.seed)
    sampler = EpochSampler(len(ds), mcfg.train.seed)
    sampler.set_epoch(1)
    ds.set_epoch(1)
    loader = DataLoader(ds, batch_size=mcfg.data.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=Collate(ds.modalities))
    method = build_method(mcfg, ds, torch.device(device), teacher_checkpoint=teacher_checkpoint)
    assert isinstance(method, Distiller)
    method.model.load_state_dict(load_model(probe_checkpoint).state_dict())
    method.train()
    draws = Draws.for_epoch(mcfg.train.seed, 1)
    rows = [method.term_gradient_norms(batch, draws) for batch in islice(loader, d.probe_batches)]
    norms = {t: sum(r[t] for r in rows) / len(rows) for t in rows[0]}
    kd = d.kd_weight if d.share_kd is None else d.share_kd * norms["ce"] / max(norms["kd"], 1e-30)
    ref = kd * norms["kd"]
    return LossWeights(kd_weight=kd, cp_weight=d.share_cp * ref / max(norms["cp"], 1e-30),
                       ifv_weight=d.share_ifv * ref / max(norms["ifv"], 1e-30), norms=norms)


def describe(weights: dict[str, float], norms: dict[str, float]) -> str:
    """One line: the weights in use and each term's gradient share."""
    sh = shares(norms, weights)
    parts = [f"lambda {weights.get('kd', 0):.4g}", f"alpha {weights.get('cp', 0):.4g}",
             f"beta {weights.get('ifv', 0):.4g}"]
    parts += [f"share {k} {100 * v:.1f}%" for k, v in sh.items() if math.isfinite(v)]
    return ", ".join(parts)
