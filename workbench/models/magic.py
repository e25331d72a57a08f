"""MAGIC (Zheng et al., "Centering the Value of Every Modality: Towards Efficient and Resilient
Modality-agnostic Semantic Segmentation", ECCV 2024), re-implemented from the paper: a comparator.

No code of MAGIC is public. The paper (and MAGIC++, arXiv 2412.16876, which extends it) describes two
plug-in modules on a backbone that processes the modalities as one multi-modal batch:

- MAM, the multi-modal aggregation module: processes the features of all modalities and aggregates
  them into one feature that carries their complementary information;
- ASM, the arbitrary-modal selection module: uses the aggregated feature as the benchmark, ranks the
  modalities by the cosine similarity of their features to it, and combines the most robust (most
  similar) and the most fragile (least similar) ones into a second feature.

The model predicts from the aggregated feature (the output at test time); the selected feature gets its
own prediction during training. What the paper leaves open, and what we chose (each a keyword or a
`magic_losses` argument where it is cheap to vary):

1. Encoder: one timm encoder shared by all modalities (`shared_encoder=True`, the paper's multi-modal
   batch); `False` gives one per modality.
2. Where the modules sit: at every encoder stage (four MAMs and four ASMs), before the SegFormer head,
   which is shared by the aggregated and the selected branch.
3. MAM's form: a parallel-pooling mixer shared by the modalities (the PPX token mixer of CMNeXt/DELIVER,
   `ParallelPooling`: x + x * sigmoid(W(d + P3 d + P7 d + P11 d)), d = DW7(x)), then a per-modality
   pointwise MLP with a residual, y_m = g_m + MLP_m(g_m), then the mean over the modalities present:
   agg = sum_m w_m y_m / sum_m w_m. (Per-modality MLPs and a mean over modalities follow the authors'
   prototypes shipped as compiled files in zhengxuJosh/AnySeg, which apply them to the head's output.)
4. ASM's ranking: s_m = cos(vec g_m, vec agg) per sample over the modalities present (g_m = the pooled
   feature, as in those prototypes); robust = argmax s_m, fragile = argmin s_m (the same modality when
   only one is present); selected = MLP_robust(g_robust) + MLP_fragile(g_fragile). The ranking is a hard
   argmax/argmin, so gradients reach the selected modalities' features, not the scores.
5. Objective (`magic_losses`): L = CE(aggregated) + lambda_sel CE(selected) + lambda_con L_con, with
   L_con the Jensen-Shannon divergence among the remaining modalities (present, neither robust nor
   fragile) of the channel-softmax of their pooled features, per pixel, averaged over pixels, samples
   and stages (the prototypes' consistency term between the two remaining modalities, generalized to
   any number and written as the textbook JSD with a mixture of probabilities; the prototypes average
   log-probabilities instead). Defaults lambda_sel = 1, lambda_con = 1: the paper gives no weights.
6. Missing modalities (docs/METHOD.md, "Missing modalities"): `drop` leaves an absent modality out of
   the encoder (as `Segmentor`), of MAM's mean and of ASM's ranking; `zero` encodes the zeroed input and
   treats it as present everywhere.

Everything else (training schedule, augmentation, loss type) is the workbench's shared loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from workbench.losses import ce_loss
from workbench.models.cmnext import ParallelPooling
from workbench.models.segmentor import SegFormerHead, Segmentor, SegOutput, modality_encoders


@dataclass
class MagicOutput(SegOutput):
    """`SegOutput` (logits and `fused` from the aggregated branch) plus the selection branch."""

    selected_logits: torch.Tensor = None  # (B, K, H, W) from the ASM features
    pooled: list[torch.Tensor] = field(default_factory=list)  # 4 x (B, M, C_i, h, w): MAM's g_m
    scores: list[torch.Tensor] = field(default_factory=list)  # 4 x (B, M): s_m (-inf where not ranked)
    robust: list[torch.Tensor] = field(default_factory=list)  # 4 x (B,) long: argmax s_m
    fragile: list[torch.Tensor] = field(default_factory=list)  # 4 x (B,) long: argmin s_m
    ranked: torch.Tensor = None  # (B, M) bool: the modalities that took part in MAM and ASM


def _mlp(dim: int, ratio: float) -> nn.Module:
    hidden = max(1, int(dim * ratio))
    return nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))


class MAM(nn.Module):
    """Multi-modal aggregation at one stage: shared parallel pooling, per-modality MLP, masked mean."""

    def __init__(self, dim: int, num_modalities: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.pool = ParallelPooling(dim)
        self.mlps = nn.ModuleList(_mlp(dim, mlp_ratio) for _ in range(num_modalities))

    def forward(self, feats: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, M, C, h, w), weights (B, M) float -> pooled g (B, M, C, h, w), aggregate (B, C, h, w)."""
        g = self.pool(feats.flatten(0, 1)).unflatten(0, feats.shape[:2])
        y = torch.stack([g[:, j] + mlp(g[:, j]) for j, mlp in enumerate(self.mlps)], 1)
        w = (weights / weights.sum(1, keepdim=True)).to(y.dtype)
        return g, torch.einsum("bm,bmchw->bchw", w, y)


class ASM(nn.Module):
    """Arbitrary-modal selection at one stage: rank the modalities by cosine similarity to the aggregate,
    combine the most similar (robust) and the least similar (fragile) one."""

    def __init__(self, dim: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.robust = _mlp(dim, mlp_ratio)
        self.fragile = _mlp(dim, mlp_ratio)

    @staticmethod
    def rank(g: torch.Tensor, agg: torch.Tensor, ranked: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """g (B, M, C, h, w), agg (B, C, h, w), ranked (B, M) bool -> scores (B, M) (-inf where not ranked),
        robust (B,), fragile (B,) modality indices."""
        scores = F.cosine_similarity(g.flatten(2), agg.flatten(1)[:, None], dim=-1).detach()
        robust = scores.masked_fill(~ranked, float("-inf")).argmax(1)
        fragile = scores.masked_fill(~ranked, float("inf")).argmin(1)
        return scores.masked_fill(~ranked, float("-inf")), robust, fragile

    def forward(self, g: torch.Tensor, agg: torch.Tensor, ranked: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, robust, fragile = self.rank(g, agg, ranked)
        rows = torch.arange(g.shape[0], device=g.device)
        return self.robust(g[rows, robust]) + self.fragile(g[rows, fragile]), scores, robust, fragile


class MAGIC(nn.Module):
    """Shared (or per-modality) encoder, MAM and ASM at every stage, one SegFormer head for both branches.
    Same interface as `Segmentor`; `forward` returns a `MagicOutput`."""

    # the same input checks and per-modality encoding (with `drop`'s skipping of absent inputs) as Segmentor
    _check = Segmentor._check
    encode = Segmentor.encode
    encoder = Segmentor.encoder
    # MAM and ASM are not a weighted mean of per-modality projections: evaluation runs one forward per
    # combination (`workbench.evaluate.predict_naive`), not the one-pass engine
    supports_one_pass = False

    def __init__(self, modalities: tuple[str, ...], num_classes: int, encoder: str = "mit_tiny", head_dim: int = 64,
                 head_dropout: float = 0.1, drop_path: float = 0.0, in_chans: dict[str, int] | None = None,
                 shared_encoder: bool = True, mlp_ratio: float = 1.0):
        super().__init__()
        self.modalities = tuple(modalities)
        self.num_classes = num_classes
        self.shared_encoder = shared_encoder
        self.encoders, self.channels = modality_encoders(encoder, self.modalities, in_chans, shared_encoder, drop_path)
        self.mam = nn.ModuleList(MAM(c, len(self.modalities), mlp_ratio) for c in self.channels)
        self.asm = nn.ModuleList(ASM(c, mlp_ratio) for c in self.channels)
        self.head = SegFormerHead(self.channels, head_dim, num_classes, head_dropout)

    def forward(self, inputs: dict, present: torch.Tensor | None = None, protocol: str = "drop") -> MagicOutput:
        present = self._check(inputs, present, protocol)
        h, w = inputs[self.modalities[0]].shape[-2:]
        feats = self.encode(inputs, present, protocol)
        ranked = present if protocol == "drop" else torch.ones_like(present)
        weights = ranked.float()
        out = {"fused": [], "selected": [], "pooled": [], "scores": [], "robust": [], "fragile": []}
        for i in range(len(self.channels)):
            g, agg = self.mam[i](torch.stack([feats[m][i] for m in self.modalities], 1), weights)
            sel, scores, robust, fragile = self.asm[i](g, agg, ranked)
            for key, value in zip(out, (agg, sel, g, scores, robust, fragile)):
                out[key].append(value)
        size = dict(size=(h, w), mode="bilinear", align_corners=False)
        return MagicOutput(logits=F.interpolate(self.head(out["fused"]), **size), features=feats, fused=out["fused"],
                           present=present, selected_logits=F.interpolate(self.head(out["selected"]), **size),
                           pooled=out["pooled"], scores=out["scores"], robust=out["robust"], fragile=out["fragile"],
                           ranked=ranked)


def remaining_modalities(out: MagicOutput, stage: int) -> torch.Tensor:
    """(B, M) bool: ranked modalities that were neither the robust nor the fragile one at `stage`."""
    rest = out.ranked.clone()
    rows = torch.arange(rest.shape[0], device=rest.device)
    rest[rows, out.robust[stage]] = False
    rest[rows, out.fragile[stage]] = False
    return rest


def consistency_loss(out: MagicOutput) -> torch.Tensor:
    """L_con: per stage and sample, JSD among the remaining modalities' channel-softmax maps,
    JSD = mean_k sum_c P_k (log P_k - log Mix), Mix = mean_k P_k, averaged over pixels; mean over the
    (stage, sample) terms with at least two remaining modalities; 0 (with a graph) when there are none."""
    terms, count = [], 0
    for i, g in enumerate(out.pooled):
        rest = remaining_modalities(out, i)  # (B, M)
        n = rest.sum(1)  # (B,)
        logp = g.float().flatten(3).log_softmax(2)  # (B, M, C, L)
        r = rest[:, :, None, None].to(logp.dtype)
        mix = (logp.exp() * r).sum(1, keepdim=True) / n.clamp(min=1)[:, None, None, None]
        kl = (logp.exp() * (logp - mix.clamp_min(1e-30).log())).sum(2).mean(-1)  # (B, M)
        jsd = (kl * rest).sum(1) / n.clamp(min=1)
        valid = n >= 2
        terms.append((jsd * valid).sum())
        count += int(valid.sum())
    total = sum(terms)
    return total / count if count else total * 0.0


def magic_losses(out: MagicOutput, labels: torch.Tensor, selected_weight: float = 1.0,
                 consistency_weight: float = 1.0, seg_loss=None) -> dict[str, torch.Tensor]:
    """MAGIC's training objective: L = CE(aggregated) + selected_weight CE(selected) + consistency_weight L_con.
    `seg_loss(logits, labels)`: the segmentation loss (default `ce_loss`; e.g. OHEM from the run's config).
    Returns {"loss", "aggregated", "selected", "consistency"} (the parts detached)."""
    seg_loss = seg_loss or ce_loss
    parts = {"aggregated": seg_loss(out.logits, labels),
             "selected": seg_loss(out.selected_logits, labels),
             "consistency": consistency_loss(out)}
    loss = parts["aggregated"] + selected_weight * parts["selected"] + consistency_weight * parts["consistency"]
    return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}
