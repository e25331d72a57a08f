"""Checks made before a run writes anything (docs/RELIABILITY.md, "Refused before anything is made"):
a config that cannot train, or a study that would fail after its training, is refused before any
folder, lock or training exists.

`before_training(cfg)` is called by `workbench.train.train` before it takes the run's lock: it opens
the run's datasets (which checks `data.case`, the dataset's folder and the modalities; opening is cheap,
it reads no image) and the TensorBoard writer's import. `split(cfg, split)` checks the split a study
scores on before it trains its first row.
"""

from __future__ import annotations

from workbench.config import Config
from workbench.data import dataset_class, dataset_from_config
from workbench.errors import ConfigError, UnknownName


def before_training(cfg: Config) -> None:
    """Everything about `cfg` that would otherwise fail only once its run folder and lock exist."""
    for s in ("train", "val"):
        dataset_from_config(cfg.data, s, augment=False)
    if cfg.train.log == "tensorboard":
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("train.log=tensorboard needs the tensorboard package: pip install -e .[tensorboard] "
                              "(or keep train.log=jsonl; metrics.jsonl is always written)") from None


def split(cfg: Config, name: str) -> str:
    """`name` if the dataset of `cfg` has that split, else an UnknownName listing its splits."""
    splits = dataset_class(cfg.data.dataset).splits
    if name not in splits:
        raise UnknownName(f"unknown split {name!r} for {cfg.data.dataset}; valid splits: {', '.join(splits)}")
    return name
