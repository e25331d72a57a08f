"""The synthetic benchmark as a `MultiModalDataset` (renderer in `workbench.data.synthetic`)."""

from __future__ import annotations

import time

import torch

from workbench import timing

from workbench.data import synthetic as syn
from workbench.data.base import MultiModalDataset
from workbench.errors import ConfigError, DataError


class SyntheticDataset(MultiModalDataset):
    name = "synthetic"
    classes = syn.CLASSES
    palette = syn.PALETTE
    all_modalities = syn.MODALITIES
    conditions = syn.CONDITIONS
    cases = syn.CASES
    splits: tuple[str, ...] = tuple(syn.SPLITS)

    def __init__(self, split: str = "train", size: int = 64, num_samples: int = 512, seed: int = 0,
                 modalities=None, transform=None, condition: str | None = None, case: str | None = "auto",
                 cache: bool = True, aug_seed: int = 0):
        if split not in syn.SPLITS:
            raise DataError(f"unknown split {split!r}; valid splits: {', '.join(syn.SPLITS)}")
        if condition is not None and condition not in syn.CONDITIONS:
            raise DataError(f"unknown condition {condition!r}; valid: {', '.join(syn.CONDITIONS)}")
        if case not in ("auto", None) and case not in syn.CASES:
            raise DataError(f"unknown case {case!r}; valid: auto, None, {', '.join(syn.CASES)}")
        if size < 8 or num_samples < 1:
            raise DataError(f"size={size} must be >= 8 and num_samples={num_samples} >= 1")
        super().__init__(split, modalities, transform, aug_seed)
        self.size, self.num_samples, self.seed = size, num_samples, seed
        self.condition, self.case = condition, case
        self._cache: dict[int, dict] | None = {} if cache else None

    default_pipeline = "workbench"

    @classmethod
    def create(cls, split: str, transform="default", size: int = 64, eval_size: int | None = None,
               augment: bool | None = None, pipeline: str | None = None, **kwargs) -> SyntheticDataset:
        """Rendered at `size`, which is also the training crop (see `MultiModalDataset.create`)."""
        if pipeline not in (None, "workbench"):
            raise ConfigError(f"data.pipeline={pipeline!r}: the synthetic benchmark has only the 'workbench' "
                              f"pipeline (the reference pipelines belong to deliver, muses and mcubes)")
        if transform == "default":
            transform = cls.transform_for(split, size, eval_size, augment, pipeline)
        return cls(split=split, transform=transform, size=size, **kwargs)

    @classmethod
    def from_config(cls, data_cfg, split: str, augment: bool | None = None, aug_seed: int = 0) -> SyntheticDataset:
        """`data.case` renders every sample with that weather condition or sensor-failure case."""
        case, condition = data_cfg.case, None
        if case in syn.CONDITIONS:
            case, condition = "auto", case
        elif case is None:
            case = "auto"
        elif case not in syn.CASES:
            raise ConfigError(f"data.case={case!r} is not a synthetic condition or case; valid: "
                              f"{', '.join(syn.CONDITIONS + syn.CASES)} or none")
        n = {"train": data_cfg.train_samples, "val": data_cfg.val_samples, "test": data_cfg.test_samples}[split]
        return cls.create(split, size=data_cfg.size, eval_size=data_cfg.eval_size,
                          augment=data_cfg.augment if augment is None else augment, num_samples=n,
                          seed=data_cfg.synthetic_seed, modalities=data_cfg.modalities or None, condition=condition,
                          case=case, aug_seed=aug_seed, pipeline=data_cfg.pipeline)

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        t0 = time.perf_counter()
        raw = syn.render_sample(self.seed, self.split, index, self.size, self.condition, self.case)
        timing.add("render", time.perf_counter() - t0)
        sample = {m: torch.from_numpy(raw[m]) for m in self.all_modalities}
        sample["label"] = torch.from_numpy(raw["label"])
        sample["meta"] = raw["meta"]
        if self._cache is not None:
            self._cache[index] = sample
        return sample
