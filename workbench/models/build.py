"""Build a model from its config, and rebuild a trained one from its checkpoint.

`build_model` is the one place that turns a `ModelConfig` into a network: it builds the architecture
`model.arch` names (`segformer`: `Segmentor`; the comparators `cmnext`: `CMNeXt`, `magic`: `MAGIC`) and
loads local pretrained encoder weights strictly (`model.weights`, see `mit_weights`): into every encoder
of a Segmentor or MAGIC, into CMNeXt's RGB branch only (its hub branch starts from scratch, as in the
public code). `load_model` rebuilds a trained model from a checkpoint's own config and loads its weights
strictly; with `which="teacher"` it returns the (feedback-updated) teacher stored with a distillation run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from workbench.checkpoint import load_checkpoint, load_state_strict
from workbench.config import Config
from workbench.errors import CheckpointError
from workbench.models.cmnext import CMNeXt
from workbench.models.magic import MAGIC
from workbench.models.mit_weights import load_encoder_weights
from workbench.models.segmentor import Segmentor
from workbench.options import Arch, Which, check


def build_model(model_cfg, modalities: tuple[str, ...], num_classes: int,
                in_chans: dict[str, int] | None = None) -> Segmentor | CMNeXt | MAGIC:
    """The network a `ModelConfig` describes (`model.arch`), with its pretrained encoder weights when it
    names a file."""
    check("model.arch", model_cfg.arch, Arch)
    common = dict(encoder=model_cfg.encoder, in_chans=in_chans, head_dim=model_cfg.head_dim,
                  head_dropout=model_cfg.head_dropout, drop_path=model_cfg.drop_path)
    if model_cfg.arch == "cmnext":
        model = CMNeXt(modalities, num_classes, public_aux_residual=model_cfg.cmnext_public_residual, **common)
        encoders = {model.rgb_name: model.rgb}  # the public code loads ImageNet weights into the RGB branch only
    elif model_cfg.arch == "magic":
        model = MAGIC(modalities, num_classes, shared_encoder=model_cfg.shared_encoder,
                      mlp_ratio=model_cfg.magic_mlp_ratio, **common)
        encoders = dict(model.encoders)
    else:
        model = Segmentor(modalities, num_classes, shared_encoder=model_cfg.shared_encoder, fusion=model_cfg.fusion,
                          **common)
        encoders = dict(model.encoders)
    if model_cfg.weights is not None:
        for name, enc in encoders.items():
            channels = (in_chans or {}).get(modalities[0] if name == "shared" else name, 3)
            load_encoder_weights(enc, model_cfg.weights, in_chans=channels)
    return model


def load_model(checkpoint: str | Path | dict, device: torch.device | str = "cpu", which: Which = "model") -> nn.Module:
    """Rebuild a trained model (any `model.arch`) from a checkpoint (a path or a loaded state) and its own
    config, strictly.
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
