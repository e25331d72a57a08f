"""The dataset contract every loader follows, and the collate that builds a modality batch.

A sample: `{modality: float (C, H, W), "label": long (H, W) with 255 = ignore, "meta": dict}`.
A batch: `{modality: (B, C, H, W), "label": (B, H, W), "present": (B, M) bool, "meta": [dict]}`
with the modality order of `dataset.modalities` (the `present` mask's columns).
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Dataset

from workbench.data.transforms import IGNORE_INDEX, Compose, build_transform
from workbench.errors import DataError


class MultiModalDataset(Dataset):
    """Base class: subclasses set the class attributes and implement `__len__`, `load(index)` and
    `from_config(data_cfg, split, augment, aug_seed)` (how a `DataConfig` maps to their arguments)."""

    name: str = ""
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    all_modalities: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    cases: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(self, split: str, modalities=None, transform: Compose | None = None, aug_seed: int = 0):
        modalities = tuple(modalities or self.all_modalities)
        unknown = [m for m in modalities if m not in self.all_modalities]
        if unknown:
            raise DataError(f"unknown modality {unknown[0]!r} for dataset {self.name!r}; "
                             f"valid modalities: {', '.join(self.all_modalities)}")
        self.split = split
        self.modalities = modalities
        self.transform = transform
        self.aug_seed = aug_seed
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    default_pipeline: str = "reference"  # the transforms `pipeline=None` means (docs/DATASETS.md)

    @classmethod
    def transform_for(cls, split: str, size: int | None, eval_size: int | None, augment: bool | None,
                      pipeline: str | None) -> Compose:
        """Training augmentation with crop `size` on the train split (or when `augment`), else the
        evaluation resize to `eval_size`, from the named `pipeline` (None: the dataset's default)."""
        return build_transform(cls.name, split, size, pipeline or cls.default_pipeline, eval_size, augment)

    @classmethod
    def create(cls, split: str, transform="default", size: int | None = None, eval_size: int | None = None,
               augment: bool | None = None, pipeline: str | None = None, **kwargs) -> MultiModalDataset:
        """The dataset with the transform of its `pipeline`: training augmentation on the train split (crop
        `size`), the evaluation resize (short side `eval_size`) otherwise; `augment=` overrides the split's
        default, `transform=None` gives raw [0, 1] modalities, a `Compose` is used as it is."""
        if transform == "default":
            transform = cls.transform_for(split, size, eval_size, augment, pipeline)
        return cls(split=split, transform=transform, **kwargs)

    @classmethod
    def from_config(cls, data_cfg, split: str, augment: bool | None = None, aug_seed: int = 0) -> MultiModalDataset:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on (aug_seed, epoch, index): reproducible with any worker count."""
        self.epoch = epoch

    def load(self, index: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        sample = self.load(index)
        sample = {k: sample[k] for k in (*self.modalities, "label", "meta")}
        check_label(sample["label"], self.num_classes, sample["meta"])
        if self.transform is not None:
            digest = hashlib.blake2b(f"{self.aug_seed}/{self.epoch}/{index}".encode(), digest_size=8).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
            sample = self.transform(sample, g)
        return sample


def check_label(label: torch.Tensor, num_classes: int, meta: dict) -> None:
    bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= num_classes))
    if bad.any():
        values = sorted(set(label[bad].unique().tolist()))[:5]
        raise DataError(
            f"sample {meta.get('file', meta)} has label values {values} outside 0..{num_classes - 1} "
            f"(255 = ignore); check the dataset's label mapping or the file"
        )


def collate(samples: list[dict], modalities: tuple[str, ...] | None = None) -> dict:
    """Stack samples into a batch with an all-True `present` mask (B, M)."""
    modalities = modalities or tuple(k for k in samples[0] if k not in ("label", "meta"))
    batch = {m: torch.stack([s[m] for s in samples]) for m in modalities}
    batch["label"] = torch.stack([s["label"] for s in samples])
    batch["present"] = torch.ones(len(samples), len(modalities), dtype=torch.bool)
    batch["meta"] = [s["meta"] for s in samples]
    return batch


class Collate:
    """Picklable collate bound to a modality order (for DataLoader workers)."""

    def __init__(self, modalities: tuple[str, ...]):
        self.modalities = tuple(modalities)

    def __call__(self, samples: list[dict]) -> dict:
        return collate(samples, self.modalities)
