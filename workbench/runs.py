"""One way into a trained run: `Run` (a config, its folder and its checkpoint).

    run = Run.of("robustseg", "quick", seed=0).ensure()   # train the teacher, then the student, or reuse
    model = run.model()                                    # or run.model("teacher"): after feedback
    res = run.evaluation("test")                           # every combination, both protocols (cached)
    records = run.metrics()                                # metrics.jsonl as train / val rows

A run configured by a preset lives in `runs/cache/<name>-<profile>-s<seed>-<config hash>/` (see
`cache_dir`; `WORKBENCH_RUNS` moves `runs/`), so every notebook, command and benchmark that asks for
the same configuration shares one trained model and one evaluation per split. `Run.at(path)` opens
any run folder or checkpoint (e.g. one trained with `train --out`). The training itself is
`workbench.train.train`; the evaluation engine is `workbench.evaluate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench import repro
from workbench import weighting as W
from workbench.checkpoint import atomic_write_text, checkpoint_problem, load_checkpoint, run_lock
from workbench.config import Config, apply_overrides, preset
from workbench.data import Collate, dataset_from_config
from workbench.errors import CheckpointError, MissingFile
from workbench.evaluate import TTA, CombinationResults, evaluate_combinations
from workbench.methods import applied
from workbench.models import load_model
from workbench.models.build import checkpoint_path as resolve_checkpoint
from workbench.options import RobustnessProtocol, Which, check
from workbench.paths import runs_dir
from workbench.records import Records, read_records
from workbench.train import resolve_device, train

log = logging.getLogger(__name__)

__all__ = ["Run", "cache_dir", "notebook_overrides"]


def cache_dir(cfg: Config) -> Path:
    """Where the run of `cfg` is cached: `runs/cache/<name>-<profile>-s<seed>-<config hash>` (`runs/cache-repro/`
    with WORKBENCH_REPRO=1: the two modes train different bits from one config, `workbench.repro`)."""
    return runs_dir() / repro.cache_folder_name() / f"{cfg.name}-{cfg.profile}-s{cfg.train.seed}-{cfg.hash()}"


def notebook_overrides(dataset: str | None = None, data_root: str | None = None, device: str = "auto",
                       overrides: dict | None = None) -> dict:
    """A notebook's data/device parameters as config overrides (`dataset=None` keeps the profile's).
    The device is not part of a run's identity, so every notebook reuses the same trained runs."""
    out: dict[str, Any] = {"train.device": device}
    if dataset is not None:
        out["data.dataset"] = dataset
        out["data.root"] = data_root
    return out | dict(overrides or {})


def _as_dict(overrides) -> dict:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    return dict(str(o).split("=", 1) for o in overrides)


@dataclass(frozen=True)
class Run:
    """A training run: its `config`, its folder `dir` and its checkpoint (default `dir/final.pt`)."""

    config: Config
    dir: Path
    checkpoint_path: Path | None = None

    # -- opening a run ----------------------------------------------------------------------------
    @classmethod
    def of(cls, method: str, profile: str = "quick", seed: int = 0, overrides=None) -> Run:
        """The cached run of a method preset at a profile and seed, with `--set`-style overrides."""
        cfg = apply_overrides(preset(method, profile), {"train.seed": seed, **_as_dict(overrides)})
        return cls.from_config(cfg)

    @classmethod
    def from_config(cls, cfg: Config, directory: str | Path | None = None) -> Run:
        """The run of `cfg`, in `directory` or in the config-keyed cache."""
        return cls(cfg, Path(directory) if directory is not None else cache_dir(cfg))

    @classmethod
    def at(cls, path: str | Path) -> Run:
        """An existing run: its folder (with `final.pt`, or a shared model's `model.safetensors` beside its
        config.json) or one of its checkpoint files (`.pt` or `.safetensors`)."""
        checkpoint = resolve_checkpoint(path)
        if not checkpoint.is_file():
            raise MissingFile(f"checkpoint {checkpoint} does not exist; give a run folder that holds final.pt or the path of "
                              f"a checkpoint (train one with `python -m workbench train`)")
        state = load_checkpoint(checkpoint)
        return cls(Config.from_dict(state["config"]), checkpoint.parent, checkpoint)

    # -- what it is -------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_path or self.dir / "final.pt"

    @property
    def done(self) -> bool:
        return self.checkpoint.exists()

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def teacher(self) -> Run | None:
        """The run a distillation student starts from (None for a baseline)."""
        if not self.config.distill.enabled:
            return None
        if self.config.distill.teacher is not None:
            return Run.at(self.config.distill.teacher)
        return Run.from_config(self.config.teacher_config())

    def __str__(self) -> str:
        return f"{self.config.name} ({self.config.profile}, seed {self.config.train.seed}) at {self.dir}"

    # -- training ---------------------------------------------------------------------------------
    def ensure(self, progress: bool = True, retrain: bool = False) -> Run:
        """Train this run (for a student: its teacher first) unless its checkpoint exists; an interrupted
        run resumes from `last.pt`, and a cached `final.pt` that is damaged is rebuilt from it. `retrain=True`
        trains again from scratch into a new folder and replaces the old run only when the new one has
        finished (a crash leaves the old run intact)."""
        if self.done and not retrain:
            problem = checkpoint_problem(self.checkpoint)
            stale = self._trained_with_other_weights(progress) if problem is None else None
            if problem is None and stale is None:
                return self
            if problem is None:  # trained by a workbench whose weighting rule has since been fixed
                log.warning("%s was trained with loss weights %s, not the %s its config gives (before 2026-11-26 "
                            "the gradient_share rule was measured differently); training it again",
                            self, stale, self._weights_now(self.loss_weights(progress)))
                retrain = True
            elif self.checkpoint != self.dir / "final.pt":
                raise CheckpointError(f"checkpoint {self.checkpoint} is truncated or corrupt ({problem}); copy it again "
                                      f"from its source or train it again")
            else:
                log.warning("%s is truncated or corrupt (%s); rebuilding it from the run's last.pt", self.checkpoint,
                            problem)
                self.checkpoint.unlink()
        elif not retrain and self._trained_with_other_weights(progress) is not None:  # an unfinished stale run
            log.warning("%s was started with other loss weights (before 2026-11-26); training it from scratch", self)
            retrain = True
        teacher = self.teacher
        if teacher is not None and self.config.distill.teacher is None:
            teacher.ensure(progress=progress)
        teacher_checkpoint = teacher.checkpoint if teacher is not None else None
        lw = self.loss_weights(progress)
        weights = lw.as_dict() if lw is not None else None
        log.info("training %s%s", self, f" with {W.describe(self._weights_now(lw) or weights, lw.norms)} "
                                        f"(gradient_share)" if lw else "")
        if not (retrain and self.dir.exists()):
            train(self.config, self.dir, resume=True, progress=progress, teacher_checkpoint=teacher_checkpoint,
                  loss_weights=weights)
            return self
        fresh, old = self.dir.with_name(f".{self.dir.name}.retrain"), self.dir.with_name(f".{self.dir.name}.old")
        with run_lock(self.dir):  # nobody writes the old run while its replacement trains
            shutil.rmtree(fresh, ignore_errors=True)
            train(self.config, fresh, resume=False, progress=progress, teacher_checkpoint=teacher_checkpoint,
                  loss_weights=weights)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.dir, old)
            os.replace(fresh, self.dir)
        shutil.rmtree(old, ignore_errors=True)
        return self

    def _weights_now(self, lw: W.LossWeights | None) -> dict[str, float] | None:
        """lambda, alpha, beta this run trains with, given the gradient_share rule's `lw` (None under `paper`)."""
        if lw is None or self.config.distill.method != "robustseg":
            return None
        d = self.config.distill
        return applied({"kd": d.kd_weight, "cp": d.cp_weight, "ifv": d.ifv_weight}, lw.as_dict())

    def _trained_with_other_weights(self, progress: bool = False) -> dict[str, float] | None:
        """The weights recorded in run_info.json when they differ from `_weights_now` (else None)."""
        d = self.config.distill
        if not d.enabled or d.weighting == "paper" or d.method != "robustseg":
            return None
        try:
            recorded = json.loads((self.dir / "run_info.json").read_text()).get("loss_weights")
        except (OSError, ValueError):
            return None
        want = self._weights_now(self.loss_weights(progress))
        if not recorded or want is None:
            return None
        same = all(math.isclose(float(recorded.get(k, math.nan)), v, rel_tol=1e-6, abs_tol=1e-12)
                   for k, v in want.items())
        return None if same else recorded

    def loss_weights(self, progress: bool = False) -> W.LossWeights | None:
        """The weights the `gradient_share` rule chose for this run (None under `weighting=paper`):
        measured once at the probe point (`workbench.weighting`), a short cached run of its own."""
        d = self.config.distill
        if not d.enabled or d.weighting == "paper":
            return None
        teacher = self.teacher
        if d.teacher is None:
            teacher.ensure(progress=progress)
        probe = Run.from_config(W.probe_config(self.config, teacher.checkpoint)).ensure(progress=progress)
        key = {"split": "train", "which": "model", "measure": W.measure_config(self.config).to_dict()}
        return probe._cached("weights", key, lambda: W.measure(self.config, probe.checkpoint, teacher.checkpoint),
                             W.LossWeights.from_state)

    def _require(self) -> None:
        if not self.done:
            raise MissingFile(f"{self} has no checkpoint yet ({self.checkpoint}); call .ensure() to train it")

    # -- what it produced ---------------------------------------------------------------------------
    def model(self, which: Which = "model", device: str = "auto") -> torch.nn.Module:
        """The trained model in eval mode; `which="teacher"`: the teacher stored with a distillation run."""
        self._require()
        return load_model(self.checkpoint, resolve_device(device), which)

    def metrics(self) -> Records:
        return read_records(self.dir)

    def dataset(self, split: str = "test", augment: bool = False, data: dict | None = None):
        """A split of the run's dataset (evaluation transform unless `augment`); `data` overrides
        `DataConfig` fields for this dataset only, e.g. {"case": "fog"}."""
        cfg = apply_overrides(self.config, {f"data.{k}": v for k, v in (data or {}).items()})
        return dataset_from_config(cfg.data, split, augment=augment)

    def loader(self, split: str = "test", batch_size: int | None = None, num_samples: int | None = None,
               data: dict | None = None):
        """Batches of a split (in order), optionally only its first `num_samples` samples."""
        ds = self.dataset(split, data=data)
        mods = ds.modalities
        if num_samples is not None:
            ds = torch.utils.data.Subset(ds, range(min(num_samples, len(ds))))
        return torch.utils.data.DataLoader(ds, batch_size=batch_size or self.config.data.batch_size,
                                           collate_fn=Collate(mods), num_workers=self.config.data.num_workers)

    def _cached(self, kind: str, key: dict, compute, load):
        """A result computed once from this run's checkpoint, then read from `eval/` beside it. The entry
        names the checkpoint it was computed from, so a retrained run is evaluated again; an unreadable
        entry is reported and computed again; entries are written atomically."""
        self._require()
        stat = self.checkpoint.stat()
        source = {"checkpoint": self.checkpoint.name, "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        path = self.dir / "eval" / f"{kind}-{key['split']}-{key['which']}-{digest}.json"
        if path.exists():
            try:
                entry = json.loads(path.read_text())
                if entry["key"] == key and entry["source"] == source:
                    return load(entry["results"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                log.warning("evaluation cache %s is unreadable (%s); computing it again", path, e)
        res = compute()
        atomic_write_text(path, json.dumps({"key": key, "source": source, "results": res.state()}))
        return res

    def evaluation(self, split: str = "test", which: Which = "model", protocols=("zero", "drop"),
                   convention: str = "deliver", device: str = "auto", batch_size: int | None = None,
                   window: int | None = None, tta: TTA | None = None, one_pass: bool = True,
                   data: dict | None = None, progress: bool = False) -> CombinationResults:
        """Every modality combination under `protocols` on `split` (docs/METHOD.md, "Evaluation"), with the
        per-condition and per-case breakdowns; computed once and cached (see `_cached`). `tta`: multi-scale
        + flip test-time augmentation; `window`: sliding-window inference; `data`: e.g. {"case": "fog"}."""
        key = {"split": split, "which": which, "protocols": list(protocols), "window": window,
               "tta": dataclasses.asdict(tta) if tta else None, "data": data or {}}

        def compute() -> CombinationResults:
            ds = self.dataset(split, data=data)
            return evaluate_combinations(self.model(which, device), self.loader(split, batch_size, data=data),
                                         protocols=tuple(protocols), one_pass=one_pass, convention=convention,
                                         classes=ds.classes, progress=progress,
                                         desc=f"{self.config.name}/{which} {split}", conditions=ds.conditions or None,
                                         cases=ds.cases or None, window=window, tta=tta)

        def load(state: dict) -> CombinationResults:
            res = CombinationResults.from_state(state)
            res.convention = convention
            return res

        return self._cached("combos", key, compute, load)

    def robustness(self, protocol: str, split: str = "test", which: Which = "model", seed: int = 0,
                   convention: str = "deliver", device: str = "auto", batch_size: int | None = None,
                   data: dict | None = None, progress: bool = False, **options):
        """The robustness benchmark's RMM (`rates=`, `draws=`) or NM (`levels=`, `kinds=`) protocol on
        `split` (`workbench.robustness`), deterministic from `seed`; computed once and cached."""
        from workbench import robustness as R

        check("protocol", protocol, RobustnessProtocol)
        key = {"protocol": protocol, "split": split, "which": which, "seed": seed, "data": data or {},
               "options": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(options.items())}}

        def compute():
            ds = self.dataset(split, data=data)
            fn = R.evaluate_rmm if protocol == "rmm" else R.evaluate_nm
            return fn(self.model(which, device), self.loader(split, batch_size, data=data), seed=seed,
                      convention=convention, classes=ds.classes, progress=progress,
                      desc=f"{self.config.name}/{which} {split} {protocol}", **options)

        def load(state: dict):
            res = (R.RMMResults if protocol == "rmm" else R.NMResults).from_state(state)
            res.convention = convention
            return res

        return self._cached(protocol, key, compute, load)

    def state(self) -> dict:
        """The checkpoint's contents (config, weights, history, ...)."""
        self._require()
        return load_checkpoint(self.checkpoint)
