"""CMNeXt (Zhang et al., "Delivering Arbitrary-Modal Semantic Segmentation", CVPR 2023), a comparator.

The RGB-centred, asymmetric Hub2Fuse design of the public code (`jamycheung/DELIVER`,
`semseg/models/backbones/cmnext.py` and the modules it imports), written for this project:

- RGB branch: a MiT encoder built by `build_encoder` (timm's pvt_v2), run stage by stage, because the
  rectified RGB features of stage i are the input of stage i+1. Its LayerNorms use eps 1e-5 as the public
  branch does (nn.LayerNorm's default; timm's pvt_v2 and SegFormer's MiT use 1e-6 in blocks and stage norms).
- Auxiliary branch, one for all non-RGB modalities: per stage a patch embedding whose convolution is
  shared by the auxiliary modalities and whose LayerNorm is per modality; the Self-Query Hub scores
  every auxiliary modality (depthwise 3x3 + 1x1 conv + sigmoid, s_m), keeps x_m <- s_m x_m + x_m and
  merges them by an element-wise max; Parallel Pooling Mixer blocks (PPX) and a LayerNorm follow.
- Per stage, FRM rectifies the RGB and hub features against each other (channel and spatial weights,
  lambda = 0.5 each) and FFM fuses them (cross-attention path + channel embedding); the FFM output is
  the stage's fused feature for the SegFormer head. Each auxiliary modality enters the next stage as its
  scored feature plus the rectified hub feature (with one auxiliary modality: the hub feature itself).
- Widths, depths and attention heads come from the RGB encoder (FFM uses the heads of the RGB stage,
  which for MiT are the public code's 1, 2, 5, 8). PPX hidden ratios are the public (8, 8, 4, 4).

The first modality is the RGB branch (the public code's `modals[0]`; this project's datasets list
`rgb`, `image` or `frame_camera` first). Absent modalities (docs/METHOD.md, "Missing modalities"):

- `zero`: the absent input is zeroed and encoded like any other (no special path).
- `drop`: an absent auxiliary modality is left out of the hub's max. A sample with no auxiliary
  modality gets an all-zero hub input and its hub output is zeroed before FRM. The public code has no
  drop path for RGB; we choose the symmetric rule: an absent RGB's stage output (before FRM) is zeroed
  at every stage, so nothing computed from the RGB input reaches FRM, FFM or the head. The model stays
  RGB-centred: its fused features are then built from the hub alone through FRM's cross terms.

Public quirk, reproduced by `public_aux_residual=True`: the public residual for the next stage,
`x_.reshape(B, H, W, -1).permute(0, 3, 1, 2) + x_f`, is applied to channel-first tensors, so it
scrambles every auxiliary feature map (a fixed reinterpretation of memory, not a transpose). The default
adds the hub feature to the auxiliary feature at the same position and channel, as intended.

`SegOutput.features`: RGB -> the RGB branch's stage outputs (before FRM); an auxiliary modality -> its
features entering the hub's max (after self-query scoring); zeros where a modality was dropped.
`SegOutput.fused`: the FFM outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from workbench.models.encoders import build_encoder, encoder_channels
from workbench.models.segmentor import SegFormerHead, Segmentor, SegOutput

# DELIVER's CMNeXt builds its RGB branch (patch embeddings, blocks, attention reduction, stage norms) with
# nn.LayerNorm's default eps; timm's pvt_v2 uses 1e-6 in the blocks and stage norms (SegFormer's MiT value).
RGB_LN_EPS = 1e-5
PPX_MLP_RATIOS = (8, 8, 4, 4)  # public code: mlp_ratio of the MSPABlocks per stage


def _init_public(m: nn.Module) -> None:
    """The public code's initialization for the modules it adds (the RGB encoder keeps timm's)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (public `ConvLayerNorm`, eps 1e-6)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ParallelPooling(nn.Module):
    """PPX token mixer (public `MSPoolAttention`): x + x * sigmoid(W(d + P3 d + P7 d + P11 d)), d = DW7(x)."""

    def __init__(self, dim: int, pools: tuple[int, ...] = (3, 7, 11)):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.pools = nn.ModuleList(nn.AvgPool2d(k, 1, k // 2, count_include_pad=False) for k in pools)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dw(x)
        return x + x * torch.sigmoid(self.proj(d + sum(p(d) for p in self.pools)))


class PPXBlock(nn.Module):
    """Parallel Pooling Mixer block (public `MSPABlock`): pooling mixer with layer scale, then a channel
    gate (1-D conv over the pooled channel vector) times x plus a layer-scaled Mix-FFN (no identity)."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.norm2 = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
        self.mixer = ParallelPooling(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
                                 nn.GELU(), nn.Conv2d(hidden, dim, 1))
        self.scale1 = nn.Parameter(torch.full((dim,), 1e-2))
        self.scale2 = nn.Parameter(torch.full((dim,), 1e-2))
        self.gate = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.scale1[:, None, None] * self.mixer(self.norm1(x)))
        gate = torch.sigmoid(self.gate(x.mean((2, 3))[:, None]))[:, 0, :, None, None]  # (B, C, 1, 1)
        return gate * x + self.drop_path(self.scale2[:, None, None] * self.mlp(self.norm2(x)))


class FRM(nn.Module):
    """Feature Rectify Module (CMX / public `FeatureRectifyModule`, reduction 1):
    x1' = x1 + l_c w_c[1] x2 + l_s w_s[1] x2 and x2' = x2 + l_c w_c[0] x1 + l_s w_s[0] x1, with channel
    weights w_c = MLP([avg; max] pool of [x1; x2]) (B, 2, C) and spatial weights w_s = convs([x1; x2]) (B, 2, H, W)."""

    def __init__(self, dim: int, lambda_c: float = 0.5, lambda_s: float = 0.5):
        super().__init__()
        self.lambda_c, self.lambda_s = lambda_c, lambda_s
        self.channel = nn.Sequential(nn.Linear(4 * dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, 2 * dim), nn.Sigmoid())
        self.spatial = nn.Sequential(nn.Conv2d(2 * dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, 2, 1), nn.Sigmoid())

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c = x1.shape[:2]
        x = torch.cat([x1, x2], 1)
        wc = self.channel(torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)).view(b, 2, c, 1, 1)
        ws = self.spatial(x).unsqueeze(2)  # (B, 2, 1, H, W)
        w = self.lambda_c * wc + self.lambda_s * ws
        return x1 + w[:, 1] * x2, x2 + w[:, 0] * x1


class FFM(nn.Module):
    """Feature Fusion Module (CMX / public `FeatureFusionModule`, reduction 1): a cross-attention path
    between the two token sets, then a channel embedding of their concatenation to C channels."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"FFM width {dim} is not divisible by its {num_heads} heads")
        self.heads = num_heads
        self.proj_in = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in range(2))
        self.kv = nn.ModuleList(nn.Linear(dim, 2 * dim, bias=False) for _ in range(2))
        self.proj_out = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.residual = nn.Conv2d(2 * dim, dim, 1, bias=False)
        self.embed = nn.Sequential(nn.Conv2d(2 * dim, dim, 1), nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.ReLU(),
                                   nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim))
        self.norm = nn.BatchNorm2d(dim)

    def _context(self, u: torch.Tensor, i: int) -> torch.Tensor:
        """softmax over keys' channels of (K^T V) / sqrt(d): (B, heads, d, d)."""
        b, n, c = u.shape
        k, v = self.kv[i](u).view(b, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return ((k.transpose(-2, -1) @ v) * (c // self.heads) ** -0.5).softmax(-2)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x1.shape
        tokens = [x.flatten(2).transpose(1, 2) for x in (x1, x2)]  # (B, N, C) each
        ys, us = zip(*(F.relu(p(t)).chunk(2, -1) for p, t in zip(self.proj_in, tokens)))
        ctx = [self._context(u, i) for i, u in enumerate(us)]
        out = []
        for i, (t, y, u) in enumerate(zip(tokens, ys, us)):  # each path queries the other path's context
            q = u.view(b, -1, self.heads, c // self.heads).transpose(1, 2)
            v = (q @ ctx[1 - i]).transpose(1, 2).reshape(b, -1, c)
            out.append(self.norms[i](t + self.proj_out[i](torch.cat([y, v], -1))))
        merged = torch.cat(out, -1).transpose(1, 2).reshape(b, 2 * c, h, w)
        return self.norm(self.residual(merged) + self.embed(merged))


class AuxStage(nn.Module):
    """One stage of the auxiliary branch: shared patch-embedding conv, per-modality LayerNorm, the
    Self-Query Hub's per-modality score nets (two or more auxiliary modalities), PPX blocks, LayerNorm."""

    def __init__(self, in_dim: int, dim: int, first: bool, num_aux: int, depth: int, mlp_ratio: float,
                 drop_path: list[float]):
        super().__init__()
        k, s = (7, 4) if first else (3, 2)
        self.embed = nn.Conv2d(in_dim, dim, k, s, k // 2)
        self.embed_norms = nn.ModuleList(ChannelLayerNorm(dim) for _ in range(num_aux))
        self.scores = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.Conv2d(dim, 1, 1), nn.Sigmoid())
            for _ in range(num_aux if num_aux > 1 else 0))
        self.blocks = nn.Sequential(*(PPXBlock(dim, mlp_ratio, p) for p in drop_path[:depth]))
        self.norm = ChannelLayerNorm(dim)

    def hub(self, aux: list[torch.Tensor], keep: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Embed each auxiliary input, score it, and merge the kept ones by max.
        aux: A x (B, C_in, H, W); keep (B, A) bool -> (A x scored (B, C, h, w), hub input (B, C, h, w))."""
        x = [norm(self.embed(a)) for norm, a in zip(self.embed_norms, aux)]
        if self.scores:
            x = [score(a) * a + a for score, a in zip(self.scores, x)]
        stack = torch.stack(x, 1)  # (B, A, C, h, w)
        kept = keep[:, :, None, None, None]
        merged = torch.where(kept, stack, torch.finfo(stack.dtype).min).amax(1)
        return x, torch.where(kept.any(1), merged, torch.zeros_like(merged))


class CMNeXt(nn.Module):
    """RGB branch (MiT) + one auxiliary branch for the other modalities (SQ-Hub + PPX), FRM and FFM at
    every stage, SegFormer head on the fused features. Same interface as `Segmentor`."""

    _check = Segmentor._check  # the same input checks and error messages
    # the hub mixes the modalities inside the encoder: evaluation runs one forward per combination
    # (`workbench.evaluate.predict_naive`), not the one-pass engine
    supports_one_pass = False

    def __init__(self, modalities: tuple[str, ...], num_classes: int, encoder: str = "mit_tiny", head_dim: int = 64,
                 head_dropout: float = 0.1, drop_path: float = 0.0, in_chans: dict[str, int] | None = None,
                 public_aux_residual: bool = False):
        super().__init__()
        self.modalities = tuple(modalities)
        self.num_classes = num_classes
        self.public_aux_residual = public_aux_residual
        in_chans = {m: 3 for m in self.modalities} | (in_chans or {})
        self.rgb_name, self.aux_names = self.modalities[0], self.modalities[1:]
        if len({in_chans[m] for m in self.aux_names}) > 1:
            raise ValueError(f"CMNeXt's auxiliary modalities share one patch-embedding conv, so they need equal "
                             f"channel counts; got {({m: in_chans[m] for m in self.aux_names})}. Repeat 1-channel "
                             f"inputs to 3 channels as the DeLiVER loader does")
        self.rgb = build_encoder(encoder, in_chans[self.rgb_name], drop_path)
        if not all(hasattr(self.rgb, n) for n in ("patch_embed", "stages_0", "stages_3")):
            raise ValueError(f"CMNeXt's RGB branch runs a MiT encoder stage by stage; {encoder!r} is not one. "
                             f"Use mit_tiny or mit_b0..mit_b5")
        for m in self.rgb.modules():  # the public RGB branch's LayerNorms keep torch's default eps
            if isinstance(m, nn.LayerNorm):
                m.eps = RGB_LN_EPS
        self.channels = encoder_channels(self.rgb)
        stages = [self._rgb_stage_module(i) for i in range(4)]
        depths = [len(s.blocks) for s in stages]
        heads = [s.blocks[0].attn.num_heads for s in stages]
        dpr = torch.linspace(0, drop_path, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(4)]
        if self.aux_names:
            dims_in = [in_chans[self.aux_names[0]], *self.channels[:-1]]
            self.aux = nn.ModuleList(
                AuxStage(dims_in[i], self.channels[i], i == 0, len(self.aux_names), depths[i], PPX_MLP_RATIOS[i],
                         dpr[starts[i]:]) for i in range(4))
            self.frm = nn.ModuleList(FRM(c) for c in self.channels)
            self.ffm = nn.ModuleList(FFM(c, h) for c, h in zip(self.channels, heads))
            for part in (self.aux, self.frm, self.ffm):
                part.apply(_init_public)
        self.head = SegFormerHead(self.channels, head_dim, num_classes, head_dropout)

    def _rgb_stage_module(self, i: int) -> nn.Module:
        return getattr(self.rgb, f"stages_{i}")

    def _rgb_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage i of the MiT: (B, C_{i-1}, h, w) or the image for i = 0 -> (B, C_i, h', w')."""
        if i == 0:
            x = self.rgb.patch_embed(x)  # (B, H/4, W/4, C_0), channels last as timm's stage 0 expects
        return self._rgb_stage_module(i)(x)

    def forward(self, inputs: dict, present: torch.Tensor | None = None, protocol: str = "drop") -> SegOutput:
        present = self._check(inputs, present, protocol)
        h, w = inputs[self.rgb_name].shape[-2:]
        # `zero`: absent inputs are zeroed and then treated as present; `drop`: `keep` masks them out
        keep = present if protocol == "drop" else torch.ones_like(present)
        zeroed = {m: inputs[m] * present[:, j, None, None, None].to(inputs[m].dtype) if protocol == "zero" else inputs[m]
                  for j, m in enumerate(self.modalities)}
        rgb_keep = keep[:, 0, None, None, None].to(zeroed[self.rgb_name].dtype)
        aux_keep = keep[:, 1:]
        x = zeroed[self.rgb_name]
        aux = [zeroed[m] for m in self.aux_names]
        feats: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        fused = []
        for i in range(4):
            x = self._rgb_stage(i, x) * rgb_keep  # (B, C_i, h_i, w_i); zero for a dropped RGB
            feats[self.rgb_name].append(x)
            if not self.aux_names:
                fused.append(x)
                continue
            stage = self.aux[i]
            aux, hub = stage.hub(aux, aux_keep)
            for j, (m, a) in enumerate(zip(self.aux_names, aux)):
                feats[m].append(a * aux_keep[:, j, None, None, None].to(a.dtype))
            hub = stage.norm(stage.blocks(hub)) * aux_keep.any(1)[:, None, None, None].to(hub.dtype)
            x, hub = self.frm[i](x, hub)
            fused.append(self.ffm[i](x, hub))
            if len(self.aux_names) == 1:
                aux = [hub]
            elif self.public_aux_residual:  # the public code's reshape of channel-first maps (see module doc)
                aux = [a.reshape(a.shape[0], a.shape[2], a.shape[3], -1).permute(0, 3, 1, 2) + hub for a in aux]
            else:
                aux = [a + hub for a in aux]
        logits = F.interpolate(self.head(fused), size=(h, w), mode="bilinear", align_corners=False)
        return SegOutput(logits=logits, features=feats, fused=fused, present=present)
