"""The synthetic world's "ImageNet": an RGB encoder pretrained on a world of its own, that
`model.init=pretrained` starts every encoder from (docs/BENCHMARK.md, "6. The paper's regime:
encoders pretrained on the synthetic world").

In DeLiVER every modality branch of M-SegFormer and RobustSeg starts from the same ImageNet-pretrained
MiT, an RGB model: RGB features work from the first step while depth, event and LiDAR must adapt. Here
the pretraining is supervised segmentation of RGB on the synthetic world `model.pretrain.world_seed`
(`workbench.config.pretraining_config`: an RGB-only baseline, CE, `model.pretrain.samples` training
scenes), a world whose scenes are not the benchmark's (`data.synthetic_seed` must differ; every scene is
drawn from the seed sequence (world seed, split, index), see `workbench.data.synthetic.sample_rng`).

`pretrained_encoder(model_cfg)` trains it once (with progress bars) and caches it under
`runs/pretrain/<encoder>-w<world>-s<seed>-<hash>/` (the pretraining config's hash, which includes the
renderer's VERSION): the training run (`final.pt`, `metrics.jsonl`, ...) and `encoder.safetensors`, the
encoder's weights alone (timm names, as `model.weights` files), whose metadata holds the command, seed,
config hash and config that made it. The same spec and seed give the same bits. Run it ahead with
`python -m workbench pretrain [--profile P] [--seed S] [--set model.pretrain.KEY=VALUE ...]`; any run
with `model.init=pretrained` builds it when it is missing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from workbench.checkpoint import atomic_write_bytes, atomic_write_text
from workbench.config import ModelConfig, PretrainConfig, preset, pretraining_config
from workbench.errors import MissingFile
from workbench.paths import runs_dir

log = logging.getLogger(__name__)

__all__ = ["pretrained_encoder", "pretrain_dir", "encoder_path", "command", "read_metadata"]

ENCODER_FILE = "encoder.safetensors"


def pretrain_dir(model_cfg: ModelConfig) -> Path:
    """Where the pretraining of `model_cfg.encoder` with `model_cfg.pretrain` is cached."""
    p, cfg = model_cfg.pretrain, pretraining_config(model_cfg)
    return runs_dir() / "pretrain" / f"{model_cfg.encoder}-w{p.world_seed}-s{p.seed}-{cfg.hash()}"


def encoder_path(model_cfg: ModelConfig) -> Path:
    return pretrain_dir(model_cfg) / ENCODER_FILE


def command(model_cfg: ModelConfig) -> str:
    """The command line that builds this encoder file: the settings that differ from the quick profile's."""
    base = preset("quick").model
    sets = [f"model.encoder={model_cfg.encoder}"] if model_cfg.encoder != base.encoder else []
    sets += [f"model.pretrain.{f.name}={getattr(model_cfg.pretrain, f.name)}" for f in fields(PretrainConfig)
             if f.name != "seed" and getattr(model_cfg.pretrain, f.name) != getattr(base.pretrain, f.name)]
    return shlex.join(["python", "-m", "workbench", "pretrain", "--seed", str(model_cfg.pretrain.seed),
                       *[a for s in sets for a in ("--set", s)]])


def pretrained_encoder(model_cfg: ModelConfig, progress: bool | None = None) -> Path:
    """The encoder file of `model_cfg`'s pretraining, trained and written first if it is not cached (with
    progress bars unless `progress=False`; None: when the workbench logs progress messages, i.e. not --quiet).

    Training it draws from torch's, numpy's and Python's global generators; their states are restored
    afterwards, so a run that builds the file on its way gives the same model as one that finds it."""
    path = encoder_path(model_cfg)
    if path.is_file():
        return path
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under DDP every process would train it
        raise MissingFile(f"the pretrained encoder {path} is not built yet; build it once before a distributed run: "
                          f"{command(model_cfg)}")
    from workbench.runs import Run  # runs -> train -> models -> build imports this module lazily

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
    _write(path, weights, model_cfg, cfg)
    return path


def _write(path: Path, weights: dict[str, torch.Tensor], model_cfg: ModelConfig, cfg) -> None:
    from safetensors.torch import save

    metadata = {"command": command(model_cfg), "seed": str(model_cfg.pretrain.seed), "config_hash": cfg.hash(),
                "encoder": model_cfg.encoder, "task": "supervised segmentation of RGB (CE), 12 classes",
                "config": cfg.to_json()}
    # one metadata entry: safetensors writes several in no fixed order, and the same pretraining must give the same bits
    data = save(dict(sorted(weights.items())), metadata={"workbench": json.dumps(metadata, sort_keys=True)})
    atomic_write_bytes(path, lambda f: f.write(data))
    atomic_write_text(path.parent / "pretrain.json",
                      json.dumps({k: v for k, v in metadata.items() if k != "config"}, indent=2) + "\n")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata (command, seed, config hash, config) written into an encoder file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("workbench", "{}"))
