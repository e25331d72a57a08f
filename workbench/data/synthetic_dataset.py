"""The synthetic benchmark as a `MultiModalDataset` (renderer in `workbench.data.synthetic`)."""

from __future__ import annotations

import torch

from workbench.data import synthetic as syn
from workbench.data.base import MultiModalDataset


class SyntheticDataset(MultiModalDataset):
    name = "synthetic"
    classes = syn.CLASSES
    palette = syn.PALETTE
    all_modalities = syn.MODALITIES
    conditions = syn.CONDITIONS
    cases = syn.CASES

    def __init__(self, split: str = "train", size: int = 64, num_samples: int = 512, seed: int = 0,
                 modalities=None, transform=None, condition: str | None = None, case: str | None = "auto",
                 cache: bool = True, aug_seed: int = 0):
        if split not in syn.SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(syn.SPLITS)}")
        if condition is not None and condition not in syn.CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; valid: {', '.join(syn.CONDITIONS)}")
        if case not in ("auto", None) and case not in syn.CASES:
            raise ValueError(f"unknown case {case!r}; valid: auto, None, {', '.join(syn.CASES)}")
        if size < 8 or num_samples < 1:
            raise ValueError(f"size={size} must be >= 8 and num_samples={num_samples} >= 1")
        super().__init__(split, modalities, transform, aug_seed)
        self.size, self.num_samples, self.seed = size, num_samples, seed
        self.condition, self.case = condition, case
        self._cache: dict[int, dict] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        raw = syn.render_sample(self.seed, self.split, index, self.size, self.condition, self.case)
        sample = {m: torch.from_numpy(raw[m]) for m in self.all_modalities}
        sample["label"] = torch.from_numpy(raw["label"])
        sample["meta"] = raw["meta"]
        if self._cache is not None:
            self._cache[index] = sample
        return sample
