"""Datasets: the synthetic benchmark (default) and the real DeLiVER / MUSES / MCubeS loaders
(docs/DATASETS.md). `DATASETS` is the one registry: name -> dataset class, each built from a
`DataConfig` by `from_config`, or from keyword arguments by `create`; `collate` builds modality batches.
"""

from __future__ import annotations

from workbench.data.base import Collate, MultiModalDataset, collate
from workbench.data.deliver import DeliverDataset
from workbench.data.mcubes import MCubeSDataset
from workbench.data.muses import MusesDataset
from workbench.data.synthetic_dataset import SyntheticDataset
from workbench.data.transforms import IGNORE_INDEX, denormalize
from workbench.errors import UnknownName

__all__ = ["DATASETS", "build_dataset", "dataset_from_config", "collate", "Collate", "MultiModalDataset",
           "IGNORE_INDEX", "denormalize", "SyntheticDataset", "DeliverDataset", "MusesDataset", "MCubeSDataset"]

DATASETS: dict[str, type[MultiModalDataset]] = {
    "synthetic": SyntheticDataset,
    "deliver": DeliverDataset,
    "muses": MusesDataset,
    "mcubes": MCubeSDataset,
}


def dataset_class(name: str) -> type[MultiModalDataset]:
    if name not in DATASETS:
        raise UnknownName(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def build_dataset(name: str, split: str = "train", **kwargs) -> MultiModalDataset:
    """A dataset by name from keyword arguments (see `MultiModalDataset.create`): training augmentation on
    the train split, the evaluation resize otherwise; `transform=None` gives raw [0, 1] modalities."""
    return dataset_class(name).create(split, **kwargs)


def dataset_from_config(data_cfg, split: str, augment: bool | None = None, aug_seed: int = 0) -> MultiModalDataset:
    """The dataset a `DataConfig` describes, for one split (`augment=None`: the config's choice)."""
    cls = dataset_class(data_cfg.dataset)
    if split not in cls.splits:
        raise UnknownName(f"unknown split {split!r} for {data_cfg.dataset}; valid splits: {', '.join(cls.splits)}")
    return cls.from_config(data_cfg, split, augment, aug_seed)
