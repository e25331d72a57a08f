"""MAGIC's training step, a comparator of the paper's main table (re-implemented from the paper; the model
and `magic_losses` in `workbench.models.magic`): L = seg(aggregated) + selected_weight seg(selected) +
consistency_weight L_con (the `magic` config section), on the batch as given (MAGIC trains on every
modality; `magic.dropout` adds Anymodal Dropout), and how often ASM ranked each modality robust or fragile
at the last stage (the modality-bias signal)."""

from __future__ import annotations

import torch
from torch import nn

from workbench.config import Config
from workbench.methods.base import Draws, Method, dropout_mask, inputs_of, segmentation_loss
from workbench.models.magic import magic_losses

__all__ = ["MagicMethod"]


class MagicMethod(Method):
    """MAGIC: L = seg(aggregated) + selected_weight seg(selected) + consistency_weight L_con."""

    def __init__(self, cfg: Config, model: nn.Module, ctx=None):
        super().__init__(cfg, model, ctx)
        self._reset_counts()

    def _reset_counts(self) -> None:
        m = len(self.model.modalities)
        self.counts = {"robust": torch.zeros(m), "fragile": torch.zeros(m), "samples": 0}

    def training_step(self, batch: dict, draws: Draws) -> dict[str, torch.Tensor]:
        mods, m = self.model.modalities, self.cfg.magic
        present = dropout_mask(batch, len(mods), draws.dropout, m.dropout)
        out = self.net(inputs_of(batch, mods), present, self.cfg.train.protocol)
        losses = magic_losses(out, batch["label"], m.selected_weight, m.consistency_weight,
                              seg_loss=lambda logits, labels: segmentation_loss(self.cfg, logits, labels))
        self.counts["robust"] += torch.bincount(out.robust[-1].cpu(), minlength=len(mods)).float()
        self.counts["fragile"] += torch.bincount(out.fragile[-1].cpu(), minlength=len(mods)).float()
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
