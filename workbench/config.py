"""Typed, validated run configuration: nested dataclasses, named presets, `key=value` overrides.

A run is `Config(data, model, train, distill)`. Presets are plain Python: a *profile* sets the
scale (`tiny` for tests, `quick` for the synthetic study on a laptop CPU, `paper` for DeLiVER on
GPUs) and a *method* sets the losses (the rows of the paper's ablation, METHOD.md). The JSON of the
whole config is written next to every checkpoint, and `config_hash` names cached pipeline stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, get_args, get_origin, get_type_hints

MODALITIES_DELIVER = ("rgb", "depth", "event", "lidar")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def _choice(key: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(map(repr, valid))}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'} and finite")


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic | deliver | muses | mcubes
    root: str | None = None  # real datasets only
    modalities: tuple[str, ...] = ()  # empty: the dataset's own set (DeLiVER/synthetic: rgb,depth,event,lidar)
    size: int = 64  # training crop (and synthetic render) side in pixels
    eval_size: int | None = None  # short side at evaluation; None = same as `size`
    train_samples: int = 512  # synthetic only: samples per split
    val_samples: int = 128
    test_samples: int = 256
    batch_size: int = 8
    num_workers: int = 0  # 0 keeps CPU runs deterministic and light
    augment: bool = True
    depth_source: str = "hha"  # DeLiVER: hha (reference loader) or depth (raw folder)
    case: str | None = None  # DeLiVER/MUSES filter: a condition or sensor-failure case (MCubeS has none)
    synthetic_seed: int = 0  # the synthetic world's seed, independent of the training seed

    def validate(self) -> None:
        _choice("data.dataset", self.dataset, ("synthetic", "deliver", "muses", "mcubes"))
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"data.modalities={self.modalities!r} repeats a modality")
        for key in ("size", "train_samples", "val_samples", "test_samples", "batch_size"):
            _positive(f"data.{key}", getattr(self, key))
        if self.size % 32:
            raise ConfigError(f"data.size={self.size} must be a multiple of 32 (the encoder's stride)")
        if self.eval_size is not None:
            _positive("data.eval_size", self.eval_size)
        _positive("data.num_workers", self.num_workers, allow_zero=True)
        _choice("data.depth_source", self.depth_source, ("hha", "depth"))


@dataclass
class ModelConfig:
    encoder: str = "mit_tiny"  # mit_tiny | mit_b0..mit_b5 | any timm features_only model
    weights: str | None = None  # local official MiT checkpoint (see `workbench weights import-mit`)
    shared_encoder: bool = False  # one set of encoder weights for all modalities (public code)
    fusion: str = "mean"  # mean (public code) | softmax (learned per-pixel weights)
    head_dim: int = 64  # SegFormer MLP-head width E (768 in the public code, 256 in SegFormer-B0)
    head_dropout: float = 0.1
    drop_path: float = 0.0

    def validate(self) -> None:
        _choice("model.fusion", self.fusion, ("mean", "softmax"))
        _positive("model.head_dim", self.head_dim)
        if not 0 <= self.head_dropout < 1:
            raise ConfigError(f"model.head_dropout={self.head_dropout} must be in [0, 1)")
        if not 0 <= self.drop_path < 1:
            raise ConfigError(f"model.drop_path={self.drop_path} must be in [0, 1)")


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.01  # none on 1-D parameters (norms, biases)
    warmup_epochs: float = 1.0
    poly_power: float = 0.9
    grad_clip: float | None = None
    loss: str = "ce"  # ce | ohem
    ohem_thresh: float = 0.7
    protocol: str = "drop"  # how absent modalities are treated: drop (not encoded) | zero
    val_every: int = 1  # epochs between validations (0: only at the end)
    ckpt_every: int = 1  # epochs between checkpoints
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    channels_last: bool = True  # CUDA only
    compile: bool = False
    max_steps: int | None = None  # stop early (smoke runs, benchmarks)
    sync_bn: bool = False  # DDP only

    def validate(self) -> None:
        for key in ("epochs", "lr"):
            _positive(f"train.{key}", getattr(self, key))
        _positive("train.weight_decay", self.weight_decay, allow_zero=True)
        _positive("train.warmup_epochs", self.warmup_epochs, allow_zero=True)
        _positive("train.poly_power", self.poly_power, allow_zero=True)
        if self.grad_clip is not None:
            _positive("train.grad_clip", self.grad_clip)
        _choice("train.loss", self.loss, ("ce", "ohem"))
        if not 0 < self.ohem_thresh < 1:
            raise ConfigError(f"train.ohem_thresh={self.ohem_thresh} must be in (0, 1)")
        _choice("train.protocol", self.protocol, ("drop", "zero"))
        _positive("train.val_every", self.val_every, allow_zero=True)
        _positive("train.ckpt_every", self.ckpt_every)
        _choice("train.amp", self.amp, ("auto", "bf16", "off"))
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device={self.device!r} is not valid; choose auto, cpu, cuda or cuda:N")
        if self.max_steps is not None:
            _positive("train.max_steps", self.max_steps)


@dataclass
class DistillConfig:
    """RobustSeg's student losses (METHOD.md, "Losses"): L_hp = L_CE + lambda L_KL + alpha L_cp + beta L_ifv."""

    enabled: bool = False  # False: the baseline / teacher (all modalities, CE only)
    dropout: str = "sample"  # Anymodal Dropout: sample | batch | none
    kd_weight: float = 50.0  # lambda
    kd_temperature: float = 1.0
    kd_reduction: str = "element"  # element (public code: mean over B*K*H*W) | pixel
    cp_weight: float = 100.0  # alpha; 0 disables CPD
    cp_pairing: str = "permutation"  # permutation | derangement | same
    cp_divergence: str = "kl_class"  # kl_class (public code) | cosine
    cp_temperature: float = 1.0
    ifv_weight: float = 12.0  # beta; 0 disables IFV distillation
    ifv_modalities: str = "primary"  # primary (ASM) | all | cross (permuted, the paper's negative row)
    ifv_divergence: str = "kl_spatial"  # kl_spatial (T over all h*w) | kl_width (public code) | mse (IFVD)
    ifv_temperature: float = 2.0
    stages: tuple[int, ...] = (0, 1, 2, 3)  # encoder stages that prototype losses use
    asm_stage: str = "last"  # last | all (similarity averaged over stages)
    feedback: bool = False  # student -> teacher step on the teacher's non-primary encoders
    feedback_lr_scale: float = 0.1  # 6e-6 / 6e-5 in the paper
    teacher: str | None = None  # checkpoint path; None = train/reuse the cached baseline

    def validate(self) -> None:
        _choice("distill.dropout", self.dropout, ("sample", "batch", "none"))
        for key in ("kd_weight", "cp_weight", "ifv_weight"):
            _positive(f"distill.{key}", getattr(self, key), allow_zero=True)
        for key in ("kd_temperature", "cp_temperature", "ifv_temperature", "feedback_lr_scale"):
            _positive(f"distill.{key}", getattr(self, key))
        _choice("distill.kd_reduction", self.kd_reduction, ("element", "pixel"))
        _choice("distill.cp_pairing", self.cp_pairing, ("permutation", "derangement", "same"))
        _choice("distill.cp_divergence", self.cp_divergence, ("kl_class", "cosine"))
        _choice("distill.ifv_modalities", self.ifv_modalities, ("primary", "all", "cross"))
        _choice("distill.ifv_divergence", self.ifv_divergence, ("kl_spatial", "kl_width", "mse"))
        _choice("distill.asm_stage", self.asm_stage, ("last", "all"))
        if not self.stages or any(s not in (0, 1, 2, 3) for s in self.stages):
            raise ConfigError(f"distill.stages={self.stages!r} must be a non-empty subset of 0,1,2,3")


@dataclass
class Config:
    name: str = "baseline"
    profile: str = "quick"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> Config:
        for section in (self.data, self.model, self.train, self.distill):  # normalize types (e.g. 10 -> 10.0)
            hints = get_type_hints(type(section))
            for f in fields(section):
                setattr(section, f.name, _coerce(f"{f.name}", hints[f.name], getattr(section, f.name)))
        self.data.validate()
        self.model.validate()
        self.train.validate()
        self.distill.validate()
        if self.distill.feedback and not self.distill.enabled:
            raise ConfigError("distill.feedback=True needs distill.enabled=True (feedback runs in the student loop)")
        if self.distill.feedback and self.model.shared_encoder:
            raise ConfigError(
                "distill.feedback=True with model.shared_encoder=True: the feedback step updates only the "
                "teacher's non-primary encoders, which needs one encoder per modality; set "
                "model.shared_encoder=False or distill.feedback=False"
            )
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        return _from_dict(cls, d, "").validate()

    def teacher_config(self) -> Config:
        """The baseline run this student distils from: same data, model and schedule, no distillation."""
        t = Config.from_dict(self.to_dict())
        t.name, t.distill = "baseline", DistillConfig()
        return t.validate()

    def hash(self) -> str:
        """Stable identity for caching: everything that changes the trained weights."""
        d = self.to_dict()
        d.pop("name"), d.pop("profile")
        for k in ("device", "val_every", "ckpt_every"):
            d["train"].pop(k)
        d["data"].pop("num_workers")
        if not self.distill.enabled:  # a baseline is the same run whatever the (unused) loss weights say
            d["distill"] = {"enabled": False}
        if self.data.dataset == "synthetic":  # regenerated data must not hit an old cache
            from workbench.data.synthetic import VERSION

            d["data"]["synthetic_version"] = VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _coerce(key: str, typ: Any, value: Any) -> Any:
    origin = get_origin(typ)
    args = [a for a in get_args(typ) if a is not type(None)]
    if isinstance(value, str) and value.lower() == "none" and type(None) in get_args(typ):
        value = None
    if value is None:
        if type(None) in get_args(typ):
            return None
        raise ConfigError(f"{key} may not be None")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        return tuple(_coerce(key, args[0], v) for v in value)
    if args and origin is not None and origin is not tuple:  # Optional[X] / X | None
        return _coerce(key, args[0], value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r} must be a boolean (true/false)")
    if typ in (int, float):
        try:
            out = typ(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            out = None
        if out is None or (typ is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}={value!r} must be {'an integer' if typ is int else 'a number'}")
        if typ is int and isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            raise ConfigError(f"{key}={value!r} must be an integer")
        return out
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    return value


def _from_dict(cls: type, d: dict, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{sorted(unknown)[0]}; valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in d.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _from_dict(typ, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", typ, value)
    return cls(**kwargs)


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply `section.key=value` overrides (CLI `--set`) and re-validate."""
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    d = cfg.to_dict()
    for key, value in items:
        node, parts = d, key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node or not isinstance(node[part], dict):
                valid = sorted(k for k, v in node.items() if isinstance(v, dict))
                raise ConfigError(f"unknown config section {'.'.join(parts[:i + 1])!r}; valid: {', '.join(valid)}")
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            valid = sorted(k for k, v in node.items() if not isinstance(v, dict))
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(valid)}")
        node[parts[-1]] = value
    return Config.from_dict(d)


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=5")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


# ----------------------------------------------------------------------------------------------
# Presets. Profiles set the scale; methods set the losses. `tiny` == `smoke`.

def _profile_tiny() -> Config:
    """Seconds on a CPU: unit tests and the smoke suite."""
    return Config(
        profile="tiny",
        data=DataConfig(size=32, train_samples=16, val_samples=8, test_samples=8, batch_size=4, augment=False),
        model=ModelConfig(encoder="mit_tiny", head_dim=16),
        train=TrainConfig(epochs=2, lr=2e-3, warmup_epochs=0.5),
    )


def _profile_quick() -> Config:
    """The synthetic study on 2 CPU cores (minutes per run)."""
    return Config(
        profile="quick",
        data=DataConfig(size=64, train_samples=384, val_samples=128, test_samples=256, batch_size=16),
        model=ModelConfig(encoder="mit_tiny", head_dim=64),
        train=TrainConfig(epochs=10, lr=2e-3, warmup_epochs=1.0, val_every=2),
        # alpha tuned on the synthetic val split (figures/sweep_hpd_quick.csv): 10 beat the paper's 100
        distill=DistillConfig(cp_weight=10.0),
    )


def _profile_paper() -> Config:
    """DeLiVER at the paper's scale (METHOD.md / DATASETS.md): for GPUs."""
    return Config(
        profile="paper",
        data=DataConfig(dataset="deliver", root="data/DELIVER", size=1024, eval_size=1024, batch_size=2,
                        num_workers=4),
        model=ModelConfig(encoder="mit_b0", head_dim=768),
        train=TrainConfig(epochs=120, lr=6e-5, warmup_epochs=10.0, loss="ohem", val_every=5, ckpt_every=1),
        distill=DistillConfig(),
    )


PROFILES = {"tiny": _profile_tiny, "smoke": _profile_tiny, "quick": _profile_quick, "paper": _profile_paper}

# Method presets: the rows of the paper's ablation table (METHOD.md). Keys are DistillConfig fields.
_OFF = dict(cp_weight=0.0, ifv_weight=0.0)
METHODS: dict[str, dict[str, Any]] = {
    "baseline": dict(enabled=False),
    "basic_kd": dict(enabled=True, **_OFF),
    "ifv_single": dict(enabled=True, cp_weight=0.0, ifv_modalities="all"),
    "ifv_cross": dict(enabled=True, cp_weight=0.0, ifv_modalities="cross"),
    "cpd": dict(enabled=True, ifv_weight=0.0),
    "ifv_cpd": dict(enabled=True, ifv_modalities="all"),
    "hpd": dict(enabled=True, ifv_modalities="primary"),
    "robustseg": dict(enabled=True, ifv_modalities="primary", feedback=True),
    # AnySeg-style comparator (single-modal distillation, Anymodal Dropout, no cross-modal term): the
    # public description distils each modality's features from the same modality of the teacher;
    # here that is single-modal prototype KD + single-modal IFV on all modalities.
    "anyseg": dict(enabled=True, cp_pairing="same", ifv_modalities="all"),
}


def preset(name: str, profile: str | None = None) -> Config:
    """A named preset. Profiles (`tiny`/`smoke`, `quick`, `paper`) alone give the baseline at that
    scale; methods (`baseline`, `basic_kd`, ..., `robustseg`, `anyseg`) take `profile` (default quick)."""
    if name in PROFILES:
        if profile is not None and profile != name:
            raise ConfigError(f"preset {name!r} is itself a profile; drop --profile {profile!r}")
        profile, method = name, "baseline"
    elif name in METHODS:
        profile, method = profile or "quick", name
    else:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(list(PROFILES) + list(METHODS))}")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    cfg = PROFILES[profile]()
    cfg.profile = "tiny" if profile == "smoke" else profile
    cfg.name = method
    for k, v in METHODS[method].items():
        setattr(cfg.distill, k, v)
    return cfg.validate()
