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
    assert _mean_over("sun", "underexposure") < 0.3 * sun
    assert _mean_over("sun", "overexposure") > 1.3 * sun
    # fog washes out colour contrast
    std = lambda cond: np.mean([syn.render_sample(0, "val", i, 48, cond, None)["rgb"].std() for i in range(12)])  # noqa: E731
    assert std("fog") < std("sun")
    # night adds background-activity events: in the sky nothing moves, so events there are noise
    def sky_events(cond):
        out = [syn.render_sample(0, "val", i, 48, cond, None) for i in range(12)]
        return np.mean([s["event"][2][s["label"] == syn.SKY].mean() for s in out])
    assert sky_events("night") > 3 * sky_events("sun")
    # fog: LiDAR returns from droplets where nothing is (the sky), and none beyond 1.5x the visibility
    def sky_returns(cond):
        out = [syn.render_sample(0, "val", i, 64, cond, None) for i in range(12)]
        return sum(((s["lidar"][0] > 0) & (s["label"] == syn.SKY)).sum() for s in out)
    assert sky_returns("sun") == 0 and sky_returns("fog") > 0
    c = syn._Canvas(64)
    c.depth[:], c.label[:], c.refl[:] = 20.0, syn.BUILDING, 0.8
    inv = {cond: syn.SceneRenderer(64)._lidar(np.random.default_rng(0), c, 0.0, cond, None, vis)[..., 0]
           for cond, vis in (("cloud", None), ("fog", 10.0))}  # (H, W, 3) before the transpose
    assert (inv["cloud"] > 0).sum() > 20 and np.isclose(inv["cloud"][inv["cloud"] > 0], 0.1, atol=0.01).all()
    assert not np.isclose(inv["fog"][inv["fog"] > 0], 0.1, atol=0.01).any()  # 20 m > 1.5 x 10 m
    # event low-res: blocks of 4x4 identical pixels
    e = syn.render_sample(0, "val", 0, 48, "sun", "eventlowres")["event"]
    assert np.array_equal(e[:, ::4, ::4].repeat(4, 1).repeat(4, 2), e)
    # motion blur smooths horizontally
    sharp = syn.render_sample(0, "val", 1, 48, "sun", None)["rgb"]
    blur = syn.render_sample(0, "val", 1, 48, "sun", "motionblur")["rgb"]
    assert np.abs(np.diff(blur, axis=2)).mean() < np.abs(np.diff(sharp, axis=2)).mean()


def test_complementary_evidence_by_design():
    """vegetation/terrain share colour (geometry separates them); car/dynamic share looks (events do).
    Rendered under cloud: the sun's hard shadows fall on the ground only, so they darken terrain."""
    rgb = {syn.VEGETATION: [], syn.TERRAIN: []}
    height = {syn.VEGETATION: [], syn.TERRAIN: []}
    events = {syn.CAR: [], syn.DYNAMIC: []}
    for i in range(40):
        s = syn.render_sample(0, "train", i, 64, "cloud", None)
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


# -- sensor models (docs/BENCHMARK.md, "What the renderer does") ----------------------------------

def _samples(n=40, size=64, split="train"):
    return [syn.render_sample(0, split, i, size) for i in range(n)]


def test_lidar_is_sparse_relative_to_the_feature_stride():
    """Few scan lines: most stride-4 cells (the encoder's first stage) hold no return at 64x64."""
    cells = [(s["lidar"][0] > 0).reshape(16, 4, 16, 4).any((1, 3)).mean() for s in _samples()]
    assert np.mean(cells) < 0.3
    assert min((s["lidar"][0] > 0).sum() for s in _samples(10)) > 0  # but never empty


def test_lidar_intensity_is_only_weakly_tied_to_the_class():
    """Reflectivity is drawn per object and attenuated and noisy: an intensity lookup table (20 bins ->
    most frequent class) is barely better than always guessing the most frequent class (v2: 99.2%)."""
    inten, labels = [], []
    for s in _samples(60):
        hit = s["lidar"][0] > 0
        inten.append(s["lidar"][1][hit])
        labels.append(s["label"][hit])
    inten, labels = np.concatenate(inten), np.concatenate(labels)
    table = np.zeros((20, len(syn.CLASSES)))
    np.add.at(table, (np.clip((inten * 20).astype(int), 0, 19), labels), 1)
    lookup = table.max(1).sum() / table.sum()
    majority = np.bincount(labels).max() / len(labels)
    assert lookup < majority + 0.05 and lookup < 0.9


def test_depth_noise_grows_with_distance_and_has_holes():
    """A fronto-parallel wall at depth d: the measured depth's spread grows with d (constant disparity
    noise: std ~ d^2); the sensor has holes (beyond range, at edges, random patches)."""
    def measured_std(d):
        c = syn._Canvas(64)
        c.depth[:] = d
        c.label[:] = syn.BUILDING
        c.rgb[:] = 0.5 + 0.2 * np.random.default_rng(0).random((64, 64, 1))  # textured: stereo can match
        out = syn.SceneRenderer(64)._depth_camera(np.random.default_rng(1), c, 0.4, "cloud")[..., 0]
        disp = out[out > 0]
        return (np.std(2.0 / disp) if len(disp) else None), len(disp)
    (near, n_near), (far, n_far) = measured_std(5.0), measured_std(20.0)
    assert far > 4 * near and n_near > 1000 and n_far > 1000
    assert measured_std(syn.DEPTH_MAX + 5)[1] == 0  # nothing measured beyond the range
    holes = [((s["depth"][0] == 0) & (s["label"] != syn.SKY)).mean() for s in _samples(20)]
    assert 0.02 < np.mean(holes) < 0.4


def test_depth_is_measured_at_lower_resolution():
    """Upsampled from a quarter-resolution measurement: neighbouring pixels differ much less than in
    the full-resolution label map would suggest (edges are blurred over several pixels)."""
    for s in _samples(5):
        d = s["depth"][0]
        valid = (d[:, 1:] > 0) & (d[:, :-1] > 0)
        assert np.abs(np.diff(d, axis=1))[valid].max() < 0.25
        assert np.array_equal(s["depth"][0], s["depth"][1]) and np.array_equal(s["depth"][0], s["depth"][2])


def test_events_are_sparse_and_at_moving_edges():
    ss = _samples(30)
    density = np.mean([(s["event"][2] > 0).mean() for s in ss])
    assert density < 0.25
    # where something moves in the image (ego-motion is zero at the sky), events cluster on edges:
    # the camera's edge pixels fire far more often than flat regions
    on_edge, off_edge = [], []
    for s in ss:
        g = np.abs(np.diff(s["rgb"].mean(0), axis=1, append=0))
        edge = g > 0.1
        on_edge.append((s["event"][2][edge] > 0).mean())
        off_edge.append((s["event"][2][~edge] > 0).mean())
    assert np.mean(on_edge) > 2 * np.mean(off_edge)


def test_small_classes_are_large_enough_at_64():
    """Pole, traffic sign and pedestrian cover enough pixels at the quick profile's 64x64 to be learnt."""
    counts = {c: [] for c in (syn.POLE, syn.SIGN, syn.PEDESTRIAN)}
    for s in _samples(60):
        for c in counts:
            n = (s["label"] == c).sum()
            if n:
                counts[c].append(n)
    assert np.mean(counts[syn.POLE]) >= 60
    assert np.mean(counts[syn.SIGN]) >= 30
    assert np.mean(counts[syn.PEDESTRIAN]) >= 30
    assert all(len(v) >= 30 for v in counts.values())  # and they are frequent


def test_modalities_have_their_own_fine_structure():
    """Each sensor's edges are its own: the event map, the depth map and the LiDAR scan are not
    aligned with each other the way a shared edge map would be."""
    for s in _samples(5):
        ev = s["event"][2] > 0
        lid = s["lidar"][0] > 0
        d_edge = np.abs(np.diff(s["depth"][0], axis=1, append=0)) > 0.02
        assert (ev & lid).sum() < 0.5 * lid.sum()  # LiDAR points mostly fall where no event fires
        assert (ev & d_edge).sum() < 0.5 * ev.sum()  # events mostly off the (blurred) depth edges


def test_a_rendered_split_is_cached_on_disk_and_read_back_unchanged(tmp_path, monkeypatch, caplog):
    """Once every sample of a split is rendered, the split is written to runs/data/<mode>/ (keyed by what it is
    rendered from and the renderer's VERSION); a new dataset reads those tensors instead of rendering them."""
    import logging

    from workbench.data.synthetic_dataset import SyntheticDataset

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))
    first = SyntheticDataset("val", size=32, num_samples=3, transform=None)
    assert f"synthetic-v{syn.VERSION}-seed0-val-32px-n3-" in first.disk_path.name
    rendered = [first.load(i) for i in range(2)]
    assert not first.disk_path.exists(), "written once the whole split is rendered"
    rendered.append(first.load(2))
    assert first.disk_path.exists()

    calls = []
    monkeypatch.setattr(syn, "render_sample", lambda *a, **k: calls.append(a))
    again = SyntheticDataset("val", size=32, num_samples=3, transform=None)
    for i, sample in enumerate(rendered):
        got = again.load(i)
        assert got["meta"] == sample["meta"]
        assert all(torch.equal(got[k], sample[k]) and got[k].dtype == sample[k].dtype for k in (*syn.MODALITIES, "label"))
    assert calls == [], "read from disk, not rendered"
    # another size, sample count or seed is another file; a damaged file is reported and rendered again
    assert SyntheticDataset("val", size=32, num_samples=2).disk_path != first.disk_path
    first.disk_path.write_bytes(b"not a tensor file")
    monkeypatch.undo()
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="workbench.data.synthetic_dataset"):
        damaged = SyntheticDataset("val", size=32, num_samples=3, transform=None)
        assert torch.equal(damaged.load(1)["rgb"], rendered[1]["rgb"])
    assert "unreadable" in caplog.text
    assert not SyntheticDataset("val", size=32, num_samples=3, disk_cache=False)._stored
