"""Datasets: the synthetic benchmark (default) and the real DeLiVER / MUSES / MCubeS loaders.

`build_dataset(name, split=..., ...)` is the one entry point; `collate` builds modality batches.
"""

from __future__ import annotations

from collections.abc import Callable

from workbench.data.base import Collate, MultiModalDataset, collate
from workbench.data.synthetic_dataset import SyntheticDataset
from workbench.data.transforms import IGNORE_INDEX, PIPELINES, build_transform, denormalize

__all__ = ["build_dataset", "collate", "Collate", "MultiModalDataset", "IGNORE_INDEX", "denormalize",
           "DATASETS", "SyntheticDataset", "PIPELINES", "build_transform"]


def _synthetic(split, size=64, num_samples=512, seed=0, modalities=None, augment=None, transform="default",
               eval_size=None, pipeline="workbench", **kw) -> MultiModalDataset:
    if transform == "default":
        if pipeline != "workbench":
            raise ValueError(f"the synthetic benchmark has only the 'workbench' data pipeline; got "
                             f"pipeline={pipeline!r} (the reference pipelines belong to deliver, muses and mcubes)")
        transform = build_transform("synthetic", split, size, "workbench", eval_size, augment)
    return SyntheticDataset(split=split, size=size, num_samples=num_samples, seed=seed, modalities=modalities,
                            transform=transform, **kw)


def _real(name: str) -> Callable[..., MultiModalDataset]:
    def build(split, root=None, modalities=None, size=None, augment=None, transform="default", eval_size=None,
              pipeline="reference", **kw):
        from workbench.data import real

        if transform == "default":
            transform = build_transform(name, split, size, pipeline, eval_size, augment)
        return real.build(name, root=root, split=split, modalities=modalities, transform=transform, **kw)

    return build


DATASETS: dict[str, Callable[..., MultiModalDataset]] = {
    "synthetic": _synthetic,
    "deliver": _real("deliver"),
    "muses": _real("muses"),
    "mcubes": _real("mcubes"),
}


def build_dataset(name: str, split: str = "train", **kwargs) -> MultiModalDataset:
    """Build a dataset by name. Samples are normalized dicts (see `workbench.data.base`).

    `transform="default"` gives training augmentation on the train split and evaluation resizing
    otherwise (`augment=` overrides), from the named `pipeline=`: "reference" (the real datasets'
    default: exact to each reference loader) or "workbench" (the synthetic benchmark's); see
    `workbench.data.transforms`. `transform=None` returns raw [0, 1] modalities."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return DATASETS[name](split, **kwargs)


def dataset_from_config(data_cfg, split: str, augment: bool | None = None, aug_seed: int = 0) -> MultiModalDataset:
    """The dataset a `DataConfig` describes, for one split. `data_cfg.pipeline` (when the config has it;
    None or absent: the dataset's default) names the data pipeline."""
    pipeline = getattr(data_cfg, "pipeline", None)
    options = {} if pipeline is None else {"pipeline": pipeline}
    if data_cfg.dataset == "synthetic":
        n = {"train": data_cfg.train_samples, "val": data_cfg.val_samples, "test": data_cfg.test_samples}[split]
        return build_dataset("synthetic", split, size=data_cfg.size, num_samples=n, seed=data_cfg.synthetic_seed,
                             modalities=data_cfg.modalities or None, augment=data_cfg.augment if augment is None else augment,
                             eval_size=data_cfg.eval_size, aug_seed=aug_seed, **options)
    return build_dataset(data_cfg.dataset, split, root=data_cfg.root, modalities=data_cfg.modalities or None,
                         size=data_cfg.size, augment=data_cfg.augment if augment is None else augment,
                         eval_size=data_cfg.eval_size, depth_source=data_cfg.depth_source, case=data_cfg.case,
                         aug_seed=aug_seed, **options)
