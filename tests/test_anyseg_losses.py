"""AnySeg's UMD and CMD against loops written from the public definitions (RobustSeg/UMMSS,
semseg/models/segformer/UMD.py and CMD.py), on tiny tensors."""

import pytest
import torch
from torch import nn

from workbench import losses as L

MODS = ("rgb", "depth", "event", "lidar")
SIZES = [(3, 8, 6), (4, 4, 3), (5, 2, 2), (6, 1, 1)]  # (C, h, w) per stage: non-square, so axes are told apart


def _feats(b=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {m: [torch.randn(b, *s, generator=g, dtype=torch.float64) * scale for s in SIZES] for m in MODS}


def _public_lists(feats, b, index=None):
    """The public layout: x_all[i][j] = (M, C, h, w) stage-j features of sample i. The student's lists hold
    only the modalities it received (`index`, slot k = modality index[k]); the teacher's hold all."""
    mods = MODS if index is None else [MODS[k] for k in index]
    return [[torch.stack([feats[m][j][i] for m in mods]) for j in range(4)] for i in range(b)]


def _public_umd(index, x_all, x_all_s):
    """UMD.py: sum over samples, stages and selected slots of KLDivLoss(mean)(log_softmax(s, 1), softmax(t, 1))
    clamped at 0, divided by B."""
    loss_umd = 0.0
    loss_kl = nn.KLDivLoss(reduction="mean", log_target=False)  # element mean (torch warns it is not batchmean)
    b = len(x_all)
    for i in range(b):
        for j in range(4):
            for k in range(len(index)):
                s = torch.log_softmax(x_all[i][j][k, :, :, :], dim=1)
                t = torch.softmax(x_all_s[i][j][index[k], :, :, :], dim=1)
                loss_umd += loss_kl(s, t).clamp(min=0)
    return loss_umd / b


def _corr(features):
    """compute_correlation_matrix_by_size of CMD.py: group maps by shape, matrix of mean channel cosines."""
    groups = {}
    for f in features:
        groups.setdefault(f.shape, []).append(f)
    mats = []
    for group in groups.values():
        n = len(group)
        corr = torch.zeros((n, n), dtype=group[0].dtype)
        for i in range(n):
            for j in range(n):
                corr[i, j] = 1.0 if i == j else nn.functional.cosine_similarity(
                    group[i].flatten(1), group[j].flatten(1), dim=1).mean()
        mats.append(corr)
    return mats


def _public_cmd(index, x_all, x_all_s, student=torch.log_softmax, per_sample_lists=False):
    """CMD.py as written: the lists are created once, before the loop over samples; the loss is
    recomputed (and overwritten) inside it. `per_sample_lists` moves the list creation into the loop:
    the intended per-sample loss, summed over samples and divided by B."""
    b = len(x_all)
    x_all_feat, x_all_s_feat = [], []
    kept = 0.0
    for i in range(b):
        if per_sample_lists:
            x_all_feat, x_all_s_feat = [], []
        for j in range(4):
            for k in range(len(index)):
                x_all_feat.append(student(x_all[i][j][k, :, :, :], dim=1))
                x_all_s_feat.append(torch.softmax(x_all_s[i][j][index[k], :, :, :], dim=1))
        total_corr_loss = 0.0
        for s, t in zip(_corr(x_all_feat), _corr(x_all_s_feat)):
            total_corr_loss += nn.MSELoss()(s, t)
        kept = kept + total_corr_loss if per_sample_lists else total_corr_loss
    return kept / b


def _received(b, index):
    rec = torch.zeros(b, 4, dtype=torch.bool)
    rec[:, index] = True
    return rec


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("index", [[0, 1, 2, 3], [3, 1], [2]])
def test_umd_equals_the_public_loop(index):
    s, t = _feats(seed=0), _feats(seed=1)
    want = _public_umd(index, _public_lists(s, 3, index), _public_lists(t, 3))
    got = L.umd_loss(s, t, _received(3, index))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_umd_softmax_runs_along_the_height_axis():
    """The public dim=1 of a (C, h, w) map is the height: a shift constant along height changes nothing."""
    s, t = _feats(seed=0), _feats(seed=1)
    rec = _received(3, [0, 2])
    shifted = {m: [f + torch.randn(f.shape[0], f.shape[1], 1, f.shape[3], dtype=f.dtype) for f in fs]
               for m, fs in s.items()}
    torch.testing.assert_close(L.umd_loss(shifted, t, rec), L.umd_loss(s, t, rec))
    assert not torch.allclose(L.umd_loss(shifted, t, rec, axis="channel"), L.umd_loss(s, t, rec, axis="channel"))


@pytest.mark.parametrize("index", [[0, 1, 2, 3], [3, 1], [2]])
def test_cmd_public_reduction_equals_the_public_loop(index):
    s, t = _feats(seed=0), _feats(seed=1)
    want = _public_cmd(index, _public_lists(s, 3, index), _public_lists(t, 3))
    got = L.cmd_loss(s, t, _received(3, index), features="public", reduction="public")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("features", ["public", "softmax"])
def test_cmd_per_sample_reduction_equals_the_loop_with_per_sample_lists(features):
    s, t = _feats(seed=0), _feats(seed=1)
    student = torch.log_softmax if features == "public" else torch.softmax
    index = [0, 1, 3]
    want = _public_cmd(index, _public_lists(s, 3, index), _public_lists(t, 3), student,
                       per_sample_lists=True)
    got = L.cmd_loss(s, t, _received(3, index), features=features)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_cmd_per_sample_subsets_and_the_public_quirk():
    """Different subsets per sample: the mean of single-sample losses. The public reduction mixes samples
    (its one matrix has cross-sample entries), so it differs, except for one sample."""
    s, t = _feats(seed=0), _feats(seed=1)
    rec = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    singles = [L.cmd_loss({m: [f[i:i + 1] for f in fs] for m, fs in s.items()},
                          {m: [f[i:i + 1] for f in fs] for m, fs in t.items()}, rec[i:i + 1]) for i in range(3)]
    torch.testing.assert_close(L.cmd_loss(s, t, rec), torch.stack(singles).mean())
    assert not torch.allclose(L.cmd_loss(s, t, rec, reduction="public"), L.cmd_loss(s, t, rec))
    one = {m: [f[:1] for f in fs] for m, fs in s.items()}, {m: [f[:1] for f in fs] for m, fs in t.items()}
    torch.testing.assert_close(L.cmd_loss(*one, rec[:1], reduction="public"), L.cmd_loss(*one, rec[:1]))


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_umd_matches_its_public_loop_for_per_sample_subsets():
    """Per-sample subsets: the sum over each sample's received modalities, divided by B."""
    s, t = _feats(seed=0), _feats(seed=1)
    rec = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    index = [rec[i].nonzero().squeeze(1).tolist() for i in range(3)]
    want = sum(_public_umd(index[i], _public_lists(s, 3, index[i])[i:i + 1], _public_lists(t, 3)[i:i + 1])
               for i in range(3)) / 3
    torch.testing.assert_close(L.umd_loss(s, t, rec), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", [L.umd_loss, L.cmd_loss])
def test_identical_student_and_teacher_give_zero_loss_and_zero_gradient(loss):
    s = {m: [f.clone().requires_grad_(True) for f in fs] for m, fs in _feats().items()}
    t = {m: [f.detach().clone() for f in fs] for m, fs in s.items()}
    rec = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    value = loss(s, t, rec)
    value.backward()
    assert abs(float(value.detach())) < 1e-12
    assert max(float(f.grad.abs().max()) for fs in s.values() for f in fs) < 1e-12


def test_the_teacher_is_detached_and_bad_options_are_named():
    s = {m: [f.requires_grad_(True) for f in fs] for m, fs in _feats(seed=0).items()}
    t = {m: [f.requires_grad_(True) for f in fs] for m, fs in _feats(seed=1).items()}
    (L.umd_loss(s, t, _received(3, [0, 1])) + L.cmd_loss(s, t, _received(3, [0, 1]))).backward()
    assert all(f.grad is None for fs in t.values() for f in fs)
    with pytest.raises(ValueError, match="'height', 'channel', 'width'"):
        L.umd_loss(s, t, _received(3, [0]), axis="depth")
    with pytest.raises(ValueError, match="'sample', 'public'"):
        L.cmd_loss(s, t, _received(3, [0]), reduction="last")
