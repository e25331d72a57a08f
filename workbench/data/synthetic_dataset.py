"""The synthetic benchmark as a `MultiModalDataset` (renderer in `workbench.data.synthetic`).

A split is rendered sample by sample, as it is read, and kept in memory. Once every sample of a split has
been rendered, the whole split is also written to `runs/data/<mode>/` (keyed by what it renders from and the
renderer's `VERSION`), so the next process that reads it loads the same tensors instead of rendering them
again (docs/DATASETS.md, "The synthetic benchmark"); a split larger than `DISK_CACHE_BYTES` stays in memory.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from workbench import repro, timing
from workbench.checkpoint import atomic_write_bytes
from workbench.data import synthetic as syn
from workbench.data.base import MultiModalDataset
from workbench.errors import ConfigError, DataError
from workbench.paths import runs_dir

log = logging.getLogger(__name__)

DISK_CACHE_BYTES = 2 * 1024**3  # a rendered split up to this size is cached on disk across processes


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
                 cache: bool = True, aug_seed: int = 0, disk_cache: bool = True):
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
        # the whole split from the disk cache (None: not read yet; False: not on disk, or not cached there)
        self._stored: dict | bool | None = None if cache and disk_cache and self._bytes() <= DISK_CACHE_BYTES else False
        self._writable = False

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
        stored = self._read_disk()
        if stored:
            sample = {k: stored[k][index] for k in (*self.all_modalities, "label")}
            sample["meta"] = dict(stored["meta"][index])
        else:
            raw = syn.render_sample(self.seed, self.split, index, self.size, self.condition, self.case)
            sample = {m: torch.from_numpy(raw[m]) for m in self.all_modalities}
            sample["label"] = torch.from_numpy(raw["label"])
            sample["meta"] = raw["meta"]
        timing.add("render", time.perf_counter() - t0)
        if self._cache is not None:
            self._cache[index] = sample
            if self._stored is False and self._writable and len(self._cache) == self.num_samples:
                self._write_disk()
        return sample

    # -- the disk cache ---------------------------------------------------------------------------
    def _bytes(self) -> int:
        return self.num_samples * self.size * self.size * (4 * 3 * len(self.all_modalities) + 8)

    @property
    def disk_path(self) -> Path:
        """Where this split is cached: every argument that changes what is rendered, the renderer's VERSION, and
        the numerical mode (`workbench.repro`: the reproducible mode pins numpy's code paths too), in `runs/data/`
        beside (not among) the run folders."""
        return (runs_dir() / "data" / repro.mode_name() / f"synthetic-v{syn.VERSION}-seed{self.seed}-{self.split}-{self.size}px-"
                f"n{self.num_samples}-{self.condition or 'any'}-{self.case or 'none'}.pt")

    def _read_disk(self) -> dict | bool:
        """The split from the disk cache (memory-mapped), or False (then `_writable`: write it once rendered)."""
        if self._stored is None:
            self._stored, self._writable = False, True
            if self.disk_path.exists():
                try:
                    stored = torch.load(self.disk_path, mmap=True, weights_only=True)
                    if len(stored["meta"]) == self.num_samples:
                        self._stored = stored
                except (OSError, RuntimeError, KeyError, EOFError, TypeError) as e:
                    log.warning("rendered-data cache %s is unreadable (%s); rendering again", self.disk_path, e)
        return self._stored

    def _write_disk(self) -> None:
        self._writable = False
        samples = [self._cache[i] for i in range(self.num_samples)]
        state = {k: torch.stack([s[k] for s in samples]) for k in (*self.all_modalities, "label")}
        state["meta"] = [s["meta"] for s in samples]
        try:
            self.disk_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.disk_path, lambda f: torch.save(state, f))
        except OSError as e:  # the cache only saves time: a full disk leaves the split in memory
            log.warning("could not cache the rendered %s split at %s (%s)", self.split, self.disk_path, e)
