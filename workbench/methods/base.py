"""What every training method shares (docs/METHOD.md, "Training pipeline"): the random draws of a step,
the network's inputs, the segmentation loss, Anymodal Dropout restricted to what a batch holds, and the
two base classes of `workbench.methods`.

A method exposes `model` (the network being trained and saved), `training_step(batch, draws)` -> named
losses with `loss` the total to back-propagate, and `after_step(...)` for work after the optimizer step
(RobustSeg's feedback step on the teacher). The training loop (`workbench.train`) is shared.
`Draws` holds one generator per kind of random draw, so that for a given seed and epoch every method gets
the same Anymodal Dropout subsets, whatever else it draws: rows of a study are paired by seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from workbench import losses as L
from workbench.checkpoint import load_state_strict
from workbench.config import Config

__all__ = ["Draws", "Method", "Student", "inputs_of", "segmentation_loss", "dropout_mask"]


@dataclass
class Draws:
    """A step's random draws, each kind from its own generator (see the module docstring)."""

    dropout: torch.Generator  # Anymodal Dropout subsets
    pairing: torch.Generator  # CPD / cross-modal IFV modality pairings

    @classmethod
    def for_epoch(cls, seed: int, epoch: int) -> Draws:
        base = seed * 7919 + epoch
        return cls(torch.Generator().manual_seed(base), torch.Generator().manual_seed(base + 104_729))


def inputs_of(batch: dict, modalities) -> dict:
    """The batch's input tensors of `modalities` (a batch also holds the label, `present` and meta)."""
    return {m: batch[m] for m in modalities}


def segmentation_loss(cfg: Config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`train.loss`: CE, or OHEM CE (the paper profile, CMNeXt)."""
    if cfg.train.loss == "ohem":
        return L.ohem_ce_loss(logits, labels, thresh=cfg.train.ohem_thresh)
    return L.ce_loss(logits, labels)


def dropout_mask(batch: dict, num_modalities: int, generator: torch.Generator, mode: str,
                 p_full: float | None = None) -> torch.Tensor:
    """Anymodal Dropout (`losses.anymodal_dropout`, `p_full` its P(every modality kept)) restricted to what the
    batch holds (`present`): a sample whose draw keeps none of its modalities receives all of them.
    `mode="none"`: the batch as given."""
    if mode == "none":
        return batch["present"]
    labels = batch["label"]
    present = L.anymodal_dropout(labels.shape[0], num_modalities, generator, mode, p_full=p_full).to(labels.device)
    present &= batch["present"]
    empty = ~present.any(1)
    present[empty] = batch["present"][empty]
    return present


class Method:
    """A training method on one network (`model`), optionally wrapped for DDP and `torch.compile` (`net`).
    Subclasses define `training_step`; the rest are the defaults of a method without extra state."""

    needs_teacher = False  # True: `build_method` loads the teacher and passes it to the constructor

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
        raise NotImplementedError

    def after_step(self, batch: dict, draws: Draws, lr: float) -> dict[str, float | torch.Tensor]:
        return {}

    def sync_gradients(self) -> None:
        """DDP all-reduces the model's gradients during backward; nothing else to do here."""

    def validation_logs(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """A method without state beyond the model and optimizer, which the loop restores."""


class Student(Method):
    """A student distilled from a frozen teacher (`needs_teacher`): the teacher stays in eval mode (frozen BN
    statistics) and out of the optimizer; `counts` gathers how often Anymodal Dropout kept each modality
    between validations, and is saved with the teacher so that a resumed run logs the same records."""

    needs_teacher = True

    def __init__(self, cfg: Config, model: nn.Module, teacher: nn.Module, ctx=None):
        super().__init__(cfg, model, ctx)
        self.d = cfg.distill
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._reset_counts()

    def _reset_counts(self) -> None:
        m = len(self.model.modalities)
        self.counts = {"kept": torch.zeros(m), "samples": 0}

    def train(self) -> None:
        self.model.train()
        self.teacher.eval()

    def dropout(self, batch: dict, draws: Draws) -> torch.Tensor:
        """This step's Anymodal Dropout mask (B, M) (`distill.dropout`)."""
        return dropout_mask(batch, len(self.model.modalities), draws.dropout, self.d.dropout, self.d.dropout_p_full)

    def count_kept(self, present: torch.Tensor) -> None:
        """Count a training step's dropout mask for `validation_logs` (on the mask's device: no host copy)."""
        self.counts["kept"] = self.counts["kept"].to(present.device) + present.float().sum(0)
        self.counts["samples"] += present.shape[0]

    def validation_logs(self) -> dict[str, float]:
        """How often each modality was kept by Anymodal Dropout, since the last call."""
        c, mods = self.counts, self.model.modalities
        logs = {f"kept/{n}": float(c["kept"][j] / max(1, c["samples"])) for j, n in enumerate(mods)}
        self._reset_counts()
        return logs

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(),
                "counts": {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in self.counts.items()}}

    def load_state_dict(self, state: dict) -> None:
        load_state_strict(self.teacher, state["teacher"], "teacher")
        if "counts" in state:  # checkpoints written before the statistics were saved resume without them
            self.counts = {k: v.clone() if torch.is_tensor(v) else v for k, v in state["counts"].items()}
