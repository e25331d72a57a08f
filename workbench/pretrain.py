"""The synthetic world's "ImageNet": an RGB encoder pretrained on a world of its own, that
`model.init=pretrained` starts every encoder from (docs/BENCHMARK.md, "6. The paper's regime:
encoders pretrained on the synthetic world").

In DeLiVER every modality branch of M-SegFormer and RobustSeg starts from the same ImageNet-pretrained
MiT, an RGB model: RGB features work from the first step while depth, event and LiDAR must adapt. Here
the pretraining is supervised segmentation of RGB on the synthetic world `model.pretrain.world_seed`
(`workbench.config.pretraining_config`: an RGB-only baseline, CE, `model.pretrain.samples` training
scenes), a world whose scenes are not the benchmark's (`data.synthetic_seed` must differ; every scene is
drawn from the seed sequence (world seed, split, index), see `workbench.data.synthetic.sample_rng`).

`workbench.runs.ensure_pretrained(model_cfg)` trains it once (with progress bars) and caches it under
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
import shlex
from dataclasses import fields
from pathlib import Path

import torch

from workbench import repro
from workbench.checkpoint import atomic_write_bytes, atomic_write_text
from workbench.config import ModelConfig, PretrainConfig, preset, pretraining_config
from workbench.errors import MissingFile
from workbench.paths import runs_dir

log = logging.getLogger(__name__)

__all__ = ["pretrain_dir", "encoder_path", "require_encoder", "command", "write_encoder", "read_metadata"]

ENCODER_FILE = "encoder.safetensors"


def pretrain_dir(model_cfg: ModelConfig) -> Path:
    """Where the pretraining of `model_cfg.encoder` with `model_cfg.pretrain` is cached."""
    p, cfg = model_cfg.pretrain, pretraining_config(model_cfg)
    folder = "pretrain-repro" if repro.enabled() else "pretrain"  # the numerical mode trains other bits (workbench.repro)
    return runs_dir() / folder / f"{model_cfg.encoder}-w{p.world_seed}-s{p.seed}-{cfg.hash()}"


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


def require_encoder(model_cfg: ModelConfig) -> Path:
    """The encoder file of `model_cfg`'s pretraining, or a MissingFile that says how to build it (a run opened
    with `workbench.runs.Run` builds it before it trains: `workbench.runs.ensure_pretrained`)."""
    path = encoder_path(model_cfg)
    if not path.is_file():
        raise MissingFile(f"the pretrained encoder {path} is not built yet (model.init=pretrained); build it with "
                          f"{command(model_cfg)}, or train through `python -m workbench train` / workbench.runs.Run, "
                          f"which build it first")
    return path


def write_encoder(path: Path, weights: dict[str, torch.Tensor], model_cfg: ModelConfig, cfg) -> None:
    """The encoder file: the weights (sorted, timm names) and one metadata entry (command, seed, hash, config)."""
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
