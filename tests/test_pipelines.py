"""The reference data pipelines (workbench.data.transforms) against loops written from each reference's
definition, on fixed inputs with the same generator draws: DeLiVER `semseg/augmentations_mm.py` (through
torchvision's own functions), MUSES `semseg/datasets/muses.py` (through Pillow), MCubeS
`semseg/datasets/mcubes.py` (OpenCV's resize and Gaussian blur written out in numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from workbench.data import build_dataset
from workbench.data.transforms import (
    RGB_MEAN,
    RGB_STD,
    adjust_colour,
    blur,
    build_transform,
    deliver_color_jitter,
    deliver_gaussian_blur,
    deliver_random_resized_crop,
    opencv_gaussian_size,
)

MEAN, STD = RGB_MEAN.flatten().tolist(), RGB_STD.flatten().tolist()


def u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    """random.uniform(lo, hi) / random.random(), from the torch generator (the pipelines' source)."""
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def randint(g: torch.Generator, lo: int, hi: int) -> int:
    """random.randint(lo, hi): inclusive on both ends."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def sample(h: int, w: int, keys=("rgb", "depth"), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randint(0, 256, (3, h, w), generator=g).float() / 255 for k in keys}
    out["label"] = torch.randint(0, 25, (h, w), generator=g)
    out["label"][0, :3] = 255
    out["meta"] = {}
    return out


def assert_same(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k == "meta":
            continue
        assert a[k].shape == b[k].shape, k
        if k == "label":
            assert torch.equal(a[k], b[k]), k
        else:
            assert torch.allclose(a[k], b[k], atol=atol), (k, (a[k] - b[k]).abs().max())


# ---------------------------------------------------------------- DeLiVER
def test_colour_jitter_is_torchvisions():
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.rand(3, 12, 16, generator=g)
        b, c, s = (u(g, 0.5, 1.5) for _ in range(3))
        ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s)
        assert torch.allclose(adjust_colour(x, b, c, s), ref, atol=1e-6)


def test_blur_is_torchvisions_default_3x3():
    x = torch.rand(3, 10, 14, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(blur(x, 3, 0.8), TF.gaussian_blur(x, [3, 3]), atol=1e-6)


def reference_resized_crop(s: dict, g: torch.Generator, size: int, seg_fill: int = 255) -> dict:
    """augmentations_mm.RandomResizedCrop with TF.resize (no antialias: the pinned torchvision 0.10), with
    the crop offset drawn from 0..margin (the reference: 0..margin + 1, see docs/DATASETS.md, "Differences from the reference loaders")."""
    s = dict(s)
    keys = [k for k in s if k not in ("label", "meta")]
    h, w = s["label"].shape
    ratio = u(g) * (2.0 - 0.5) + 0.5
    scale = int(size * ratio), int(size * 4 * ratio)
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    nh, nw = int(h * f + 0.5), int(w * f + 0.5)
    for k in keys:
        s[k] = TF.resize(s[k], [nh, nw], TF.InterpolationMode.BILINEAR, antialias=False)
    s["label"] = TF.resize(s["label"][None], [nh, nw], TF.InterpolationMode.NEAREST)[0]
    y1 = randint(g, 0, max(nh - size, 0))
    x1 = randint(g, 0, max(nw - size, 0))
    for k in [*keys, "label"]:
        s[k] = s[k][..., y1:y1 + size, x1:x1 + size]
    ch, cw = s["label"].shape
    if (ch, cw) != (size, size):
        padding = [0, 0, size - cw, size - ch]
        for k in keys:
            s[k] = TF.pad(s[k], padding, fill=0)
        s["label"] = TF.pad(s["label"][None], padding, fill=seg_fill)[0]
    return s


def test_random_resized_crop_follows_the_reference():
    padded = cropped = 0
    for seed in range(12):
        x = sample(40, 56, seed=seed)
        ours = deliver_random_resized_crop(x, torch.Generator().manual_seed(seed), 32)
        ref = reference_resized_crop(x, torch.Generator().manual_seed(seed), 32)
        assert_same(ours, ref)
        padded += bool((ours["label"][-1] == 255).all())
        cropped += not (ours["label"] == 255).any(1)[-1]
    assert padded and cropped  # both branches were exercised


def reference_deliver_train(s: dict, g: torch.Generator, size: int) -> dict:
    """get_train_augmentation: RandomColorJitter(0.2), RandomHorizontalFlip(0.5), RandomGaussianBlur((3, 3),
    0.2), RandomResizedCrop(size, (0.5, 2.0), 255), Normalize (img: /255 then ImageNet; others /255)."""
    s = dict(s)
    keys = [k for k in s if k not in ("label", "meta")]
    if u(g) < 0.2:
        b, c, sat = u(g, 0.5, 1.5), u(g, 0.5, 1.5), u(g, 0.5, 1.5)
        s["rgb"] = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(s["rgb"], b), c), sat)
    if u(g) < 0.5:
        s = {k: (TF.hflip(v) if k != "meta" else v) for k, v in s.items()}
    if u(g) < 0.2:
        s["rgb"] = TF.gaussian_blur(s["rgb"], [3, 3])
    s = reference_resized_crop(s, g, size)
    s["rgb"] = TF.normalize(s["rgb"], MEAN, STD)
    assert keys
    return s


def test_deliver_reference_train_pipeline_end_to_end():
    transform = build_transform("deliver", "train", 32, pipeline="reference")
    jittered = blurred = 0
    for seed in range(40):
        x = sample(36, 48, seed=seed)
        assert_same(transform(x, torch.Generator().manual_seed(seed)),
                    reference_deliver_train(x, torch.Generator().manual_seed(seed), 32), atol=2e-6)
        g = torch.Generator().manual_seed(seed)
        jittered += deliver_color_jitter(x, g) is not x
        u(g)  # the flip's draw
        blurred += deliver_gaussian_blur(x, g) is not x
    assert jittered and blurred


def test_deliver_reference_evaluation_resize():
    x = sample(16, 20, keys=("rgb", "depth", "event", "lidar"))
    ours = build_transform("deliver", "val", None, pipeline="reference", eval_size=24)(x, torch.Generator())
    ref = dict(x)
    f = 24 / 16
    nh, nw = round(16 * f), round(20 * f)  # 24 x 30, then up to multiples of 32: 32 x 32
    ah, aw = int(math.ceil(nh / 32)) * 32, int(math.ceil(nw / 32)) * 32
    for k in ("rgb", "depth", "event", "lidar"):
        ref[k] = TF.resize(TF.resize(x[k], [nh, nw], antialias=False), [ah, aw], antialias=False)
    ref["label"] = TF.resize(TF.resize(x["label"][None], [nh, nw], TF.InterpolationMode.NEAREST), [ah, aw],
                             TF.InterpolationMode.NEAREST)[0]
    ref["rgb"] = TF.normalize(ref["rgb"], MEAN, STD)
    assert ours["label"].shape == (32, 32)
    assert_same(ours, ref)
    default = build_transform("deliver", "val", None, pipeline="reference")(sample(8, 10), torch.Generator())
    assert default["label"].shape == (1024, 1280)  # eval_size None: the reference's 1024


# ---------------------------------------------------------------- MUSES
def test_muses_reference_squashes_like_pillow_and_keeps_the_0_255_scale():
    rng = np.random.default_rng(0)
    h, w, side = 54, 96, 32
    arrays = {k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k in ("frame_camera", "event_camera", "lidar")}
    arrays["lidar"][:] = np.linspace(40, 200, w).astype(np.uint8)[None, :, None]  # a range to stretch
    label = rng.integers(0, 19, (h, w)).astype(np.int64)
    label[0, :4] = 255
    x = {k: torch.from_numpy(a).permute(2, 0, 1).float() / 255 for k, a in arrays.items()}
    x |= {"label": torch.from_numpy(label), "meta": {}}
    ours = build_transform("muses", "val", None, pipeline="reference", eval_size=side)(x, torch.Generator())
    for k, a in arrays.items():  # muses.py: Image.open(...).convert('RGB').resize((1024, 1024)), float
        ref = torch.from_numpy(np.array(Image.fromarray(a).resize((side, side)))).permute(2, 0, 1).float()
        if k == "lidar":  # RobustSeg: min-max to 0..255 per image
            ref = (ref - ref.min()) / (ref.max() - ref.min()) * 255
        assert (ours[k] - ref).abs().max() <= 1.5, k  # Pillow rounds to 8 bits after each pass
    ref_label = F.interpolate(torch.from_numpy(label)[None, None].float(), size=(side, side), mode="nearest")
    assert torch.equal(ours["label"], ref_label[0, 0].long())  # 255 stays ignore (the reference makes it 0)
    train = build_transform("muses", "train", side, pipeline="reference")
    assert_same(train(x, torch.Generator().manual_seed(0)), train(x, torch.Generator().manual_seed(1)))  # no aug


# ---------------------------------------------------------------- MCubeS
def cv2_nearest_loop(a: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """cv2.resize(a, (ow, oh), interpolation=INTER_NEAREST) written as a loop from OpenCV's resize.cpp:
    resize() sets inv_scale_x = (double)dsize.width / ssize.width; resizeNN takes ifx = 1. / inv_scale_x and
    reads source column min(cvFloor(x * ifx), ssize.width - 1) (rows alike), all in double precision."""
    h, w = a.shape[:2]
    ifx, ify = 1.0 / (ow / w), 1.0 / (oh / h)
    out = np.empty((oh, ow) + a.shape[2:], a.dtype)
    for y in range(oh):
        sy = min(math.floor(y * ify), h - 1)
        for x in range(ow):
            out[y, x] = a[sy, min(math.floor(x * ifx), w - 1)]
    return out


def cv2_resize(a: np.ndarray, oh: int, ow: int, nearest: bool = False) -> np.ndarray:
    """cv2.resize(a, (ow, oh)) with INTER_LINEAR (half-pixel centres, coordinates clamped at the borders)
    or INTER_NEAREST (`cv2_nearest_loop`), written out."""
    if nearest:
        return cv2_nearest_loop(a, oh, ow)
    h, w = a.shape[:2]

    def axis(n_in, n_out):
        f = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(f).astype(int)
        frac = f - i0
        frac[i0 < 0], i0[i0 < 0] = 0, 0
        last = i0 >= n_in - 1
        frac[last], i0[last] = 0, n_in - 1
        return i0, frac

    (ys, fy), (xs, fx) = axis(h, oh), axis(w, ow)
    y1, x1 = np.minimum(ys + 1, h - 1), np.minimum(xs + 1, w - 1)
    fy, fx = fy[:, None], fx[None, :]
    if a.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    top = a[ys][:, xs] * (1 - fx) + a[ys][:, x1] * fx
    bottom = a[y1][:, xs] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def cv2_gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur(a, (0, 0), sigma) for a float32 image: ksize = cvRound(8 sigma + 1) | 1,
    getGaussianKernel, BORDER_REFLECT_101 (numpy's 'reflect')."""
    size = int(np.rint(sigma * 8 + 1)) | 1
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    r = size // 2
    p = np.pad(a, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(k[i] * p[:, i:i + a.shape[1]] for i in range(size))
    return sum(k[i] * rows[i:i + a.shape[0]] for i in range(size))


def mcubes_sample(h: int, w: int, seed: int) -> tuple[dict, dict]:
    """A loader sample (AoLP stored as (x + 1) / 2) and the reference's HWC arrays of the same data."""
    rng = np.random.default_rng(seed)
    img = rng.random((h, w, 3)).astype(np.float32)
    nir = np.repeat(rng.random((h, w, 1)).astype(np.float32), 3, 2)
    sin, cos = (rng.random((h, w)).astype(np.float32) * 2 - 1 for _ in range(2))
    dolp = rng.random((h, w)).astype(np.float32)
    label = rng.integers(0, 20, (h, w)).astype(np.float32)
    ref = {"image": img, "nir": nir, "aolp": np.stack([sin, cos, sin], 2), "dolp": np.stack([dolp] * 3, 2),
           "label": label}
    chw = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()  # noqa: E731
    ours = {"image": chw(img), "nir": chw(nir), "aolp": (chw(ref["aolp"]) + 1) / 2, "dolp": chw(ref["dolp"]),
            "label": torch.from_numpy(label).long(), "meta": {}}
    return ours, ref


def reference_mcubes_train(s: dict, g: torch.Generator, base: int, crop: int) -> dict:
    """mcubes.py transform_tr: RandomHorizontalFlip, RandomScaleCrop(base, crop, 255), RandomGaussianBlur,
    Normalize (image only), ToTensor."""
    s = dict(s)
    if u(g) < 0.5:
        s = {k: v[:, ::-1] for k, v in s.items()}
    short = randint(g, int(base * 0.5), int(base * 2.0))
    h, w = s["image"].shape[:2]
    if h > w:
        ow, oh = short, int(1.0 * h * short / w)
    else:
        oh, ow = short, int(1.0 * w * short / h)
    x1 = randint(g, 0, max(0, ow - crop))
    y1 = randint(g, 0, max(0, oh - crop))
    s = {k: cv2_resize(v, oh, ow, nearest=k == "label") for k, v in s.items()}
    if short < crop:
        padh, padw = max(crop - oh, 0), max(crop - ow, 0)
        for k, v in s.items():
            fill = np.full((oh + padh, ow + padw) + v.shape[2:], 255.0 if k == "label" else 0.0)
            fill[:oh, :ow] = v
            s[k] = fill
    s = {k: v[y1:y1 + crop, x1:x1 + crop] for k, v in s.items()}
    if u(g) < 0.5:
        radius = u(g)
        s["image"], s["nir"] = cv2_gaussian_blur(s["image"], radius), cv2_gaussian_blur(s["nir"], radius)
    s["image"] = (s["image"] - np.array(MEAN)) / np.array(STD)
    return s


def to_reference_layout(s: dict) -> dict:
    return {k: (v.numpy() if k == "label" else v.permute(1, 2, 0).numpy()) for k, v in s.items() if k != "meta"}


def test_mcubes_reference_train_pipeline_end_to_end():
    transform = build_transform("mcubes", "train", 16, pipeline="reference")
    padded = 0
    for seed in range(16):
        ours, ref = mcubes_sample(18, 22, seed)
        out = to_reference_layout(transform(ours, torch.Generator().manual_seed(seed)))
        expected = reference_mcubes_train(ref, torch.Generator().manual_seed(seed), 16, 16)
        for k in expected:
            assert out[k].shape == expected[k].shape, k
            np.testing.assert_allclose(out[k], expected[k], atol=2e-5, err_msg=f"{k} seed {seed}")
        padded += bool((out["label"] == 255).any())
    assert padded  # short sides below the crop were drawn


def test_mcubes_labels_are_resized_by_opencvs_nearest_rule():
    """OpenCV's INTER_NEAREST takes the scale's inverse in two double roundings; PyTorch's `nearest` uses
    in / out in single precision. They pick neighbouring source pixels at some exact-integer points
    (e.g. 14 -> 18 pixels); the MCubeS reference pipeline resizes labels by OpenCV's rule."""
    from workbench.data.transforms import _resize, opencv_nearest_index

    differs = 0
    for n_in, n_out in [(14, 18), (12, 34), (21, 27), (1024, 517), (1032, 1553), (7, 7), (30, 8), (1, 5)]:
        idx = opencv_nearest_index(n_in, n_out).numpy()
        assert np.array_equal(idx, cv2_nearest_loop(np.arange(n_in)[None], 1, n_out)[0]), (n_in, n_out)
        torch_idx = F.interpolate(torch.arange(n_in).float()[None, None, None], size=(1, n_out), mode="nearest")
        differs += int((torch_idx[0, 0, 0].long().numpy() != idx).any())
    assert differs >= 3, "the sizes above include ones where the two rules differ"
    label = torch.from_numpy(np.random.default_rng(0).integers(0, 20, (14, 21)))
    got = _resize({"label": label, "meta": {}}, (18, 27), label_rule="opencv")["label"]
    assert np.array_equal(got.numpy(), cv2_nearest_loop(label.numpy(), 18, 27))
    assert not torch.equal(got, _resize({"label": label, "meta": {}}, (18, 27))["label"])
    # both MCubeS resizes use it: the scale crop at every short side the training draws here, and evaluation
    for seed in range(40):
        ours, ref = mcubes_sample(14, 21, seed)
        out = build_transform("mcubes", "train", 16, pipeline="reference")(ours, torch.Generator().manual_seed(seed))
        expected = reference_mcubes_train(ref, torch.Generator().manual_seed(seed), 16, 16)["label"]
        assert np.array_equal(out["label"].numpy(), expected), seed
    ours, ref = mcubes_sample(14, 21, 0)
    out = build_transform("mcubes", "val", None, pipeline="reference", eval_size=18)(ours, torch.Generator())
    assert np.array_equal(out["label"].numpy(), cv2_nearest_loop(ref["label"], 18, 27)[:, 4:22])


def test_mcubes_blur_kernel_size_is_opencvs():
    assert [opencv_gaussian_size(s) for s in (0.01, 0.2, 0.5, 0.99)] == [1, 3, 5, 9]


def test_mcubes_reference_evaluation_is_a_centre_crop():
    ours, ref = mcubes_sample(24, 30, 0)
    out = to_reference_layout(build_transform("mcubes", "val", None, pipeline="reference", eval_size=16)(
        ours, torch.Generator()))
    # FixScaleCrop(16): w > h -> oh = 16, ow = int(30 * 16 / 24) = 20; x1 = round(2.0) = 2, y1 = 0
    for k, v in ref.items():
        expected = cv2_resize(v, 16, 20, nearest=k == "label")[0:16, 2:18]
        if k == "image":
            expected = (expected - np.array(MEAN)) / np.array(STD)
        np.testing.assert_allclose(out[k], expected, atol=2e-6, err_msg=k)
    assert out["aolp"].min() < 0  # raw sin/cos in [-1, 1], as the reference feeds them


# ---------------------------------------------------------------- choosing pipelines
def test_build_transform_names_and_defaults(tmp_path):
    with pytest.raises(ValueError, match="data.pipeline='paper' is not valid"):
        build_transform("deliver", "train", 32, pipeline="paper")
    with pytest.raises(ValueError, match="synthetic' has no reference pipeline|has no reference pipeline"):
        build_transform("synthetic", "train", 32, pipeline="reference")
    with pytest.raises(ValueError, match="has only the 'workbench'"):
        build_dataset("synthetic", "train", size=32, num_samples=2, pipeline="reference")
    a = build_dataset("synthetic", "val", size=32, num_samples=2, eval_size=16)[0]
    assert a["label"].shape == (16, 16)  # the synthetic benchmark keeps the workbench pipeline
    x = sample(16, 20)
    wb = build_transform("deliver", "val", None, pipeline="workbench", eval_size=8)(x, torch.Generator())
    assert wb["label"].shape == (8, 10)


@pytest.mark.parametrize("name", ["deliver", "muses", "mcubes"])
def test_reference_pipelines_feed_every_evaluation(tmp_path, name):
    """Replica trees through the reference evaluation pipelines into EMM, the per-case breakdown, RMM and NM."""
    from test_real_datasets import make_deliver, make_mcubes, make_muses
    from torch.utils.data import DataLoader

    from workbench.data import Collate
    from workbench.evaluate import evaluate_combinations
    from workbench.models import Segmentor
    from workbench.robustness import evaluate_nm, evaluate_rmm

    root = {"deliver": make_deliver, "muses": make_muses, "mcubes": make_mcubes}[name](tmp_path / name)
    ds = build_dataset(name, "val", root=root, eval_size=32)
    loader = list(DataLoader(ds, batch_size=2, collate_fn=Collate(ds.modalities)))
    pixels = sum(int((b["label"] != 255).sum()) for b in loader)
    torch.manual_seed(0)
    model = Segmentor(ds.modalities, ds.num_classes, head_dim=16)
    res = evaluate_combinations(model, loader, progress=False, conditions=ds.conditions or None,
                                cases=ds.cases or None)
    assert all(int(cm.sum()) == pixels for cm in res.cms.values())
    assert sum(int(res.case_cms[("zero", ds.modalities, c)].sum()) for c in res.per_case("zero")) == pixels
    rmm = evaluate_rmm(model, loader, rates=(0.5,), progress=False)
    nm = evaluate_nm(model, loader, levels=("high",), progress=False)
    assert len(rmm.cms) == 2 ** len(ds.modalities) - 1 and int(nm.cms["high"].sum()) == pixels
    if name == "deliver":
        assert "lidarjitter" in res.format_breakdown("drop", by="case")


def _reference_crop_shift_rate(h: int, w: int, size: int, steps: int = 150_001) -> float:
    """The share of DeLiVER's reference random resized crops that draw the out-of-range offset margin + 1 on
    at least one axis (offsets uniform in 0..margin + 1), over r ~ U(0.5, 2) on a fine grid."""
    rates = []
    for r in np.linspace(0.5, 2.0, steps):
        target = (int(size * r), int(size * 4 * r))
        f = min(max(target) / max(h, w), min(target) / min(h, w))
        mh, mw = max(int(h * f + 0.5) - size, 0), max(int(w * f + 0.5) - size, 0)
        rates.append(1 - (1 - 1 / (mh + 2)) * (1 - 1 / (mw + 2)))
    return float(np.mean(rates))


def test_the_reference_differences_in_datasets_md_are_the_measured_ones():
    """docs/DATASETS.md's figures: the DeLiVER crop offset (1042 x 1042 images, 1024 crops) and the MCubeS
    label pixels whose source differs between PyTorch's and OpenCV's nearest (1024 x 1032, short side
    256..1024 as the reference trains at 512)."""
    from pathlib import Path

    from workbench.data.transforms import opencv_nearest_index

    docs = (Path(__file__).resolve().parent.parent / "docs" / "DATASETS.md").read_text()
    docs = " ".join(docs.split())
    shift = _reference_crop_shift_rate(1042, 1042, 1024)
    assert f"it shifts {100 * shift:.1f}% of the crops" in docs

    def torch_index(n_in, n_out):
        return F.interpolate(torch.arange(n_in).float()[None, None, None], size=(1, n_out), mode="nearest")[0, 0, 0]

    h, w, moved = 1024, 1032, []
    for s in range(256, 1025):
        oh, ow = s, int(1.0 * w * s / h)
        fy = (opencv_nearest_index(h, oh) != torch_index(h, oh).long()).double().mean().item()
        fx = (opencv_nearest_index(w, ow) != torch_index(w, ow).long()).double().mean().item()
        moved.append(1 - (1 - fy) * (1 - fx))
    assert f"{100 * np.mean(moved):.2f}% of the label pixels" in docs
    assert f"up to {100 * max(moved):.1f}% at one scale" in docs
