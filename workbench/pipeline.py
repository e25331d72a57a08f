"""The RobustSeg pipeline with a cache keyed by config (METHOD.md, "Training pipeline").

1. teacher = the baseline (all modalities, CE); 2. student initialized from it, trained with
Anymodal Dropout and the method's losses, with the feedback step on the teacher in the same loop.
Each stage lives in `runs/cache/<name>-<profile>-s<seed>-<hash>/`; a finished stage (`final.pt`) is
reused, an interrupted one resumes from `last.pt`. Notebooks call `run` instead of retraining.
"""

from __future__ import annotations

from pathlib import Path

from workbench.config import Config
from workbench.paths import runs_dir
from workbench.train import TrainResult, train


def run_dir_for(cfg: Config) -> Path:
    return runs_dir() / "cache" / f"{cfg.name}-{cfg.profile}-s{cfg.train.seed}-{cfg.hash()}"


def run(cfg: Config, progress: bool = True, retrain: bool = False) -> TrainResult:
    """Train `cfg` (and, for a student, its teacher first) or reuse the cached result."""
    cfg.validate()
    teacher_ckpt = cfg.distill.teacher
    if cfg.distill.enabled and teacher_ckpt is None:
        teacher_ckpt = run(cfg.teacher_config(), progress=progress).checkpoint
    out = run_dir_for(cfg)
    final = out / "final.pt"
    if final.exists() and not retrain:
        return TrainResult(out, final)
    if retrain and final.exists():
        final.unlink()
        (out / "last.pt").unlink(missing_ok=True)
    if progress:
        print(f"[pipeline] training {cfg.name} ({cfg.profile}, seed {cfg.train.seed}) -> {out}", flush=True)
    return train(cfg, out, resume=True, progress=progress, teacher_checkpoint=teacher_ckpt)
