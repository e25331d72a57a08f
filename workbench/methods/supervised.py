"""The baseline / teacher step (docs/METHOD.md, "Training pipeline" 1): every modality the batch holds,
`train.loss` (CE, or OHEM). It also trains CMNeXt, a model of the main table without an objective of
its own (`workbench.models.cmnext`)."""

from __future__ import annotations

import torch

from workbench.methods.base import Draws, Method, inputs_of, segmentation_loss

__all__ = ["Supervised"]


class Supervised(Method):
    """The baseline / teacher: all modalities, CE (or OHEM)."""

    def training_step(self, batch: dict, draws: Draws) -> dict[str, torch.Tensor]:
        out = self.net(inputs_of(batch, self.model.modalities), batch["present"], self.cfg.train.protocol)
        ce = segmentation_loss(self.cfg, out.logits, batch["label"])
        return {"loss": ce, "ce": ce.detach()}
