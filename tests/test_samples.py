"""`workbench.samples`: per-sample mIoU, error maps and the raw sample against the dataset."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from workbench import samples as S  # noqa: E402


def test_sample_miou_and_error_map():
    label = torch.tensor([[0, 0, 1], [1, 2, 255]])
    assert S.sample_miou(label.clamp(max=2), label, 3) == pytest.approx(100.0)
    pred = torch.tensor([[0, 0, 1], [1, 1, 0]])  # class 2 missed: IoU 0, class 1: 2/3, class 0: 1
    assert S.sample_miou(pred, label, 3) == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert S.error_map(pred, label).tolist() == [[0, 0, 0], [0, 1, 2]]


def test_raw_sample_matches_the_dataset(tiny):
    _, cfg = tiny
    raw = S.raw_sample(cfg, "test", 2)
    ds = S.eval_dataset(cfg, "test")
    item = ds[2]
    assert torch.equal(raw["label"], item["label"])
    for m in raw["modalities"]:
        assert torch.allclose(S.normalize_inputs(raw["inputs"])[m][0], item[m], atol=1e-5)
