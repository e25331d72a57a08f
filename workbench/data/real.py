"""The real datasets' shared machinery: file decoding, the layout scan with its problems, and `build`.

Implements docs/DATASETS.md ("DeLiVER", "MUSES", "MCubeS"); the per-dataset layouts live in
`deliver.py`, `muses.py` and `mcubes.py`. Each dataset lists its samples with a `scan` that checks
only that folders and companion files exist (cheap: nothing is decoded), runs it when built and
raises a `ValueError` listing every problem with its fix, so a broken tree fails at build time and
not as a stack trace in a loader worker; `workbench.data.checks` reuses the same scan for its report.
Modalities come out as float (C, H, W) in [0, 1] (8-bit PNG / 255, 16-bit PNG / 65535), labels as
long (H, W) with 255 = ignore; normalization and augmentation are the `transform`'s job.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from workbench.data.base import MultiModalDataset
from workbench.data.transforms import IGNORE_INDEX, Compose
from workbench.errors import ConfigError, DataError

__all__ = ["RealDataset", "Record", "Scan", "Problem", "read_image", "read_label",
           "three_channels", "IGNORE_INDEX"]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_image(path: Path) -> torch.Tensor:
    """An image file as float (C, H, W) in [0, 1]: 8-bit / 255, 16-bit / 65535, palette -> RGB."""
    if is_png16_colour(path):
        return read_png16(path)
    with Image.open(path) as im:
        if im.mode in ("P", "PA", "1"):
            im = im.convert("RGBA" if im.mode == "PA" else "RGB")
        a = np.array(im)
    scale = 255.0 if a.dtype == np.uint8 else 65535.0  # Pillow reads 16-bit grey as I;16 (or I)
    x = torch.from_numpy(a.astype(np.float32) / scale)
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1).contiguous()


def is_png16_colour(path: Path) -> bool:
    """Whether a file is a 16-bit RGB(A) PNG (IHDR bit depth 16, colour type 2 or 6), which Pillow
    would truncate to 8 bits (MUSES' projected LiDAR and radar are such PNGs)."""
    with open(path, "rb") as f:
        head = f.read(26)
    return head[:8] == PNG_SIGNATURE and head[24] == 16 and head[25] in (2, 6)


def read_png16(path: Path) -> torch.Tensor:
    try:
        from torchvision.io import ImageReadMode, decode_png, read_file
    except ImportError as e:
        raise DataError(f"{path} is a 16-bit colour PNG, which Pillow truncates to 8 bits, and this torchvision has "
                         f"no PNG decoder; install a torchvision with torchvision.io.decode_png") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision >= 0.29 deprecates its image decoders
        x = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    return x.to(torch.float32) / 65535.0


def three_channels(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (3, H, W) as the reference loaders do: RGBA keeps RGB, grey (+alpha) is repeated."""
    if x.shape[0] >= 3:
        return x[:3]
    return x[:1].repeat(3, 1, 1)


def read_label(path: Path) -> torch.Tensor:
    """Raw label values as long (H, W): channel 0 of a colour PNG, the indices of a palette PNG."""
    with Image.open(path) as im:
        a = np.array(im)
    if a.ndim == 3:
        a = a[..., 0]
    return torch.from_numpy(a.astype(np.int64))


@dataclass
class Problem:
    """Something in the tree that stops loading, and what to do about it, in plain words."""

    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}\n    fix: {self.fix}"


@dataclass(frozen=True)
class Record:
    """One sample: its files per key (modalities and "label"; MCubeS' aolp has two) and its metadata."""

    files: dict[str, tuple[Path, ...]]
    meta: dict


@dataclass
class Scan:
    """What a layout scan found for one split."""

    records: list[Record] = field(default_factory=list)  # samples with every requested file
    incomplete: list[Record] = field(default_factory=list)  # samples lacking a companion file
    missing: dict[str, list[str]] = field(default_factory=dict)  # key -> missing files (root-relative)
    problems: list[Problem] = field(default_factory=list)

    @property
    def listed(self) -> list[Record]:
        return self.records + self.incomplete


def examples(names: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def split_by_completeness(root: Path, split: str, listed: list[Record], keys: Sequence[str], absent: Sequence[str],
                          fix: Callable[[str], str], scan: Scan) -> Scan:
    """Sort `listed` into complete and incomplete samples with one stat per file of `keys`, and add one
    problem per key with missing files. Keys in `absent` (whose whole folder is missing, already a
    problem) are not statted, but no sample can be complete without them."""
    for record in listed:
        complete = not absent
        for key in keys:
            for path in record.files[key]:
                if not path.is_file():
                    scan.missing.setdefault(key, []).append(path.relative_to(root).as_posix())
                    complete = False
        (scan.records if complete else scan.incomplete).append(record)
    for key, names in scan.missing.items():
        scan.problems.append(Problem(
            f"{len(names)} {key} file(s) missing for {len(scan.incomplete)} of {len(listed)} {split} samples: "
            f"{examples(names)}", fix(key)))
    return scan


class RealDataset(MultiModalDataset):
    """A dataset read from a folder tree; subclasses define `scan` (layout) and `read` (decoding)."""

    splits: tuple[str, ...] = ("train", "val", "test")
    default_modalities: tuple[str, ...] = ()  # when `modalities=None`; empty = all
    layout: str = ""  # one line for messages: where the samples are listed from
    label_fix: str = "re-extract the label files; they must hold class ids (255 = ignore)"
    options: tuple[str, ...] = ()  # extra constructor options that come from the DataConfig (DeLiVER: depth_source)
    resized_modalities: tuple[str, ...] = ()  # modalities `read` resizes to the label's grid (others must match it)

    def __init__(self, root, split: str = "train", modalities=None, transform: Compose | None = None,
                 case: str | None = None, aug_seed: int = 0, **scan_options):
        if root is None:
            raise DataError(f"dataset {self.name!r} needs root=: the folder that holds {self.layout} "
                             f"(docs/DATASETS.md); set data.root in the config or pass root=")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"{self.name} root {str(root)!r} is not a folder; point root at the folder that "
                             f"holds {self.layout}")
        if split not in self.splits:
            raise DataError(f"unknown split {split!r} for {self.name}; valid splits: {', '.join(self.splits)}")
        super().__init__(split, modalities or self.default_modalities or None, transform, aug_seed)
        self.root, self.case = root, case
        scan = self.scan(root, split, self.modalities, case=case, **scan_options)
        if scan.problems:
            listing = "\n".join(f"  - {p}".replace("\n", "\n  ") for p in scan.problems)
            raise DataError(
                f"{self.name} at {root} cannot be built for split {split!r} "
                f"(modalities {', '.join(self.modalities)}):\n{listing}\n"
                f"The full report: python -m workbench data check {root} --dataset {self.name}")
        self.records = scan.records

    @classmethod
    def scan(cls, root: Path, split: str, modalities: Sequence[str], case: str | None = None,
             **options) -> Scan:
        raise NotImplementedError

    def read(self, record: Record) -> dict:
        """Decode `self.modalities` and the label of one record (no metadata)."""
        raise NotImplementedError

    @classmethod
    def raw_label_ok(cls, values: torch.Tensor) -> torch.Tensor:
        """Which raw label values (before any mapping) the layout allows: classes and 255."""
        return (values == IGNORE_INDEX) | ((values >= 0) & (values < len(cls.classes)))

    @classmethod
    def from_config(cls, data_cfg, split: str, augment: bool | None = None, aug_seed: int = 0) -> RealDataset:
        if data_cfg.depth_source != "hha" and "depth_source" not in cls.options:
            raise ConfigError(f"data.depth_source={data_cfg.depth_source!r} applies to DeLiVER only ({cls.name} has "
                              f"no depth folder); leave it at 'hha'")
        options = {"depth_source": data_cfg.depth_source} if "depth_source" in cls.options else {}
        return cls.create(split, size=data_cfg.size, eval_size=data_cfg.eval_size,
                          augment=data_cfg.augment if augment is None else augment, root=data_cfg.root,
                          modalities=data_cfg.modalities or None, case=data_cfg.case, aug_seed=aug_seed,
                          pipeline=data_cfg.pipeline, **options)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> dict:
        record = self.records[index]
        try:
            sample = self.read(record)
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"{self.name}: cannot decode sample {record.meta['file']} ({e}); re-extract its files "
                             f"or run `python -m workbench data check {self.root} --dataset {self.name}`") from e
        h, w = sample["label"].shape
        for m in self.modalities:
            if sample[m].shape[-2:] != (h, w):
                raise DataError(
                    f"{self.name}: sample {record.meta['file']} has {m} of size {tuple(sample[m].shape[-2:])} but its "
                    f"label is {(h, w)}; every modality must be registered to the label's pixel grid "
                    f"(re-export {m} at the camera resolution)")
        sample["meta"] = dict(record.meta, index=index)
        return sample
