"""Joint transforms and the named data pipelines of every dataset (docs/DATASETS.md, "Normalization" and
"Augmentation and evaluation resize"; the reference pipelines and what still differs:
"Differences from the reference loaders").

A raw sample holds each modality as a float tensor (C, H, W) in [0, 1] (i.e. already /255), a
`label` (H, W) long with 255 = ignore, and `meta`. Geometric transforms apply to all modalities and the
label jointly (bilinear for modalities, PyTorch's `nearest` for labels, no antialias unless said);
photometric ones to the RGB camera only. All randomness comes from an explicit `torch.Generator`, drawn
in the order the reference draws from Python's `random`.

Two named pipelines per dataset (`build_transform(dataset, split, size, pipeline=...)`):

- `workbench` (the synthetic benchmark's, and the real datasets' before the reference pipelines):
  random resized crop (short side `size` x U(0.5, 2)), h-flip, colour jitter (p 0.2, factors
  U(0.75, 1.25)), 3x3 Gaussian blur (p 0.2, sigma U(0.1, 2), replicate padding), normalization; at
  evaluation the short side is resized to `eval_size` (None: native size).
- `reference`, exact to each dataset's reference loader:
  - DeLiVER (`jamycheung/DELIVER` `semseg/augmentations_mm.py`; AnySeg and RobustSeg ship the same file):
    colour jitter (p 0.2; brightness, contrast, saturation factors U(0.5, 1.5) with torchvision's
    formulas: luma-weighted grey, clamp after each step), h-flip (p 0.5), 3x3 Gaussian blur (p 0.2,
    sigma 0.8, reflect padding), then its random resized crop (`deliver_random_resized_crop`) at full
    resolution, then normalization (RGB ImageNet mean/std, the rest /255). Evaluation: short side to
    `eval_size` (default 1024), then each side resized again up to a multiple of 32.
  - MUSES (`RobustSeg/RobustSeg`, `zhengxuJosh/AnySeg` `semseg/datasets/muses.py`): every modality
    squashed to `size` x `size` (Pillow's default bicubic, antialiased; labels nearest) and no
    augmentation; no ImageNet normalization: values stay on the 0..255 scale the reference feeds its
    model, LiDAR and radar min-max scaled to 0..255 per image (RobustSeg). Evaluation the same at
    `eval_size` (default 1024).
  - MCubeS (DeLiVER's `semseg/datasets/mcubes.py`, which ignores the common augmentation): h-flip
    (p 0.5), random scale crop (`mcubes_random_scale_crop`: short side uniform in [size/2, 2 size],
    random `size` crop, pad 0 / 255), Gaussian blur of image and NIR (p 0.5, sigma U(0, 1), OpenCV's
    kernel and border), then the image by ImageNet mean/std, NIR at /255, AoLP sin/cos raw in [-1, 1] and
    DoLP raw. Evaluation: short side to `eval_size` (default 1024) and the centre `eval_size` square.
    Its labels are resized by OpenCV's nearest rule (`opencv_nearest_index`), not PyTorch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from workbench.errors import ConfigError
from workbench.options import Pipeline, check

IGNORE_INDEX = 255
RGB_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
RGB_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
RGB_KEYS = frozenset({"rgb", "image", "frame_camera"})  # the RGB camera's key in each dataset
REFERENCE_EVAL_SIZE = 1024  # every reference loader evaluates at 1024 (DeLiVER short side, MUSES, MCubeS crop)

Sample = dict
Transform = Callable[[Sample, torch.Generator], Sample]


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def modality_keys(sample: Sample) -> list[str]:
    return [k for k, v in sample.items() if k not in ("label", "meta") and torch.is_tensor(v)]


def _resize(sample: Sample, hw: tuple[int, int], label_rule: str = "torch") -> Sample:
    """Modalities bilinear (half-pixel centres, no antialias); the label nearest by PyTorch's rule, or
    (`label_rule="opencv"`) by OpenCV's `opencv_nearest_index`."""
    out = dict(sample)
    for k in modality_keys(sample):
        out[k] = F.interpolate(sample[k][None], size=hw, mode="bilinear", align_corners=False)[0]
    if "label" in sample:
        label = sample["label"]
        if label_rule == "opencv":
            ys = opencv_nearest_index(label.shape[0], hw[0])
            xs = opencv_nearest_index(label.shape[1], hw[1])
            out["label"] = label[ys][:, xs]
        else:
            out["label"] = F.interpolate(label[None, None].float(), size=hw, mode="nearest")[0, 0].long()
    return out


def opencv_nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """The source index of each of `n_out` destination pixels under OpenCV's INTER_NEAREST resize
    (imgproc `resize.cpp`, `resizeNN`): the scale is inv = n_out / n_in and its inverse ifx = 1 / inv, both
    in double precision, and the index is min(floor(dst * ifx), n_in - 1). PyTorch's `nearest` computes
    floor(dst * (n_in / n_out)) with the scale in single precision; at destinations where the exact product
    is a whole number the two can round to neighbouring source pixels."""
    ifx = 1.0 / (n_out / n_in)  # two roundings, as OpenCV: not n_in / n_out
    dst = torch.arange(n_out, dtype=torch.float64)  # exact integers: dst * ifx rounds as OpenCV's double product
    return (dst * ifx).floor().long().clamp_(max=n_in - 1)


def random_resized_crop(sample: Sample, g: torch.Generator, size: int, scale=(0.5, 2.0)) -> Sample:
    """Resize so the short side is `size * r`, r ~ U(scale), then a random `size` x `size` crop;
    pad with 0 (modalities) and 255 (label) where the resized image is smaller."""
    h, w = sample["label"].shape
    r = _uniform(g, *scale)
    k = size * r / min(h, w)
    nh, nw = max(1, round(h * k)), max(1, round(w * k))
    sample = _resize(sample, (nh, nw))
    ph, pw = max(0, size - nh), max(0, size - nw)
    top = int(torch.randint(0, max(nh - size, 0) + 1, (), generator=g))
    left = int(torch.randint(0, max(nw - size, 0) + 1, (), generator=g))
    out = dict(sample)
    for k in modality_keys(sample) + ["label"]:
        x = sample[k]
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=IGNORE_INDEX if k == "label" else 0.0)
        out[k] = x[..., top:top + size, left:left + size]
    return out


def hflip(sample: Sample, g: torch.Generator, p: float = 0.5) -> Sample:
    if _uniform(g) >= p:
        return sample
    out = dict(sample)
    for k in modality_keys(sample) + ["label"]:
        out[k] = sample[k].flip(-1)
    return out


def color_jitter(sample: Sample, g: torch.Generator, p: float = 0.2, strength: float = 0.25) -> Sample:
    """Brightness, contrast and saturation jitter on the RGB camera only."""
    keys = [k for k in modality_keys(sample) if k in RGB_KEYS]
    if not keys or _uniform(g) >= p:
        return sample
    b, c, s = (_uniform(g, 1 - strength, 1 + strength) for _ in range(3))
    out = dict(sample)
    for k in keys:
        x = sample[k] * b
        mean = x.mean()
        x = (x - mean) * c + mean
        gray = x.mean(0, keepdim=True)
        out[k] = ((x - gray) * s + gray).clamp(0, 1)
    return out


def gaussian_blur(sample: Sample, g: torch.Generator, p: float = 0.2, sigma=(0.1, 2.0)) -> Sample:
    """3x3 Gaussian blur on the RGB camera only."""
    keys = [k for k in modality_keys(sample) if k in RGB_KEYS]
    if not keys or _uniform(g) >= p:
        return sample
    sd = _uniform(g, *sigma)
    k1 = torch.exp(-torch.tensor([-1.0, 0.0, 1.0]) ** 2 / (2 * sd * sd))
    k1 = k1 / k1.sum()
    kernel = (k1[:, None] * k1[None, :])[None, None]
    out = dict(sample)
    for k in keys:
        x = sample[k][:, None]
        out[k] = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)[:, 0]
    return out


def resize_short(sample: Sample, size: int) -> Sample:
    """Evaluation resize: short side to `size` (bilinear; labels nearest)."""
    h, w = sample["label"].shape
    if min(h, w) == size:
        return sample
    k = size / min(h, w)
    return _resize(sample, (round(h * k), round(w * k)))


def normalize(sample: Sample, g: torch.Generator | None = None) -> Sample:
    out = dict(sample)
    for k in modality_keys(sample):
        if k in RGB_KEYS:
            out[k] = (sample[k] - RGB_MEAN) / RGB_STD
    return out


def denormalize(x: torch.Tensor, modality: str) -> torch.Tensor:
    """Back to [0, 1] for display: inverse of `normalize` for one modality tensor (..., C, H, W)."""
    if modality in RGB_KEYS:
        x = x * RGB_STD.to(x.device) + RGB_MEAN.to(x.device)
    return x.clamp(0, 1)


class Compose:
    def __init__(self, steps: Iterable[Transform]):
        self.steps = list(steps)

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        for step in self.steps:
            sample = step(sample, g)
        return sample


def train_transform(size: int) -> Compose:
    return Compose([
        lambda s, g: random_resized_crop(s, g, size),
        hflip,
        color_jitter,
        gaussian_blur,
        normalize,
    ])


def eval_transform(size: int | None) -> Compose:
    steps: list[Transform] = [] if size is None else [lambda s, g: resize_short(s, size)]
    return Compose(steps + [normalize])


# ---------------------------------------------------------------- DeLiVER reference (augmentations_mm.py)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (1, H, W) of an RGB (3, H, W) tensor with torchvision's weights."""
    return (GRAY_WEIGHTS[0] * x[0] + GRAY_WEIGHTS[1] * x[1] + GRAY_WEIGHTS[2] * x[2])[None]


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: float) -> torch.Tensor:
    return (ratio * a + (1 - ratio) * b).clamp(0, 1)


def adjust_colour(x: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """torchvision's adjust_brightness, adjust_contrast (blend with the mean luma of the image) and
    adjust_saturation (blend with the per-pixel luma), in that order, clamped to [0, 1] after each."""
    x = _blend(x, torch.zeros_like(x), brightness)
    x = _blend(x, _gray(x).mean(), contrast)
    return _blend(x, _gray(x), saturation)


def deliver_color_jitter(sample: Sample, g: torch.Generator, p: float = 0.2, lo: float = 0.5,
                         hi: float = 1.5) -> Sample:
    """RandomColorJitter: with probability p, brightness, contrast and saturation factors U(lo, hi) each."""
    keys = [k for k in modality_keys(sample) if k in RGB_KEYS]
    if not keys or _uniform(g) >= p:
        return sample
    factors = [_uniform(g, lo, hi) for _ in range(3)]
    return dict(sample) | {k: adjust_colour(sample[k], *factors) for k in keys}


def gaussian_kernel1d(size: int, sigma: float) -> torch.Tensor:
    """exp(-x^2 / (2 sigma^2)) at x = -(size-1)/2 .. (size-1)/2, normalized (torchvision and OpenCV)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) with reflect padding that does not repeat the edge pixel
    (torchvision's `reflect`, OpenCV's BORDER_REFLECT_101)."""
    if size == 1:
        return x
    k = gaussian_kernel1d(size, sigma).to(x)
    r = size // 2
    y = F.conv2d(F.pad(x[:, None], (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))[:, 0]


def deliver_gaussian_blur(sample: Sample, g: torch.Generator, p: float = 0.2, size: int = 3,
                          sigma: float = 0.8) -> Sample:
    """RandomGaussianBlur((3, 3)): torchvision's gaussian_blur with its default sigma for a 3-tap kernel,
    0.3 ((3 - 1) / 2 - 1) + 0.8 = 0.8."""
    keys = [k for k in modality_keys(sample) if k in RGB_KEYS]
    if not keys or _uniform(g) >= p:
        return sample
    return dict(sample) | {k: blur(sample[k], size, sigma) for k in keys}


def _pad_to(sample: Sample, h: int, w: int, fill: int = IGNORE_INDEX) -> Sample:
    """Pad bottom and right up to (h, w): 0 for modalities, `fill` for the label."""
    out = dict(sample)
    for k in modality_keys(sample) + ["label"]:
        x = sample[k]
        ph, pw = h - x.shape[-2], w - x.shape[-1]
        if ph > 0 or pw > 0:
            out[k] = F.pad(x, (0, max(pw, 0), 0, max(ph, 0)), value=fill if k == "label" else 0.0)
    return out


def _crop(sample: Sample, top: int, left: int, h: int, w: int) -> Sample:
    out = dict(sample)
    for k in modality_keys(sample) + ["label"]:
        out[k] = sample[k][..., top:top + h, left:left + w]
    return out


def deliver_random_resized_crop(sample: Sample, g: torch.Generator, size: int, scale=(0.5, 2.0),
                                fill: int = IGNORE_INDEX) -> Sample:
    """RandomResizedCrop: ratio r ~ U(scale); target (int(size r), int(4 size r)); factor
    min(max(target) / max(H, W), min(target) / min(H, W)); resize to int(H f + 0.5) x int(W f + 0.5);
    a `size` crop at a uniform offset; pad bottom/right to `size` (0, label `fill`). The reference draws
    the offset from 0..margin + 1 (one past the last valid offset, so a row or column is sometimes lost
    and padded back); here from 0..margin."""
    h, w = sample["label"].shape
    r = scale[0] + (scale[1] - scale[0]) * _uniform(g)
    target = (int(size * r), int(size * 4 * r))
    f = min(max(target) / max(h, w), min(target) / min(h, w))
    sample = _resize(sample, (int(h * f + 0.5), int(w * f + 0.5)))
    nh, nw = sample["label"].shape
    top = int(torch.randint(0, max(nh - size, 0) + 1, (), generator=g))
    left = int(torch.randint(0, max(nw - size, 0) + 1, (), generator=g))
    return _pad_to(_crop(sample, top, left, size, size), size, size, fill)


def deliver_resize(sample: Sample, size: int, multiple: int = 32) -> Sample:
    """Evaluation Resize: short side to `size` (sides rounded half to even, as Python's round), then
    a second resize of each side up to a multiple of `multiple`."""
    h, w = sample["label"].shape
    f = size / min(h, w)
    nh, nw = round(h * f), round(w * f)
    if (nh, nw) != (h, w):
        sample = _resize(sample, (nh, nw))
    ah, aw = math.ceil(nh / multiple) * multiple, math.ceil(nw / multiple) * multiple
    return sample if (ah, aw) == (nh, nw) else _resize(sample, (ah, aw))


# ---------------------------------------------------------------- MUSES reference (muses.py)
MINMAX_KEYS = frozenset({"lidar", "radar"})  # RobustSeg min-max scales these per image


def squash(sample: Sample, size: int) -> Sample:
    """Every modality to `size` x `size` as Pillow's default `Image.resize` does: bicubic (a = -0.5),
    antialiased, the width pass then the height pass, each clipped to the value range; labels nearest."""
    out = dict(sample)
    for k in modality_keys(sample):
        x = sample[k][None]
        x = F.interpolate(x, size=(x.shape[-2], size), mode="bicubic", antialias=True, align_corners=False)
        x = F.interpolate(x.clamp(0, 1), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out[k] = x[0].clamp(0, 1)
    if "label" in sample:
        out["label"] = F.interpolate(sample["label"][None, None].float(), size=(size, size),
                                     mode="nearest")[0, 0].long()
    return out


def muses_scale(sample: Sample, g: torch.Generator | None = None) -> Sample:
    """The reference's input scale: 0..255 (no ImageNet normalization); LiDAR and radar min-max scaled
    to 0..255 per image (all channels together; a constant image becomes 0, where the reference divides
    by zero)."""
    out = dict(sample)
    for k in modality_keys(sample):
        x = sample[k]
        if k in MINMAX_KEYS:
            lo, hi = x.min(), x.max()
            x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
        out[k] = x * 255
    return out


# ---------------------------------------------------------------- MCubeS reference (mcubes.py)
def mcubes_raw_aolp(sample: Sample, g: torch.Generator | None = None) -> Sample:
    """The loader stores AoLP sin/cos as (x + 1) / 2; the reference feeds them raw in [-1, 1]."""
    return dict(sample) | ({"aolp": sample["aolp"] * 2 - 1} if "aolp" in sample else {})


def mcubes_random_scale_crop(sample: Sample, g: torch.Generator, base: int, crop: int,
                             fill: int = IGNORE_INDEX) -> Sample:
    """RandomScaleCrop: short side s uniform in int(base / 2)..int(2 base) (inclusive), long side
    int(long * s / short); offsets x uniform in 0..max(0, ow - crop), then y; resize (OpenCV's linear: PyTorch's
    bilinear without antialias; OpenCV's nearest for the label: `opencv_nearest_index`); pad bottom/right to `crop` (0, label
    `fill`) when s < crop; the `crop` square at (y, x)."""
    h, w = sample["label"].shape
    s = int(torch.randint(int(base * 0.5), int(base * 2.0) + 1, (), generator=g))
    oh, ow = (int(1.0 * h * s / w), s) if h > w else (s, int(1.0 * w * s / h))
    left = int(torch.randint(0, max(0, ow - crop) + 1, (), generator=g))
    top = int(torch.randint(0, max(0, oh - crop) + 1, (), generator=g))
    sample = _resize(sample, (oh, ow), label_rule="opencv")
    if s < crop:
        sample = _pad_to(sample, max(oh, crop), max(ow, crop), fill)
    return _crop(sample, top, left, crop, crop)


MCUBES_BLUR_KEYS = frozenset({"image", "nir"})


def opencv_gaussian_size(sigma: float) -> int:
    """OpenCV's kernel size for a float image and ksize (0, 0): cvRound(8 sigma + 1) (half to even), made odd."""
    return int(round(sigma * 8 + 1)) | 1


def mcubes_gaussian_blur(sample: Sample, g: torch.Generator, p: float = 0.5) -> Sample:
    """RandomGaussianBlur: with probability p, sigma ~ U(0, 1), cv2.GaussianBlur of image and NIR."""
    if _uniform(g) >= p:
        return sample
    sigma = _uniform(g)
    size = opencv_gaussian_size(sigma)
    return dict(sample) | {k: blur(sample[k], size, sigma) for k in modality_keys(sample) if k in MCUBES_BLUR_KEYS}


def mcubes_fix_scale_crop(sample: Sample, crop: int) -> Sample:
    """FixScaleCrop: short side to `crop` (long side int(long * crop / short)), then the centre square
    (offsets rounded half to even, as Python's round)."""
    h, w = sample["label"].shape
    oh, ow = (crop, int(1.0 * w * crop / h)) if w > h else (int(1.0 * h * crop / w), crop)
    if (oh, ow) != (h, w):
        sample = _resize(sample, (oh, ow), label_rule="opencv")
    return _crop(sample, int(round((oh - crop) / 2.0)), int(round((ow - crop) / 2.0)), crop, crop)


def mcubes_normalize(sample: Sample, g: torch.Generator | None = None) -> Sample:
    """Only the image is normalized (ImageNet mean/std); NIR, AoLP and DoLP are left as they are."""
    return dict(sample) | ({"image": (sample["image"] - RGB_MEAN) / RGB_STD} if "image" in sample else {})


# ---------------------------------------------------------------- named pipelines
def reference_pipeline(dataset: str, train: bool, size: int | None, eval_size: int | None) -> Compose:
    """The reference loader's transform for `dataset` (see the module docstring)."""
    eval_size = eval_size or REFERENCE_EVAL_SIZE
    if dataset == "deliver":
        if train:
            return Compose([deliver_color_jitter, hflip, deliver_gaussian_blur,
                            lambda s, g: deliver_random_resized_crop(s, g, size), normalize])
        return Compose([lambda s, g: deliver_resize(s, eval_size), normalize])
    if dataset == "muses":  # the reference has no augmentation: training squashes like evaluation
        return Compose([lambda s, g: squash(s, size if train else eval_size), muses_scale])
    if dataset == "mcubes":
        if train:
            return Compose([mcubes_raw_aolp, hflip, lambda s, g: mcubes_random_scale_crop(s, g, size, size),
                            mcubes_gaussian_blur, mcubes_normalize])
        return Compose([mcubes_raw_aolp, lambda s, g: mcubes_fix_scale_crop(s, eval_size), mcubes_normalize])
    raise ConfigError(f"dataset {dataset!r} has no reference pipeline (only deliver, muses and mcubes have a "
                     f"reference loader); use pipeline='workbench'")


def build_transform(dataset: str, split: str, size: int | None, pipeline: str = "workbench",
                    eval_size: int | None = None, augment: bool | None = None) -> Compose:
    """The transform of `pipeline` for one dataset and split: training augmentation when `augment`
    (default: on the train split), evaluation resizing otherwise. `size` is the training crop (MUSES
    reference: the squashed side; MCubeS reference: crop and base size, 512 in the reference); under
    `reference`, `eval_size` None means the reference's 1024, under `workbench` the native size."""
    check("data.pipeline", pipeline, Pipeline)
    train = (split == "train") if augment is None else augment
    if train and size is None:
        raise ConfigError("training augmentation needs a crop size (data.size)")
    if pipeline == "reference":
        return reference_pipeline(dataset, train, size, eval_size)
    return train_transform(size) if train else eval_transform(eval_size)
