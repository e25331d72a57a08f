"""Joint transforms shared by every dataset (docs/DATASETS.md, "Normalization" and
"Augmentation and evaluation resize").

A raw sample holds each modality as a float tensor (C, H, W) in [0, 1] (i.e. already /255), a
`label` (H, W) long with 255 = ignore, and `meta`. Geometric transforms (random resized crop,
horizontal flip, evaluation resize) apply to all modalities and the label jointly; photometric ones
(colour jitter, 3x3 Gaussian blur) to the RGB camera only. Normalization: RGB by ImageNet mean/std,
every other modality is left at /255 (so a zeroed RGB input is the mean colour, a zeroed depth black).
All randomness comes from an explicit `torch.Generator`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
RGB_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
RGB_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
RGB_KEYS = frozenset({"rgb", "image", "frame_camera"})  # the RGB camera's key in each dataset

Sample = dict
Transform = Callable[[Sample, torch.Generator], Sample]


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def modality_keys(sample: Sample) -> list[str]:
    return [k for k, v in sample.items() if k not in ("label", "meta") and torch.is_tensor(v)]


def _resize(sample: Sample, hw: tuple[int, int]) -> Sample:
    out = dict(sample)
    for k in modality_keys(sample):
        out[k] = F.interpolate(sample[k][None], size=hw, mode="bilinear", align_corners=False)[0]
    if "label" in sample:
        out["label"] = F.interpolate(sample["label"][None, None].float(), size=hw, mode="nearest")[0, 0].long()
    return out


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
