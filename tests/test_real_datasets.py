"""Real loaders (DeLiVER, MUSES, MCubeS) and the data checker on small replica trees in each exact layout.

Every modality of a replica encodes its label (value = (raw label) * 9 / 255), so alignment after the
joint augmentation can be checked pixel by pixel.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from workbench.cli import main as cli_main
from workbench.config import DataConfig
from workbench.data import DATASETS, build_dataset, denormalize
from workbench.data.checks import check_dataset
from workbench.data.transforms import IGNORE_INDEX, RGB_KEYS, train_transform


def build(name, root, split, **kwargs):
    """A real dataset as its loader reads it (raw [0, 1] modalities, no transform)."""
    return DATASETS[name](root, split, **kwargs)

STEP = 9  # raw label value v is drawn as v * STEP in every modality


def blocks(h: int, w: int, seed: int, hi: int, block: int = 4) -> np.ndarray:
    """A random block pattern of raw label values in 0..hi (uint8), asymmetric so flips show."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, hi + 1, size=(-(-h // block), -(-w // block)))
    return np.kron(small, np.ones((block, block), dtype=np.int64))[:h, :w].astype(np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)


def save_png16_rgb(path: Path, array: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one), like MUSES' projected LiDAR."""
    h, w, _ = array.shape
    rows = b"".join(b"\x00" + array[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def encode(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.int64) % 256 * STEP).clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------- DeLiVER replica
DELIVER_SCENES = (("cloud", "train", "MAP_1_point10", 2), ("night", "train", "MAP_2_point3_motionblur", 1),
                  ("fog", "val", "MAP_3_point7", 2), ("sun", "val", "MAP_4_point1_lidarjitter", 1),
                  ("rain", "test", "MAP_5_point2", 1))


def make_deliver(root: Path, h: int = 16, w: int = 20, block: int = 4, scenes=DELIVER_SCENES) -> Path:
    """ROOT/{img,hha,depth,event,lidar,semantic}/<condition>/<split>/MAP_*/<id>_<modality>_front.png;
    RGB is RGBA, hha 3-channel, depth 1-channel 16-bit, event half resolution, semantic RGB."""
    seed = 0
    for condition, split, scene, n in scenes:
        for _ in range(n):
            seed += 1
            fid = f"{seed * 50:06d}"
            raw = blocks(h, w, seed, hi=25, block=block)
            raw[0, :4] = (0, 255, 1, 25)  # unlabelled, ignore, first and last class
            v = encode(raw)
            where = Path(condition, split, scene)
            save(root / "img" / where / f"{fid}_rgb_front.png", np.stack([v, v, v, np.full_like(v, 255)], -1))
            save(root / "hha" / where / f"{fid}_depth_front.png", np.stack([v, v, v], -1))
            save(root / "depth" / where / f"{fid}_depth_front.png", v.astype(np.uint16) * 257)  # 16-bit grey
            save(root / "event" / where / f"{fid}_event_front.png", np.stack([v, v, v], -1)[::2, ::2])
            save(root / "lidar" / where / f"{fid}_lidar_front.png", np.stack([v, v, v], -1))
            noise = np.random.default_rng(seed).integers(0, 256, (h, w, 2), dtype=np.uint8)
            save(root / "semantic" / where / f"{fid}_semantic_front.png", np.concatenate([raw[..., None], noise], -1))
    return root


@pytest.fixture
def deliver_root(tmp_path) -> Path:
    return make_deliver(tmp_path / "DELIVER")


def test_deliver_counts_channels_meta(deliver_root):
    assert [len(build("deliver", deliver_root, s)) for s in ("train", "val", "test")] == [3, 3, 1]
    ds = build("deliver", deliver_root, "train")
    assert ds.num_classes == 25 and len(ds.palette) == 25 and ds.classes[0] == "Building"
    sample = ds[0]
    for m in ("rgb", "depth", "event", "lidar"):
        x = sample[m]
        assert x.shape == (3, 16, 20) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert sample["label"].dtype == torch.long and sample["label"].shape == (16, 20)
    assert sample["meta"] == {"dataset": "deliver", "split": "train", "condition": "cloud", "case": "none",
                              "file": "cloud/train/MAP_1_point10/000050", "index": 0}
    assert ds[2]["meta"]["case"] == "motionblur" and ds[2]["meta"]["condition"] == "night"


def test_deliver_label_mapping_and_encoding(deliver_root):
    sample = build("deliver", deliver_root, "val")[0]
    label = sample["label"]
    assert label[0, :4].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 0, 24]  # raw 0, 255, 1, 25
    valid = label != IGNORE_INDEX
    assert label[valid].min() >= 0 and label[valid].max() <= 24
    valid[:2] = False  # row 0 holds single-pixel values that the half-resolution event image cannot
    # raw = class + 1 and every modality draws raw * STEP / 255
    expected = (label + 1).float() * STEP / 255
    for m in ("rgb", "depth", "event", "lidar"):
        assert torch.allclose(sample[m][:, valid], expected[valid].expand(3, -1), atol=1e-6), m


def test_deliver_raw_depth_and_event_resize(deliver_root):
    hha = build("deliver", deliver_root, "train", modalities=["depth"])[0]["depth"]
    raw = build("deliver", deliver_root, "train", modalities=["depth"], depth_source="depth")[0]["depth"]
    assert raw.shape == (3, 16, 20) and torch.equal(raw[0], raw[1])  # 1 channel repeated
    assert torch.allclose(raw, hha, atol=1e-6)  # the 16-bit file is / 65535, the 8-bit one / 255
    event = build("deliver", deliver_root, "train", modalities=["event"])[0]["event"]
    small = torch.from_numpy(np.array(Image.open(next((deliver_root / "event").rglob("000050_*.png"))))).float()
    assert event.shape == (3, 16, 20)
    assert torch.equal(event[0] * 255, small[..., 0].repeat_interleave(2, 0).repeat_interleave(2, 1))  # nearest


def test_deliver_case_filter(deliver_root):
    assert len(build("deliver", deliver_root, "train", case="night")) == 1
    assert [s["meta"]["case"] for s in build("deliver", deliver_root, "train", case="motionblur")] == ["motionblur"]
    assert len(build("deliver", deliver_root, "val", case="lidarjitter")) == 1
    with pytest.raises(ValueError, match="unknown DeLiVER case 'snow'.*motionblur"):
        build("deliver", deliver_root, "train", case="snow")
    with pytest.raises(ValueError, match="case 'fog' matches none of the 3 train images"):
        build("deliver", deliver_root, "train", case="fog")


def test_deliver_case_filter_matches_path_components_not_substrings(tmp_path):
    """The reference keeps paths that contain the case as a substring: "rain" keeps every train file.
    Conditions match the condition folder, failure cases a token of the scene folder."""
    scenes = DELIVER_SCENES + (("rain", "train", "MAP_6_point4", 1), ("sun", "train", "MAP_7_point2_eventlowres", 1))
    root = make_deliver(tmp_path / "DELIVER", scenes=scenes)
    train = build("deliver", root, "train")
    assert len(train) == 5 and all("train" in r.meta["file"] for r in train.records)
    assert [s["meta"]["file"] for s in build("deliver", root, "train", case="rain")] == [
        "rain/train/MAP_6_point4/000400"]  # not the 4 other train files
    assert [s["meta"]["condition"] for s in build("deliver", root, "test", case="rain")] == ["rain"]
    low = build("deliver", root, "train", case="eventlowres")
    assert len(low) == 1 and low[0]["meta"]["case"] == "eventlowres" and low[0]["meta"]["condition"] == "sun"
    assert len(build("deliver", root, "train", case="sun")) == 1
    with pytest.raises(ValueError, match="case 'fog' matches none of the 5 train images"):
        build("deliver", root, "train", case="fog")


def test_deliver_missing_folder_fails_at_build(deliver_root):
    for f in (deliver_root / "event").rglob("*.png"):
        f.unlink()
    for d in sorted((deliver_root / "event").rglob("*"), reverse=True):
        d.rmdir()
    (deliver_root / "event").rmdir()
    with pytest.raises(ValueError, match=r"event/ folder missing.*\n.*fix: extract DeLiVER's event archive"):
        build("deliver", deliver_root, "train")
    assert len(build("deliver", deliver_root, "train", modalities=["rgb", "depth", "lidar"])) == 3


def test_deliver_missing_companion_is_named(deliver_root):
    (deliver_root / "lidar/night/train/MAP_2_point3_motionblur/000150_lidar_front.png").unlink()
    with pytest.raises(ValueError, match="1 lidar file.*lidar/night/train/MAP_2_point3_motionblur/000150_lidar_front"):
        build("deliver", deliver_root, "train")
    assert len(build("deliver", deliver_root, "val")) == 3  # other splits are whole


def test_deliver_missing_hha_points_to_raw_depth(deliver_root):
    (deliver_root / "hha").rename(deliver_root / "hha_old")
    with pytest.raises(ValueError, match=r"hha/ folder missing(.|\n)*depth_source='depth'"):
        build("deliver", deliver_root, "train")
    assert len(build("deliver", deliver_root, "train", depth_source="depth")) == 3


def test_size_mismatch_is_a_clear_error(deliver_root):
    path = deliver_root / "lidar/cloud/train/MAP_1_point10/000050_lidar_front.png"
    save(path, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"lidar of size \(8, 8\) but its label is \(16, 20\)"):
        build("deliver", deliver_root, "train")[0]


# ---------------------------------------------------------------- MUSES replica
MUSES_CELLS = (("train", "clear", "day", 2), ("train", "fog", "night", 1), ("val", "rain", "night", 1),
               ("val", "snow", "day", 1))


def make_muses(root: Path, h: int = 12, w: int = 16, block: int = 4, projected: str = "", test: bool = True) -> Path:
    """ROOT/{frame_camera,event_camera,lidar,radar}/<split>/<weather>/<daytime>/<id>_<modality>.png and
    ROOT/gt_semantic/.../<id>_gt_labelTrainIds.png (LiDAR 16-bit RGB); `projected` prefixes the sensors."""
    seed = 100
    cells = MUSES_CELLS + ((("test", "clear", "night", 1),) if test else ())
    for split, weather, daytime, n in cells:
        for _ in range(n):
            seed += 1
            fid = f"REC{seed:04d}_frame_{seed * 7:06d}"
            raw = blocks(h, w, seed, hi=18, block=block)
            raw[0, :2] = (255, 0)
            v = encode(raw)
            where = Path(split, weather, daytime)
            save(root / "frame_camera" / where / f"{fid}_frame_camera.png", np.stack([v, v, v], -1))
            save(root / f"{projected}event_camera" / where / f"{fid}_event_camera.png", np.stack([v, v, v], -1))
            lidar = np.stack([v, v, v], -1).astype(np.uint16) * 257
            save_png16_rgb(root / f"{projected}lidar" / where / f"{fid}_lidar.png", lidar)
            save(root / f"{projected}radar" / where / f"{fid}_radar.png", np.stack([v, v, v], -1))
            if split != "test":  # MUSES withholds test labels
                save(root / "gt_semantic" / where / f"{fid}_gt_labelTrainIds.png", raw, "L")
    return root


@pytest.fixture
def muses_root(tmp_path) -> Path:
    return make_muses(tmp_path / "muses")


def test_muses_layout_channels_and_ignore(muses_root):
    ds = build("muses", muses_root, "train")
    assert len(ds) == 3 and ds.modalities == ("frame_camera", "event_camera", "lidar")  # radar is opt-in
    assert ds.num_classes == 19 and len(ds.palette) == 19
    sample = ds[0]
    label = sample["label"]
    assert label[0, :2].tolist() == [IGNORE_INDEX, 0]  # 255 stays ignore (the reference makes it road)
    valid = label != IGNORE_INDEX
    for m in ds.modalities:
        assert sample[m].shape == (3, 12, 16)
        assert torch.allclose(sample[m][:, valid], label[valid].float().expand(3, -1) * STEP / 255, atol=1e-6), m
    assert sample["meta"]["condition"] == "clear" and sample["meta"]["daytime"] == "day"
    assert sample["meta"]["file"] == "train/clear/day/REC0101_frame_000707"
    assert len(build("muses", muses_root, "val", modalities=["frame_camera", "radar"])) == 2
    assert len(build("muses", muses_root, "train", case="night")) == 1
    assert len(build("muses", muses_root, "train", case="fog_night")) == 1
    assert len(build("muses", muses_root, "val", case="rain")) == 1
    with pytest.raises(ValueError, match="unknown MUSES case 'cloud'"):
        build("muses", muses_root, "train", case="cloud")


def test_muses_reads_sdk_projected_folder(tmp_path):
    root = make_muses(tmp_path / "muses", projected="projected_to_rgb/")
    (root / "lidar/train").mkdir(parents=True)
    (root / "lidar/train/REC0101.bin").write_bytes(b"raw")  # the raw recordings beside
    ds = build("muses", root, "train")
    assert "projected_to_rgb" in str(ds.records[0].files["lidar"][0]) and ds[0]["lidar"].shape == (3, 12, 16)


def test_muses_missing_projection_mentions_sdk(muses_root):
    for f in (muses_root / "event_camera" / "train").rglob("*.png"):
        f.unlink()
    with pytest.raises(ValueError, match="event_camera: no camera-projected PNGs(.|\n)*official MUSES SDK"):
        build("muses", muses_root, "train")
    assert len(build("muses", muses_root, "train", modalities=["frame_camera", "lidar"])) == 3


def test_muses_test_labels_withheld(muses_root):
    with pytest.raises(ValueError, match="MUSES test labels are withheld(.|\n)*split='val'"):
        build("muses", muses_root, "test")


# ---------------------------------------------------------------- MCubeS replica
def make_mcubes(root: Path, h: int = 8, w: int = 200, block: int = 4,
                names=(("train", "outscene_0001"), ("train", "outscene_0002"), ("test", "outscene_0003"))) -> Path:
    """ROOT/{polL_color,NIR_warped,GT}/<name>.png, ROOT/{polL_aolp_sin,polL_aolp_cos,polL_dolp}/<name>.npy and
    ROOT/list_folder/{train,test}.txt. AoLP sin/cos and DoLP encode the label like the PNGs once scaled."""
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for seed, (split, name) in enumerate(names):
        lists[split].append(name)
        raw = blocks(h, w, seed, hi=19, block=block)
        raw[0, -2:] = (255, 0)
        v = encode(raw)
        f = v.astype(np.float32) / 255
        save(root / "polL_color" / f"{name}.png", np.stack([v, v, v], -1))
        save(root / "NIR_warped" / f"{name}.png", v, "L")
        save(root / "GT" / f"{name}.png", raw, "L")
        save(root / "polL_aolp_sin" / f"{name}.npy", 2 * f - 1)
        save(root / "polL_aolp_cos" / f"{name}.npy", (2 * f - 1)[::-1].copy())  # distinct from sin
        save(root / "polL_dolp" / f"{name}.npy", f.astype(np.float64))
    (root / "list_folder").mkdir(parents=True, exist_ok=True)
    for split, listed in lists.items():
        (root / "list_folder" / f"{split}.txt").write_text("".join(f"{n}\n" for n in listed))
    return root


@pytest.fixture
def mcubes_root(tmp_path) -> Path:
    return make_mcubes(tmp_path / "MCubeS" / "multimodal_dataset")


def test_mcubes_crop_channels_and_scaling(mcubes_root):
    ds = build("mcubes", mcubes_root, "train")
    assert len(ds) == 2 and ds.num_classes == 20 and ds.classes[3] == "road_marking"
    sample = ds[0]
    label = sample["label"]
    assert label.shape == (8, 8)  # 200 - 192 columns
    assert label[0, -2:].tolist() == [IGNORE_INDEX, 0]
    expected = label.float() * STEP / 255
    valid = label != IGNORE_INDEX
    for m in ("image", "dolp", "nir"):
        assert sample[m].shape == (3, 8, 8)
        assert torch.allclose(sample[m][:, valid], expected[valid].expand(3, -1), atol=1e-6), m
    aolp = sample["aolp"]
    assert torch.equal(aolp[0], aolp[2]) and not torch.equal(aolp[0], aolp[1])  # (sin, cos, sin)
    assert torch.allclose(aolp[0][valid], expected[valid], atol=1e-6)  # (sin + 1) / 2
    cos = np.load(mcubes_root / "polL_aolp_cos/outscene_0001.npy")[:, 192:]
    assert torch.allclose(aolp[1], torch.from_numpy((cos + 1) / 2), atol=1e-6)


def test_mcubes_splits_nan_and_missing_list(mcubes_root):
    assert [s["meta"]["file"] for s in build("mcubes", mcubes_root, "val")] == ["outscene_0003"]  # val = test
    dolp = np.load(mcubes_root / "polL_dolp/outscene_0003.npy")
    dolp[0, 195] = np.nan
    np.save(mcubes_root / "polL_dolp/outscene_0003.npy", dolp)
    assert torch.isfinite(build("mcubes", mcubes_root, "test")[0]["dolp"]).all()
    (mcubes_root / "list_folder/train.txt").unlink()
    with pytest.raises(ValueError, match=r"list_folder/train.txt missing"):
        build("mcubes", mcubes_root, "train")
    (mcubes_root / "polL_aolp_cos").rename(mcubes_root / "cos")
    with pytest.raises(ValueError, match="polL_aolp_cos/ folder missing"):
        build("mcubes", mcubes_root, "val")
    assert len(build("mcubes", mcubes_root, "val", modalities=["image", "nir"])) == 1


# ---------------------------------------------------------------- shared behaviour
def test_build_argument_errors(deliver_root, muses_root):
    with pytest.raises(KeyError, match="valid datasets: synthetic, deliver, muses, mcubes"):
        build_dataset("cityscapes", "train", root=deliver_root)
    with pytest.raises(ValueError, match="needs root="):
        build("deliver", None, "train")
    with pytest.raises(ValueError, match="is not a folder"):
        build("deliver", deliver_root / "nope", "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        build("deliver", deliver_root, "dev")
    with pytest.raises(ValueError, match="unknown modality 'rgb' for dataset 'muses'"):
        build("muses", muses_root, "train", modalities=["rgb"])
    with pytest.raises(ValueError, match="DeLiVER only"):
        DATASETS["muses"].from_config(DataConfig(dataset="muses", root=str(muses_root), depth_source="depth"), "train")
    with pytest.raises(ValueError, match="img/ folder missing"):
        build("deliver", muses_root, "train")


def test_build_dataset_default_transform(deliver_root):
    ds = build_dataset("deliver", "train", root=deliver_root, size=32, aug_seed=3)
    batch = ds[0]
    assert all(batch[m].shape == (3, 32, 32) for m in ds.modalities) and batch["label"].shape == (32, 32)
    val = build_dataset("deliver", "val", root=deliver_root, eval_size=8, pipeline="workbench")
    assert val[0]["label"].shape == (8, 10)
    # the default is the reference pipeline: short side 8 (8 x 10), then each side up to a multiple of 32
    assert build_dataset("deliver", "val", root=deliver_root, eval_size=8)[0]["label"].shape == (32, 32)


@pytest.mark.parametrize("name", ["deliver", "muses", "mcubes"])
def test_joint_augmentation_keeps_modalities_aligned(tmp_path, name):
    root, offset = {
        "deliver": (lambda: make_deliver(tmp_path / "d", h=48, w=48, block=8), 1),  # raw = class + 1
        "muses": (lambda: make_muses(tmp_path / "m", h=48, w=64, block=8), 0),
        "mcubes": (lambda: make_mcubes(tmp_path / "c", h=48, w=192 + 48, block=8), 0),
    }[name]
    ds = build(name, root(), "train", transform=train_transform(32), aug_seed=7)
    interior_pixels = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            sample = ds[i]
            label = sample["label"]
            assert label.shape == (32, 32)
            # pixels whose 3x3 neighbourhood has one valid class (bilinear and nearest resizing agree there),
            # away from the crop's border (the neighbour that decides there was cropped off)
            lf = label.float()[None, None]
            flat = (F.max_pool2d(lf, 3, 1, 1) == -F.max_pool2d(-lf, 3, 1, 1))[0, 0]
            interior = flat & (label != IGNORE_INDEX)
            interior[[0, -1], :] = False
            interior[:, [0, -1]] = False
            if interior.sum() < 10:
                continue
            interior_pixels += int(interior.sum())
            expected = (label + offset).float()[interior] * STEP / 255
            for m in ds.modalities:
                x = denormalize(sample[m], m)[0, interior]  # channel 0 (MCubeS' aolp: the sine)
                if m in RGB_KEYS:  # colour jitter and blur change values, not where they are
                    assert torch.corrcoef(torch.stack([x, expected]))[0, 1] > 0.9, (m, i, epoch)
                else:
                    assert (x - expected).abs().max() < 0.02, (m, i, epoch)
                    mirrored = denormalize(sample[m].flip(-1), m)[0, interior]
                    assert (mirrored - expected).abs().max() > 0.02  # the check does see misalignment
    assert interior_pixels > 1000


def test_check_dataset_report_and_cli(deliver_root, capsys):
    report = check_dataset(deliver_root, "deliver")
    assert report.ok, str(report)
    assert {s: r.samples for s, r in report.splits.items()} == {"train": 3, "val": 3, "test": 1}
    assert report.splits["train"].counts["condition"] == {"cloud": 2, "night": 1}
    assert report.splits["val"].counts["case"] == {"none": 2, "lidarjitter": 1}
    assert {0, 1, 25, 255} <= set(report.splits["train"].label_values) <= set(range(26)) | {255}
    assert report.splits["train"].labels_read == 3
    assert cli_main(["data", "check", str(deliver_root), "--dataset", "deliver"]) == 0
    assert "No problems found." in capsys.readouterr().out
    assert cli_main(["data", "check", str(deliver_root), "--dataset", "deliver", "--split", "val"]) == 0
    assert "val: 3 samples, 3 complete" in capsys.readouterr().out

    (deliver_root / "lidar/fog/val/MAP_3_point7/000200_lidar_front.png").unlink()
    bad = np.zeros((16, 20, 3), np.uint8)
    bad[0, 0, 0] = 40  # not a DeLiVER class
    save(deliver_root / "semantic/cloud/train/MAP_1_point10/000050_semantic_front.png", bad)
    report = check_dataset(deliver_root, "deliver", splits=["train", "val"], max_labels=2)
    assert not report.ok
    assert report.splits["val"].missing == {"lidar": ["lidar/fog/val/MAP_3_point7/000200_lidar_front.png"]}
    assert report.splits["val"].complete == 2 and report.splits["train"].labels_read == 2
    assert cli_main(["data", "check", str(deliver_root), "--dataset", "deliver", "--split", "train", "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert "missing lidar (1): lidar/fog/val/MAP_3_point7/000200_lidar_front.png" in out
    assert "train labels hold raw values outside the deliver classes: [40]" in out and "fix:" in out
    assert cli_main(["data", "check", str(deliver_root), "--dataset", "deliver", "--modalities", "sonar"]) == 2


def test_check_dataset_other_layouts(muses_root, mcubes_root, tmp_path):
    report = check_dataset(muses_root, "muses")
    assert report.ok, str(report)
    assert report.splits["train"].counts == {"condition": {"clear": 2, "fog": 1}, "daytime": {"day": 2, "night": 1}}
    assert max(report.splits["val"].label_values) == 255
    withheld = check_dataset(muses_root, "muses", splits=["test"])
    assert not withheld.ok and "withheld" in str(withheld)
    report = check_dataset(mcubes_root, "mcubes")
    assert report.ok and report.splits["val"].samples == 1 and report.splits["train"].label_values[-1] == 255
    empty = check_dataset(tmp_path / "empty", "mcubes")
    assert not empty.ok and "is not a folder" in str(empty)


def test_check_dataset_reads_every_modality_header(deliver_root, capsys):
    """A zero-byte RGB, a GIF named .png and a depth map of the wrong size are each a problem (they used to
    pass: only labels were decoded); a file cut after its header is found with --full."""
    report = check_dataset(deliver_root, "deliver", splits=["train"])
    assert report.ok and report.splits["train"].headers_read == 3 * 5  # 4 modalities + label per sample
    assert "rgb: 3 files, 4 channels, 20x16" in str(report)
    where = Path("cloud/train/MAP_1_point10")
    (deliver_root / "img" / where / "000050_rgb_front.png").write_bytes(b"")
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(deliver_root / "lidar" / where / "000100_lidar_front.png",
                                                        format="GIF")
    save(deliver_root / "hha" / where / "000050_depth_front.png", np.zeros((8, 20, 3), np.uint8))
    report = check_dataset(deliver_root, "deliver", splits=["train"])
    text = str(report)
    assert "cannot decode 1 rgb file(s): img/cloud/train/MAP_1_point10/000050_rgb_front.png (an empty file)" in text
    assert "lidar/cloud/train/MAP_1_point10/000100_lidar_front.png (a GIF file named .png)" in text
    assert "hha/cloud/train/MAP_1_point10/000050_depth_front.png is 20x8, its label 20x16" in text
    assert "event" not in text.split("problem(s):")[1], "DeLiVER's half-resolution events are resized by the loader"
    assert cli_main(["data", "check", str(deliver_root), "--dataset", "deliver", "--split", "train"]) == 1
    capsys.readouterr()

    fresh = make_deliver(deliver_root.parent / "fresh")
    path = fresh / "event" / "fog" / "val" / "MAP_3_point7" / "000200_event_front.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])  # the header is intact, the pixel data is cut
    assert check_dataset(fresh, "deliver", splits=["val"]).ok
    full = check_dataset(fresh, "deliver", splits=["val"], full=True)
    assert not full.ok and "000200_event_front.png" in str(full)
    assert cli_main(["data", "check", str(fresh), "--dataset", "deliver", "--split", "val", "--full"]) == 1
    assert "000200_event_front.png" in capsys.readouterr().out


@pytest.mark.parametrize("n", ["0", "-1"])
def test_check_dataset_max_labels_must_be_positive(deliver_root, capsys, n):
    assert cli_main(["data", "check", str(deliver_root), "--dataset", "deliver", "--max-labels", n]) == 2
    err = capsys.readouterr().err
    assert f"--max-labels {n}" in err and "at least 1" in err and "Traceback" not in err
