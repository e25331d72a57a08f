import math

import pytest
import torch
from torch.utils.data import DataLoader

from workbench.data import build_dataset, collate
from workbench.evaluate import (
    CombinationResults,
    combinations,
    confusion_matrix,
    evaluate_combinations,
    failure_weights,
    iou_per_class,
    miou,
)
from workbench.models import Segmentor


def test_confusion_matrix_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 9, 7), generator=g)
    target[0, :2] = 255
    pred = torch.randint(0, 4, (2, 9, 7), generator=g)
    ref = torch.zeros(4, 4, dtype=torch.long)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            ref[t, p] += 1
    assert torch.equal(confusion_matrix(pred, target, 4), ref)


def test_miou_hand_computed_under_both_conventions():
    # rows = truth, cols = prediction; class 2 never appears nor is predicted (no union)
    cm = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    # IoU0 = 3 / (3 + 1 + 2) = 0.5 ; IoU1 = 4 / (4 + 2 + 1) = 4/7 ; IoU2 undefined
    iou = iou_per_class(cm)
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(4 / 7) and math.isnan(iou[2])
    assert miou(cm, "deliver") == pytest.approx(100 * (0.5 + 4 / 7 + 0) / 3)
    assert miou(cm, "present") == pytest.approx(100 * (0.5 + 4 / 7) / 2)
    with pytest.raises(ValueError, match="'deliver', 'present'"):
        miou(cm, "mean")


def test_failure_weights_and_combinations():
    mods = ("rgb", "depth", "event", "lidar")
    assert len(combinations(mods)) == 15
    w = failure_weights(mods, 0.2)
    assert sum(w.values()) == pytest.approx(1)
    z = 1 - 0.2 ** 4
    assert w[mods] == pytest.approx(0.8 ** 4 / z) and w[("rgb",)] == pytest.approx(0.2 ** 3 * 0.8 / z)


def _results(values: dict) -> CombinationResults:
    """Results whose mIoU for each combo equals `values` (a 2-class cm with the right IoU)."""
    cms = {}
    for combo, v in values.items():
        # deliver mIoU of [[a, b], [0, 0]] with a/(a+b) = v/100 for class 0 and class 1 IoU 0 -> (v/100)/2
        cms[("drop", combo)] = torch.tensor([[round(2 * v), 100 - round(2 * v)], [0, 0]])
    return CombinationResults(("a", "b"), ("x", "y"), cms)


def test_shapley_values_hand_computed():
    res = _results({("a",): 10.0, ("b",): 30.0, ("a", "b"): 40.0})
    # v(a)=10, v(b)=30, v(ab)=40: phi_a = 1/2 (10 - 0) + 1/2 (40 - 30) = 10; phi_b = 1/2 30 + 1/2 30 = 30
    sh = res.shapley("drop")
    assert sh["a"] == pytest.approx(10) and sh["b"] == pytest.approx(30)
    assert sum(sh.values()) == pytest.approx(res.full("drop"))
    assert res.emm("drop") == pytest.approx(80 / 3)


@pytest.mark.parametrize("fusion", ["mean", "softmax"])
def test_one_pass_equals_naive_per_combination_loop(fusion):
    """Identical confusion matrices, both protocols, every combination and condition (float64, so that
    the one pass' different summation order cannot flip a near-tied argmax)."""
    torch.manual_seed(0)
    ds = build_dataset("synthetic", "val", size=32, num_samples=6)
    loader = [{k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in b.items()}
              for b in DataLoader(ds, batch_size=4, collate_fn=collate)]  # last batch is smaller
    model = Segmentor(ds.modalities, ds.num_classes, head_dim=16, fusion=fusion).double()
    model.head.bn.running_mean.normal_()  # a non-trivial eval-mode BN
    fast = evaluate_combinations(model, loader, progress=False)
    naive = evaluate_combinations(model, loader, progress=False, one_pass=False)
    assert fast.cms.keys() == naive.cms.keys() and len(fast.cms) == 30
    for k in fast.cms:
        assert torch.equal(fast.cms[k], naive.cms[k]), k
    assert fast.condition_cms.keys() == naive.condition_cms.keys()
    for k in fast.condition_cms:
        assert torch.equal(fast.condition_cms[k], naive.condition_cms[k]), k
    assert sum(int(v.sum()) for v in fast.cms.values()) == 30 * 6 * 32 * 32


def test_results_save_and_reload(tmp_path):
    res = _results({("a",): 10.0, ("b",): 30.0, ("a", "b"): 40.0})
    paths = res.save(tmp_path)
    assert paths["csv"].read_text().startswith("protocol,combo")
    again = CombinationResults.from_state(res.state())
    assert again.emm("drop") == res.emm("drop")


def test_sliding_window_with_one_window_equals_whole_image_and_covers_every_pixel():
    torch.manual_seed(0)
    ds = build_dataset("synthetic", "val", size=64, num_samples=2)
    loader = list(DataLoader(ds, batch_size=2, collate_fn=collate))
    model = Segmentor(ds.modalities, ds.num_classes, head_dim=16).double()
    loader = [{k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in b.items()}
              for b in loader]
    whole = evaluate_combinations(model, loader, progress=False)
    same = evaluate_combinations(model, loader, progress=False, window=64)
    assert all(torch.equal(whole.cms[k], same.cms[k]) for k in whole.cms)
    slid = evaluate_combinations(model, loader, progress=False, window=32, stride=16)
    assert all(int(v.sum()) == int(whole.cms[k].sum()) for k, v in slid.cms.items())
