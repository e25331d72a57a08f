"""Build a model from its config, and rebuild a trained one from its checkpoint.

`build_model` is the one place that turns a `ModelConfig` into a network: it builds the architecture
`model.arch` names in the `ARCHS` registry (`segformer`: `Segmentor`; the comparators `cmnext`: `CMNeXt`,
`magic`: `MAGIC`) and loads pretrained encoder weights strictly: a local file (`model.weights`, see
`mit_weights`) or, with `model.init=pretrained`, the synthetic world's RGB encoder (`workbench.pretrain`, built
first if it is not cached); into every encoder of a Segmentor or MAGIC (the input convolution adapted by
`adapt_first_conv` where a modality has other than 3 channels), into CMNeXt's RGB branch only (its hub branch
is no MiT encoder and starts from scratch, as in the public code). `load_model` rebuilds a trained model from
a checkpoint's own config and loads its weights
strictly; with `which="teacher"` it returns the (feedback-updated) teacher stored with a distillation run.
The checkpoint may be a run folder, its `final.pt` / `last.pt`, or its `model.safetensors` /
`teacher.safetensors`; it is read without running code from it (`workbench.checkpoint`), and weights
holding NaN or inf are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from workbench.checkpoint import load_checkpoint, load_state_strict, non_finite
from workbench.config import Config
from workbench.errors import CheckpointError, ConfigError, MissingFile
from workbench.models.cmnext import CMNeXt
from workbench.models.magic import MAGIC
from workbench.models.mit_weights import load_encoder_weights
from workbench.models.segmentor import Segmentor
from workbench.options import Arch, Which, check
from workbench.pretrain import require_encoder


def _segformer(cfg, modalities, num_classes, common) -> tuple[nn.Module, dict]:
    model = Segmentor(modalities, num_classes, shared_encoder=cfg.shared_encoder, fusion=cfg.fusion, **common)
    return model, dict(model.encoders)


def _cmnext(cfg, modalities, num_classes, common) -> tuple[nn.Module, dict]:
    model = CMNeXt(modalities, num_classes, public_aux_residual=cfg.cmnext_public_residual, **common)
    return model, {model.rgb_name: model.rgb}  # the public code loads ImageNet weights into the RGB branch only


def _magic(cfg, modalities, num_classes, common) -> tuple[nn.Module, dict]:
    model = MAGIC(modalities, num_classes, shared_encoder=cfg.shared_encoder, mlp_ratio=cfg.magic_mlp_ratio, **common)
    return model, dict(model.encoders)


# model.arch -> a builder (model config, modalities, classes, the encoders' common arguments) -> (network, the
# encoders that pretrained weights load into, by modality or "shared"); docs/EXTENDING.md says how to add one
ARCHS: dict[Arch, Callable] = {"segformer": _segformer, "cmnext": _cmnext, "magic": _magic}


def build_model(model_cfg, modalities: tuple[str, ...], num_classes: int,
                in_chans: dict[str, int] | None = None) -> Segmentor | CMNeXt | MAGIC:
    """The network a `ModelConfig` describes (`model.arch`, looked up in `ARCHS`), with its pretrained encoder
    weights when it names a file."""
    check("model.arch", model_cfg.arch, Arch)
    common = dict(encoder=model_cfg.encoder, in_chans=in_chans, head_dim=model_cfg.head_dim,
                  head_dropout=model_cfg.head_dropout, drop_path=model_cfg.drop_path)
    model, encoders = ARCHS[model_cfg.arch](model_cfg, modalities, num_classes, common)
    weights = model_cfg.weights
    if model_cfg.init == "pretrained":
        weights = require_encoder(model_cfg)
    if weights is not None:
        for name, enc in encoders.items():
            channels = (in_chans or {}).get(modalities[0] if name == "shared" else name, 3)
            load_encoder_weights(enc, weights, in_chans=channels)
    return model


def checkpoint_path(path: str | Path, which: Which = "model") -> Path:
    """The file to load for `path`: a run folder gives its `final.pt`, or (a shared model: config.json and
    safetensors only) its `<which>.safetensors`; a `model.safetensors` asked for the teacher gives the
    `teacher.safetensors` beside it; any other path is itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("final.pt", f"{which}.safetensors"):
            if (path / name).is_file():
                return path / name
        raise MissingFile(f"{path} holds no final.pt (nor {which}.safetensors); give a finished run folder or a "
                          f"checkpoint file (train one with `python -m workbench train`)")
    if which == "teacher" and path.name == "model.safetensors" and path.with_name("teacher.safetensors").is_file():
        return path.with_name("teacher.safetensors")
    return path


def checkpoint_config(state: dict, source) -> Config:
    """The `Config` a loaded checkpoint holds, or a CheckpointError that names `source` (the file)."""
    raw = state.get("config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: its config is a JSON {type(raw).__name__}, not a config object; use the "
                              f"run's own checkpoint (its config.json beside it holds the config)")
    try:
        return Config.from_dict(raw)
    except ConfigError as e:
        raise CheckpointError(f"{source}: its config is not valid here ({e})") from None


def load_model(checkpoint: str | Path | dict, device: torch.device | str = "cpu", which: Which = "model") -> nn.Module:
    """Rebuild a trained model (any `model.arch`) from a checkpoint (a run folder, a `.pt` / `.safetensors`
    file or a loaded state) and its own config, strictly. `which="teacher"` returns the (feedback-updated)
    teacher stored with a distillation run. Non-finite weights are a CheckpointError. Eval mode."""
    check("which", which, Which)
    if isinstance(checkpoint, dict):
        source, state = "the checkpoint", checkpoint
    else:
        path = checkpoint_path(checkpoint, which)
        source, state = str(path), load_checkpoint(path)
    cfg = checkpoint_config(state, source)
    modalities = tuple(state["modalities"])
    from workbench.data import DATASETS

    known = DATASETS[cfg.data.dataset].all_modalities
    unknown = [m for m in modalities if m not in known]
    if unknown or not modalities:
        raise CheckpointError(f"{source} names modalities {', '.join(modalities) or '(none)'}: "
                              f"{repr(unknown[0]) + ' is not a modality of' if unknown else 'none of'} its dataset "
                              f"{cfg.data.dataset} ({', '.join(known)}); the file's header or 'modalities' entry was "
                              f"edited or belongs to another dataset")
    model = build_model(_without_weights(cfg.model), modalities, len(state["classes"]))
    if "which" in state:  # a safetensors file holds one set of weights, the one its header names
        if state["which"] != which and which == "teacher":
            raise CheckpointError(f"{source} holds the {state['which']}, not the teacher; load teacher.safetensors "
                                  f"(written beside it for distillation runs) or the run's final.pt")
        weights = state["model"]
    elif which == "teacher":
        if "teacher" not in state.get("method", {}):
            raise CheckpointError(f"the checkpoint of {cfg.name!r} holds no teacher (only distillation runs store "
                                  f"one); use which='model' (evaluate: leave out --which teacher)")
        weights = state["method"]["teacher"]
    else:
        weights = state["model"]
    bad = non_finite(weights)
    if bad:
        raise CheckpointError(
            f"{source} holds non-finite weights (NaN or inf) in {len(bad)} of {len(weights)} tensors "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): it was saved by a run that diverged. Train "
            f"it again with a lower train.lr or with train.grad_clip set")
    load_state_strict(model, weights, which)
    model.classes = tuple(state["classes"])
    return model.to(device).eval()


def _without_weights(model_cfg):
    """The trained weights replace the pretrained ones: do not read (or require, or build) the pretrained file."""
    return replace(model_cfg, weights=None, init="scratch")
