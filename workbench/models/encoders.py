"""Per-modality encoders from timm (docs/METHOD.md, "Architecture").

`mit_b0`..`mit_b5` are SegFormer's Mix Transformer encoders, which are timm's `pvt_v2_bN` built
with `mlp_ratios=(4, 4, 4, 4)` (same parameter shapes and outputs). `mit_tiny` is the same
architecture at toy width for CPU tests and the synthetic study. Any other timm model name that
supports `features_only=True` with four stages works too. Every encoder maps (B, in_chans, H, W)
to four stage features at strides 4/8/16/32; `feature_info` is checked when it is built.
"""

from __future__ import annotations

import os

import timm
from torch import nn

from workbench.errors import ConfigError, UnknownName

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MIT_DEPTHS = {
    "mit_b0": (2, 2, 2, 2), "mit_b1": (2, 2, 2, 2), "mit_b2": (3, 4, 6, 3),
    "mit_b3": (3, 4, 18, 3), "mit_b4": (3, 8, 27, 3), "mit_b5": (3, 6, 40, 3),
}
MIT_WIDTHS = {"mit_b0": (32, 64, 160, 256)} | {f"mit_b{i}": (64, 128, 320, 512) for i in range(1, 6)}
# Toy MiT: same blocks (overlapping patch embed, efficient attention with spatial reduction, Mix-FFN).
MIT_TINY = dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 96), num_heads=(1, 1, 2, 4), sr_ratios=(8, 4, 2, 1))
EXPECTED_REDUCTIONS = (4, 8, 16, 32)


def encoder_names() -> list[str]:
    return ["mit_tiny", *MIT_DEPTHS, "<any timm model with features_only>"]


def _create(name: str, in_chans: int, drop_path: float) -> nn.Module:
    common = dict(features_only=True, in_chans=in_chans, pretrained=False, out_indices=(0, 1, 2, 3))
    if name == "mit_tiny":
        return timm.create_model("pvt_v2_b0", mlp_ratios=(4, 4, 4, 4), drop_path_rate=drop_path, **MIT_TINY,
                                 **common)
    if name in MIT_DEPTHS:
        return timm.create_model(f"pvt_v2_{name[-2:]}", mlp_ratios=(4, 4, 4, 4), drop_path_rate=drop_path, **common)
    if name not in timm.list_models():
        raise UnknownName(f"unknown encoder {name!r}; valid: {', '.join(encoder_names()[:-1])}, or a timm model name "
                       f"(see timm.list_models()), e.g. test_convnext, resnet18")
    try:
        return timm.create_model(name, **common)
    except (RuntimeError, AssertionError, TypeError, ValueError) as e:
        raise ConfigError(f"encoder {name!r} cannot be built with features_only=True and 4 stages: {e}") from e


def build_encoder(name: str, in_chans: int = 3, drop_path: float = 0.0) -> nn.Module:
    """A timm features_only encoder whose forward returns the four stage features (B, C_i, H/s_i, W/s_i).
    Pretrained weights are loaded by `workbench.models.build_model` (see `mit_weights.load_encoder_weights`)."""
    enc = _create(name, in_chans, drop_path)
    reductions = tuple(enc.feature_info.reduction())
    if reductions != EXPECTED_REDUCTIONS:
        raise ConfigError(f"encoder {name!r} has stage strides {reductions}; the segmentor needs {EXPECTED_REDUCTIONS}")
    return enc


def encoder_channels(enc: nn.Module) -> tuple[int, ...]:
    return tuple(enc.feature_info.channels())
