"""workbench.losses against hand-computed values and straightforward loop references (CPU, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.bench.losses import loop_asm_similarity, loop_cpd_loss, loop_ifv_loss
from workbench.losses import (
    anymodal_dropout,
    asm_primary,
    asm_similarity,
    ce_loss,
    center_feature_map,
    class_prototypes,
    cpd_loss,
    cpd_pairs,
    ifv_divergence,
    ifv_loss,
    ifv_map,
    kd_loss,
    ohem_ce_loss,
    prototype_divergence,
    resize_labels,
)

IGN = 255
K = 6


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _labels(b: int, size: int, g: torch.Generator, k: int = K, ignore_frac: float = 0.2) -> torch.Tensor:
    """Random labels with ignored pixels; class k-1 never appears (an absent class)."""
    lab = torch.randint(0, k - 1, (b, size, size), generator=g)
    lab[torch.rand(b, size, size, generator=g) < ignore_frac] = IGN
    return lab


def _feats(names, b: int, channels, sizes, g: torch.Generator, dtype=torch.float64) -> dict:
    return {n: [torch.randn(b, c, s, s, generator=g, dtype=dtype) for c, s in zip(channels, sizes)] for n in names}


def _nearest_rows(n_in: int, n_out: int) -> list[int]:
    """PyTorch `nearest` source indices (integer ratios here, so exact): floor(j * n_in / n_out)."""
    return [j * n_in // n_out for j in range(n_out)]


def _loop_resize(labels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    rows, cols = _nearest_rows(labels.shape[-2], h), _nearest_rows(labels.shape[-1], w)
    return labels[:, rows][:, :, cols]


def _loop_prototypes(f: torch.Tensor, labels: torch.Tensor, k: int):
    b, c, h, w = f.shape
    lab = _loop_resize(labels, h, w)
    protos, present = torch.zeros(b, k, c, dtype=f.dtype), torch.zeros(b, k, dtype=torch.bool)
    for s in range(b):
        for cls in range(k):
            pix = [(i, j) for i in range(h) for j in range(w) if int(lab[s, i, j]) == cls]
            if pix:
                protos[s, cls] = sum(f[s, :, i, j] for i, j in pix) / len(pix)
                present[s, cls] = True
    return protos, present


# ----------------------------------------------------------------------------------------------
# CE, OHEM, KD


def test_ce_ignores_255():
    g = _gen()
    logits, labels = torch.randn(2, 5, 4, 4, generator=g), torch.randint(0, 5, (2, 4, 4), generator=g)
    labels[0, :2] = IGN
    terms = [-F.log_softmax(logits[b, :, i, j], 0)[labels[b, i, j]]
             for b in range(2) for i in range(4) for j in range(4) if labels[b, i, j] != IGN]
    assert torch.allclose(ce_loss(logits, labels), sum(terms) / len(terms))
    noisy = logits.clone()
    noisy[0, :, :2] += 100 * torch.randn(5, 2, 4, generator=g)  # only ignored pixels change
    assert torch.allclose(ce_loss(noisy, labels), ce_loss(logits, labels))
    x = logits.clone().requires_grad_()
    out = ce_loss(x, torch.full_like(labels, IGN))
    out.backward()
    assert out.item() == 0 and torch.isfinite(x.grad).all()


def _ohem_loop(logits, labels, thresh):
    """DELIVER's OhemCrossEntropy, written per pixel."""
    losses, n_valid = [], 0
    for b in range(labels.shape[0]):
        for i in range(labels.shape[1]):
            for j in range(labels.shape[2]):
                y = int(labels[b, i, j])
                n_valid += y != IGN
                losses.append(0.0 if y == IGN else float(-F.log_softmax(logits[b, :, i, j], 0)[y]))
    hard = [x for x in losses if x > -math.log(thresh)]
    if len(hard) < n_valid // 16:
        hard = sorted(losses, reverse=True)[: n_valid // 16]
    return sum(hard) / len(hard)


@pytest.mark.parametrize("confident", [False, True])
def test_ohem_matches_loop_reference(confident):
    g = _gen(1)
    labels = torch.randint(0, 4, (2, 12, 12), generator=g)
    labels[:, :3] = IGN
    logits = torch.randn(2, 4, 12, 12, generator=g, dtype=torch.float64)
    if confident:  # few hard pixels: the min-kept branch (n_min = valid / 16) decides
        logits = logits + 8 * F.one_hot(labels.clamp(max=3), 4).permute(0, 3, 1, 2)
        logits[0, :, 5, :4] = torch.tensor([0.0, 3.0, 0.0, 0.0], dtype=torch.float64)[:, None]
    ref = _ohem_loop(logits, labels, 0.7)
    assert math.isclose(float(ohem_ce_loss(logits, labels, thresh=0.7)), ref, rel_tol=1e-9)
    if confident:
        hard = (F.cross_entropy(logits, labels, ignore_index=IGN, reduction="none") > -math.log(0.7)).sum()
        assert hard < int((labels != IGN).sum()) // 16  # the branch under test was taken


def test_kd_hand_computed():
    # Pixel 0: teacher (1/2, 1/2), student (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3). Pixel 1 ignored.
    s = torch.tensor([[math.log(3.0), 5.0], [0.0, -5.0]], dtype=torch.float64)[None, :, None, :]  # (1, 2, 1, 2)
    t = torch.zeros_like(s)
    labels = torch.tensor([[[0, IGN]]])
    assert math.isclose(float(kd_loss(s, t, labels, reduction="pixel")), 0.5 * math.log(4 / 3), rel_tol=1e-12)
    assert math.isclose(float(kd_loss(s, t, labels, reduction="element")), 0.25 * math.log(4 / 3), rel_tol=1e-12)
    # T = 2: student probabilities softmax([ln 3, 0] / 2) = (sqrt3, 1) / (sqrt3 + 1), times T^2 = 4.
    q = torch.tensor([math.sqrt(3), 1.0], dtype=torch.float64) / (math.sqrt(3) + 1)
    ref = 4 * float((0.5 * torch.log(0.5 / q)).sum())
    assert math.isclose(float(kd_loss(s, t, labels, temperature=2.0, reduction="pixel")), ref, rel_tol=1e-12)


@pytest.mark.filterwarnings("ignore:reduction. 'mean'")  # the public code's own call
def test_kd_element_vs_pixel_and_public_code():
    g = _gen(2)
    s, t = torch.randn(2, 7, 5, 5, generator=g), torch.randn(2, 7, 5, 5, generator=g)
    labels = torch.randint(0, 7, (2, 5, 5), generator=g)
    pixel, element = kd_loss(s, t, labels, reduction="pixel"), kd_loss(s, t, labels, reduction="element")
    assert torch.allclose(element * 7, pixel)
    public = torch.nn.KLDivLoss(reduction="mean")(F.log_softmax(s, 1), F.softmax(t, 1))  # B*K*H*W mean
    assert torch.allclose(element, public, atol=1e-7)
    labels[0, 0] = IGN  # with ignored pixels 'element' stays exactly pixel / K
    assert torch.allclose(kd_loss(s, t, labels, reduction="element") * 7, kd_loss(s, t, labels, reduction="pixel"))


@pytest.mark.parametrize("reduction", ["element", "pixel"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_zero_with_zero_gradient_for_identical(reduction, temperature):
    z = torch.randn(2, 5, 4, 4, generator=_gen(3), dtype=torch.float64)
    s = z.clone().requires_grad_()
    out = kd_loss(s, z, torch.randint(0, 5, (2, 4, 4)), temperature, reduction)
    out.backward()
    assert abs(out.item()) < 1e-12 and s.grad.abs().max() < 1e-12


# ----------------------------------------------------------------------------------------------
# Prototypes, CFM, IFV maps


def test_resize_labels_is_nearest_not_nearest_exact():
    lab = torch.arange(64).reshape(1, 8, 8)
    assert torch.equal(resize_labels(lab, 4), lab[:, ::2, ::2])  # nearest-exact would take [1::2, 1::2]
    assert torch.equal(resize_labels(lab, (3, 3)), lab[:, [0, 2, 5]][:, :, [0, 2, 5]])  # floor(j * 8 / 3)
    assert resize_labels(lab, 8) is lab and resize_labels(lab, 4).dtype == lab.dtype


def test_class_prototypes_vs_loop():
    g = _gen(4)
    labels = _labels(3, 16, g)
    labels[1] = IGN  # a sample with no labelled pixel
    for size in (8, 4):
        f = torch.randn(3, 5, size, size, generator=g, dtype=torch.float64)
        protos, present = class_prototypes(f, labels, K)
        ref, ref_present = _loop_prototypes(f, labels, K)
        assert torch.equal(present, ref_present) and not present[:, K - 1].any() and not present[1].any()
        assert torch.allclose(protos, ref, atol=1e-12)
        stacked, _ = class_prototypes(torch.stack([f, 2 * f], 1), labels, K)  # (B, M, K, C)
        assert torch.allclose(stacked[:, 0], protos) and torch.allclose(stacked[:, 1], 2 * protos)


def test_ifv_map_and_cfm_vs_loop():
    g = _gen(5)
    labels = _labels(2, 16, g)
    f = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    protos, _ = _loop_prototypes(f, labels, K)
    lab = _loop_resize(labels, 8, 8)
    cfm = f.clone()
    ref = torch.zeros(2, 8, 8, dtype=f.dtype)
    for b in range(2):
        for i in range(8):
            for j in range(8):
                if int(lab[b, i, j]) != IGN:
                    cfm[b, :, i, j] = protos[b, int(lab[b, i, j])]
                ref[b, i, j] = F.cosine_similarity(f[b, :, i, j], cfm[b, :, i, j], dim=0)
    assert torch.allclose(center_feature_map(f, labels, class_prototypes(f, labels, K)[0]), cfm, atol=1e-12)
    assert torch.allclose(ifv_map(f, labels, K), ref, atol=1e-12)
    assert torch.allclose(ifv_map(torch.stack([f, -f], 1), labels, K)[:, 1], ref, atol=1e-12)
    assert (ifv_map(f, labels, K)[lab == IGN] == 1).all()  # ignored pixels keep their own feature


def test_ifv_map_is_one_where_each_class_has_one_feature():
    g = _gen(6)
    labels = _labels(2, 16, g)
    emb = torch.randn(K, 7, generator=g)
    lab = resize_labels(labels, 8)
    f = emb[lab.clamp(max=K - 1)].permute(0, 3, 1, 2).contiguous()  # (B, C, 8, 8), constant per class
    f = torch.where((lab == IGN)[:, None], torch.randn(f.shape, generator=g), f)  # ignored: anything
    assert torch.allclose(ifv_map(f, labels, K), torch.ones(2, 8, 8), atol=1e-6)


def test_zero_features_give_finite_maps_and_gradients():
    f = torch.zeros(2, 4, 8, 8, requires_grad=True)  # a dropped modality under `drop`
    m = ifv_map(f, _labels(2, 16, _gen(7)), K)
    m.sum().backward()
    assert (m == 0).all() and torch.isfinite(f.grad).all()


# ----------------------------------------------------------------------------------------------
# Divergences


@pytest.mark.parametrize("kind", ["kl_spatial", "kl_width", "mse"])
def test_ifv_divergence_zero_with_zero_gradient_for_identical(kind):
    t = torch.rand(3, 2, 5, 6, generator=_gen(8), dtype=torch.float64) * 2 - 1
    s = t.clone().requires_grad_()
    d = ifv_divergence(s, t, kind, temperature=2.0)
    d.sum().backward()
    assert d.shape == (3, 2) and d.abs().max() < 1e-12 and s.grad.abs().max() < 1e-12


@pytest.mark.parametrize("kind", ["kl_class", "cosine"])
def test_prototype_divergence_zero_with_zero_gradient_for_identical(kind):
    t = torch.randn(3, K, 5, generator=_gen(9), dtype=torch.float64)
    present = torch.rand(3, K, generator=_gen(10)) > 0.4
    present[0] = False
    s = t.clone().requires_grad_()
    d = prototype_divergence(s, t, present, kind, temperature=2.0)
    d.sum().backward()
    assert d.shape == (3,) and d.abs().max() < 1e-12 and s.grad.abs().max() < 1e-12


def test_ifv_divergence_matches_public_code_and_formulas():
    g = _gen(11)
    s, t = torch.randn(2, 2, 4, 6, generator=g, dtype=torch.float64).unbind(0)
    tau = 2.0
    for b in range(2):  # RMMSS CriterionIFV on one sample: softmax on the width, batchmean over a batch of 1
        public = F.kl_div(F.log_softmax(s[b:b + 1] / tau, -1), F.softmax(t[b:b + 1] / tau, -1),
                          reduction="batchmean") * tau * tau
        assert torch.allclose(ifv_divergence(s, t, "kl_width", tau)[b], public)
        p, q = F.softmax(t[b].flatten() / tau, 0), F.softmax(s[b].flatten() / tau, 0)
        assert torch.allclose(ifv_divergence(s, t, "kl_spatial", tau)[b], (p * (p / q).log()).sum() * tau * tau)
        assert torch.allclose(ifv_divergence(s, t, "mse")[b], F.mse_loss(s[b], t[b]))


def test_prototype_divergence_masks_absent_classes():
    g = _gen(12)
    s, t = torch.randn(K, 4, generator=g, dtype=torch.float64), torch.randn(K, 4, generator=g, dtype=torch.float64)
    present = torch.tensor([True, False, True, True, False, True])
    idx = present.nonzero().squeeze(1)
    p, log_q = F.softmax(t[idx], 0), F.log_softmax(s[idx], 0)  # softmax over the present classes only
    ref = (p * (p.log() - log_q)).sum() / p.numel()
    assert torch.allclose(prototype_divergence(s, t, present, "kl_class"), ref)
    s2 = s.clone()
    s2[~present] = 100.0  # absent rows are out of the softmax
    assert torch.allclose(prototype_divergence(s2, t, present, "kl_class"), ref)
    cos = (1 - F.cosine_similarity(s[idx], t[idx], dim=1)).mean()
    assert torch.allclose(prototype_divergence(s, t, present, "cosine"), cos)
    zero_rows = prototype_divergence(s * present[:, None], t * present[:, None], torch.ones(K, dtype=torch.bool))
    assert not torch.allclose(zero_rows, ref)  # the public code's zero rows give another value
    assert prototype_divergence(s, t, torch.zeros(K, dtype=torch.bool)) == 0


# ----------------------------------------------------------------------------------------------
# CPD


def test_cpd_pairs():
    b, m = 64, 4
    perm = cpd_pairs(b, m, _gen(13))
    assert perm.dtype == torch.long and torch.equal(perm.sort(1).values, torch.arange(m).expand(b, m))
    assert (perm != torch.arange(m)).any()  # not always the identity
    assert torch.equal(perm, cpd_pairs(b, m, _gen(13)))  # deterministic with the same generator
    der = cpd_pairs(torch.ones(b, m, dtype=torch.bool), generator=_gen(14), pairing="derangement")
    assert torch.equal(der.sort(1).values, torch.arange(m).expand(b, m)) and (der != torch.arange(m)).all()
    assert torch.equal(cpd_pairs(b, m, _gen(15), "same"), torch.arange(m).expand(b, m))
    assert torch.equal(cpd_pairs(5, 2, _gen(16), "derangement"), torch.tensor([[1, 0]] * 5))
    with pytest.raises(ValueError, match="at least 2"):
        cpd_pairs(3, 1, _gen(), "derangement")
    with pytest.raises(ValueError, match="not valid"):
        cpd_pairs(3, 2, _gen(), "shuffle")


CH, SIZES = (3, 5, 6, 8), (8, 4, 2, 1)  # four stages of a 32x32 input


def _setup(seed: int, b: int = 3, names=("rgb", "depth", "event", "lidar")):
    g = _gen(seed)
    return (_feats(names, b, CH, SIZES, g), _feats(names, b, CH, SIZES, g), _labels(b, 32, g),
            anymodal_dropout(b, len(names), g), g)


def test_cpd_same_pairing_is_single_modal_prototype_kd():
    student, teacher, labels, _, g = _setup(17)
    names = list(student)
    same = cpd_pairs(3, 4, g, "same")
    terms = []
    for i in range(4):
        for n in names:
            ps, present = class_prototypes(student[n][i], labels, K)
            pt, _ = class_prototypes(teacher[n][i], labels, K)
            d = prototype_divergence(ps, pt, present, "kl_class")  # (B,)
            terms += [d[b] for b in range(3) if present[b].any()]  # a sample with no labelled pixel: no term
    assert len(terms) < 4 * 4 * 3  # the 1x1 stage has an ignored pixel somewhere
    assert torch.allclose(cpd_loss(student, teacher, labels, K, same, aggregation="mean"), torch.stack(terms).mean())
    # the paper's aggregation: summed over stages and modalities, 1/B over the samples
    assert torch.allclose(cpd_loss(student, teacher, labels, K, same), torch.stack(terms).sum() / 3)


@pytest.mark.parametrize("pairing", ["permutation", "derangement"])
@pytest.mark.parametrize("kind", ["kl_class", "cosine"])
def test_cpd_loss_vs_loop_reference(pairing, kind):
    student, teacher, labels, received, g = _setup(18)
    pairs = cpd_pairs(3, 4, g, pairing)
    for rec in (received, None):
        for agg in ("sum", "mean"):
            out = cpd_loss(student, teacher, labels, K, pairs, kind=kind, temperature=2.0, received=rec, aggregation=agg)
            ref = loop_cpd_loss(student, teacher, labels, K, pairs, kind=kind, temperature=2.0, received=rec,
                                aggregation=agg)
            assert torch.allclose(out, ref, atol=1e-12)
    sub = cpd_loss(student, teacher, labels, K, pairs, stages=(1, 3), kind=kind, received=received)
    assert torch.allclose(sub, loop_cpd_loss(student, teacher, labels, K, pairs, (1, 3), kind, received=received))


def test_cpd_skips_dropped_student_modalities_only_when_told():
    student, teacher, labels, _, g = _setup(19)
    received = torch.tensor([[True, False, True, True], [False, True, False, False], [True, True, True, True]])
    student["depth"] = [f.clone() for f in student["depth"]]
    pairs = cpd_pairs(3, 4, g)
    base = cpd_loss(student, teacher, labels, K, pairs, received=received)
    student["depth"][0][0] = 0.0  # sample 0 did not receive depth: its student features do not count
    assert torch.allclose(cpd_loss(student, teacher, labels, K, pairs, received=received), base)
    dropped = {n: [f.clone().requires_grad_() for f in fs] for n, fs in student.items()}
    out = cpd_loss(dropped, teacher, labels, K, pairs)  # received=None: the public code, zeros included
    out.backward()
    assert torch.isfinite(out) and all(torch.isfinite(f.grad).all() for fs in dropped.values() for f in fs)


def _public_prototypes(f: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """UMMSS `calculate_batch_prototypes` for one sample: class means divided by the count again,
    zero rows for absent classes. f (1, C, h, w), label (1, H, W) -> (K, C)."""
    protos, _ = _loop_prototypes(f, label, K)
    lab = _loop_resize(label, *f.shape[-2:])
    counts = torch.stack([(lab == c).sum() for c in range(K)])
    return protos[0] / counts.clamp(min=1)[:, None]


@pytest.mark.filterwarnings("ignore:reduction. 'mean'")  # the public code's own call
def test_cpd_public_prototypes_option():
    student, teacher, labels, _, g = _setup(20, b=2, names=("rgb", "depth"))
    names, pairs = list(student), cpd_pairs(2, 2, g)
    terms = []
    for i in range(4):
        for b in range(2):
            for m, n in enumerate(names):
                ps = _public_prototypes(student[names[int(pairs[b, m])]][i][b:b + 1], labels[b:b + 1])
                pt = _public_prototypes(teacher[n][i][b:b + 1], labels[b:b + 1])
                if (resize_labels(labels[b:b + 1], SIZES[i]) != IGN).any():
                    terms.append(F.kl_div(F.log_softmax(ps, 0), F.softmax(pt, 0), reduction="mean"))
    out = cpd_loss(student, teacher, labels, K, pairs, prototypes="public")
    assert torch.allclose(out, torch.stack(terms).sum() / 2)  # the public code: summed, 1/N over samples
    out = cpd_loss(student, teacher, labels, K, pairs, prototypes="public", aggregation="mean")
    assert torch.allclose(out, torch.stack(terms).mean())


def test_iid_pairing_is_the_public_draw_and_cpd_follows_it_per_stage():
    """The public code draws every (sample, stage, slot) uniformly and independently: a row is a
    permutation with probability M!/M^M; cpd_loss with a (B, S, M) pairing equals the loop reference."""
    g = _gen(41)
    pairs = cpd_pairs(4000, 4, g, "iid")
    assert pairs.shape == (4000, 4, 4) and pairs.min() == 0 and pairs.max() == 3
    counts = torch.bincount(pairs.flatten(), minlength=4).float() / pairs.numel()
    assert (counts - 0.25).abs().max() < 0.01
    is_perm = (pairs.sort(-1).values == torch.arange(4)).all(-1).float().mean()
    assert abs(float(is_perm) - 24 / 256) < 0.01
    student, teacher, labels, received, g = _setup(42)
    pairs = cpd_pairs(3, 4, g, "iid")
    for agg in ("sum", "mean"):
        out = cpd_loss(student, teacher, labels, K, pairs, received=received, aggregation=agg)
        assert torch.allclose(out, loop_cpd_loss(student, teacher, labels, K, pairs, received=received,
                                                 aggregation=agg), atol=1e-12)
    sub = cpd_loss(student, teacher, labels, K, pairs[:, [1, 3]], stages=(1, 3), received=received)
    assert torch.allclose(sub, loop_cpd_loss(student, teacher, labels, K, pairs[:, [1, 3]], (1, 3), received=received))


@pytest.mark.filterwarnings("ignore:reduction. .mean.")  # the public code's own call
def test_public_kd_distils_every_pixel_as_the_public_code():
    """The public code's L_KL: KLDivLoss(reduction="mean") over every element, ignored pixels included."""
    g = _gen(43)
    s, t = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64), torch.randn(2, 5, 6, 7, generator=g,
                                                                                dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 6, 7), generator=g)
    labels[0, :3] = IGN
    ref = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="mean") * 4
    assert torch.allclose(kd_loss(s, t, None, temperature=2.0, reduction="element"), ref)
    assert not torch.allclose(kd_loss(s, t, labels, temperature=2.0, reduction="element"), ref)


# ----------------------------------------------------------------------------------------------
# IFV loss


@pytest.mark.parametrize("kind", ["kl_spatial", "kl_width", "mse"])
def test_ifv_loss_vs_loop_reference(kind):
    student, teacher, labels, received, g = _setup(21)
    mask = asm_primary(torch.rand(3, 4, generator=g)) & received
    for agg in ("sum", "mean"):
        out = ifv_loss(student, teacher, labels, K, mask, kind=kind, temperature=2.0, aggregation=agg)
        assert torch.allclose(out, loop_ifv_loss(student, teacher, labels, K, mask, kind=kind, temperature=2.0,
                                                 aggregation=agg))
    pairs = cpd_pairs(3, 4, g)  # the cross-modal variant: student pi(m) against teacher m
    cross = ifv_loss(student, teacher, labels, K, received, kind=kind, pairs=pairs)
    assert torch.allclose(cross, loop_ifv_loss(student, teacher, labels, K, received, kind=kind, pairs=pairs))


def test_ifv_loss_uses_only_selected_modalities_and_detaches_the_teacher():
    student, teacher, labels, _, g = _setup(22)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 1] = mask[2, 3] = True
    s = {n: [f.clone().requires_grad_() for f in fs] for n, fs in student.items()}
    t = {n: [f.clone().requires_grad_() for f in fs] for n, fs in teacher.items()}
    out = ifv_loss(s, t, labels, K, mask)
    out.backward()
    assert s["depth"][0].grad[0].abs().sum() > 0 and s["lidar"][0].grad[2].abs().sum() > 0
    assert s["depth"][0].grad[1:].abs().sum() == 0 and s["rgb"][0].grad.abs().sum() == 0
    assert all(f.grad is None for fs in t.values() for f in fs)
    same = ifv_loss(s, {n: [f.detach().clone() for f in fs] for n, fs in s.items()}, labels, K, mask)
    assert abs(same.item()) < 1e-12


def test_ifv_loss_empty_mask_is_zero_with_a_graph():
    student, teacher, labels, _, _ = _setup(23)
    s = {n: [f.clone().requires_grad_() for f in fs] for n, fs in student.items()}
    out = ifv_loss(s, teacher, labels, K, torch.zeros(3, 4, dtype=torch.bool))
    out.backward()
    assert out.item() == 0 and all((f.grad == 0).all() for fs in s.values() for f in fs)


def test_identical_student_and_teacher_give_zero_hpd_losses_and_gradients():
    student, _, labels, received, g = _setup(24)
    s = {n: [f.clone().requires_grad_() for f in fs] for n, fs in student.items()}
    same = cpd_pairs(3, 4, g, "same")
    losses = [cpd_loss(s, student, labels, K, same, kind=kind) for kind in ("kl_class", "cosine")]
    losses += [ifv_loss(s, student, labels, K, received, kind=kind) for kind in ("kl_spatial", "kl_width", "mse")]
    sum(losses).backward()
    assert max(abs(x.item()) for x in losses) < 1e-12
    assert max(float(f.grad.abs().max()) for fs in s.values() for f in fs) < 1e-12


def test_bf16_features_are_upcast():
    g = _gen(25)
    f, labels = torch.randn(2, 4, 8, 8, generator=g), _labels(2, 16, g)
    p32, _ = class_prototypes(f, labels, K)
    p16, _ = class_prototypes(f.bfloat16(), labels, K)
    assert p16.dtype == torch.float32 and torch.allclose(p16, p32, atol=0.05)
    assert ifv_map(f.bfloat16(), labels, K).dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# ASM


@pytest.mark.parametrize("m", [3, 4])
def test_asm_picks_modalities_that_agree_with_the_fused_feature(m):
    g = _gen(26)
    b = 5
    fused = [torch.randn(b, c, s, s, generator=g) for c, s in zip(CH, SIZES)]
    agree = (0, m - 1) if m == 4 else (1, 2)  # ceil(M/2) = 2 in both cases
    def feature(j, x):  # the agreeing modalities are the fused feature plus a little noise
        return x + 0.1 * torch.randn(x.shape, generator=g) if j in agree else torch.randn(x.shape, generator=g)

    feats = {f"m{j}": [feature(j, x) for x in fused] for j in range(m)}
    expected = torch.zeros(m, dtype=torch.bool)
    expected[list(agree)] = True
    for stage in ("last", "all"):
        sim = asm_similarity(feats, fused, stage)
        assert sim.shape == (b, m) and torch.allclose(sim, loop_asm_similarity(feats, fused, stage), atol=1e-6)
        assert torch.equal(asm_primary(sim), expected.expand(b, m))
        assert torch.equal(asm_primary(sim.mean(0)), expected)  # the feedback step's per-batch choice
    order = list(reversed(list(feats)))  # `modalities=` sets the column order
    assert torch.equal(asm_similarity(feats, fused, modalities=order), asm_similarity(feats, fused).flip(1))
    assert asm_primary(torch.tensor([[0.1, 0.9, 0.5, 0.2, 0.3]])).sum() == 3


# ----------------------------------------------------------------------------------------------
# Anymodal Dropout


def test_anymodal_dropout_distribution():
    b, m = 8000, 4
    keep = anymodal_dropout(b, m, _gen(27))
    assert keep.shape == (b, m) and keep.dtype == torch.bool and keep.any(1).all()
    k = keep.sum(1)
    freq = torch.stack([(k == j).float().mean() for j in range(1, m + 1)])
    assert torch.allclose(freq, torch.full((m,), 1 / m), atol=0.025)  # k uniform in 1..M
    assert torch.allclose(keep.float().mean(0), torch.full((m,), 0.625), atol=0.03)  # E[k]/M: no modality favoured
    pairs = keep[k == 2]  # given k, a uniform k-subset: the 6 pairs equally often
    counts = torch.unique(pairs.long() @ torch.tensor([1, 2, 4, 8]), return_counts=True)[1]
    assert len(counts) == 6 and (counts.float() / len(pairs) - 1 / 6).abs().max() < 0.03
    assert torch.equal(keep, anymodal_dropout(b, m, _gen(27)))  # deterministic with the same generator
    batch = anymodal_dropout(16, m, _gen(28), mode="batch")
    assert (batch == batch[0]).all() and batch[0].any()
    assert anymodal_dropout(4, m, mode="none").all() and anymodal_dropout(5, 1, _gen()).all()


def test_errors_name_the_valid_choices():
    student, teacher, labels, received, g = _setup(29)
    with pytest.raises(ValueError, match="'kl_spatial', 'kl_width', 'mse'"):
        ifv_loss(student, teacher, labels, K, received, kind="kl")
    with pytest.raises(ValueError, match="non-empty subset of 0..3"):
        cpd_loss(student, teacher, labels, K, cpd_pairs(3, 4, g), stages=(4,))
    with pytest.raises(KeyError, match="no features for modality 'thermal'"):
        ifv_loss(student, teacher, labels, K, received, modalities=("rgb", "depth", "event", "thermal"))
    with pytest.raises(ValueError, match="'element', 'pixel'"):
        kd_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), reduction="mean")
