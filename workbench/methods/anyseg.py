"""AnySeg's student step, a comparator of the paper's main table (arXiv 2411.17141; docs/METHOD.md, "The
paper's ablation and main table"; its losses in `workbench.losses`, section "AnySeg (comparator)").

The student, a shared-encoder `Segmentor` with mean fusion (AnySeg's model: one MiT over the multi-modal
batch), gets an Anymodal Dropout subset and learns from the frozen full-modality teacher with
L = L_CE + lambda_kd L_KL + lambda_umd L_UMD + lambda_cmd L_CMD. L_KL is the prediction-level distillation
(the public trainer's `KLDivLoss(mean)(log_softmax(s), softmax(t)) * 50`, i.e. `kd_loss(reduction="element")`
with `distill.kd_weight = 50`). The weights of UMD and CMD are not public; both default to 1
(`distill.umd_weight`, `distill.cmd_weight`).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench import losses as L
from workbench.config import Config
from workbench.methods.base import Draws, Student, inputs_of, segmentation_loss

__all__ = ["AnySegDistiller"]


class AnySegDistiller(Student):
    """AnySeg: CE + logits KD + unimodal (UMD) and cross-modal (CMD) feature distillation from the teacher."""

    def __init__(self, cfg: Config, model: nn.Module, teacher: nn.Module, ctx=None):
        if cfg.distill.feedback:
            raise ValueError("AnySeg has no student -> teacher feedback; set distill.feedback=False")
        super().__init__(cfg, model, teacher, ctx)

    def training_step(self, batch: dict, draws: Draws) -> dict[str, torch.Tensor]:
        d, mods = self.d, self.model.modalities
        inputs, labels = inputs_of(batch, mods), batch["label"]
        present = self.dropout(batch, draws)
        with torch.no_grad():
            t_out = self.teacher(inputs, batch["present"], "drop")  # the teacher sees everything
        s_out = self.net(inputs, present, self.cfg.train.protocol)
        out = {"ce": segmentation_loss(self.cfg, s_out.logits, labels)}
        total = out["ce"]
        if d.kd_weight > 0:
            out["kd"] = L.kd_loss(s_out.logits, t_out.logits, labels, d.kd_temperature, d.kd_reduction)
            total = total + d.kd_weight * out["kd"]
        if d.umd_weight > 0:
            out["umd"] = L.umd_loss(s_out.features, t_out.features, present, d.stages, d.anyseg_axis, mods)
            total = total + d.umd_weight * out["umd"]
        if d.cmd_weight > 0:
            out["cmd"] = L.cmd_loss(s_out.features, t_out.features, present, d.stages, d.anyseg_axis, d.cmd_features,
                                    d.cmd_reduction, mods)
            total = total + d.cmd_weight * out["cmd"]
        self.count_kept(present)
        return {"loss": total, **{key: v.detach() for key, v in out.items()}}
