"""The multi-modal segmentor: per-modality encoders, per-stage fusion, SegFormer all-MLP head.

docs/METHOD.md, "Architecture" and "Missing modalities: the zero and drop protocols". Inputs are a modality dict plus a `present`
mask (B, M). Two protocols for an absent modality:

- `zero`: its normalized input is zeroed, still encoded, and fused with the others (DeLiVER's
  robustness benchmark);
- `drop`: it is not encoded (only the samples that have it go through its encoder) and fusion
  averages the present modalities only.

The head is split into its affine part (`project`: per-stage linear to E, upsample to stride 4,
concat, 1x1 conv, BN) and the rest (`classify`: ReLU, dropout, 1x1 conv to K). With `mean` fusion
and the head in eval mode, `project` commutes with the average over modalities, which is what makes
the one-pass all-combination evaluation cheap (`workbench.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import ConfigError
from workbench.models.encoders import build_encoder, encoder_channels
from workbench.options import Fusion as FusionKind
from workbench.options import Protocol, check, choices

PROTOCOLS = choices(Protocol)


def modality_encoders(encoder: str, modalities, in_chans: dict | None, shared_encoder: bool,
                      drop_path: float) -> tuple[nn.ModuleDict, list[int]]:
    """One encoder per modality (or one `shared` encoder for all) and the channels of its four stages.
    `in_chans`: input channels per modality (default 3)."""
    in_chans = {m: 3 for m in modalities} | (in_chans or {})
    if shared_encoder and len({in_chans[m] for m in modalities}) > 1:
        raise ConfigError(f"model.shared_encoder=True needs equal channel counts; got {in_chans}. Repeat "
                          f"1-channel inputs to 3 channels, or set model.shared_encoder=false")
    names = ["shared"] if shared_encoder else list(modalities)
    encoders = nn.ModuleDict({n: build_encoder(encoder, in_chans[modalities[0] if shared_encoder else n], drop_path)
                              for n in names})
    return encoders, encoder_channels(next(iter(encoders.values())))


@dataclass
class SegOutput:
    logits: torch.Tensor  # (B, K, H, W) at input resolution
    features: dict[str, list[torch.Tensor]]  # modality -> 4 x (B, C_i, H/s_i, W/s_i); zeros where dropped
    fused: list[torch.Tensor]  # 4 x (B, C_i, H/s_i, W/s_i)
    present: torch.Tensor  # (B, M) bool: the modalities each sample received


class Fusion(nn.Module):
    """Per-stage fusion over present modalities: `mean`, or `softmax` (learned per-pixel weights)."""

    def __init__(self, kind: str, channels: tuple[int, ...], num_modalities: int):
        super().__init__()
        check("model.fusion", kind, FusionKind)
        self.kind = kind
        if kind == "softmax":  # one scalar score per modality, pixel and stage
            self.score = nn.ModuleList(
                nn.ModuleList(nn.Conv2d(c, 1, 1) for _ in range(num_modalities)) for c in channels)

    def forward(self, feats: list[torch.Tensor], weights: torch.Tensor, stage: int) -> torch.Tensor:
        """feats: M x (B, C, h, w); weights: (B, M) float, 1 for fused modalities (each row non-empty)."""
        x = torch.stack(feats, 1)  # (B, M, C, h, w)
        if self.kind == "mean":
            w = weights / weights.sum(1, keepdim=True)
            return torch.einsum("bm,bmchw->bchw", w.to(x.dtype), x)
        scores = torch.cat([conv(f) for conv, f in zip(self.score[stage], feats)], 1)  # (B, M, h, w)
        scores = scores.masked_fill(weights[:, :, None, None] == 0, float("-inf"))
        return (scores.softmax(1).unsqueeze(2) * x).sum(1)


class SegFormerHead(nn.Module):
    """SegFormer all-MLP head (Xie et al. 2021): linear per stage -> E, upsample to stride 4, concat,
    1x1 conv + BN + ReLU, dropout, 1x1 conv to K."""

    def __init__(self, in_channels: tuple[int, ...], embed_dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linear = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = nn.Conv2d(embed_dim * len(in_channels), embed_dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(embed_dim, num_classes, 1)

    def project(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Affine part: 4 stage maps -> (B, E, H/4, W/4) pre-activation."""
        size = feats[0].shape[-2:]
        ups = [F.interpolate(lin(f), size=size, mode="bilinear", align_corners=False) if i else lin(f)
               for i, (lin, f) in enumerate(zip(self.linear, feats))]
        return self.bn(self.fuse(torch.cat(ups[::-1], 1)))

    def classify(self, pre: torch.Tensor) -> torch.Tensor:
        return self.cls(self.dropout(F.relu(pre)))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.project(feats))


class Segmentor(nn.Module):
    """Encoders (one per modality, or one shared), fusion per stage and a SegFormer head."""

    def __init__(self, modalities: tuple[str, ...], num_classes: int, encoder: str = "mit_tiny",
                 in_chans: dict[str, int] | None = None, shared_encoder: bool = False, fusion: str = "mean",
                 head_dim: int = 64, head_dropout: float = 0.1, drop_path: float = 0.0):
        super().__init__()
        self.modalities = tuple(modalities)
        self.num_classes = num_classes
        self.shared_encoder = shared_encoder
        self.encoders, self.channels = modality_encoders(encoder, self.modalities, in_chans, shared_encoder, drop_path)
        self.fusion = Fusion(fusion, self.channels, len(self.modalities))
        self.head = SegFormerHead(self.channels, head_dim, num_classes, head_dropout)

    def encoder(self, modality: str) -> nn.Module:
        return self.encoders["shared" if self.shared_encoder else modality]

    def _check(self, inputs: dict, present: torch.Tensor | None, protocol: str) -> torch.Tensor:
        check("protocol", protocol, Protocol)
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise KeyError(f"input has no {missing[0]!r}; the model expects modalities {', '.join(self.modalities)}")
        b = inputs[self.modalities[0]].shape[0]
        if present is None:
            present = torch.ones(b, len(self.modalities), dtype=torch.bool, device=inputs[self.modalities[0]].device)
        if present.shape != (b, len(self.modalities)):
            raise ValueError(f"present mask has shape {tuple(present.shape)}; expected (B={b}, M={len(self.modalities)})")
        if not present.any(1).all():
            raise ValueError("a sample has no modality present; every row of `present` needs at least one True")
        return present.bool()

    def encode(self, inputs: dict, present: torch.Tensor, protocol: str) -> dict[str, list[torch.Tensor]]:
        """Per-modality stage features. `zero`: absent inputs zeroed and encoded; `drop`: only the
        samples that have a modality go through its encoder, absent rows stay zero."""
        feats: dict[str, list[torch.Tensor]] = {}
        for j, m in enumerate(self.modalities):
            x, keep = inputs[m], present[:, j]
            if protocol == "zero" or bool(keep.all()):
                x = x * keep.view(-1, 1, 1, 1).to(x.dtype) if protocol == "zero" else x
                feats[m] = list(self.encoder(m)(x))
            elif bool(keep.any()):
                idx = keep.nonzero().squeeze(1)
                sub = self.encoder(m)(x.index_select(0, idx))
                feats[m] = [f.new_zeros((x.shape[0], *f.shape[1:])).index_copy(0, idx, f) for f in sub]
            else:
                feats[m] = None  # filled with zeros below, once a shape is known
        ref = next(v for v in feats.values() if v is not None)
        for m, v in feats.items():
            if v is None:
                feats[m] = [torch.zeros_like(f) for f in ref]
        return feats

    def fuse(self, feats: dict[str, list[torch.Tensor]], weights: torch.Tensor) -> list[torch.Tensor]:
        return [self.fusion([feats[m][i] for m in self.modalities], weights, i) for i in range(len(self.channels))]

    def forward(self, inputs: dict, present: torch.Tensor | None = None, protocol: str = "drop") -> SegOutput:
        present = self._check(inputs, present, protocol)
        h, w = inputs[self.modalities[0]].shape[-2:]
        feats = self.encode(inputs, present, protocol)
        weights = present.float() if protocol == "drop" else torch.ones_like(present, dtype=torch.float)
        fused = self.fuse(feats, weights)
        logits = F.interpolate(self.head(fused), size=(h, w), mode="bilinear", align_corners=False)
        return SegOutput(logits=logits, features=feats, fused=fused, present=present)

    # the one-pass all-combination engine (`workbench.evaluate.predict_combinations`) applies: each modality
    # is encoded on its own and the combinations differ only in the fusion weights
    supports_one_pass = True
