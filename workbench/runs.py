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
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench import evalcache, timing
from workbench import pretrain as P
from workbench.checkpoint import checkpoint_problem, load_checkpoint, run_lock
from workbench.config import Config, apply_overrides, overrides_dict, preset, pretraining_config
from workbench.data import Collate, dataset_from_config
from workbench.distributed import EpochSampler
from workbench.errors import CheckpointError, MissingFile
from workbench.evaluate import TTA, CombinationResults, evaluate_combinations
from workbench.methods import Distiller, Draws, build_method
from workbench.methods import robustseg as RS
from workbench.models import load_model
from workbench.models.build import checkpoint_config
from workbench.models.build import checkpoint_path as resolve_checkpoint
from workbench.options import Which
from workbench.paths import inside, run_cache_dir
from workbench.protocols import robustness_protocol
from workbench.records import Records, read_records
from workbench.train import resolve_device, train

log = logging.getLogger(__name__)

__all__ = ["Run", "cache_dir", "notebook_overrides", "as_overrides", "config_of", "resolve_weights", "probe_norms",
           "ensure_pretrained", "train_side_by_side"]


def cache_dir(cfg: Config) -> Path:
    """Where the run of `cfg` is cached: `runs/cache/<name>-<profile>-s<seed>-<config hash>` (`runs/cache-repro/`
    with WORKBENCH_REPRO=1: the two modes train different bits from one config, `workbench.repro`), checked to
    stay under that folder (`Config` already allows only safe names)."""
    root = run_cache_dir()
    return inside(root, root / f"{cfg.name}-{cfg.profile}-s{cfg.train.seed}-{cfg.hash()}")


def notebook_overrides(dataset: str | None = None, data_root: str | None = None, device: str = "auto",
                       overrides: dict | None = None) -> dict:
    """A notebook's data/device parameters as config overrides (`dataset=None` keeps the profile's).
    The device is not part of a run's identity, so every notebook reuses the same trained runs."""
    out: dict[str, Any] = {"train.device": device}
    if dataset is not None:
        out["data.dataset"] = dataset
        out["data.root"] = data_root
    return out | dict(overrides or {})


def as_overrides(overrides) -> dict:
    """`--set`-style overrides (a dict, or `section.key=value` strings) as a dict (`config.overrides_dict`)."""
    return overrides_dict(overrides)


def config_of(method: str, profile: str = "quick", seed: int = 0, overrides=None) -> Config:
    """The config of a method preset at a profile and seed with `--set`-style overrides, as given (its loss
    weights not yet decided: `Run.of` opens its run)."""
    return apply_overrides(preset(method, profile), {"train.seed": seed, **overrides_dict(overrides)})


@dataclass(frozen=True)
class Run:
    """A training run: its `config`, its folder `dir` and its checkpoint (default `dir/final.pt`)."""

    config: Config
    dir: Path
    checkpoint_path: Path | None = None
    eval_dir: Path | None = None  # where evaluations are cached when `dir` cannot be written (workbench.evalcache)

    # -- opening a run ----------------------------------------------------------------------------
    @classmethod
    def of(cls, method: str, profile: str = "quick", seed: int = 0, overrides=None, progress: bool = True) -> Run:
        """The cached run of a method preset at a profile and seed, with `--set`-style overrides."""
        return cls.from_config(config_of(method, profile, seed, overrides), progress=progress)

    @classmethod
    def from_config(cls, cfg: Config, directory: str | Path | None = None, progress: bool = True) -> Run:
        """The run of `cfg`, in `directory` or in the config-keyed cache. Under `distill.weighting=
        gradient_share` the loss weights are decided first and written into the config (`resolve_weights`:
        the teacher and the probe point are trained once, then reused)."""
        cfg = resolve_weights(cfg, progress)
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
        return cls(checkpoint_config(state, checkpoint), checkpoint.parent, checkpoint)

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

    @property
    def label(self) -> str:
        """`method (profile, seed N)`: the run in a log line."""
        return f"{self.config.name} ({self.config.profile}, seed {self.config.train.seed})"

    def __str__(self) -> str:
        return f"{self.label} at {self.dir}"

    # -- training ---------------------------------------------------------------------------------
    def ensure(self, progress: bool = True, retrain: bool = False) -> Run:
        """Train this run (for a student: its teacher first) unless its checkpoint exists; an interrupted
        run resumes from `last.pt`, and a cached `final.pt` that is damaged is rebuilt from it. `retrain=True`
        trains again from scratch into a new folder and replaces the old run only when the new one has
        finished (a crash leaves the old run intact)."""
        if self.done and not retrain:
            problem = checkpoint_problem(self.checkpoint)
            if problem is None:
                return self
            if self.checkpoint != self.dir / "final.pt":
                raise CheckpointError(f"checkpoint {self.checkpoint} is truncated or corrupt ({problem}); copy it again "
                                      f"from its source or train it again")
            log.warning("%s is truncated or corrupt (%s); rebuilding it from the run's last.pt", self.checkpoint, problem)
            self.checkpoint.unlink()
        if self.config.model.init == "pretrained":  # the encoder every modality starts from
            ensure_pretrained(self.config.model, progress)
        teacher = self.teacher
        if teacher is not None and self.config.distill.teacher is None:
            teacher.ensure(progress=progress)
        teacher_checkpoint = teacher.checkpoint if teacher is not None else None
        d = self.config.distill
        log.info("training %s%s", self, f" with {RS.describe(RS.configured_weights(d))} (gradient_share)"
                 if d.enabled and d.weights_resolved else "")
        if not (retrain and self.dir.exists()):
            with timing.timed("training", self.label):
                train(self.config, self.dir, resume=True, progress=progress, teacher_checkpoint=teacher_checkpoint)
            return self
        fresh, old = self.dir.with_name(f".{self.dir.name}.retrain"), self.dir.with_name(f".{self.dir.name}.old")
        with run_lock(self.dir):  # nobody writes the old run while its replacement trains
            shutil.rmtree(fresh, ignore_errors=True)
            with timing.timed("training", self.label):
                train(self.config, fresh, resume=False, progress=progress, teacher_checkpoint=teacher_checkpoint)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.dir, old)
            os.replace(fresh, self.dir)
        shutil.rmtree(old, ignore_errors=True)
        return self

    @staticmethod
    def ensure_many(runs: Sequence[Run], jobs: int | None = None, progress: bool = False) -> list[Run]:
        """`ensure` every run in `runs` (and the teachers they start from); the runs, all done. `jobs` >= 2:
        that many trainings at a time side by side, each in a process of its own at one thread, with exactly
        the weights `ensure` gives at one thread, whatever the order the runs finish in; default (None, 1):
        one after another here, as `ensure` (see `train_side_by_side`)."""
        train_side_by_side(list(runs), jobs, progress)
        return list(runs)

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

    def _cached(self, kind: str, key: dict, compute, load, dump=lambda res: res.state()):
        """A result computed once from this run's checkpoint, then read from `eval/` beside it (or, when the
        run's folder cannot be written, from `eval_dir` or the user's cache: `workbench.evalcache`). The entry
        names the checkpoint it was computed from, so a retrained run is evaluated again; an unreadable
        entry is reported and computed again; entries are written atomically."""
        self._require()
        stat = self.checkpoint.stat()
        source = {"checkpoint": self.checkpoint.name, "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{kind}-{key['split']}-{key['which']}-{digest}.json"
        folders = [self.dir / "eval", self.eval_dir or evalcache.fallback_dir(self.dir)]
        res = evalcache.read(folders, name, key, source, load)
        if res is None:
            with timing.timed("probe" if kind == "norms" else "evaluation", f"{self.label} {kind} {key['split']}"):
                res = compute()
            evalcache.write(folders, name, {"key": key, "source": source, "results": dump(res)})
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
        """A robustness protocol of `workbench.protocols.PROTOCOLS` (RMM: `rates=`, `draws=`; NM: `levels=`,
        `kinds=`) on `split`, deterministic from `seed`; computed once and cached."""
        proto = robustness_protocol(protocol)
        key = {"protocol": protocol, "split": split, "which": which, "seed": seed, "data": data or {},
               "options": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(options.items())}}

        def compute():
            ds = self.dataset(split, data=data)
            return proto.evaluate(self.model(which, device), self.loader(split, batch_size, data=data), seed=seed,
                                  convention=convention, classes=ds.classes, progress=progress,
                                  desc=f"{self.config.name}/{which} {split} {protocol}", **options)

        def load(state: dict):
            res = proto.results.from_state(state)
            res.convention = convention
            return res

        return self._cached(protocol, key, compute, load)

    def state(self) -> dict:
        """The checkpoint's contents (config, weights, history, ...)."""
        self._require()
        return load_checkpoint(self.checkpoint)


# -- loss weights: decided once, before a run starts -------------------------------------------------

def resolve_weights(cfg: Config, progress: bool = True) -> Config:
    """`cfg` with its loss weights decided: under `distill.weighting=gradient_share` (and not yet resolved), the
    rule's lambda, alpha, beta (`methods.robustseg.with_rule_weights`) from the gradient norms measured at the
    probe point (`probe_norms`); any other config as it is. The result is what the run trains with: its
    config.json, its hash and a `--config` rerun hold the numbers."""
    d = cfg.distill
    if not d.enabled or d.weighting != "gradient_share" or d.weights_resolved or d.method != "robustseg":
        return cfg
    if not any(RS.configured_weights(d).values()):  # a control without distillation terms: nothing to weigh
        return replace(cfg, distill=replace(d, weights_resolved=True))
    norms = probe_norms(cfg, progress)
    out = RS.with_rule_weights(cfg, norms)
    log.debug("gradient_share weights of %s (%s, seed %d): %s", cfg.name, cfg.profile, cfg.train.seed,
             RS.describe(RS.configured_weights(out.distill), norms))
    return out


def probe_norms(cfg: Config, progress: bool = True) -> dict[str, float]:
    """The mean gradient norm each unweighted term of the full method sends into the student's encoders at
    the probe point of `cfg` (docs/METHOD.md, "Loss weights"): the teacher and the probe run (one epoch of
    basic distillation, `methods.robustseg.probe_config`) are trained or reused, and the measurement is cached
    beside the probe run."""
    teacher = Run.from_config(cfg.teacher_config()) if cfg.distill.teacher is None else Run.at(cfg.distill.teacher)
    if cfg.distill.teacher is None:
        teacher.ensure(progress=progress)
    probe = Run.from_config(RS.probe_config(cfg, teacher.checkpoint)).ensure(progress=progress)
    key = {"split": "train", "which": "model", "measure": RS.measure_config(cfg).to_dict()}
    return probe._cached("norms", key, lambda: _measure_norms(cfg, probe.checkpoint, teacher.checkpoint),
                         load=dict, dump=dict)


def _measure_norms(cfg: Config, probe_checkpoint: Path, teacher_checkpoint: Path) -> dict[str, float]:
    """Measure `probe_norms` (on the CPU): the probe run's student, the full method's terms, the training
    batches of epoch 1 in the training order, the same draws for every row of a study."""
    mcfg = RS.measure_config(cfg)
    torch.manual_seed(mcfg.train.seed)  # head dropout during the probe: the same draws for every row
    ds = dataset_from_config(mcfg.data, "train", aug_seed=mcfg.train.seed)
    sampler = EpochSampler(len(ds), mcfg.train.seed)
    sampler.set_epoch(1)
    ds.set_epoch(1)
    loader = torch.utils.data.DataLoader(ds, batch_size=mcfg.data.batch_size, sampler=sampler, drop_last=True,
                                         collate_fn=Collate(ds.modalities))
    method = build_method(mcfg, ds, torch.device("cpu"), teacher_checkpoint=teacher_checkpoint)
    assert isinstance(method, Distiller)
    method.model.load_state_dict(load_model(probe_checkpoint).state_dict())
    method.train()
    draws = Draws.for_epoch(mcfg.train.seed, 1)
    rows = [method.term_gradient_norms(batch, draws) for batch in islice(loader, cfg.distill.probe_batches)]
    return {t: sum(r[t] for r in rows) / len(rows) for t in rows[0]}


# -- the pretrained encoder (model.init=pretrained): built once, before a run that needs it -------------------

def ensure_pretrained(model_cfg, progress: bool | None = None) -> Path:
    """The encoder file of `model_cfg`'s pretraining, trained and written first if it is not cached (with
    progress bars unless `progress=False`; None: when the workbench logs progress messages, i.e. not --quiet).

    Training it draws from torch's, numpy's and Python's global generators; their states are restored
    afterwards, so a run that builds the file on its way gives the same model as one that finds it."""
    path = P.encoder_path(model_cfg)
    if path.is_file():
        return path
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under DDP every process would train it
        raise MissingFile(f"the pretrained encoder {path} is not built yet; build it once before a distributed run: "
                          f"{P.command(model_cfg)}")
    cfg = pretraining_config(model_cfg)
    p = model_cfg.pretrain
    if progress is None:
        progress = logging.getLogger("workbench").isEnabledFor(logging.INFO)
    log.info("pretraining the %s encoder on RGB of the synthetic world %d (%d scenes, %d epochs, seed %d); built "
             "once, cached in %s", model_cfg.encoder, p.world_seed, p.samples, p.epochs, p.seed, path.parent)
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        run = Run.from_config(cfg, path.parent).ensure(progress=progress)
        weights = {k: v.detach().cpu().contiguous() for k, v in run.model(device="cpu").encoder("rgb").state_dict().items()}
    finally:
        torch.set_rng_state(states[0]), np.random.set_state(states[1]), random.setstate(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
    P.write_encoder(path, weights, model_cfg, cfg)
    return path
# -- independent trainings side by side --------------------------------------------------------------

def _pending(runs: Sequence[Run]) -> list[Run]:
    """The runs still to train, each after the teacher it starts from (teachers first, once each)."""
    todo: dict[Path, Run] = {}
    for r in runs:
        if r.config.distill.enabled and r.config.distill.teacher is None:
            t = r.teacher
            if not t.done:
                todo.setdefault(t.dir, t)
        if not r.done:
            todo.setdefault(r.dir, r)
    return list(todo.values())


def _ready(run: Run) -> bool:
    """Its teacher (if it trains from one that `ensure` would train) is done."""
    d = run.config.distill
    return not d.enabled or d.teacher is not None or run.teacher.done


def _start_child() -> None:
    """A process that trains beside others: one thread, its log records where the parent's go."""
    torch.set_num_threads(1)
    from workbench.logs import log_to_suite, setup_logging

    if log_to_suite(ready=False):
        timing.mark_child()
    else:
        setup_logging()


def _train_child(config: Config, directory: str) -> str:
    Run(config, Path(directory)).ensure(progress=False)
    return directory


def train_side_by_side(runs: Sequence[Run], jobs: int | None = None, progress: bool = False) -> None:
    """Train the runs of `runs` that are not done yet (a student's teacher first). `jobs` >= 2 (on a CPU):
    that many at a time side by side, each in a process of its own at one thread. CPU results are bitwise
    repeatable for one thread count, so every run trained so equals `ensure()` at one thread, in whatever
    order the runs finish, and differs in rounding from one trained at two threads. Default (None or 1), and
    on a GPU: one after another in this process at its thread count, as `ensure` (bitwise as before).

    Measured (`python -m workbench bench train`, 2 cores shared with other jobs): two quick trainings side by
    side at one thread took 0.69x-1.1x the time of the two at two threads one after another, so the suite
    keeps the default; `ablate` / `claims` / `compare --jobs 2` ask for it."""
    todo = _pending(runs)
    if not todo:
        return
    jobs = max(1, min(jobs or 1, len(todo)))
    if resolve_device(todo[0].config.train.device).type != "cpu" or jobs == 1:
        for r in todo:
            r.ensure(progress=progress)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    log.info("training %d runs side by side, %d at a time (one thread each)", len(todo), jobs)
    waiting, running = list(todo), {}
    with timing.timed("training", f"{len(todo)} runs side by side ({jobs} at a time)"), ProcessPoolExecutor(
            jobs, mp_context=mp.get_context("spawn"), initializer=_start_child) as pool:
        try:
            while waiting or running:
                for r in [r for r in waiting if _ready(r)][: jobs - len(running)]:
                    waiting.remove(r)
                    running[pool.submit(_train_child, r.config, str(r.dir))] = r
                if not running:  # a teacher that is not in `runs` and failed: nothing can start
                    raise CheckpointError(f"{waiting[0]} waits for its teacher, which did not train")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    running.pop(f)
                    f.result()  # a run that failed stops the rest, with its own error
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
