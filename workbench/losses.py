"""RobustSeg's losses: CE / OHEM, logit KD, class prototypes, CPD, IFV, ASM and Anymodal Dropout.

Implements docs/METHOD.md "Losses" and the loss equations of the paper (RobustSeg, CVPR 2026, "Loss &
Training" and "Key Designs" 1-3):

    L_origin   = L_CE + lambda L_KL                                  basic self-distillation
    L_hp       = L_origin + alpha L_cp + beta L_ifv                  hybrid prototype distillation (HPD)
    L_feedback = L_CE + L_ifv                                        student -> teacher step

and, per sample b, modality m and stage i, with the label nearest-resized to the stage's h x w (l'):

    p_c   = sum_j f_j [l'_j = c] / sum_j [l'_j = c]                  prototype (label-masked pooling)
    L_cp  = D(p^S_{pi(m)}, g^T_m),  pi a per-sample permutation      cross-modal prototype distillation
    CFM_j = p_{l'_j} if pixel j is labelled, else f_j                center feature map
    M_j   = cos(f_j, CFM_j)                                          IFV map (Intra-class Feature Variation)
    L_ifv = D(M^S_m, M^T_m) over primary modalities the student got  primary-modality IFV distillation
    s_m   = cos(vec f_m, vec f_fused); primary = top ceil(M/2) s_m   ASM (modality selection)

Conventions: features of one stage are `(B, C, h, w)`; a stack over modalities is `(B, M, C, h, w)`;
labels are `(B, H, W)` long with `ignore_index` (255) for unlabelled pixels; a per-modality feature
dict is `SegOutput.features` (modality -> 4 stage tensors), whose key order is the modality order
(`modalities=` overrides it). Prototype, IFV and divergence arithmetic runs in at least float32
with autocast off (bf16 features are upcast).
`kd_loss`, `cpd_loss` and `ifv_loss` detach their target (the teacher side); the divergence
primitives do not. Every function is vectorized over samples, classes and pixels; only modalities
and stages are looped over.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from workbench.data.transforms import IGNORE_INDEX
from workbench.options import (
    Aggregation,
    AnySegAxis,
    AsmStage,
    CMDFeatures,
    CMDReduction,
    DropoutMode,
    IFVDivergence,
    KDReduction,
    Pairing,
    ProtoDivergence,
    Prototypes,
    check,
)

Tensor = torch.Tensor
Features = Mapping[str, Sequence[Tensor]]  # modality -> stage tensors, e.g. SegOutput.features

def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _f32(x: Tensor) -> Tensor:
    """At least float32 (bf16 / fp16 features are upcast; float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# ----------------------------------------------------------------------------------------------
# Supervised losses

def ce_loss(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """L_CE: pixel cross-entropy averaged over labelled pixels.

    logits (B, K, H, W), labels (B, H, W) long -> scalar. 0 (with a graph) when no pixel is labelled,
    where `F.cross_entropy` would return nan."""
    loss = F.cross_entropy(_f32(logits), labels.long(), ignore_index=ignore_index, reduction="none")
    return loss.sum() / (labels != ignore_index).sum().clamp(min=1)


def ohem_ce_loss(logits: Tensor, labels: Tensor, thresh: float = 0.7, min_kept_frac: float = 1 / 16,
                 ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Online hard example mining CE (DELIVER's `OhemCrossEntropy`).

    Keep the pixels whose loss exceeds -log(thresh) (probability of the true class < thresh); if fewer
    than n_min = floor(min_kept_frac * #labelled) are kept, keep the n_min largest losses instead (as
    the reference's `topk`, over all pixels, where ignored ones have loss 0). Mean of the kept losses.
    logits (B, K, H, W), labels (B, H, W) -> scalar. Sorting instead of a data-dependent branch keeps
    it free of host syncs; where the reference takes the mean of an empty set (nan) this returns 0."""
    loss = F.cross_entropy(_f32(logits), labels.long(), ignore_index=ignore_index, reduction="none").flatten()
    n_min = ((labels != ignore_index).sum() * min_kept_frac).floor().long()
    n_keep = torch.maximum((loss > -math.log(thresh)).sum(), n_min)
    ranked = loss.sort(descending=True).values  # hard pixels first: they are exactly the top n_hard
    keep = torch.arange(ranked.numel(), device=ranked.device) < n_keep
    return (ranked * keep).sum() / n_keep.clamp(min=1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None,
            temperature: float = 1.0, reduction: str = "element", ignore_index: int = IGNORE_INDEX) -> Tensor:
    """L_KL = T^2 * KL(softmax(z_T / T) || softmax(z_S / T)) over labelled pixels.

    logits (B, K, H, W), labels (B, H, W) or None (every pixel counts) -> scalar; the teacher is detached.
    `pixel`: sum over classes, mean over labelled pixels. `element`: the public code's
    `KLDivLoss(reduction="mean")`, a mean over elements, i.e. `pixel` / K. Ignored pixels are left out
    of both the sum and the element count (mean over N_valid * K elements), so `element` is exactly
    `pixel` / K and, with no ignored pixel, exactly the public code's B*K*H*W mean (the public code also
    distils ignored pixels; we do not, as docs/METHOD.md "Logits distillation (L_KL)" says "over valid pixels")."""
    check("reduction", reduction, KDReduction)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; upsample both to the label size first")
    t = temperature
    log_q = F.log_softmax(_f32(student_logits) / t, dim=1)
    log_p = F.log_softmax(_f32(teacher_logits.detach()) / t, dim=1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)  # (B, H, W)
    if labels is None:
        valid = torch.ones_like(kl, dtype=torch.bool)
    else:
        if labels.shape != kl.shape:
            raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(student_logits.shape)}")
        valid = labels != ignore_index
    per_pixel = (kl * valid).sum() / valid.sum().clamp(min=1)
    scale = t * t / (student_logits.shape[1] if reduction == "element" else 1)
    return per_pixel * scale


# ----------------------------------------------------------------------------------------------
# Prototypes, center feature maps and IFV maps

def resize_labels(labels: Tensor, size: int | Sequence[int]) -> Tensor:
    """Labels (B, H, W) -> (B, h, w) with PyTorch's `mode='nearest'` (source index floor(j * H / h),
    the reference code's choice; not `nearest-exact`). Same dtype; returned as is when already h x w."""
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].to(labels.dtype)


def _onehot(labels: Tensor, size: Sequence[int], num_classes: int, ignore_index: int) -> Tensor:
    """(B, h*w, K) float class indicator of the resized labels; rows of unlabelled pixels are zero.
    Labels outside 0..K-1 count as unlabelled, and so does `ignore_index` even inside that range."""
    if tuple(labels.shape[-2:]) != tuple(size):  # `resize_labels`, kept in float (labels are exact in fp32)
        labels = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
    classes = torch.arange(num_classes, device=labels.device)
    if 0 <= ignore_index < num_classes:
        classes[ignore_index] = -1
    return (labels.flatten(1)[..., None] == classes).float()  # (B, N, K)


def _prototypes(features: Tensor, onehot: Tensor) -> tuple[Tensor, Tensor]:
    """features (B, *, C, h, w), onehot (B, N, K) -> protos (B, *, K, C), present (B, K)."""
    b, c = features.shape[0], features.shape[-3]
    k = onehot.shape[-1]
    with _no_autocast(features.device):
        f = _f32(features).reshape(b, -1, onehot.shape[1])  # (B, L*C, N)
        onehot = onehot.to(f.dtype)
        counts = onehot.sum(1)  # (B, K)
        sums = torch.bmm(f, onehot)  # (B, L*C, K): sum_j f_j [l'_j = c]
        protos = sums / counts.clamp(min=1)[:, None, :]
    return protos.reshape(b, *features.shape[1:-3], c, k).transpose(-1, -2), counts > 0


def _center(features: Tensor, onehot: Tensor, protos: Tensor) -> Tensor:
    """CFM: features (B, *, C, h, w), onehot (B, N, K), protos (B, *, K, C) -> (B, *, C, h, w)."""
    b, c, k = features.shape[0], features.shape[-3], onehot.shape[-1]
    with _no_autocast(features.device):
        f = _f32(features).reshape(b, -1, c, onehot.shape[1])  # (B, L, C, N)
        p = protos.reshape(b, -1, k, c).to(f.dtype)
        own = torch.einsum("bnk,blkc->blcn", onehot.to(f.dtype), p)  # p_{l'_j} at every pixel
        labelled = onehot.sum(-1).bool()[:, None, None, :]  # (B, 1, 1, N)
        cfm = torch.where(labelled, own, f)
    return cfm.reshape(features.shape)


def _ifv_parts(features: Tensor, onehot: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The IFV map's ingredients without building the CFM: features (B, *, C, h, w), onehot (B, N, K) ->
    (f_j . s_c / max(|s_c|, eps) with c = l'_j, |f_j|^2), each (B, *, h*w).

    s_c = sum_j f_j [l'_j = c] is n_c p_c, so s_c / |s_c| = p_c / |p_c|: the prototype's direction is
    all the cosine needs (eps applies to the class sum; it only matters for all-zero features).
    One matmul gives the dot products of every pixel with every class direction."""
    b, c, n = features.shape[0], features.shape[-3], onehot.shape[1]
    with _no_autocast(features.device):
        f = _f32(features).reshape(b, -1, n)  # (B, L*C, N)
        sums = torch.bmm(f, onehot.to(f.dtype)).unflatten(1, (-1, c))  # (B, L, C, K)
        unit = sums * sums.square().sum(2, keepdim=True).clamp_min(eps * eps).rsqrt()
        f = f.unflatten(1, (-1, c))  # (B, L, C, N)
        own = (f.transpose(-1, -2) @ unit * onehot[:, None]).sum(-1)  # (B, L, N)
        fsq = f.square().sum(2)
    shape = (*features.shape[:-3], n)
    return own.reshape(shape), fsq.reshape(shape)


def _ifv_finish(own: Tensor, fsq: Tensor, labelled: Tensor, eps: float) -> Tensor:
    """IFV map from `_ifv_parts`: F.cosine_similarity's formula x.y / (max(|x|, eps) max(|y|, eps)) at
    labelled pixels; at ignored ones cos(f_j, f_j) (1 unless |f_j| < eps; zero gradient, so detached)."""
    floored = fsq.clamp_min(eps * eps)  # max(|f_j|, eps)^2
    return torch.where(labelled, own * floored.rsqrt(), (fsq / floored).detach())  # x / x == 1 exactly


def _ifv(features: Tensor, onehot: Tensor, eps: float) -> Tensor:
    """IFV map: features (B, *, C, h, w), onehot (B, N, K) -> flat (B, *, h*w)."""
    own, fsq = _ifv_parts(features, onehot, eps)
    labelled = (onehot.sum(-1) > 0).reshape(onehot.shape[0], *[1] * (own.dim() - 2), -1)
    with _no_autocast(own.device):
        return _ifv_finish(own, fsq, labelled, eps)


def class_prototypes(features: Tensor, labels: Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Prototypes p_c = sum_j f_j [l'_j = c] / sum_j [l'_j = c], l' = labels nearest-resized to h x w.

    features (B, C, h, w) -> protos (B, K, C), present (B, K) bool; a stack (B, M, C, h, w) gives
    protos (B, M, K, C) (the label is shared). Classes absent from a sample: zero rows, present False.
    One one-hot matmul per call."""
    return _prototypes(features, _onehot(labels, features.shape[-2:], num_classes, ignore_index))


def center_feature_map(features: Tensor, labels: Tensor, protos: Tensor,
                       ignore_index: int = IGNORE_INDEX) -> Tensor:
    """CFM_j = p_{l'_j} at labelled pixels, f_j at ignored ones (their own feature).

    features (B, [M,] C, h, w), labels (B, H, W), protos (B, [M,] K, C) -> (B, [M,] C, h, w)."""
    return _center(features, _onehot(labels, features.shape[-2:], protos.shape[-2], ignore_index), protos)


def ifv_map(features: Tensor, labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX,
            eps: float = 1e-8) -> Tensor:
    """IFV map M_j = cos(f_j, CFM_j) over channels (1 at ignored pixels; 0 for an all-zero feature).

    features (B, C, h, w) -> (B, h, w); a stack (B, M, C, h, w) -> (B, M, h, w)."""
    return _ifv(features, _onehot(labels, features.shape[-2:], num_classes, ignore_index), eps).unflatten(
        -1, features.shape[-2:])


# ----------------------------------------------------------------------------------------------
# Divergences

@functools.lru_cache(maxsize=64)
def _segments(widths: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """(sum widths, S) 0/1 matrix: element c of a concatenation of S segments belongs to segment s.
    `x @ seg` sums each segment (deterministic, unlike scatter_add on CUDA); cached per shape."""
    owner = torch.cat([torch.full((w,), s, dtype=torch.long) for s, w in enumerate(widths)]).to(device)
    return (owner[:, None] == torch.arange(len(widths), device=device)).to(dtype)


def _stage_divergence(s: Tensor, t: Tensor, sizes: Sequence[tuple[int, int]], kind: str,
                      tau: float) -> Tensor:
    """`ifv_divergence` of maps of several stages, flattened and concatenated on the last axis:
    s, t (..., sum h_i*w_i) -> (..., S). The stage loop only slices; the arithmetic runs once."""
    n = [h * w for h, w in sizes]
    seg = _segments(tuple(n), s.device, s.dtype)  # (sum n_i, S)
    if kind == "mse":
        return (s - t).square() @ seg / seg.sum(0)

    def log_softmax(x: Tensor) -> Tensor:  # per stage, over all positions or along the width
        parts = x.split(n, -1)
        if kind == "kl_spatial":
            return torch.cat([q.log_softmax(-1) for q in parts], -1)
        return torch.cat([q.unflatten(-1, hw).log_softmax(-1).flatten(-2) for q, hw in zip(parts, sizes)], -1)

    log_q, log_p = log_softmax(torch.stack([s, t]) / tau).unbind(0)
    return (log_p.exp() * (log_p - log_q)) @ seg * (tau * tau)


def ifv_divergence(student_map: Tensor, teacher_map: Tensor, kind: str = "kl_spatial",
                   temperature: float = 2.0) -> Tensor:
    """Distance between IFV maps, per map: (..., h, w) x 2 -> (...), e.g. (B,) or (B, M).

    `kl_spatial`: T^2 KL(softmax(M_T / T) || softmax(M_S / T)) with one softmax over all h*w positions
    (docs/METHOD.md default). `kl_width`: the public code (RMMSS `CriterionIFV`): softmax along the width
    axis, KL summed over columns and rows (its `batchmean` over a batch of one map), times T^2.
    `mse`: IFVD (ECCV 2020), mean over h*w of (M_S - M_T)^2; `temperature` unused."""
    check("kind", kind, IFVDivergence)
    with _no_autocast(student_map.device):
        s, t = _f32(student_map), _f32(teacher_map)
        d = _stage_divergence(s.flatten(-2), t.flatten(-2), [tuple(s.shape[-2:])], kind, temperature)
    return d[..., 0]


def _proto_div(p_s: Tensor, p_t: Tensor, present: Tensor, seg: Tensor, kind: str, tau: float,
               eps: float) -> Tensor:
    """`prototype_divergence` for prototypes whose channels are S segments (stages concatenated along C,
    so one pass serves every stage): p_s, p_t (..., K, C); present (..., S, K); seg (C, S) 0/1 -> (..., S)."""
    n = present.sum(-1)  # (..., S)
    if kind == "cosine":  # F.cosine_similarity's formula, per segment: x.y / (max(|x|, eps) max(|y|, eps))
        dots = (p_s * p_t) @ seg  # (..., K, S)
        norms = ((p_s.square() @ seg).clamp_min(eps * eps) * (p_t.square() @ seg).clamp_min(eps * eps)).sqrt()
        d = (1 - dots / norms).transpose(-1, -2)  # (..., S, K)
        return (d * present).sum(-1) / n.clamp(min=1)
    # Absent classes leave the softmax (-inf logits, then 0 log-probability: no nan in the gradient);
    # a segment with no present class keeps every class and is zeroed at the end.
    live = present | (n == 0)[..., None]
    mask = (live.transpose(-1, -2).to(seg.dtype) @ seg.T) > 0  # (..., K, C)
    s, t = (p_s, p_t) if tau == 1 else (p_s / tau, p_t / tau)
    log_q = F.log_softmax(s.masked_fill(~mask, -math.inf), dim=-2).masked_fill(~mask, 0.0)
    log_p = F.log_softmax(t.masked_fill(~mask, -math.inf), dim=-2).masked_fill(~mask, 0.0)
    kl = (log_p.exp() * (log_p - log_q)).sum(-2) @ seg  # (..., S); absent terms are exp(0) * (0 - 0)
    return kl * (n > 0) / (n * seg.sum(0)).clamp(min=1) * (tau * tau)


def prototype_divergence(p_s: Tensor, p_t: Tensor, present: Tensor, kind: str = "kl_class",
                         temperature: float = 1.0, eps: float = 1e-8) -> Tensor:
    """Distance between prototype sets over the classes present: (..., K, C) x 2, present (..., K) -> (...).

    `kl_class` (public code): per channel, softmax over the class axis of p / T, restricted to the
    present classes (absent ones are masked out of the softmax, not kept as zero rows);
    T^2 * sum over present classes and channels of p_T (log p_T - log p_S) / (n_present * C), i.e. the
    public code's element mean, which it takes over all K*C elements. 0 when one class is present.
    `cosine`: mean over present classes of 1 - cos(p_S,c, p_T,c); `temperature` unused.
    A prototype set with no present class gives 0."""
    check("kind", kind, ProtoDivergence)
    with _no_autocast(p_s.device):
        p_s, p_t = _f32(p_s), _f32(p_t)
        seg = torch.ones(p_s.shape[-1], 1, device=p_s.device, dtype=p_s.dtype)
        return _proto_div(p_s, p_t, present.bool()[..., None, :], seg, kind, temperature, eps)[..., 0]


# ----------------------------------------------------------------------------------------------
# Random draws: CPD pairing and Anymodal Dropout (explicit torch.Generator)

def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _random_permutations(n: int, m: int, generator: torch.Generator | None) -> Tensor:
    """(n, m) long: one uniform permutation of 0..m-1 per row."""
    return torch.rand(n, m, generator=generator, device=_gen_device(generator)).argsort(1)


def cpd_pairs(batch: int | Tensor, num_modalities: int | None = None, generator: torch.Generator | None = None,
              pairing: str = "permutation", device: torch.device | str | None = None, num_stages: int = 4) -> Tensor:
    """Per-sample modality pairing pi for L_cp: (B, M) long, row b a permutation of 0..M-1; the student
    prototype of modality pi_b(m) = pairs[b, m] is matched to the teacher prototype of modality m.

    `batch`: the batch size, or a (B, M) tensor (e.g. the present mask) that gives B, M and the device.
    The permutation is over all M modalities; which pairs count (e.g. only student modalities the student
    received) is `cpd_loss(received=...)`'s business. `permutation` (paper): uniform; `derangement`:
    uniform without fixed points (rejection sampling, M >= 2); `same`: identity (single-modal prototype
    KD); `iid` (the public code): (B, num_stages, M), every slot of every stage drawn uniformly from
    0..M-1 independently, so a row is a permutation only with probability M!/M^M (9.4% at M = 4)."""
    check("pairing", pairing, Pairing)
    if isinstance(batch, Tensor):
        if batch.dim() != 2:
            raise ValueError(f"cpd_pairs got a tensor of shape {tuple(batch.shape)}; pass a (B, M) mask or an int")
        (b, m), device = batch.shape, device or batch.device
    else:
        if num_modalities is None:
            raise ValueError("cpd_pairs(batch_size, ...) needs num_modalities")
        b, m = int(batch), int(num_modalities)
    if pairing == "same":
        return torch.arange(m, device=device).expand(b, m).clone()
    if pairing == "iid":
        return torch.randint(0, m, (b, num_stages, m), generator=generator, device=_gen_device(generator)).to(device)
    if pairing == "derangement" and m < 2:
        raise ValueError(f"a derangement needs at least 2 modalities (got M={m}); use pairing='same'")
    perm = _random_permutations(b, m, generator)
    if pairing == "derangement":
        ident = torch.arange(m, device=perm.device)
        while True:  # each round redraws only the rows with a fixed point (accepted w.p. ~1/e)
            bad = (perm == ident).any(1)
            if not bool(bad.any()):
                break
            perm[bad] = _random_permutations(int(bad.sum()), m, generator)
    return perm.to(device)


def anymodal_dropout(batch_size: int, num_modalities: int, generator: torch.Generator | None = None,
                     mode: str = "sample", device: torch.device | str | None = None,
                     p_full: float | None = None) -> Tensor:
    """Anymodal Dropout mask (B, M) bool: which modalities the student receives; never an empty row.

    The public code's distribution (`p_full=None`, the paper's reading): k uniform in 1..M, then a uniform
    k-subset (the first k of a uniform permutation), so P(full) = 1/M. With `p_full`: every modality with
    probability p_full, else k uniform in 1..M-1 and a uniform k-subset (p_full = 1/M is the same law, with
    other draws). `sample`: one draw per sample; `batch`: one draw for the whole batch (public code);
    `none`: every modality."""
    check("mode", mode, DropoutMode)
    m = num_modalities
    if mode == "none" or (p_full is not None and m == 1):
        return torch.ones(batch_size, m, dtype=torch.bool, device=device)
    n = batch_size if mode == "sample" else 1
    gd = _gen_device(generator)
    if p_full is None:
        k = torch.randint(1, m + 1, (n,), generator=generator, device=gd)
    else:
        full = torch.rand(n, generator=generator, device=gd) < p_full
        k = torch.where(full, m, torch.randint(1, m, (n,), generator=generator, device=gd))
    ranks = _random_permutations(n, m, generator).argsort(1)  # rank of each modality in a random order
    keep = ranks < k[:, None]
    return keep.expand(batch_size, m).clone().to(device or keep.device)


# ----------------------------------------------------------------------------------------------
# ASM: primary-modality selection

def _names(features: Features, modalities: Sequence[str] | None) -> list[str]:
    names = list(modalities) if modalities is not None else list(features)
    missing = [m for m in names if m not in features]
    if missing:
        raise KeyError(f"no features for modality {missing[0]!r}; features have {', '.join(features)}")
    return names


def _check_stages(stages: Sequence[int], features: Features, names: Sequence[str]) -> None:
    n = len(features[names[0]])
    if not stages or any(not 0 <= i < n for i in stages):
        raise ValueError(f"stages={tuple(stages)!r} must be a non-empty subset of 0..{n - 1}")


def _stack(features: Features, names: Sequence[str], stage: int) -> Tensor:
    return torch.stack([features[m][stage] for m in names], 1)  # (B, M, C, h, w)


@torch.no_grad()
def asm_similarity(features: Features, fused: Sequence[Tensor], stage: str = "last",
                   modalities: Sequence[str] | None = None) -> Tensor:
    """ASM score s_m = cos(vec f_m, vec f_fused) per sample: (B, M) (at least float32), no gradient.

    features: modality -> stage tensors (B, C_i, h_i, w_i) (the teacher's, full modality); fused: the
    fused stage tensors. `last`: last stage; `all`: the mean of the per-stage similarities."""
    check("stage", stage, AsmStage)
    names = _names(features, modalities)
    sims = []
    for i in [len(fused) - 1] if stage == "last" else range(len(fused)):
        f = _f32(_stack(features, names, i)).flatten(2)  # (B, M, C*h*w)
        g = _f32(fused[i]).flatten(1)[:, None]  # (B, 1, C*h*w)
        sims.append(F.cosine_similarity(f, g, dim=-1))
    return sims[0] if len(sims) == 1 else torch.stack(sims).mean(0)


def asm_primary(sim: Tensor, k: int | None = None) -> Tensor:
    """Primary modalities: the top k = ceil(M/2) scores along the last axis. (B, M) -> (B, M) bool
    (per sample, for L_ifv); (M,) -> (M,). Ties go to the lower index (`topk`)."""
    k = math.ceil(sim.shape[-1] / 2) if k is None else k
    idx = sim.topk(k, dim=-1).indices
    return torch.zeros_like(sim, dtype=torch.bool).scatter(-1, idx, True)


# ----------------------------------------------------------------------------------------------
# Distillation losses over modalities and stages

def cpd_loss(student_feats: Features, teacher_feats: Features, labels: Tensor, num_classes: int, pairs: Tensor,
             stages: Sequence[int] = (0, 1, 2, 3), kind: str = "kl_class", temperature: float = 1.0,
             received: Tensor | None = None, ignore_index: int = IGNORE_INDEX,
             modalities: Sequence[str] | None = None, prototypes: str = "masked", aggregation: str = "sum",
             detach_target: bool = True, eps: float = 1e-8) -> Tensor:
    """L_cp: cross-modal prototype distillation, D(p^S_{pi(m)}, g^T_m) -> scalar.

    student_feats / teacher_feats: modality -> stage tensors (B, C_i, h_i, w_i); labels (B, H, W);
    pairs (B, M) from `cpd_pairs`, one pairing for every stage (identity = single-modal prototype KD), or
    (B, S, M), one per stage (the public code's i.i.d. draw, `cpd_pairs(pairing="iid")`, S = len(stages));
    D = `prototype_divergence` over the classes present in the sample at that stage.
    `aggregation`: `sum` (the paper's equation and the public code): the counted terms summed over stages
    and modalities, averaged over the B samples; `mean`: the mean over the counted (stage, sample,
    modality) terms (this workbench before 2026-11-25; 16x smaller at M = 4, S = 4). 0 (with a graph) when
    no term counts.

    `received` (B, M) bool: the modalities the student got (`SegOutput.present`). Given, a pair counts
    only if the student modality pi(m) was received; None counts every pair (the public code, whose
    zero-padding student distils zeroed modalities too). Passing it is the recommended default: under
    `drop` a dropped modality's features are constant zeros outside the graph, so its term is a
    constant (KL to a uniform softmax); under `zero` it asks the encoder to reproduce another modality's
    class prototypes from an all-zero input, which carries no scene information. The paper matches
    prototypes of modalities the student "sees" (its Eq. for L_cp is written for the student's modality
    features), so we skip dropped ones.
    `prototypes`: `masked` (absent classes masked out) or `public` (the public code: zero rows for absent
    classes, prototypes divided by the count a second time, every class in the softmax; such prototypes
    underflow float32 at 256 x 256 features, docs/METHOD.md)."""
    check("kind", kind, ProtoDivergence)
    check("prototypes", prototypes, Prototypes)
    check("aggregation", aggregation, Aggregation)
    names = _names(student_feats, modalities)
    _check_stages(stages, student_feats, names)
    if pairs.shape[-1] != len(names):
        raise ValueError(f"pairs has {pairs.shape[-1]} modalities but the features have {len(names)} "
                         f"({', '.join(names)})")
    args = (student_feats, teacher_feats, labels, num_classes, names, kind, temperature, received, ignore_index,
            prototypes, detach_target, eps)
    if pairs.dim() == 3:  # one pairing per stage: the stages go one at a time
        if pairs.shape[1] != len(stages):
            raise ValueError(f"pairs of shape {tuple(pairs.shape)} has {pairs.shape[1]} stage pairings for "
                             f"{len(stages)} stages")
        parts = [_cpd_terms(*args, pairs[:, j], (i,)) for j, i in enumerate(stages)]
        total, count = sum(t for t, _ in parts), sum(c for _, c in parts)
    else:
        total, count = _cpd_terms(*args, pairs, stages)
    return total / (pairs.shape[0] if aggregation == "sum" else count.clamp(min=1))


def _cpd_terms(student_feats: Features, teacher_feats: Features, labels: Tensor, num_classes: int,
               names: Sequence[str], kind: str, temperature: float, received: Tensor | None, ignore_index: int,
               prototypes: str, detach_target: bool, eps: float, pairs: Tensor,
               stages: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(sum, count) of the counted L_cp terms for one pairing `pairs` (B, M) shared by `stages`."""
    m = len(names)
    protos, presents = [], []
    for i in stages:  # per stage: one matmul gives every modality's prototypes, student and teacher
        ft = [teacher_feats[n][i].detach() if detach_target else teacher_feats[n][i] for n in names]
        both = torch.stack([student_feats[n][i] for n in names] + ft, 1)  # (B, 2M, C_i, h, w)
        onehot = _onehot(labels, both.shape[-2:], num_classes, ignore_index)
        p, present = _prototypes(both, onehot)  # (B, 2M, K, C_i), (B, K)
        if prototypes == "public":
            p, present = p / onehot.sum(1).clamp(min=1)[:, None, :, None], torch.ones_like(present)
        protos.append(p)
        presents.append(present)
    # The pairs that count: the student modality pi(m) was received (one host sync for the index list).
    sel = received.bool().gather(1, pairs) if received is not None else torch.ones_like(pairs, dtype=torch.bool)
    bi, mi = sel.nonzero(as_tuple=True)  # (P,) each
    if bi.numel() == 0:  # nothing counts: 0, still attached to the student's graph
        return sum(p.sum() for p in protos) * 0.0, torch.zeros((), device=pairs.device)
    with _no_autocast(protos[0].device):
        # Stages side by side along the channel axis: one divergence pass, reduced per stage by `seg`.
        p = torch.cat(protos, -1).flatten(0, 1)  # (B * 2M, K, sum C_i): student then teacher modalities
        seg = _segments(tuple(q.shape[-1] for q in protos), p.device, p.dtype)
        ps = p.index_select(0, bi * (2 * m) + pairs[bi, mi])  # (P, K, sum C): student modality pi(m)
        pt = p.index_select(0, bi * (2 * m) + m + mi)  # teacher modality m
        present = torch.stack(presents, 1).index_select(0, bi)  # (P, S, K)
        d = _proto_div(ps, pt, present, seg, kind, temperature, eps)  # (P, S)
        w = present.any(-1)  # the sample has a labelled class at that stage
        return (d * w).sum(), w.sum()


def ifv_loss(student_feats: Features, teacher_feats: Features, labels: Tensor, num_classes: int,
             modalities_mask: Tensor, stages: Sequence[int] = (0, 1, 2, 3), kind: str = "kl_spatial",
             temperature: float = 2.0, pairs: Tensor | None = None, ignore_index: int = IGNORE_INDEX,
             modalities: Sequence[str] | None = None, aggregation: str = "sum", detach_target: bool = True,
             eps: float = 1e-8) -> Tensor:
    """L_ifv: D(M^S_m, M^T_m) between IFV maps of the same modality -> scalar.

    modalities_mask (B, M) bool selects the *student* modalities distilled: for HPD, ASM primary AND
    received by the student; received alone for "IFV (all modalities)". With `pairs` (B, M) the
    cross-modal variant (the paper's negative "cross-modal IFV" row): the student map of modality
    pi(m) = pairs[b, m] against the teacher map of modality m, counted when the student modality
    pi(m) is selected. D = `ifv_divergence(kind, temperature)`. `aggregation`: `sum` (the paper and the
    public code): the selected terms summed over stages and modalities, averaged over the B samples;
    `mean`: their mean. Only the selected terms are computed (one host sync for their index list); 0
    with a valid graph when the mask is empty. For the feedback step swap the roles: the teacher's features as
    `student_feats` (mask: its non-primary modalities that the student received), the student's as
    `teacher_feats` (the detached target)."""
    check("kind", kind, IFVDivergence)
    check("aggregation", aggregation, Aggregation)
    names = _names(student_feats, modalities)
    _check_stages(stages, student_feats, names)
    sel = modalities_mask.bool()
    if sel.shape[1] != len(names):
        raise ValueError(f"modalities_mask has {sel.shape[1]} columns but the features have {len(names)} "
                         f"modalities ({', '.join(names)})")
    src = pairs if pairs is not None else torch.arange(len(names), device=sel.device).expand_as(sel)
    # Only the selected (sample, slot) pairs are computed: one host sync for their index list.
    bi, mi = sel.gather(1, src).nonzero(as_tuple=True)  # (P,) each
    if bi.numel() == 0:  # nothing selected: 0, still attached to the student's graph
        return sum(student_feats[n][i].sum() for n in names for i in stages) * 0.0
    m = len(names)
    # Rows of the (B * 2M) stack of student then teacher modalities: student pi(m), teacher m per pair.
    rows = (bi[:, None] * (2 * m) + torch.stack([src[bi, mi], mi + m], 1)).flatten()  # (2P,)
    lab = labels.index_select(0, bi)
    own, fsq, labelled, sizes = [], [], [], []
    for i in stages:  # per stage: the dot products; everything after runs once on all stages
        ft = [teacher_feats[n][i].detach() if detach_target else teacher_feats[n][i] for n in names]
        both = torch.stack([student_feats[n][i] for n in names] + ft, 1)  # (B, 2M, C, h, w)
        pair = both.flatten(0, 1).index_select(0, rows).unflatten(0, (-1, 2))  # (P, 2, C, h, w)
        onehot = _onehot(lab, both.shape[-2:], num_classes, ignore_index)  # (P, N_i, K)
        o, q = _ifv_parts(pair, onehot, eps)  # (P, 2, N_i): student, teacher
        own.append(o)
        fsq.append(q)
        labelled.append(onehot.sum(-1) > 0)
        sizes.append(tuple(both.shape[-2:]))
    with _no_autocast(lab.device):
        maps = _ifv_finish(torch.cat(own, -1), torch.cat(fsq, -1), torch.cat(labelled, -1)[:, None], eps)
        d = _stage_divergence(maps[:, 0], maps[:, 1], sizes, kind, temperature)  # (P, S)
    return d.sum() / (sel.shape[0] if aggregation == "sum" else d.numel())


# ----------------------------------------------------------------------------------------------
# AnySeg (comparator)
#
# AnySeg (Zheng et al., "Learning Robust Anymodal Segmentor with Unimodal and Cross-modal Distillation",
# arXiv 2411.17141) distils a full-modality teacher into a student trained under Anymodal Dropout, with a
# shared encoder whose per-modality stage features both sides expose. Its repository (zhengxuJosh/AnySeg)
# ships no training code; the two feature losses are public as `UMD` and `CMD` in RobustSeg/UMMSS
# (semseg/models/segformer/UMD.py and CMD.py), where features are lists over samples of (M, C, h, w)
# stage tensors. The functions below take this project's modality dicts and a `received` (B, M) mask
# (the public `index`: the modalities the student got) and are vectorized over samples and modalities.



def _anyseg_dim(axis: str) -> int:
    check("axis", axis, AnySegAxis)
    return {"channel": 1, "height": 2, "width": 3}[axis]  # of a (P, C, h, w) stack


def _received_rows(student_feats: Features, teacher_feats: Features, received: Tensor, stage: int,
                   names: Sequence[str]) -> tuple[Tensor, Tensor]:
    """(P, C, h, w) student and (detached) teacher features of the received (sample, modality) pairs,
    sample-major (the order of `received.nonzero()`)."""
    rows = received.bool().flatten().nonzero().squeeze(1)  # b * M + m
    s = _f32(_stack(student_feats, names, stage)).flatten(0, 1).index_select(0, rows)
    t = _f32(_stack(teacher_feats, names, stage).detach()).flatten(0, 1).index_select(0, rows)
    return s, t


def umd_loss(student_feats: Features, teacher_feats: Features, received: Tensor, stages: Sequence[int] = (0, 1, 2, 3),
             axis: str = "height", modalities: Sequence[str] | None = None) -> Tensor:
    """L_UMD, AnySeg's unimodal distillation: per sample b, stage i and received modality m,
    KL(softmax_a(f^T_{b,m,i}) || softmax_a(f^S_{b,m,i})) averaged over the C*h*w elements (the public
    `KLDivLoss(reduction="mean")` on one sample's (C, h, w) map), clamped at 0; summed over stages and
    received modalities, divided by the batch size B (the public `loss_umd / B`). -> scalar.

    Axis: the public code applies `log_softmax(x, dim=1)` to `x_all[i][j][k]`, one sample's single-modality
    map of shape (C, h, w), so dim 1 is the HEIGHT axis: for every channel and column, a distribution over
    rows. (dim=1 is the channel axis of a batched (B, C, h, w) map; indexing sample and modality away first
    shifted it.) `axis="height"` (default) reproduces the public loss; `"channel"` is the per-pixel class-like
    softmax the call probably meant; `"width"` for completeness. The teacher side is detached."""
    names = _names(student_feats, modalities)
    _check_stages(stages, student_feats, names)
    dim = _anyseg_dim(axis)
    b = received.shape[0]
    if not bool(received.any()):
        return sum(student_feats[n][i].sum() for n in names for i in stages) * 0.0
    total = 0.0
    with _no_autocast(received.device):
        for i in stages:
            s, t = _received_rows(student_feats, teacher_feats, received, i, names)
            log_q, log_p = s.log_softmax(dim), t.log_softmax(dim)
            kl = (log_p.exp() * (log_p - log_q)).mean((1, 2, 3))  # (P,) element mean per map
            total = total + kl.clamp(min=0).sum()
    return total / b


def _cmd_transform(s: Tensor, t: Tensor, features: str, dim: int) -> tuple[Tensor, Tensor]:
    if features == "softmax":
        return s.softmax(dim), t.softmax(dim)
    if features == "public":
        return s.log_softmax(dim), t.softmax(dim)
    return s, t


def _channel_cosine(x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Pairwise similarity of maps: x (P, C, L), y (Q, C, L) -> (P, Q), the mean over channels c of
    cos(x_p[c], y_q[c]) over the L positions (`F.cosine_similarity(f_i.flatten(1), f_j.flatten(1), dim=1).mean()`
    of the public code, whose f is one (C, h, w) map). The public diagonal is set to 1; callers do that."""
    dots = torch.einsum("pcl,qcl->pqc", x, y)
    norms = x.square().sum(-1)[:, None, :] * y.square().sum(-1)[None, :, :]  # (P, Q, C)
    return (dots * norms.clamp_min(eps * eps).rsqrt()).mean(-1)


def cmd_loss(student_feats: Features, teacher_feats: Features, received: Tensor, stages: Sequence[int] = (0, 1, 2, 3),
             axis: str = "height", features: str = "softmax", reduction: str = "sample",
             modalities: Sequence[str] | None = None, eps: float = 1e-8) -> Tensor:
    """L_CMD, AnySeg's cross-modal distillation: the MSE between the student's and the teacher's
    inter-modality similarity matrices. For sample b and stage i, over the n_b received modalities,
    R[k, l] = mean_c cos(f_k[c], f_l[c]) (cosine over spatial positions, per channel; R[k, k] = 1) and
    L = mean_{k,l} (R^S[k, l] - R^T[k, l])^2; summed over stages, averaged over samples -> scalar.

    `features`: the maps compared, after a softmax along `axis` (the public code's transforms; `axis`
    as in `umd_loss`, default `height`). `softmax` (default): both sides softmax, so identical student and
    teacher give 0. `public`: the public code's pair, log_softmax for the student and softmax for the
    teacher (copied from its UMD), whose matrices differ even for identical features. `raw`: no transform.

    `reduction`: `sample` (default) is the intended per-sample mean. `public` reproduces the public loop:
    its feature lists are created once, before the loop over samples, and the matrices and the loss are
    recomputed inside that loop, each time overwriting the previous loss. So only the last iteration counts,
    and by then the lists hold every sample: per stage, ONE (N x N) matrix over all N = sum_b n_b
    received (sample, modality) maps, cross-sample pairs included, and L = sum_i MSE_i / B. It is not a
    per-sample loss at all (with B = 1 the two reductions agree). The teacher side is detached."""
    check("features", features, CMDFeatures)
    check("reduction", reduction, CMDReduction)
    names = _names(student_feats, modalities)
    _check_stages(stages, student_feats, names)
    dim = _anyseg_dim(axis)
    rec = received.bool()
    b, m = rec.shape
    if not bool(rec.any()):
        return sum(student_feats[n][i].sum() for n in names for i in stages) * 0.0
    counts = rec.sum(1)  # (B,) n_b
    total = 0.0
    with _no_autocast(rec.device):
        for i in stages:
            s, t = _received_rows(student_feats, teacher_feats, rec, i, names)  # (P, C, h, w)
            s, t = _cmd_transform(s, t, features, dim)
            s, t = s.flatten(2), t.flatten(2)  # (P, C, L)
            if reduction == "public":
                pairs = torch.ones(s.shape[0], s.shape[0], dtype=torch.bool, device=s.device)
            else:  # pairs within the same sample only
                owner = rec.nonzero()[:, 0]
                pairs = owner[:, None] == owner[None, :]
            eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
            rs = torch.where(eye, 1.0, _channel_cosine(s, s, eps))
            rt = torch.where(eye, 1.0, _channel_cosine(t, t, eps))
            sq = (rs - rt).square() * pairs
            if reduction == "public":
                total = total + sq.sum() / pairs.sum()
            else:  # per sample: mean over its n_b^2 entries; then the mean over samples
                owner = rec.nonzero()[:, 0]
                per_sample = torch.zeros(b, dtype=sq.dtype, device=sq.device).index_add(0, owner, sq.sum(1))
                total = total + (per_sample / counts.clamp(min=1).square()).sum()
    return total / b
