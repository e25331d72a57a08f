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
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from workbench import repro
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
from workbench.comparators import build_method
from workbench.config import Config
from workbench.data import Collate, dataset_from_config
from workbench.distributed import DistContext, EpochSampler, ShardSampler
from workbench.errors import CheckpointError, ConfigError, TrainingDiverged
from workbench.evaluate import evaluate_combinations
from workbench.methods import Draws
from workbench.weighting import shares

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
    if not (name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name)):
        raise ConfigError(f"device {name!r} is not valid; choose auto, cpu, cuda or cuda:N")
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
          teacher_checkpoint: str | Path | None = None, loss_weights: dict[str, float] | None = None) -> TrainResult:
    """Train `cfg` into `run_dir` (checkpoints `last.pt`, `final.pt`, `model.safetensors`; `metrics.jsonl`;
    config and run info). `resume=True` continues from `last.pt` to exactly the result of an uninterrupted
    run. The run folder is locked while training: a second writer stops with a RunLocked error.
    `loss_weights` ({"kd", "cp", "ifv"}) replace the config's lambda, alpha, beta (workbench.weighting)."""
    run_dir = Path(run_dir)
    ctx = DistContext.from_env(cfg.train.device)
    device = resolve_device(cfg.train.device, ctx)
    with run_lock(run_dir) if ctx.is_main else nullcontext():  # under DDP only the main process writes
        return _train(cfg, run_dir, ctx, device, resume, progress, teacher_checkpoint, loss_weights)


RESUME_KEYS = ("method", "optimizer", "scheduler", "rng", "epoch", "step", "history", "config_hash")


def _train(cfg: Config, run_dir: Path, ctx: DistContext, device: torch.device, resume: bool, progress: bool,
           teacher_checkpoint, loss_weights) -> TrainResult:
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
    method = build_method(cfg, train_ds, device, ctx, teacher_checkpoint, loss_weights)
    optimizer = torch.optim.AdamW(param_groups(method.model, cfg.train.weight_decay), lr=cfg.train.lr)
    total = cfg.train.epochs * len(loader)
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    warmup = min(total - 1, round(cfg.train.warmup_epochs * len(loader)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, warmup, cfg.train.poly_power))
    use_amp = device.type == "cuda" and cfg.train.amp in ("auto", "bf16") or cfg.train.amp == "bf16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else nullcontext
    channels_last = cfg.train.channels_last and device.type == "cuda"

    # resume: model, method (teacher, its optimizer), optimizer, schedule, RNG, step and history
    start_epoch, step, history = 0, 0, []
    last_path, final_path = run_dir / "last.pt", run_dir / "final.pt"
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        missing = [k for k in RESUME_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"{last_path} lacks the training state that resuming needs ({', '.join(missing)}); "
                                  f"delete it to train the run again from scratch")
        bad = non_finite(state["model"]) + non_finite(state["method"])
        if bad:
            raise CheckpointError(f"{last_path} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}), written "
                                  f"by a version that did not check them; delete it and train again with a lower "
                                  f"train.lr or with train.grad_clip set")
        if state.get("config_hash") != cfg.hash():
            raise CheckpointError(f"{last_path} was written by a different config (hash {state.get('config_hash')} "
                                  f"vs {cfg.hash()}); resume with the same preset and --set overrides")
        repro.check_resume(state.get("run_info", {}).get("numerics"), last_path)
        load_state_strict(method.model, state["model"])
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, step, history = state["epoch"] + 1, state["step"], state["history"]
    weights = getattr(method, "weights", None)
    info = write_run_info(run_dir, cfg.to_json(), {"loss_weights": weights} if weights else None) if ctx.is_main else {}
    if ctx.is_main:  # metrics.jsonl mirrors the checkpoint's history, so a resumed run never holds stale lines
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    board = TensorBoard(run_dir, step + 1 if step else None) if cfg.train.log == "tensorboard" and ctx.is_main else None

    terms: dict[str, float] = {}  # the loss terms of the latest step, for the stop messages

    def good_checkpoint() -> str:
        return f"{last_path} (epoch {load_checkpoint(last_path)['epoch'] + 1}, left untouched)" if last_path.exists() \
            else "none yet"

    def check_weights() -> None:
        """Stop before validation and before any checkpoint write when a weight is NaN or inf."""
        bad = non_finite(method.model.state_dict()) + [f"method.{k}" for k in non_finite(method.state_dict())]
        if bad:
            named = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
            raise TrainingDiverged(
                f"non-finite weights after step {step} (epoch {epoch + 1}; that step's loss terms: {named}) in "
                f"{len(bad)} tensors ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}). Nothing was saved "
                f"after it; the last good checkpoint is {good_checkpoint()}. Lower train.lr or set train.grad_clip")

    def checkpoint(epoch: int, path: Path) -> None:
        check_weights()
        if ctx.is_main:
            save_checkpoint(path, {
                "model": method.model.state_dict(), "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch, "step": step,
                "history": history, "config": cfg.to_dict(), "config_hash": cfg.hash(), "run_info": info,
                "classes": list(train_ds.classes), "modalities": list(train_ds.modalities),
            })

    def record(entry: dict) -> None:
        history.append(entry)
        if ctx.is_main:
            try:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(entry) + "\n")
            except OSError as e:
                raise storage_error(e, run_dir / "metrics.jsonl") or e from e
        if board is not None:
            board.write(entry)

    last_val, epoch = None, start_epoch - 1
    for epoch in range(start_epoch, cfg.train.epochs):
        if step >= total:
            break
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        draws = Draws.for_epoch(cfg.train.seed, epoch)  # dropout subsets, CPD pairs: the same for every method
        method.train()
        bar = tqdm(loader, desc=f"{cfg.name} epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                   disable=not (progress and ctx.is_main), dynamic_ncols=True)
        t0, seen = time.perf_counter(), 0
        for batch in bar:
            batch = move_batch(batch, device, channels_last)
            # forward: the method's named losses for this batch ("loss" is the total to back-propagate)
            with autocast():
                losses = method.training_step(batch, draws)
            # a non-finite loss stops training before it can touch the weights
            terms = {k: float(v.detach()) for k, v in losses.items()}
            if not torch.isfinite(losses["loss"].detach()):
                named = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
                raise TrainingDiverged(
                    f"non-finite loss at step {step} (epoch {epoch + 1}): {named}. Nothing was saved after it; "
                    f"the last good checkpoint is {good_checkpoint()}. Lower train.lr, set train.grad_clip, or "
                    f"check the inputs for NaN")
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
            # log
            step += 1
            seen += batch["label"].shape[0] * ctx.world_size
            entry = {"step": step, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                     **{f"train/{k}": v for k, v in {**terms, **_jsonable(extra)}.items()},
                     "img_per_s": seen / max(1e-9, time.perf_counter() - t0)}
            record(entry)
            bar.set_postfix(loss=f"{entry['train/loss']:.3f}", img_s=f"{entry['img_per_s']:.1f}")
            if step >= total:
                break
        bar.close()
        last_epoch = epoch + 1 == cfg.train.epochs or step >= total
        check_weights()  # a step with a finite loss can still leave NaN weights (e.g. an overflowing gradient)
        ctx.broadcast_buffers(method.model)
        # evaluate every combination on val: every `val_every` epochs and after the last one
        if last_epoch or (cfg.train.val_every and (epoch + 1) % cfg.train.val_every == 0):
            res = evaluate_combinations(method.model, val_loader, protocols=(cfg.train.protocol,), device=device,
                                        classes=train_ds.classes, progress=False,
                                        reduce_fn=ctx.all_reduce_sum if ctx.enabled else None,
                                        conditions=val_ds.conditions or None, cases=val_ds.cases or None)
            last_val = {"step": step, "epoch": epoch + 1, "val/miou_full": res.full(cfg.train.protocol),
                        "val/emm": res.emm(cfg.train.protocol), "val/worst": res.worst(cfg.train.protocol)[1]}
            last_val.update({f"val/{k}": v for k, v in method.validation_logs().items()})
            if hasattr(method, "term_gradient_norms"):  # what each term sends into the student's encoders
                norms = method.term_gradient_norms(batch, Draws.for_epoch(cfg.train.seed + 1_000_003, epoch))
                last_val.update({f"val/grad/{k}": v for k, v in norms.items()})
                last_val.update({f"val/share/{k}": v for k, v in shares(norms, method.weights).items()})
            record(last_val)
        if ctx.is_main:
            log.info("%s epoch %d/%d: step %d, loss %.4f, %.1f img/s%s", cfg.name, epoch + 1, cfg.train.epochs, step,
                     entry["train/loss"], entry["img_per_s"],
                     f", val full {last_val['val/miou_full']:.2f} EMM {last_val['val/emm']:.2f}"
                     if last_val and last_val["epoch"] == epoch + 1 else "")
        # checkpoint
        if (epoch + 1) % cfg.train.ckpt_every == 0 or last_epoch:
            checkpoint(epoch, last_path)
    if ctx.is_main:  # final.pt: the last state without optimizer/scheduler, the artefact others load
        if not last_path.exists():
            checkpoint(epoch, last_path)
        final = load_checkpoint(last_path)
        final.pop("optimizer"), final.pop("scheduler")
        # the weights without pickle, for sharing (written before final.pt, which marks the run finished)
        meta = (final["config"], final["classes"], final["modalities"])
        save_weights(run_dir / "model.safetensors", final["model"], "model", *meta)
        if "teacher" in final["method"]:
            save_weights(run_dir / "teacher.safetensors", final["method"]["teacher"], "teacher", *meta)
        save_checkpoint(final_path, final)
    if board is not None:
        board.close()
    ctx.barrier()
    return TrainResult(run_dir, final_path, history, last_val)
