"""Build a model from its config, and rebuild a trained one from its checkpoint.

`build_model` is the one place that turns a `ModelConfig` into a network: it builds the architecture
and loads local pretrained encoder weights strictly (`model.weights`, see `mit_weights`). `load_model`
rebuilds a trained model from a checkpoint's own config and loads its weights strictly; with
`which="teacher"` it returns the (feedback-updated) teacher stored with a distillation run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from workbench.checkpoint import load_checkpoint, load_state_strict
from workbench.config import Config
from workbench.errors import CheckpointError
from workbench.models.mit_weights import load_encoder_weights
from workbench.models.segmentor import Segmentor
from workbench.options import Which, check


def build_model(model_cfg, modalities: tuple[str, ...], num_classes: int,
                in_chans: dict[str, int] | None = None) -> Segmentor:
    """The segmentor a `ModelConfig` describes, with its pretrained encoder weights when it names a file."""
    model = Segmentor(modalities, num_classes, encoder=model_cfg.encoder, in_chans=in_chans,
                      shared_encoder=model_cfg.shared_encoder, fusion=model_cfg.fusion, head_dim=model_cfg.head_dim,
                      head_dropout=model_cfg.head_dropout, drop_path=model_cfg.drop_path)
    if model_cfg.weights is not None:
        for name, enc in model.encoders.items():
            load_encoder_weights(enc, model_cfg.weights, in_chans=(in_chans or {}).get(name, 3))
    return model


def load_model(checkpoint: str | Path | dict, device: torch.device | str = "cpu", which: Which = "model") -> nn.Module:
    """Rebuild a trained model from a checkpoint (a path or a loaded state) and its own config, strictly.
    `which="teacher"` returns the (feedback-updated) teacher stored with a distillation run. Eval mode."""
    check("which", which, Which)
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    cfg = Config.from_dict(state["config"])
    model = build_model(_without_weights(cfg.model), tuple(state["modalities"]), len(state["classes"]))
    if which == "teacher" and "teacher" not in state.get("method", {}):
        raise CheckpointError(f"the checkpoint of {cfg.name!r} holds no teacher (only distillation runs store one); "
                              f"use which='model'")
    weights = state["model"] if which == "model" else state["method"]["teacher"]
    load_state_strict(model, weights, which)
    model.classes = tuple(state["classes"])
    return model.to(device).eval()


def _without_weights(model_cfg):
    """The trained weights replace the pretrained ones: do not read (or require) the pretrained file."""
    return replace(model_cfg, weights=None)
