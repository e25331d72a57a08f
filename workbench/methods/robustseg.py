"""RobustSeg's student step: teacher-student self-distillation with Anymodal Dropout, logits KD, Hybrid
Prototype Distillation and the student-to-teacher feedback loop (docs/METHOD.md, "Training pipeline",
"The objectives L_origin, L_hp, L_feedback" and "Loss weights").

    L_hp = L_CE + lambda L_KL + alpha L_cp + beta L_ifv          (student, under Anymodal Dropout)
    L_feedback = L_CE + L_ifv                                    (the teacher's non-primary encoders)

`TERMS` is the one table of the distillation terms: each term's name, its weight and share fields in
`DistillConfig`, what it distils and the function that computes it on a step. Every other module that
lists the terms iterates it.

Decisions left open by the paper, each a named option in `DistillConfig`:
- The teacher always sees every modality under `drop` (nothing is missing for it) and stays in
  eval mode (frozen BN statistics) also during feedback, so that its head and fusion never change.
- ASM runs on the teacher's full-modality features (last stage by default), per sample for L_ifv
  and per batch (mean similarity) for the feedback step.
- CPD counts a pair only when the student received the student-side modality (see `cpd_loss`).
- Feedback: the teacher's non-primary encoders take one AdamW step per student step on
  L_CE(teacher) + L_ifv(teacher maps -> student maps, detached), over the non-primary modalities
  that the student received, at `feedback_lr_scale` x the student's current learning rate.

Loss weights: the paper's lambda, alpha, beta (`distill.weighting=paper`), or the `gradient_share` rule,
which never looks at a result. A term's *gradient share* is the norm of the gradient its weighted value
sends into the student's encoders, relative to the KD term's (KD's own share is relative to CE's):

    share_KD = ||grad lambda L_KL|| / ||grad L_CE||,   share_t = ||grad w_t L_t|| / ||grad lambda L_KL||  (t = cp, ifv)

At the *probe point* -- the student after one epoch of basic distillation (L_CE + lambda L_KL under Anymodal
Dropout, started as configured; `probe_config`), a deterministic function of the configuration and seed --
the rule measures, over `distill.probe_batches` training batches, the gradient norm g_t of each unweighted
term of the full method (HPD: primary-modality IFV and CPD, with the row's conventions; `measure_config`),
and sets (`rule_weights`)

    lambda = share_kd * g_CE / g_KL   (kept as configured when share_kd is None)
    alpha  = share_cp * lambda * g_KL / g_cp,    beta = share_ifv * lambda * g_KL / g_ifv

(each g the mean over the probe batches). Every row of a study at one profile and seed shares the probe
point and the full method's terms, so every row gets the same weights for the terms it uses; a term that a
row switches off (weight 0 in its preset, e.g. basic_kd's alpha and beta) stays off. The weights are decided
once, before the run starts, and written into its config (`with_rule_weights`; `workbench.runs` measures the
probe): a run's config.json holds the numbers it trained with, and they are part of its hash.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from workbench import losses as L
from workbench.config import PRESETS, Config, DistillConfig, apply_overrides
from workbench.errors import ConfigError
from workbench.methods.base import Draws, Student, inputs_of, segmentation_loss

__all__ = ["Term", "TERMS", "REFERENCE", "Step", "Distiller", "configured_weights", "shares", "describe",
           "measure_config", "probe_config", "rule_weights", "with_rule_weights"]


@dataclass
class Step:
    """What the distillation terms of one student step read."""

    cfg: Config
    student: object  # SegOutput of the student (under Anymodal Dropout)
    teacher: object  # SegOutput of the teacher (every modality)
    labels: torch.Tensor
    present: torch.Tensor  # (B, M) what the student received
    primary: torch.Tensor  # (B, M) ASM's primary modalities (teacher, per sample)
    draws: Draws
    modalities: tuple[str, ...]
    num_classes: int


def _kd(s: Step) -> torch.Tensor:
    d = s.cfg.distill
    kd_labels = s.labels if d.option("kd_pixels") == "valid" else None
    return L.kd_loss(s.student.logits, s.teacher.logits, kd_labels, d.kd_temperature, d.kd_reduction)


def _cp(s: Step) -> torch.Tensor:
    d, (b, m) = s.cfg.distill, s.present.shape
    pairs = L.cpd_pairs(b, m, s.draws.pairing, d.option("cp_pairing"), num_stages=len(d.stages))
    return L.cpd_loss(s.student.features, s.teacher.features, s.labels, s.num_classes, pairs.to(s.labels.device),
                      d.stages, d.cp_divergence, d.cp_temperature, received=s.present, modalities=s.modalities,
                      prototypes=d.option("cp_prototypes"), aggregation=d.aggregation)


def _ifv(s: Step) -> torch.Tensor:
    d, (b, m) = s.cfg.distill, s.present.shape
    pairs = None
    mask = s.present & s.primary if d.ifv_modalities == "primary" else s.present
    if d.ifv_modalities == "cross":
        pairs = L.cpd_pairs(b, m, s.draws.pairing, "derangement" if m > 1 else "same").to(s.labels.device)
    return L.ifv_loss(s.student.features, s.teacher.features, s.labels, s.num_classes, mask, d.stages,
                      d.option("ifv_divergence"), d.ifv_temperature, pairs=pairs, modalities=s.modalities,
                      aggregation=d.aggregation)


@dataclass(frozen=True)
class Term:
    """One distillation term of L_hp: `weight` and `share` name its `DistillConfig` fields."""

    name: str  # the key of its loss in the step's named losses and in the logs (train/<name>, val/share/<name>)
    symbol: str  # its weight's name in the paper
    weight: str
    share: str
    distils: str
    compute: Callable[[Step], torch.Tensor]


# The distillation terms, in the order they are computed (cp before ifv: both draw from `draws.pairing`).
TERMS: tuple[Term, ...] = (
    Term("kd", "lambda", "kd_weight", "share_kd", "the full-modality teacher's logits (L_KL)", _kd),
    Term("cp", "alpha", "cp_weight", "share_cp", "the teacher's class prototypes of a paired modality (L_cp, CPD)",
         _cp),
    Term("ifv", "beta", "ifv_weight", "share_ifv", "the teacher's IFV maps of the primary modalities (L_ifv)", _ifv),
)
REFERENCE = TERMS[0]  # the gradient_share rule sets every other term's share relative to KD's


def configured_weights(d: DistillConfig) -> dict[str, float]:
    """Each term's weight as the config gives it (0: the term is off)."""
    return {t.name: getattr(d, t.weight) for t in TERMS}


def shares(norms: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """Gradient shares (see the module docstring) from unweighted gradient norms and the weights."""
    out = {}
    ref = REFERENCE.name
    kd = weights.get(ref, 0.0) * norms.get(ref, 0.0)
    if ref in norms and norms.get("ce", 0.0) > 0:
        out[ref] = kd / norms["ce"]
    for t in TERMS[1:]:
        if t.name in norms and kd > 0:
            out[t.name] = weights.get(t.name, 0.0) * norms[t.name] / kd
    return out


def describe(weights: dict[str, float], norms: dict[str, float] | None = None) -> str:
    """One line: the weights in use and (given the norms) each term's gradient share."""
    parts = [f"{t.symbol} {weights.get(t.name, 0):.4g}" for t in TERMS]
    parts += [f"share {k} {100 * v:.1f}%" for k, v in shares(norms or {}, weights).items() if math.isfinite(v)]
    return ", ".join(parts)


def measure_config(cfg: Config) -> Config:
    """The full method's terms at the row's conventions: what the probe measures (every term switched on with
    the paper's weight, the row's lambda kept; no feedback)."""
    paper = DistillConfig()
    weights = {f"distill.{t.weight}": getattr(paper, t.weight) for t in TERMS}
    weights[f"distill.{REFERENCE.weight}"] = getattr(cfg.distill, REFERENCE.weight) or getattr(paper, REFERENCE.weight)
    return apply_overrides(cfg, {**PRESETS["hpd"], "distill.cp_pairing": None, **weights, "distill.feedback": False,
                                 "distill.weighting": "paper", "distill.weights_resolved": False})


def probe_config(cfg: Config, teacher_checkpoint: str | Path | None = None) -> Config:
    """The probe point's run: basic distillation (CE + lambda KD) for one epoch from the row's teacher
    (`teacher_checkpoint`: the trained baseline of the row's full schedule; without it the probe would
    distil from a baseline trained for its own single epoch)."""
    m = measure_config(cfg)
    teacher = str(teacher_checkpoint) if teacher_checkpoint is not None else m.distill.teacher
    off = {t.weight: 0.0 for t in TERMS[1:]}
    return replace(m, name="probe", distill=replace(m.distill, teacher=teacher, epochs=None, **off),
                   train=replace(m.train, epochs=1, val_every=1))


def rule_weights(d: DistillConfig, norms: dict[str, float]) -> dict[str, float]:
    """The gradient_share rule's weight of every term, from the probe's mean unweighted norms."""
    ref = REFERENCE
    share_ref = getattr(d, ref.share)
    lam = getattr(d, ref.weight) if share_ref is None else share_ref * norms["ce"] / max(norms[ref.name], 1e-30)
    scale = lam * norms[ref.name]
    return {ref.name: lam, **{t.name: getattr(d, t.share) * scale / max(norms[t.name], 1e-30) for t in TERMS[1:]}}


def with_rule_weights(cfg: Config, norms: dict[str, float]) -> Config:
    """`cfg` with the gradient_share rule's weights written in (`weights_resolved`): every term the row uses
    gets the rule's weight; a term its preset switches off (weight 0) stays off."""
    d = cfg.distill
    chosen = rule_weights(d, norms)
    weights = {t.weight: float(chosen[t.name]) for t in TERMS if getattr(d, t.weight) != 0}
    return replace(cfg, distill=replace(d, weights_resolved=True, **weights))


class Distiller(Student):
    """RobustSeg: the student (initialized from the teacher) learns under Anymodal Dropout from the
    frozen full-modality teacher with L_hp = L_CE + lambda L_KL + alpha L_cp + beta L_ifv; with
    `feedback`, the teacher's non-primary encoders learn back from the student (L_CE + L_ifv)."""

    def __init__(self, cfg: Config, model: nn.Module, teacher: nn.Module, ctx=None):
        d = cfg.distill
        if d.weighting == "gradient_share" and not d.weights_resolved:
            raise ConfigError("distill.weighting=gradient_share: the weights are decided before training (the probe "
                              "point, docs/METHOD.md \"Loss weights\"); open the run with workbench.runs.Run (or "
                              "`python -m workbench train`), which measures them and writes them into the config")
        super().__init__(cfg, model, teacher, ctx)
        self.weights = configured_weights(d)  # lambda, alpha, beta (a term with weight 0 is not computed)
        self.teacher_opt = None
        if d.feedback:
            self.teacher_opt = torch.optim.AdamW(self._teacher_encoder_params(),
                                                 lr=cfg.train.lr * d.feedback_lr_scale,
                                                 weight_decay=cfg.train.weight_decay, foreach=True)
        self._cache: dict = {}

    def _reset_counts(self) -> None:
        m = len(self.model.modalities)
        self.counts = {"primary": torch.zeros(m), "primary_batch": torch.zeros(m), "kept": torch.zeros(m),
                       "samples": 0, "batches": 0}

    def terms(self, batch: dict, draws: Draws, record_teacher_graph: bool = False,
              net: nn.Module | None = None) -> tuple[dict, dict]:
        """The unweighted loss terms of a step with their graphs (ce; each of `TERMS` whose weight is not 0),
        and what the step needs besides them (the dropout mask, ASM's choice, both outputs).
        `net`: the student network to run (default the training wrapper, e.g. DDP)."""
        mods = self.model.modalities
        inputs, labels = inputs_of(batch, mods), batch["label"]
        present = self.dropout(batch, draws)  # Anymodal Dropout: a non-empty random subset per sample (or batch)
        if record_teacher_graph:  # one teacher forward serves both steps: record its graph for the feedback step
            for p in self._teacher_encoder_params():
                p.requires_grad_(True)
            with torch.enable_grad():
                t_out = self.teacher(inputs, batch["present"], "drop")  # the teacher sees everything
        else:
            with torch.no_grad():
                t_out = self.teacher(inputs, batch["present"], "drop")
        s_out = (net or self.net)(inputs, present, self.cfg.train.protocol)

        terms = {"ce": segmentation_loss(self.cfg, s_out.logits, labels)}
        sim = L.asm_similarity(t_out.features, t_out.fused, self.d.asm_stage, mods)  # (B, M), teacher full modality
        primary = L.asm_primary(sim)
        step = Step(self.cfg, s_out, t_out, labels, present, primary, draws, mods, self.model.num_classes)
        for t in TERMS:
            if self.weights[t.name] > 0:
                terms[t.name] = t.compute(step)
        return terms, {"present": present, "primary": primary, "sim": sim, "teacher_out": t_out, "student_out": s_out}

    def training_step(self, batch: dict, draws: Draws) -> dict[str, torch.Tensor]:
        terms, aux = self.terms(batch, draws, record_teacher_graph=self.d.feedback)
        total = terms["ce"] + sum(self.weights[name] * t for name, t in terms.items() if name != "ce")
        out = {"loss": total, **{key: v.detach() for key, v in terms.items()}}
        present, primary, mods = aux["present"], aux["primary"], self.model.modalities
        self.counts["primary"] = self.counts["primary"].to(primary.device) + primary.float().sum(0)  # no host copy
        self.count_kept(present)
        for j, name in enumerate(mods):
            out[f"primary/{name}"] = primary[:, j].float().mean()
        if self.d.feedback:  # kept for the feedback step after the student's optimizer step
            self._cache = {"sim": aux["sim"], "present": present, "teacher_out": aux["teacher_out"],
                           "student_features": {n: [f.detach() for f in fs]
                                                for n, fs in aux["student_out"].features.items()}}
        return out

    def term_gradient_norms(self, batch: dict, draws: Draws) -> dict[str, float]:
        """The L2 norm of the gradient that each unweighted term sends into the student's encoders, on
        one batch, as in training (train mode): what `gradient_share` weighs. It leaves no trace: no
        optimizer step, no gradient stored, the BN statistics and the torch RNG state restored, and the
        plain model is run (not the DDP wrapper, whose reducer expects a backward)."""
        rng = torch.get_rng_state()
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        params = list({id(p): p for n in self.model.modalities for p in self.model.encoder(n).parameters()}.values())
        terms, _ = self.terms(batch, draws, net=self.model)
        norms = {}
        for name, t in terms.items():
            grads = torch.autograd.grad(t, params, retain_graph=True, allow_unused=True)
            norms[name] = math.sqrt(sum(float(g.detach().double().square().sum()) for g in grads if g is not None))
        with torch.no_grad():
            for k, v in self.model.named_buffers():
                v.copy_(buffers[k])
        torch.set_rng_state(rng)
        return norms

    def after_step(self, batch: dict, draws: Draws, lr: float) -> dict[str, float | torch.Tensor]:
        """Feedback (student -> teacher): one step on the teacher's non-primary encoders; its losses as
        (detached) tensors, which the loop copies to the host with the step's other terms."""
        if not self.d.feedback:
            return {}
        mods, labels = self.teacher.modalities, batch["label"]
        sim = self._cache["sim"].mean(0)
        if self.ctx is not None and self.ctx.enabled:  # one decision for the global batch: every rank
            sim = self.ctx.all_reduce_sum(sim) / self.ctx.world_size  # trains the same encoders
        primary_b = L.asm_primary(sim).cpu()  # (M,) per batch (ASM on the batch-mean similarity)
        self.counts["primary_batch"] += primary_b.float()
        self.counts["batches"] += 1
        trainable = [n for n, p in zip(mods, primary_b.tolist()) if not p]
        # the teacher has not changed since the student step's forward, so its recorded graph is reused;
        # gradients are taken only for the non-primary encoders (primary ones, fusion and head stay put)
        t_out = self._cache["teacher_out"]
        mask = (~primary_b.to(labels.device))[None].expand(labels.shape[0], -1) & self._cache["present"]
        ce = segmentation_loss(self.cfg, t_out.logits, labels)
        ifv = L.ifv_loss(t_out.features, self._cache["student_features"], labels, self.teacher.num_classes, mask,
                         self.d.stages, self.d.option("ifv_divergence"), self.d.ifv_temperature, modalities=mods,
                         aggregation=self.d.aggregation)
        loss = ce + ifv
        self.teacher_opt.zero_grad(set_to_none=True)
        params = [p for n in trainable for p in self.teacher.encoder(n).parameters()]
        if params:
            for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
                p.grad = torch.zeros_like(p) if g is None else g
                if self.ctx is not None and self.ctx.enabled:
                    p.grad = self.ctx.all_reduce_sum(p.grad) / self.ctx.world_size
        for g in self.teacher_opt.param_groups:
            g["lr"] = lr * self.d.feedback_lr_scale
        self.teacher_opt.step()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._cache = {}
        return {"feedback/ce": ce.detach(), "feedback/ifv": ifv.detach(), "feedback/loss": loss.detach(),
                **{f"feedback/trained/{n}": float(n in trainable) for n in mods}}

    def _teacher_encoder_params(self) -> list[torch.Tensor]:
        return [p for n in self.teacher.modalities for p in self.teacher.encoder(n).parameters()]

    def validation_logs(self) -> dict[str, float]:
        """How often each modality was primary (the modality-bias signal) and kept, since the last call."""
        c, mods = self.counts, self.model.modalities
        logs = {f"primary/{n}": float(c["primary"][j] / max(1, c["samples"])) for j, n in enumerate(mods)}
        logs |= {f"kept/{n}": float(c["kept"][j] / max(1, c["samples"])) for j, n in enumerate(mods)}
        if c["batches"]:
            logs |= {f"primary_batch/{n}": float(c["primary_batch"][j] / c["batches"]) for j, n in enumerate(mods)}
        self._reset_counts()
        return logs

    def state_dict(self) -> dict:
        """The teacher (changed by feedback), its optimizer, and the ASM/dropout statistics gathered since the
        last validation (so that a resumed run logs the same records)."""
        state = super().state_dict()
        if self.teacher_opt is not None:
            state["teacher_opt"] = self.teacher_opt.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.teacher_opt is not None:
            self.teacher_opt.load_state_dict(state["teacher_opt"])
