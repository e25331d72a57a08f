"""Training steps of the comparator methods AnySeg and MAGIC, with the interface of `workbench.methods`
(`training_step(batch, draws)` -> named losses with `loss` the total; `after_step`; `state_dict`;
`load_state_dict`; `validation_logs`), so the shared loop trains them. CMNeXt needs no class here: it is
a model (`workbench.models.cmnext.CMNeXt`) trained by `Supervised`. `build_method` picks the method of a
config among all of them (`Config.method`); it lives here, above `workbench.methods`, to see both.

- `AnySegDistiller`: AnySeg's student step (arXiv 2411.17141; losses in `workbench.losses`, section
  "AnySeg (comparator)"). The student, a shared-encoder `Segmentor` with mean fusion (AnySeg's model: one
  MiT over the multi-modal batch), gets an Anymodal Dropout subset and learns from the frozen
  full-modality teacher with L = L_CE + lambda_kd L_KL + lambda_umd L_UMD + lambda_cmd L_CMD. L_KL is the
  prediction-level distillation (the public trainer's `KLDivLoss(mean)(log_softmax(s), softmax(t)) * 50`,
  i.e. `kd_loss(reduction="element")` with `distill.kd_weight = 50`). The weights of UMD and CMD are not
  public; both default to 1.
- `MagicMethod`: MAGIC's step: the model's own objective (`magic_losses`) on the batch as given (MAGIC
  trains on every modality; `dropout` can add Anymodal Dropout), and how often each modality was ranked
  robust or fragile by ASM at the last stage (the modality-bias signal).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench import losses as L
from workbench.checkpoint import load_state_strict
from workbench.config import Config
from workbench.errors import ConfigError
from workbench.methods import Distiller, Draws, Supervised, _inputs, segmentation_loss
from workbench.models import build_model, load_model
from workbench.models.magic import magic_losses


def _dropout(batch: dict, num_modalities: int, gen: torch.Generator, mode: str) -> torch.Tensor:
    """Anymodal Dropout restricted to what the batch has; a row left empty falls back to the batch's."""
    if mode == "none":
        return batch["present"]
    labels = batch["label"]
    present = L.anymodal_dropout(labels.shape[0], num_modalities, gen, mode).to(labels.device) & batch["present"]
    empty = ~present.any(1)
    present[empty] = batch["present"][empty]
    return present


class AnySegDistiller(Distiller):
    """AnySeg: CE + logits KD + unimodal (UMD) and cross-modal (CMD) feature distillation from the teacher."""

    def __init__(self, cfg: Config, model: nn.Module, teacher: nn.Module, ctx=None, umd_weight: float = 1.0,
                 cmd_weight: float = 1.0, axis: str = "height", cmd_features: str = "softmax",
                 cmd_reduction: str = "sample"):
        if cfg.distill.feedback:
            raise ValueError("AnySeg has no student -> teacher feedback; set distill.feedback=False")
        super().__init__(cfg, model, teacher, ctx)
        self.umd_weight, self.cmd_weight = umd_weight, cmd_weight
        self.axis, self.cmd_features, self.cmd_reduction = axis, cmd_features, cmd_reduction

    def training_step(self, batch: dict, draws: Draws) -> dict[str, torch.Tensor]:
        d, mods = self.d, self.model.modalities
        inputs, labels = _inputs(batch, mods), batch["label"]
        present = _dropout(batch, len(mods), draws.dropout, d.dropout)
        with torch.no_grad():
            t_out = self.teacher(inputs, batch["present"], "drop")  # the teacher sees everything
        s_out = self.net(inputs, present, self.cfg.train.protocol)
        out = {"ce": segmentation_loss(self.cfg, s_out.logits, labels)}
        total = out["ce"]
        if d.kd_weight > 0:
            out["kd"] = L.kd_loss(s_out.logits, t_out.logits, labels, d.kd_temperature, d.kd_reduction)
            total = total + d.kd_weight * out["kd"]
        if self.umd_weight > 0:
            out["umd"] = L.umd_loss(s_out.features, t_out.features, present, d.stages, self.axis, mods)
            total = total + self.umd_weight * out["umd"]
        if self.cmd_weight > 0:
            out["cmd"] = L.cmd_loss(s_out.features, t_out.features, present, d.stages, self.axis, self.cmd_features,
                                    self.cmd_reduction, mods)
            total = total + self.cmd_weight * out["cmd"]
        self.counts["kept"] += present.float().sum(0).cpu()
        self.counts["samples"] += labels.shape[0]
        return {"loss": total, **{key: v.detach() for key, v in out.items()}}

    def after_step(self, batch: dict, draws: Draws, lr: float) -> dict[str, float]:
        return {}

    def validation_logs(self) -> dict[str, float]:
        """How often each modality was kept by Anymodal Dropout, since the last call."""
        c, mods = self.counts, self.model.modalities
        logs = {f"kept/{n}": float(c["kept"][j] / max(1, c["samples"])) for j, n in enumerate(mods)}
        self._reset_counts()
        return logs


class MagicMethod(Supervised):
    """MAGIC: L = seg(aggregated) + selected_weight seg(selected) + consistency_weight L_con."""

    def __init__(self, cfg: Config, model: nn.Module, ctx=None, selected_weight: float = 1.0,
                 consistency_weight: float = 1.0, dropout: str = "none"):
        super().__init__(cfg, model, ctx)
        self.selected_weight, self.consistency_weight, self.dropout = selected_weight, consistency_weight, dropout
        self._reset_counts()

    def _reset_counts(self) -> None:
        m = len(self.model.modalities)
        self.counts = {"robust": torch.zeros(m), "fragile": torch.zeros(m), "samples": 0}

    def training_step(self, batch: dict, draws: Draws) -> dict[str, torch.Tensor]:
        mods = self.model.modalities
        present = _dropout(batch, len(mods), draws.dropout, self.dropout)
        out = self.net(_inputs(batch, mods), present, self.cfg.train.protocol)
        losses = magic_losses(out, batch["label"], self.selected_weight, self.consistency_weight,
                              seg_loss=lambda logits, labels: segmentation_loss(self.cfg, logits, labels))
        m = len(mods)
        self.counts["robust"] += torch.bincount(out.robust[-1].cpu(), minlength=m).float()
        self.counts["fragile"] += torch.bincount(out.fragile[-1].cpu(), minlength=m).float()
        self.counts["samples"] += present.shape[0]
        return losses

    def validation_logs(self) -> dict[str, float]:
        """How often ASM ranked each modality robust / fragile at the last stage, since the last call."""
        c, mods = self.counts, self.model.modalities
        logs = {f"{kind}/{n}": float(c[kind][j] / max(1, c["samples"]))
                for kind in ("robust", "fragile") for j, n in enumerate(mods)}
        self._reset_counts()
        return logs

    def state_dict(self) -> dict:
        """The robust/fragile statistics since the last validation (a resumed run logs the same records)."""
        return {"counts": {k: v.clone() if torch.is_tensor(v) else v for k, v in self.counts.items()}}

    def load_state_dict(self, state: dict) -> None:
        if "counts" in state:
            self.counts = {k: v.clone() if torch.is_tensor(v) else v for k, v in state["counts"].items()}

def build_method(cfg: Config, train_ds, device: torch.device, ctx=None, teacher_checkpoint=None,
                 loss_weights: dict[str, float] | None = None) -> Supervised:
    """The method `cfg` describes (`Config.method`), with its models on `device`:

    - `supervised`: `Supervised` on the `model.arch` network (the baseline / teacher, and CMNeXt);
    - `magic`: `MagicMethod` with the `magic` section's weights;
    - `robustseg` / `anyseg`: a student that starts as the trained teacher (`distill.student_init=
      from_teacher`, "initialized identically"; the same for AnySeg's student) or from the weights the
      teacher started from (`same_init`: built from the same seed in the same order as in the teacher's
      run); the teacher loaded from `teacher_checkpoint` (or `distill.teacher`); trained by `Distiller`
      (with `loss_weights` from the gradient_share rule, if given) or `AnySegDistiller`."""
    model = build_model(cfg.model, train_ds.modalities, train_ds.num_classes)
    method = cfg.method
    if method == "supervised":
        return Supervised(cfg, model.to(device), ctx)
    if method == "magic":
        m = cfg.magic
        return MagicMethod(cfg, model.to(device), ctx, m.selected_weight, m.consistency_weight, m.dropout)
    teacher_checkpoint = teacher_checkpoint or cfg.distill.teacher
    if teacher_checkpoint is None:
        raise ConfigError("a distillation run needs a teacher: pass teacher_checkpoint or set distill.teacher, or use "
                          "workbench.runs.Run.from_config(cfg).ensure(), which trains or reuses the cached baseline")
    teacher = load_model(teacher_checkpoint, device)
    if teacher.modalities != tuple(train_ds.modalities):
        raise ConfigError(f"teacher modalities {teacher.modalities} differ from the data's {train_ds.modalities}; "
                          f"distil from a teacher trained on the same modalities")
    if cfg.distill.student_init == "from_teacher":
        load_state_strict(model, teacher.state_dict(), "student (initialized from the teacher)")
    if method == "anyseg":
        d = cfg.distill
        return AnySegDistiller(cfg, model.to(device), teacher, ctx, d.umd_weight, d.cmd_weight, d.anyseg_axis,
                               d.cmd_features, d.cmd_reduction)
    return Distiller(cfg, model.to(device), teacher, ctx, loss_weights)
