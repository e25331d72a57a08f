"""Training methods: what one step computes. `Supervised` is the baseline/teacher; `Distiller` is
RobustSeg's teacher-student self-distillation with Anymodal Dropout, logits KD, Hybrid Prototype
Distillation and the student-to-teacher feedback loop (docs/METHOD.md, "Training pipeline" and "Losses").

A method exposes `model` (the network being trained and saved), `training_step(batch, gen)` ->
named losses with `loss` the total to back-propagate, and `after_step(...)` for work after the
optimizer step (the feedback step on the teacher). The training loop (`workbench.train`) is shared.
The comparators' methods (AnySeg, MAGIC) build on these in `workbench.comparators`, which also holds
`build_method`, the one place that picks the method a config describes.

Decisions left open by the paper, each a named option in `DistillConfig`:
- The teacher always sees every modality under `drop` (nothing is missing for it) and stays in
  eval mode (frozen BN statistics) also during feedback, so that its head and fusion never change.
- ASM runs on the teacher's full-modality features (last stage by default), per sample for L_ifv
  and per batch (mean similarity) for the feedback step.
- CPD counts a pair only when the student received the student-side modality (see `cpd_loss`).
- Feedback: the teacher's non-primary encoders take one AdamW step per student step on
  L_CE(teacher) + L_ifv(teacher maps -> student maps, detached), over the non-primary modalities
  that the student received, at `feedback_lr_scale` x the student's current learning rate.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench import losses as L
from workbench.checkpoint import load_state_strict
from workbench.config import Config


def _inputs(batch: dict, modalities) -> dict:
    return {m: batch[m] for m in modalities}


def segmentation_loss(cfg: Config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if cfg.train.loss == "ohem":
        return L.ohem_ce_loss(logits, labels, thresh=cfg.train.ohem_thresh)
    return L.ce_loss(logits, labels)


class Supervised:
    """The baseline / teacher: all modalities, CE (or OHEM)."""

    def __init__(self, cfg: Config, model: nn.Module, ctx=None):
        self.cfg, self.model, self.ctx = cfg, model, ctx
        self.net = model
        if ctx is not None and ctx.enabled:
            if cfg.train.sync_bn:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.model = model
            dev = next(model.parameters()).device
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=cfg.method != "supervised" or cfg.model.arch != "segformer")
        if cfg.train.compile:
            self.net = torch.compile(self.net)

    def train(self) -> None:
        self.model.train()

    def training_step(self, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        out = self.net(_inputs(batch, self.model.modalities), batch["present"], self.cfg.train.protocol)
        ce = segmentation_loss(self.cfg, out.logits, batch["label"])
        return {"loss": ce, "ce": ce.detach()}

    def after_step(self, batch: dict, gen: torch.Generator, lr: float) -> dict[str, float]:
        return {}

    def sync_gradients(self) -> None:
        """DDP all-reduces the model's gradients during backward; nothing else to do here."""

    def validation_logs(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """The baseline has no state beyond the model and optimizer, which the loop restores."""


class Distiller(Supervised):
    """RobustSeg: the student (initialized from the teacher) learns under Anymodal Dropout from the
    frozen full-modality teacher with L_hp = L_CE + lambda L_KL + alpha L_cp + beta L_ifv; with
    `feedback`, the teacher's non-primary encoders learn back from the student (L_CE + L_ifv)."""

    def __init__(self, cfg: Config, model: nn.Module, teacher: nn.Module, ctx=None):
        super().__init__(cfg, model, ctx)
        self.d = cfg.distill
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher_opt = None
        if self.d.feedback:
            self.teacher_opt = torch.optim.AdamW(self._teacher_encoder_params(),
                                                 lr=cfg.train.lr * self.d.feedback_lr_scale,
                                                 weight_decay=cfg.train.weight_decay)
        self._cache: dict = {}
        self._reset_counts()

    def _reset_counts(self) -> None:
        m = len(self.model.modalities)
        self.counts = {"primary": torch.zeros(m), "primary_batch": torch.zeros(m), "kept": torch.zeros(m),
                       "samples": 0, "batches": 0}

    def train(self) -> None:
        self.model.train()
        self.teacher.eval()

    def training_step(self, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        d, mods = self.d, self.model.modalities
        inputs, labels = _inputs(batch, mods), batch["label"]
        b, m, k = labels.shape[0], len(mods), self.model.num_classes
        # Anymodal Dropout: a non-empty random subset per sample (or per batch)
        if d.dropout == "none":
            present = batch["present"]
        else:
            present = L.anymodal_dropout(b, m, gen, d.dropout).to(labels.device) & batch["present"]
            present[~present.any(1)] = batch["present"][~present.any(1)]
        if d.feedback:  # one teacher forward serves both steps: record its graph for the feedback step
            for p in self._teacher_encoder_params():
                p.requires_grad_(True)
            with torch.enable_grad():
                t_out = self.teacher(inputs, batch["present"], "drop")  # the teacher sees everything
        else:
            with torch.no_grad():
                t_out = self.teacher(inputs, batch["present"], "drop")
        s_out = self.net(inputs, present, self.cfg.train.protocol)

        out = {"ce": segmentation_loss(self.cfg, s_out.logits, labels)}
        total = out["ce"]
        if d.kd_weight > 0:
            out["kd"] = L.kd_loss(s_out.logits, t_out.logits, labels, d.kd_temperature, d.kd_reduction)
            total = total + d.kd_weight * out["kd"]
        sim = L.asm_similarity(t_out.features, t_out.fused, d.asm_stage, mods)  # (B, M), teacher full modality
        primary = L.asm_primary(sim)
        if d.cp_weight > 0:
            pairs = L.cpd_pairs(b, m, gen, d.cp_pairing).to(labels.device)
            out["cp"] = L.cpd_loss(s_out.features, t_out.features, labels, k, pairs, d.stages, d.cp_divergence,
                                   d.cp_temperature, received=present, modalities=mods)
            total = total + d.cp_weight * out["cp"]
        if d.ifv_weight > 0:
            pairs = None
            mask = present & primary if d.ifv_modalities == "primary" else present
            if d.ifv_modalities == "cross":
                pairs = L.cpd_pairs(b, m, gen, "derangement" if m > 1 else "same").to(labels.device)
            out["ifv"] = L.ifv_loss(s_out.features, t_out.features, labels, k, mask, d.stages, d.ifv_divergence,
                                    d.ifv_temperature, pairs=pairs, modalities=mods)
            total = total + d.ifv_weight * out["ifv"]
        out = {"loss": total, **{key: v.detach() for key, v in out.items()}}

        self.counts["primary"] += primary.float().sum(0).cpu()
        self.counts["kept"] += present.float().sum(0).cpu()
        self.counts["samples"] += b
        for j, name in enumerate(mods):
            out[f"primary/{name}"] = primary[:, j].float().mean()
        if d.feedback:  # kept for the feedback step after the student's optimizer step
            self._cache = {"sim": sim, "present": present, "teacher_out": t_out,
                           "student_features": {n: [f.detach() for f in fs] for n, fs in s_out.features.items()}}
        return out

    def after_step(self, batch: dict, gen: torch.Generator, lr: float) -> dict[str, float]:
        """Feedback (student -> teacher): one step on the teacher's non-primary encoders."""
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
                         self.d.stages, self.d.ifv_divergence, self.d.ifv_temperature, modalities=mods)
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
        return {"feedback/ce": float(ce.detach()), "feedback/ifv": float(ifv.detach()),
                "feedback/loss": float(loss.detach()),
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
        state = {"teacher": self.teacher.state_dict()}
        if self.teacher_opt is not None:
            state["teacher_opt"] = self.teacher_opt.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        load_state_strict(self.teacher, state["teacher"], "teacher")
        if self.teacher_opt is not None:
            self.teacher_opt.load_state_dict(state["teacher_opt"])
