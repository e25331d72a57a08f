import numpy as np
import pytest
import torch

from workbench.data import build_dataset, collate
from workbench.data import synthetic as syn
from workbench.data.transforms import RGB_MEAN, RGB_STD


def test_deterministic_in_seed_split_index():
    a = syn.render_sample(3, "train", 7, 48)
    b = syn.render_sample(3, "train", 7, 48)
    c = syn.render_sample(3, "train", 8, 48)
    d = syn.render_sample(3, "val", 7, 48)
    for m in syn.MODALITIES:
        np.testing.assert_array_equal(a[m], b[m])
    assert not np.array_equal(a["rgb"], c["rgb"]) and not np.array_equal(a["rgb"], d["rgb"])
    assert a["meta"] == b["meta"]


@pytest.mark.parametrize("size", [32, 50, 96])
def test_any_resolution_shapes_and_ranges(size):
    s = syn.render_sample(0, "test", 1, size)
    for m in syn.MODALITIES:
        assert s[m].shape == (3, size, size) and s[m].dtype == np.float32
        assert 0 <= s[m].min() and s[m].max() <= 1
    assert s["label"].shape == (size, size)
    assert set(np.unique(s["label"])) <= set(range(len(syn.CLASSES)))


def test_dataset_sample_and_batch_contract():
    ds = build_dataset("synthetic", "val", size=32, num_samples=4)
    s = ds[0]
    assert set(s) == {"rgb", "depth", "event", "lidar", "label", "meta"}
    # RGB normalized with ImageNet statistics, the rest left at /255
    raw = build_dataset("synthetic", "val", size=32, num_samples=4, transform=None)[0]
    torch.testing.assert_close(s["rgb"], (raw["rgb"] - RGB_MEAN) / RGB_STD)
    torch.testing.assert_close(s["depth"], raw["depth"])
    b = collate([ds[i] for i in range(4)])
    assert b["present"].shape == (4, 4) and b["present"].all() and b["rgb"].shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="valid modalities"):
        build_dataset("synthetic", "val", size=32, num_samples=4, modalities=("rgb", "thermal"))
    with pytest.raises(KeyError, match="valid datasets: synthetic"):
        build_dataset("cityscapes", "val")


def _mean_over(condition=None, case=None, n=12, key="rgb", size=48):
    return np.mean([syn.render_sample(0, "val", i, size, condition=condition, case=case)[key].mean()
                    for i in range(n)])


def test_conditions_and_cases_degrade_their_modality():
    sun, night = _mean_over("sun", None), _mean_over("night", None)
    assert night < 0.5 * sun  # night darkens the camera
    assert _mean_over("sun", "underexposure") < 0.2 * sun
    assert _mean_over("sun", "overexposure") > 1.3 * sun
    # fog washes out colour contrast
    std = lambda cond: np.mean([syn.render_sample(0, "val", i, 48, cond, None)["rgb"].std() for i in range(12)])  # noqa: E731
    assert std("fog") < std("sun")
    # night adds event noise; LiDAR loses returns in fog
    assert _mean_over("night", None, key="event") > _mean_over("sun", None, key="event")
    assert _mean_over("fog", None, key="lidar") < _mean_over("sun", None, key="lidar")
    # event low-res: blocks of 4x4 identical pixels
    e = syn.render_sample(0, "val", 0, 48, "sun", "eventlowres")["event"]
    assert np.array_equal(e[:, ::4, ::4].repeat(4, 1).repeat(4, 2), e)
    # motion blur smooths horizontally
    sharp = syn.render_sample(0, "val", 1, 48, "sun", None)["rgb"]
    blur = syn.render_sample(0, "val", 1, 48, "sun", "motionblur")["rgb"]
    assert np.abs(np.diff(blur, axis=2)).mean() < np.abs(np.diff(sharp, axis=2)).mean()


def test_complementary_evidence_by_design():
    """vegetation/terrain share colour (geometry separates them); car/dynamic share looks (events do)."""
    rgb = {syn.VEGETATION: [], syn.TERRAIN: []}
    height = {syn.VEGETATION: [], syn.TERRAIN: []}
    events = {syn.CAR: [], syn.DYNAMIC: []}
    for i in range(40):
        s = syn.render_sample(0, "train", i, 64, "sun", None)
        for c in rgb:
            m = s["label"] == c
            if m.sum() > 20:
                rgb[c].append(s["rgb"][:, m].mean(1))
                hit = m & (s["lidar"][0] > 0)
                if hit.sum() > 3:
                    height[c].append(s["lidar"][2][hit].mean())
        for c in events:
            m = s["label"] == c
            if m.sum() > 20:
                events[c].append(s["event"][2][m].mean())
    veg, ter = np.mean(rgb[syn.VEGETATION], 0), np.mean(rgb[syn.TERRAIN], 0)
    assert np.abs(veg - ter).max() < 0.06  # same colour
    assert np.mean(height[syn.VEGETATION]) > np.mean(height[syn.TERRAIN]) + 0.05  # but not the same height
    assert np.mean(events[syn.DYNAMIC]) > 2 * np.mean(events[syn.CAR])  # moving vehicles fire events


def test_data_case_is_applied_or_refused():
    """`data.case` on the synthetic benchmark renders every sample with that condition or failure case (it
    used to be ignored: the same data, bit-identical weights); an unknown case lists the valid ones."""
    from workbench.config import apply_overrides, preset
    from workbench.data import dataset_from_config
    from workbench.errors import ConfigError

    base = apply_overrides(preset("tiny"), {"data.train_samples": 4})
    plain = dataset_from_config(base.data, "train", augment=False)
    for case, key in (("fog", "condition"), ("overexposure", "case")):
        cfg = apply_overrides(base, {"data.case": case})
        ds = dataset_from_config(cfg.data, "train", augment=False)
        assert all(ds[i]["meta"][key] == case for i in range(len(ds)))
        assert not torch.equal(ds[0]["rgb"], plain[0]["rgb"])
        assert cfg.hash() != base.hash()
    with pytest.raises(ConfigError, match="data.case='snow'.*fog.*overexposure"):
        dataset_from_config(apply_overrides(base, {"data.case": "snow"}).data, "train")
