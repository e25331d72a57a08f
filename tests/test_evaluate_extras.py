"""mAcc / mF1, the per-case breakdown and multi-scale + flip test-time augmentation of workbench.evaluate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from workbench.data import build_dataset, collate
from workbench.evaluate import (
    TTA,
    CombinationResults,
    acc_per_class,
    evaluate_combinations,
    f1_per_class,
    macc,
    mf1,
    score,
)
from workbench.models import Segmentor


def test_macc_and_mf1_hand_computed_under_both_conventions():
    # rows = truth, cols = prediction; class 2 never appears nor is predicted
    cm = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    # acc = TP / row: 3/4, 4/6, undefined ; F1 = 2 TP / (row + col): 6/9, 8/11, undefined
    acc, f1 = acc_per_class(cm), f1_per_class(cm)
    assert acc[:2].tolist() == pytest.approx([3 / 4, 4 / 6]) and math.isnan(acc[2])
    assert f1[:2].tolist() == pytest.approx([6 / 9, 8 / 11]) and math.isnan(f1[2])
    assert macc(cm, "deliver") == pytest.approx(100 * (3 / 4 + 4 / 6) / 3)
    assert macc(cm, "present") == pytest.approx(100 * (3 / 4 + 4 / 6) / 2)
    assert mf1(cm, "deliver") == pytest.approx(100 * (6 / 9 + 8 / 11) / 3)
    assert mf1(cm, "present") == pytest.approx(100 * (6 / 9 + 8 / 11) / 2)
    # a class predicted but absent from the ground truth: IoU and F1 are 0, accuracy is undefined
    cm = torch.tensor([[2, 1], [0, 0]])
    assert score(cm, "miou", "present") == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert score(cm, "mf1", "present") == pytest.approx(100 * (4 / 5 + 0) / 2)
    assert score(cm, "macc", "present") == pytest.approx(100 * 2 / 3)
    assert score(cm, "macc", "deliver") == pytest.approx(100 * 2 / 3 / 2)
    with pytest.raises(ValueError, match="'miou', 'macc', 'mf1'"):
        score(cm, "accuracy")


def test_deliver_convention_equals_the_deliver_metrics_code():
    """semseg/metrics.py: per-class value, nan -> 0, mean over all classes (x 100)."""
    g = torch.Generator().manual_seed(0)
    cm = torch.randint(0, 50, (6, 6), generator=g)
    cm[4] = 0  # a class without ground truth
    cm[:, 5] = 0
    cm[5] = 0  # a class neither present nor predicted
    h = cm.double()
    ref = {"miou": h.diag() / (h.sum(0) + h.sum(1) - h.diag()), "mf1": 2 * h.diag() / (h.sum(0) + h.sum(1)),
           "macc": h.diag() / h.sum(1)}
    for metric, v in ref.items():
        v[v.isnan()] = 0
        assert score(cm, metric, "deliver") == pytest.approx(v.mean().item() * 100), metric


@pytest.fixture(scope="module")
def loader():
    ds = build_dataset("synthetic", "val", size=48, num_samples=10)
    batches = [{k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in b.items()}
               for b in DataLoader(ds, batch_size=4, collate_fn=collate)]
    return ds, batches


def _model(ds, fusion="mean"):
    torch.manual_seed(0)
    model = Segmentor(ds.modalities, ds.num_classes, head_dim=16, fusion=fusion).double().eval()
    model.head.bn.running_mean.normal_()
    model.head.cls.weight.data.normal_()  # an untrained head predicts one class almost everywhere
    return model


def test_per_case_breakdown_equals_evaluating_each_case_alone(loader):
    ds, batches = loader
    model = _model(ds)
    res = evaluate_combinations(model, batches, progress=False, cases=ds.cases)
    cases = {m["case"] for b in batches for m in b["meta"]}
    assert len(cases) >= 2  # the synthetic split mixes failure cases and clean samples
    for key, cm in res.cms.items():
        assert torch.equal(sum(res.case_cms[(*key, c)] for c in (*ds.cases, "none")), cm)
    for case in cases:  # the samples of one case alone, batch by batch
        sub = []
        for b in batches:
            idx = [i for i, m in enumerate(b["meta"]) if m["case"] == case]
            if idx:
                sub.append({k: (v[idx] if torch.is_tensor(v) else [v[i] for i in idx]) for k, v in b.items()})
        alone = evaluate_combinations(model, sub, progress=False)
        for key, cm in alone.cms.items():
            assert torch.equal(res.case_cms[(*key, case)], cm), (key, case)
    assert set(res.per_case("zero")) == {*ds.cases, "none"}
    table = res.format_breakdown("drop", by="case")
    assert all(c in table for c in cases) and "mAcc" in table
    again = CombinationResults.from_state(res.state())
    assert again.per_case("drop", metric="mf1") == res.per_case("drop", metric="mf1")
    state = res.state()
    del state["case_cms"]  # results saved before the breakdown existed still load
    assert CombinationResults.from_state(state).case_cms == {}


def test_tta_sizes_follow_the_deliver_convention():
    tta = TTA()
    assert tta.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and tta.flip
    assert tta.size(0.75, 1042, 1042) == (800, 800)  # int(781.5) = 781 -> 800
    assert tta.size(1.0, 1024, 1824) == (1024, 1824)
    assert tta.size(0.5, 100, 70) == (64, 64)
    with pytest.raises(ValueError, match="positive"):
        TTA(scales=(0.0, 1.0))


@pytest.mark.parametrize("fusion", ["mean", "softmax"])
def test_tta_one_pass_equals_naive_and_the_reference_loop(loader, fusion):
    ds, batches = loader
    batches = batches[:1]
    model = _model(ds, fusion)
    mods = ds.modalities
    combos = [("rgb",), ("depth", "lidar"), mods]
    tta = TTA(scales=(0.5, 1.25))
    fast = evaluate_combinations(model, batches, combos=combos, progress=False, tta=tta)
    naive = evaluate_combinations(model, batches, combos=combos, progress=False, tta=tta, one_pass=False)
    assert fast.cms.keys() == naive.cms.keys()
    for key in fast.cms:
        assert torch.equal(fast.cms[key], naive.cms[key]), key
    # DeLiVER tools/val_mm.py evaluate_msf, written out for the full-modality model
    k = ds.num_classes
    cm = torch.zeros(k, k, dtype=torch.long)
    for b in batches:
        images, labels = [b[m] for m in mods], b["label"]
        bsz, h, w = labels.shape
        scaled_logits = torch.zeros(bsz, k, h, w, dtype=torch.float64)
        for scale in tta.scales:
            new_h, new_w = int(scale * h), int(scale * w)
            new_h, new_w = int(math.ceil(new_h / 32)) * 32, int(math.ceil(new_w / 32)) * 32
            scaled = [F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=True) for x in images]
            logits = model(dict(zip(mods, scaled))).logits
            scaled_logits += F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True).softmax(1)
            scaled = [torch.flip(x, dims=(3,)) for x in scaled]
            logits = torch.flip(model(dict(zip(mods, scaled))).logits, dims=(3,))
            scaled_logits += F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True).softmax(1)
        pred, keep = scaled_logits.argmax(1), labels != 255
        cm += torch.bincount(labels[keep] * k + pred[keep], minlength=k * k).view(k, k)
    assert torch.equal(fast.cms[("drop", mods)], cm)
    plain = evaluate_combinations(model, batches, combos=[mods], protocols=("drop",), progress=False)
    assert not torch.equal(plain.cms[("drop", mods)], cm)  # the augmentation does change predictions
    with pytest.raises(ValueError, match="cannot be combined"):
        evaluate_combinations(model, batches, progress=False, tta=tta, window=32)
