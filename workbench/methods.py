"""Training methods: what one step computes. `Supervised` is the baseline/teacher; `Distiller` is
RobustSeg's teacher-student self-distillation with Anymodal Dropout, logits KD, Hybrid Prototype
Distillation and the student-to-teacher feedback loop (docs/METHOD.md, "Training pipeline" and "Losses").

A method exposes `model` (the network being trained and saved), `training_step(batch, draws)` ->
named losses with `loss` the total to back-propagate, and `after_step(...)` for work after the
optimizer step (the feedback step on the teacher). The training loop (`workbench.train`) is shared.
`Draws` holds one generator per kind of random draw, so that for a given seed and epoch every method
gets the same Anymodal Dropout subsets, whatever else it draws: rows of a study are paired by seed.
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

import math
from dataclasses import dataclass

import torch
from torch import nn

from workbench import losses as L
from workbench.checkpoint import load_state_strict
from workbench.config import Config


@dataclass
class Draws:
    """A step's random draws, each kind from its own generator (see the module docstring)."""

    dropout: torch.Generator  # Anymodal Dropout subsets
    pairing: torch.Generator  # CPD / cross-modal IFV modality pairings

    @classmethod
    def for_epoch(cls, seed: int, epoch: int) -> Draws:
        base = seed * 7919 + epoch
        return cls(torch.Generator().manual_seed(base), torch.Generator().manual_seed(base + 104_729))


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

    def training_step(self, batch: dict, draws: Draws) -> dict[str, torch.Tensor]:
        out = self.net(_inputs(batch, self.model.modalities), batch["present"], self.cfg.train.protocol)
        ce = segmentation_loss(self.cfg, out.logits, batch["label"])
        return {"loss": ce, "ce": ce.detach()}

    def after_step(self, batch: dict, draws: Draws, lr: float) -> dict[str, float]:
        return {}

    def sync_gradients(self) -> None:
        """DDP all-reduces the model's gradients during backward; nothing else to do here."""

    def validation_logs(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """The baseline has no state beyond the model and optimizer, which the loop restores."""


def applied(configured: dict[str, float], chosen: dict[str, float] | None) -> dict[str, float]:
    """The weights a row trains with: `chosen` (the gradient_share rule's lambda, alpha, beta,
    `workbench.weighting`) for every term the row uses, and 0 for the terms its preset switches off
    (configured weight 0: basic_kd's alpha and beta, cpd's beta, ...)."""
    out = dict(configured)
    for k, v in (chosen or {}).items():
        if k in out and out[k] != 0:
            out[k] = float(v)
    return out


class Distiller(Supervised):
    """RobustSeg: the student (initialized from the teacher) learns under Anymodal Dropout from the
    frozen full-modality teacher with L_hp = L_CE + lambda L_KL + alpha L_cp + beta L_ifv; with
    `feedback`, the teacher's non-primary encoders learn back from the student (L_CE + L_ifv)."""

    def __init__(self, cfg: Config, model: nn.Module, teacher: nn.Module, ctx=None,
                 loss_weights: dict[str, float] | None = None):
        super().__init__(cfg, model, ctx)
        self.d = cfg.distill
        # lambda, alpha, beta: the config's numbers, or those the gradient_share rule chose (workbench.weighting)
        # (a term the row switches off, weight 0 in its preset, stays off: `applied`)
        self.weights = applied({"kd": self.d.kd_weight, "cp": self.d.cp_weight, "ifv": self.d.ifv_weight},
                               loss_weights)
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

    def terms(self, batch: dict, draws: Draws, record_teacher_graph: bool = False,
              net: nn.Module | None = None) -> tuple[dict, dict]:
        """The unweighted loss terms of a step with their graphs (ce; kd, cp, ifv where their weight is
        not 0), and what the step needs besides them (the dropout mask, ASM's choice, both outputs).
        `net`: the student network to run (default the training wrapper, e.g. DDP)."""
        d, mods = self.d, self.model.modalities
        inputs, labels = _inputs(batch, mods), batch["label"]
        b, m, k = labels.shape[0], len(mods), self.model.num_classes
        # Anymodal Dropout: a non-empty random subset per sample (or per batch)
        if d.dropout == "none":
            present = batch["present"]
        else:
            present = L.anymodal_dropout(b, m, draws.dropout, d.dropout).to(labels.device) & batch["present"]
            present[~present.any(1)] = batch["present"][~present.any(1)]
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
        if self.weights["kd"] > 0:
            kd_labels = labels if d.option("kd_pixels") == "valid" else None
            terms["kd"] = L.kd_loss(s_out.logits, t_out.logits, kd_labels, d.kd_temperature, d.kd_reduction)
        sim = L.asm_similarity(t_out.features, t_out.fused, d.asm_stage, mods)  # (B, M), teacher full modality
        primary = L.asm_primary(sim)
        if self.weights["cp"] > 0:
            pairs = L.cpd_pairs(b, m, draws.pairing, d.option("cp_pairing"), num_stages=len(d.stages))
            terms["cp"] = L.cpd_loss(s_out.features, t_out.features, labels, k, pairs.to(labels.device), d.stages,
                                     d.cp_divergence, d.cp_temperature, received=present, modalities=mods,
                                     prototypes=d.option("cp_prototypes"), aggregation=d.aggregation)
        if self.weights["ifv"] > 0:
            pairs = None
            mask = present & primary if d.ifv_modalities == "primary" else present
            if d.ifv_modalities == "cross":
                pairs = L.cpd_pairs(b, m, draws.pairing, "derangement" if m > 1 else "same").to(labels.device)
            terms["ifv"] = L.ifv_loss(s_out.features, t_out.features, labels, k, mask, d.stages,
                                      d.option("ifv_divergence"), d.ifv_temperature, pairs=pairs, modalities=mods,
                                      aggregation=d.aggregation)
        return terms, {"present": present, "primary": primary, "sim": sim, "teacher_out": t_out, "student_out": s_out}

    def training_step(self, batch: dict, draws: Draws) -> dict[str, torch.Tensor]:
        terms, aux = self.terms(batch, draws, record_teacher_graph=self.d.feedback)
        total = terms["ce"] + sum(self.weights[name] * t for name, t in terms.items() if name != "ce")
        out = {"loss": total, **{key: v.detach() for key, v in terms.items()}}
        present, primary, mods = aux["present"], aux["primary"], self.model.modalities
        self.counts["primary"] += primary.float().sum(0).cpu()
        self.counts["kept"] += present.float().sum(0).cpu()
        self.counts["samples"] += present.shape[0]
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

    def after_step(self, batch: dict, draws: Draws, lr: float) -> dict[str, float]:
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
        """The teacher (changed by feedback), its optimizer, the loss weights in use, and the ASM/dropout
        statistics gathered since the last validation (so that a resumed run logs the same records)."""
        state = {"teacher": self.teacher.state_dict(), "weights": dict(self.weights),
                 "counts": {k: v.clone() if torch.is_tensor(v) else v for k, v in self.counts.items()}}
        if self.teacher_opt is not None:
            state["teacher_opt"] = self.teacher_opt.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        load_state_strict(self.teacher, state["teacher"], "teacher")
        self.weights |= state.get("weights", {})  # a resumed run keeps the weights it started with
        if self.teacher_opt is not None:
            self.teacher_opt.load_state_dict(state["teacher_opt"])
        if "counts" in state:  # checkpoints written before the statistics were saved resume without them
            self.counts = {k: v.clone() if torch.is_tensor(v) else v for k, v in state["counts"].items()}
