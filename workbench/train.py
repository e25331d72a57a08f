"""The one training loop, for every method (baseline/teacher and every distillation preset).

A *method* (`workbench.methods`) owns the models and computes the named losses of a step; this
loop owns everything else: data order, optimizer and poly schedule with warm-up, mixed precision,
gradient clipping, progress, JSON-lines metrics, periodic validation on every modality combination,
atomic checkpoints with config/versions/git commit, exact resume, and DDP under `torchrun`.

Safety (docs/RELIABILITY.md): one writer per run (`run_lock`); a non-finite loss stops the run before
the optimizer step and non-finite weights stop it before validation and before any checkpoint write,
so a checkpoint never holds NaN; the final weights are also written as safetensors.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from workbench import preflight, repro, timing
from workbench.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    load_state_strict,
    non_finite,
    run_lock,
    save_checkpoint,
    save_weights,
    storage_error,
    write_run_info,
)
from workbench.config import Config
from workbench.data import Collate, dataset_from_config
from workbench.distributed import DistContext, EpochSampler, ShardSampler
from workbench.errors import CheckpointError, ConfigError, TrainingDiverged
from workbench.evaluate import evaluate_combinations
from workbench.methods import Draws, build_method
from workbench.methods.robustseg import shares
from workbench.options import check_device

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    history: list[dict] = field(default_factory=list)
    last_val: dict | None = None


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` as a torch device; a ConfigError for anything else or for CUDA
    on a machine without it."""
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            built = f"this torch ({torch.__version__}) is built {'with' if torch.version.cuda else 'without'} CUDA"
            raise ConfigError(f"device {name!r} was asked for, but CUDA is not available on this machine ({built}, "
                              f"no GPU visible); use cpu or auto")
        if ctx is not None and ctx.enabled:
            return torch.device("cuda", ctx.local_rank)
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def lr_factor(it: int, total: int, warmup: int, power: float) -> float:
    """Linear warm-up from 0.1x to 1x over `warmup` iterations, then poly decay (1 - t)^power."""
    if it < warmup:
        return 0.1 + 0.9 * it / warmup
    return (1 - (it - warmup) / max(1, total - warmup)) ** power


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on 1-D parameters (norms, biases), as the reference recipe."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def move_batch(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


class TensorBoard:
    """TensorBoard event files in `<run>/tensorboard/` beside metrics.jsonl (`train.log=tensorboard`): every
    number of a metrics record as a scalar at its step. A resumed run drops events after its checkpoint."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.log=tensorboard needs the tensorboard package: pip install -e .[tensorboard] "
                              "(or keep train.log=jsonl; metrics.jsonl is always written)") from None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)

    def write(self, entry: dict) -> None:
        for key, value in entry.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, entry["step"])

    def close(self) -> None:
        self.writer.close()


def _jsonable(logs: dict) -> dict:
    return {k: (float(v.detach()) if torch.is_tensor(v) else v) for k, v in logs.items()}


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
          teacher_checkpoint: str | Path | None = None) -> TrainResult:
    """Train `cfg` into `run_dir` (checkpoints `last.pt`, `final.pt`, `model.safetensors`; `metrics.jsonl`;
    config and run info). `resume=True` continues from `last.pt` to exactly the result of an uninterrupted
    run. The run folder is locked while training: a second writer stops with a RunLocked error. A student's
    teacher comes from `teacher_checkpoint` (or `distill.teacher`); its loss weights are the config's."""
    run_dir = Path(run_dir)
    ctx = DistContext.from_env(cfg.train.device)
    device = resolve_device(cfg.train.device, ctx)
    preflight.before_training(cfg)  # a bad data.case, a missing extra: refused before any folder or lock exists
    with run_lock(run_dir) if ctx.is_main else nullcontext():  # under DDP only the main process writes
        return _train(cfg, run_dir, ctx, device, resume, progress, teacher_checkpoint)


RESUME_KEYS = ("method", "optimizer", "scheduler", "rng", "epoch", "step", "history", "config_hash")


@dataclass
class _Loop:
    """What the loop's parts share: the run, the method and its optimizer, and the progress so far."""

    cfg: Config
    run_dir: Path
    ctx: DistContext
    method: object  # workbench.methods.Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    classes: tuple[str, ...]
    modalities: tuple[str, ...]
    step: int = 0
    epoch: int = -1
    history: list = field(default_factory=list)
    terms: dict = field(default_factory=dict)  # the loss terms of the latest step, for the stop messages
    info: dict = field(default_factory=dict)
    board: TensorBoard | None = None

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def final_path(self) -> Path:
        return self.run_dir / "final.pt"


def _train(cfg: Config, run_dir: Path, ctx: DistContext, device: torch.device, resume: bool, progress: bool,
           teacher_checkpoint) -> TrainResult:
    torch.backends.cudnn.benchmark = False  # seeded runs stay reproducible
    torch.manual_seed(cfg.train.seed)  # model init, head dropout and drop-path draws

    # data: the train split in a seeded order per epoch (sharded under DDP); val in order
    train_ds = dataset_from_config(cfg.data, "train", aug_seed=cfg.train.seed)
    val_ds = dataset_from_config(cfg.data, "val", augment=False)
    if len(train_ds) // ctx.world_size < cfg.data.batch_size:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the training split per process "
                          f"({len(train_ds)} samples / {ctx.world_size}); lower data.batch_size")
    sampler = EpochSampler(len(train_ds), cfg.train.seed, ctx.rank, ctx.world_size)
    collate = Collate(train_ds.modalities)
    loader = DataLoader(train_ds, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.num_workers, collate_fn=collate, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    val_loader = DataLoader(val_ds, batch_size=cfg.data.batch_size, sampler=ShardSampler(len(val_ds), ctx.rank,
                            ctx.world_size), num_workers=cfg.data.num_workers, collate_fn=collate)

    # the method owns the models and the losses of a step (workbench.methods); this loop owns the rest
    method = build_method(cfg, train_ds, device, ctx, teacher_checkpoint)
    # foreach: AdamW over all tensors at once (bitwise the one-tensor loop's result, faster on a CPU; `bench train`)
    optimizer = torch.optim.AdamW(param_groups(method.model, cfg.train.weight_decay), lr=cfg.train.lr, foreach=True)
    total = cfg.epochs * len(loader)
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    warmup = min(total - 1, round(cfg.train.warmup_epochs * len(loader)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, warmup, cfg.train.poly_power))
    use_amp = device.type == "cuda" and cfg.train.amp in ("auto", "bf16") or cfg.train.amp == "bf16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else nullcontext
    channels_last = cfg.train.channels_last and device.type == "cuda"
    run = _Loop(cfg, run_dir, ctx, method, optimizer, scheduler, tuple(train_ds.classes), tuple(train_ds.modalities))
    start_epoch = _resume(run) if resume and run.last_path.exists() else 0
    _start_records(run)

    last_val, entry = None, {}
    for epoch in range(start_epoch, cfg.epochs):
        if run.step >= total:
            break
        run.epoch = epoch
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        draws = Draws.for_epoch(cfg.train.seed, epoch)  # dropout subsets, CPD pairs: the same for every method
        method.train()
        bar = tqdm(loader, desc=f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (progress and ctx.is_main), dynamic_ncols=True)
        t0, seen = time.perf_counter(), 0
        pending = _Pending(run, bar)  # the records of the latest steps, still on the device (train.log_every)
        for batch in bar:
            batch = move_batch(batch, device, channels_last)
            # forward: the method's named losses for this batch ("loss" is the total to back-propagate)
            with autocast():
                losses = method.training_step(batch, draws)
            # a non-finite loss stops training before it can touch the weights (one host copy: the total's check)
            if not bool(torch.isfinite(losses["loss"].detach())):
                pending.flush()
                run.terms = _jsonable(losses)
                raise TrainingDiverged(f"non-finite loss at step {run.step} (epoch {epoch + 1}): {_named(run.terms)}. "
                                       f"Nothing was saved after it; the last good checkpoint is {_good(run)}. Lower "
                                       f"train.lr, set train.grad_clip, or check the inputs for NaN")
            # backward (DDP all-reduces the student's gradients here)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            method.sync_gradients()
            # clip
            if cfg.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(method.model.parameters(), cfg.train.grad_clip)
            # step, then set the next iteration's learning rate
            optimizer.step()
            scheduler.step()
            # the method's work after the step (RobustSeg: the feedback step on the teacher)
            with autocast():
                extra = method.after_step(batch, draws, lr=optimizer.param_groups[0]["lr"])
            # log: the step's record, its terms copied to the host with the next `train.log_every` - 1 steps' terms
            run.step += 1
            seen += batch["label"].shape[0] * ctx.world_size
            pending.add({"step": run.step, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                         **{f"train/{k}": v.detach() if torch.is_tensor(v) else v for k, v in {**losses, **extra}.items()},
                         "img_per_s": seen / max(1e-9, time.perf_counter() - t0)})
            if run.step >= total:
                break
        pending.flush()
        entry = pending.last
        bar.close()
        last_epoch = epoch + 1 == cfg.epochs or run.step >= total
        _check_weights(run)  # a step with a finite loss can still leave NaN weights (e.g. an overflowing gradient)
        ctx.broadcast_buffers(method.model)
        # evaluate every combination on val: every `val_every` epochs and after the last one
        if last_epoch or (cfg.train.val_every and (epoch + 1) % cfg.train.val_every == 0):
            with timing.timed("validation", cfg.name):
                last_val = _validate(run, val_loader, val_ds, batch, device)
        _log_epoch(run, entry, last_val)
        # checkpoint
        if (epoch + 1) % cfg.train.ckpt_every == 0 or last_epoch:
            _save(run, run.last_path)
    _finish(run)
    return TrainResult(run_dir, run.final_path, run.history, last_val)


def _resume(run: _Loop) -> int:
    """Restore the model, the method (teacher, its optimizer), optimizer, schedule, RNG, step and history from
    `last.pt`; the epoch to start from."""
    state = load_checkpoint(run.last_path)
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{run.last_path} lacks the training state that resuming needs ({', '.join(missing)}); "
                              f"delete it to train the run again from scratch")
    bad = non_finite(state["model"]) + non_finite(state["method"])
    if bad:
        raise CheckpointError(f"{run.last_path} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}), written "
                              f"by a version that did not check them; delete it and train again with a lower "
                              f"train.lr or with train.grad_clip set")
    if state.get("config_hash") != run.cfg.hash():
        raise CheckpointError(f"{run.last_path} was written by a different config (hash {state.get('config_hash')} "
                              f"vs {run.cfg.hash()}); resume with the same preset and --set overrides")
    repro.check_resume(state.get("run_info", {}).get("numerics"), run.last_path)  # the mode it started in
    load_state_strict(run.method.model, state["model"])
    run.method.load_state_dict(state["method"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    run.step, run.history, run.epoch = state["step"], state["history"], state["epoch"]
    return state["epoch"] + 1


def _start_records(run: _Loop) -> None:
    """config.json, run_info.json and metrics.jsonl (mirroring the checkpoint's history, so that a resumed
    run never holds stale lines); TensorBoard's writer when asked for."""
    if run.ctx.is_main:
        run.info = write_run_info(run.run_dir, run.cfg.to_json())
        atomic_write_text(run.run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in run.history))
    if run.cfg.train.log == "tensorboard" and run.ctx.is_main:
        run.board = TensorBoard(run.run_dir, run.step + 1 if run.step else None)


def _record(run: _Loop, entry: dict) -> None:
    """One metrics record: into the history (saved with the checkpoint), metrics.jsonl and TensorBoard."""
    run.history.append(entry)
    if run.ctx.is_main:
        try:
            with open(run.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as e:
            raise storage_error(e, run.run_dir / "metrics.jsonl") or e from e
    if run.board is not None:
        run.board.write(entry)


class _Pending:
    """The latest steps' metrics records, their loss terms still tensors on the device: `flush` copies them to
    the host in one transfer and records them (history, metrics.jsonl, TensorBoard) exactly as if each had
    been converted at its step. Flushed every `train.log_every` steps, at the end of an epoch (so before
    validation and checkpoints) and before a stop; on a GPU this is one host sync per `log_every` steps
    instead of one per term and step."""

    def __init__(self, run: _Loop, bar=None):
        self.run, self.bar, self.entries, self.last = run, bar, [], {}

    def add(self, entry: dict) -> None:
        self.entries.append(entry)
        if len(self.entries) >= self.run.cfg.train.log_every:
            self.flush()

    def flush(self) -> None:
        if not self.entries:
            return
        tensors = [v for e in self.entries for v in e.values() if torch.is_tensor(v)]
        # float64 holds every float32 / bfloat16 value exactly: the same numbers as float(v) per tensor
        values = iter(torch.stack([v.double() for v in tensors]).tolist() if tensors else [])
        for e in self.entries:
            done = {k: next(values) if torch.is_tensor(v) else v for k, v in e.items()}
            _record(self.run, done)
        self.run.terms = {k.removeprefix("train/"): v for k, v in done.items() if k.startswith("train/")}
        self.entries, self.last = [], done
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{done['train/loss']:.3f}", img_s=f"{done['img_per_s']:.1f}")


def _named(terms: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in terms.items())


def _good(run: _Loop) -> str:
    """The last good checkpoint, for the stop messages."""
    if not run.last_path.exists():
        return "none yet"
    return f"{run.last_path} (epoch {load_checkpoint(run.last_path)['epoch'] + 1}, left untouched)"


def _check_weights(run: _Loop) -> None:
    """Stop before validation and before any checkpoint write when a weight is NaN or inf."""
    bad = non_finite(run.method.model.state_dict()) + [f"method.{k}" for k in non_finite(run.method.state_dict())]
    if bad:
        raise TrainingDiverged(
            f"non-finite weights after step {run.step} (epoch {run.epoch + 1}; that step's loss terms: "
            f"{_named(run.terms)}) in {len(bad)} tensors ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}). "
            f"Nothing was saved after it; the last good checkpoint is {_good(run)}. Lower train.lr or set "
            f"train.grad_clip")


def _save(run: _Loop, path: Path) -> None:
    """The whole training state at the end of `run.epoch` (checked finite first)."""
    _check_weights(run)
    if run.ctx.is_main:
        m = run.method
        save_checkpoint(path, {
            "model": m.model.state_dict(), "method": m.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "rng": torch.get_rng_state(), "epoch": run.epoch,
            "step": run.step, "history": run.history, "config": run.cfg.to_dict(), "config_hash": run.cfg.hash(),
            "run_info": run.info, "classes": list(run.classes), "modalities": list(run.modalities),
        })


def _validate(run: _Loop, val_loader, val_ds, batch: dict, device: torch.device) -> dict:
    """Every modality combination on val under the training protocol, the method's statistics and, for a
    RobustSeg student, each term's gradient into the student's encoders on the epoch's last batch."""
    cfg, method = run.cfg, run.method
    res = evaluate_combinations(method.model, val_loader, protocols=(cfg.train.protocol,), device=device,
                                classes=run.classes, progress=False,
                                reduce_fn=run.ctx.all_reduce_sum if run.ctx.enabled else None,
                                conditions=val_ds.conditions or None, cases=val_ds.cases or None)
    val = {"step": run.step, "epoch": run.epoch + 1, "val/miou_full": res.full(cfg.train.protocol),
           "val/emm": res.emm(cfg.train.protocol), "val/worst": res.worst(cfg.train.protocol)[1]}
    val.update({f"val/{k}": v for k, v in method.validation_logs().items()})
    if hasattr(method, "term_gradient_norms"):  # what each term sends into the student's encoders
        norms = method.term_gradient_norms(batch, Draws.for_epoch(cfg.train.seed + 1_000_003, run.epoch))
        val.update({f"val/grad/{k}": v for k, v in norms.items()})
        val.update({f"val/share/{k}": v for k, v in shares(norms, method.weights).items()})
    _record(run, val)
    return val


def _log_epoch(run: _Loop, entry: dict, last_val: dict | None) -> None:
    if run.ctx.is_main:
        log.info("%s epoch %d/%d: step %d, loss %.4f, %.1f img/s%s", run.cfg.name, run.epoch + 1,
                 run.cfg.epochs, run.step, entry["train/loss"], entry["img_per_s"],
                 f", val full {last_val['val/miou_full']:.2f} EMM {last_val['val/emm']:.2f}"
                 if last_val and last_val["epoch"] == run.epoch + 1 else "")


def _finish(run: _Loop) -> None:
    """final.pt (the last state without optimizer and schedule, the artefact others load) and the weights
    without pickle for sharing (`model.safetensors`, a student's `teacher.safetensors`), written before
    final.pt, which marks the run finished."""
    if run.ctx.is_main:
        if not run.last_path.exists():
            _save(run, run.last_path)
        final = load_checkpoint(run.last_path)
        final.pop("optimizer"), final.pop("scheduler")
        meta = (final["config"], final["classes"], final["modalities"])
        save_weights(run.run_dir / "model.safetensors", final["model"], "model", *meta)
        if "teacher" in final["method"]:
            save_weights(run.run_dir / "teacher.safetensors", final["method"]["teacher"], "teacher", *meta)
        save_checkpoint(run.final_path, final)
    if run.board is not None:
        run.board.close()
    run.ctx.barrier()
