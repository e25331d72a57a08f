"""Run configuration: nested frozen dataclasses that are valid by construction, presets, overrides.

A run is `Config(data, model, train, distill, magic)`. Every field is checked and normalized when the
dataclass is built (`__post_init__`), so a `Config` that exists is valid; change one with
`apply_overrides` (or `dataclasses.replace`), which builds a new, checked one. Options are the
`Literal` aliases of `workbench.options`. Presets are plain Python: a *profile* sets the scale (`tiny`
for tests, `quick` for the synthetic study on a laptop CPU, `paper` for DeLiVER on GPUs), a *method*
sets the losses (the rows of the paper's ablation, docs/METHOD.md "The paper's ablation and main
table"), and `TUNED` holds the loss weights tuned per profile, in one visible table
(`python -m workbench presets --show`). The JSON of the whole config is written next to every
checkpoint, and `Config.hash()` identifies what changes the trained weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args, get_origin, get_type_hints

from workbench.errors import ConfigError, UnknownName
from workbench.options import (
    Aggregation,
    Amp,
    AnySegAxis,
    Arch,
    AsmStage,
    CMDFeatures,
    CMDReduction,
    Conventions,
    DatasetName,
    DepthSource,
    DistillMethod,
    DropoutMode,
    Fusion,
    IFVDivergence,
    IFVModalities,
    KDPixels,
    KDReduction,
    MetricsLog,
    ModelInit,
    Pairing,
    Pipeline,
    Protocol,
    ProtoDivergence,
    Prototypes,
    SegLoss,
    StudentInit,
    TrainMethod,
    Weighting,
    check_device,
)
from workbench.paths import check_name

__all__ = ["Config", "DataConfig", "ModelConfig", "PretrainConfig", "TrainConfig", "DistillConfig", "MagicConfig",
           "ConfigError", "PROFILES", "PRESETS", "TUNED", "CONVENTIONS", "preset", "apply_overrides", "overrides_dict",
           "pretraining_config"]


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'} and finite")


def _unit(key: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{key}={value} must be in [0, 1)")


class _Checked:
    """Mixin for the config dataclasses: coerce every field to its annotated type (e.g. "10" -> 10,
    10 -> 10.0, "rgb,depth" -> ("rgb", "depth")), check Literal options, then run `check()`."""

    _section = ""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            key = f"{self._section}.{f.name}" if self._section else f.name
            object.__setattr__(self, f.name, _coerce(key, hints[f.name], getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Range and cross-field checks of the section (types and options are already checked)."""


@dataclass(frozen=True)
class DataConfig(_Checked):
    _section = "data"
    dataset: DatasetName = "synthetic"
    root: str | None = None  # real datasets only
    modalities: tuple[str, ...] = ()  # empty: the dataset's own set (DeLiVER/synthetic: rgb,depth,event,lidar)
    size: int = 64  # training crop (and synthetic render) side in pixels
    eval_size: int | None = None  # short side at evaluation; None: as stored (workbench), 1024 (reference)
    train_samples: int = 512  # synthetic only: samples per split
    val_samples: int = 128
    test_samples: int = 256
    batch_size: int = 8
    num_workers: int = 0  # 0 keeps CPU runs deterministic and light
    augment: bool = True
    pipeline: Pipeline | None = None  # transforms: None = the dataset's default (reference; synthetic: workbench)
    depth_source: DepthSource = "hha"  # DeLiVER: hha (reference loader) or depth (raw folder)
    case: str | None = None  # DeLiVER/MUSES filter: a condition or sensor-failure case (MCubeS has none)
    synthetic_seed: int = 0  # the synthetic world's seed, independent of the training seed

    def check(self) -> None:
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"data.modalities={self.modalities!r} repeats a modality")
        for key in ("size", "train_samples", "val_samples", "test_samples", "batch_size"):
            _positive(f"data.{key}", getattr(self, key))
        if self.size % 32:
            raise ConfigError(f"data.size={self.size} must be a multiple of 32 (the encoder's stride)")
        if self.eval_size is not None and self.eval_size < 32:
            raise ConfigError(f"data.eval_size={self.eval_size} must be at least 32 (the encoder's stride: smaller "
                              f"images leave its last stage empty); use None to evaluate at the stored size")
        _positive("data.num_workers", self.num_workers, allow_zero=True)


@dataclass(frozen=True)
class PretrainConfig(_Checked):
    """The "ImageNet" of the synthetic world that `model.init=pretrained` starts every encoder from
    (`workbench.pretrain`; docs/BENCHMARK.md, "6. The paper's regime"): an RGB-only segmentor trained with
    CE on `samples` training scenes of the synthetic world `world_seed` (a world of its own: the benchmark
    renders data.synthetic_seed, and the two must differ), of which the encoder is kept."""

    _section = "model.pretrain"
    world_seed: int = 1000  # the pretraining world's seed (its scenes are not the benchmark's)
    samples: int = 1536  # training scenes (4x the quick profile's training split)
    epochs: int = 10
    seed: int = 0  # the pretraining's training seed (init, order, augmentation)
    size: int = 64
    batch_size: int = 16
    lr: float = 2e-3

    def check(self) -> None:
        for key in ("samples", "epochs", "size", "batch_size", "lr"):
            _positive(f"model.pretrain.{key}", getattr(self, key))
        if not 0 <= self.world_seed < 2**32:
            raise ConfigError(f"model.pretrain.world_seed={self.world_seed} must be in [0, 2**32) (one word of the "
                              f"synthetic scenes' seed sequence)")
        if self.size % 32:
            raise ConfigError(f"model.pretrain.size={self.size} must be a multiple of 32 (the encoder's stride)")
        if self.samples < self.batch_size:
            raise ConfigError(f"model.pretrain.samples={self.samples} is smaller than model.pretrain.batch_size="
                              f"{self.batch_size}; give at least one batch of scenes")


@dataclass(frozen=True)
class ModelConfig(_Checked):
    """The network. `arch`: `segformer` (the workbench's `Segmentor`: every method of the paper's ablation),
    or a comparator of the paper's main table, `cmnext` (`workbench.models.cmnext`) or `magic`
    (`workbench.models.magic`, re-implemented from the paper)."""

    _section = "model"
    arch: Arch = "segformer"
    encoder: str = "mit_tiny"  # mit_tiny | mit_b0..mit_b5 | any timm features_only model (cmnext: MiT only)
    weights: str | None = None  # local official MiT checkpoint (see `workbench weights import-mit`)
    shared_encoder: bool = False  # one set of encoder weights for all modalities (public code)
    fusion: Fusion = "mean"
    head_dim: int = 64  # SegFormer MLP-head width E (768 in the public code, 256 in SegFormer-B0)
    head_dropout: float = 0.1
    drop_path: float = 0.0
    cmnext_public_residual: bool = False  # cmnext: the public code's scrambling residual (see CMNeXt's docstring)
    magic_mlp_ratio: float = 1.0  # magic: hidden width of MAM's and ASM's MLPs, as a multiple of the stage width
    init: ModelInit = "scratch"  # pretrained: every encoder starts from the synthetic world's RGB encoder
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # what `pretrained` is (init=pretrained only)

    def check(self) -> None:
        if self.init == "pretrained" and self.weights is not None:
            raise ConfigError(f"model.init='pretrained' starts the encoders from the synthetic world's RGB encoder and "
                              f"model.weights={self.weights!r} from a file: choose one (model.weights=None, or "
                              f"model.init=scratch)")
        _positive("model.head_dim", self.head_dim)
        _unit("model.head_dropout", self.head_dropout)
        _unit("model.drop_path", self.drop_path)
        _positive("model.magic_mlp_ratio", self.magic_mlp_ratio)
        if self.arch != "segformer" and self.fusion != "mean":
            raise ConfigError(f"model.fusion={self.fusion!r} applies to the segformer arch only; model.arch="
                              f"{self.arch!r} fuses with its own modules: set model.fusion=mean")
        if self.arch == "cmnext" and self.shared_encoder:
            raise ConfigError("model.shared_encoder=True does not apply to model.arch='cmnext' (an RGB branch and "
                              "one hub branch for the other modalities); set model.shared_encoder=false")


@dataclass(frozen=True)
class TrainConfig(_Checked):
    _section = "train"
    seed: int = 0
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.01  # none on 1-D parameters (norms, biases)
    warmup_epochs: float = 1.0
    poly_power: float = 0.9
    grad_clip: float | None = None
    loss: SegLoss = "ce"
    ohem_thresh: float = 0.7
    protocol: Protocol = "drop"  # how the student's absent modalities are treated
    val_every: int = 1  # epochs between validations; 0: only after the last epoch
    ckpt_every: int = 1  # epochs between checkpoints
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Amp = "auto"  # auto = bf16 on CUDA, off on CPU
    channels_last: bool = True  # CUDA only
    compile: bool = False
    max_steps: int | None = None  # stop early (smoke runs, benchmarks)
    sync_bn: bool = False  # DDP only
    log: MetricsLog = "jsonl"  # tensorboard: also TensorBoard event files in the run folder (pip install -e .[tensorboard])
    log_every: int = 20  # steps whose metrics records are copied to the host at once (every step is recorded)

    def check(self) -> None:
        for key in ("epochs", "lr", "ckpt_every", "log_every"):
            _positive(f"train.{key}", getattr(self, key))
        for key in ("weight_decay", "warmup_epochs", "poly_power", "val_every"):
            _positive(f"train.{key}", getattr(self, key), allow_zero=True)
        if self.grad_clip is not None:
            _positive("train.grad_clip", self.grad_clip)
        if not 0 < self.ohem_thresh < 1:
            raise ConfigError(f"train.ohem_thresh={self.ohem_thresh} must be in (0, 1)")
        check_device(self.device, "train.device")
        if self.max_steps is not None:
            _positive("train.max_steps", self.max_steps)


# What `distill.conventions` means for the fields left at None (docs/METHOD.md, "Paper conventions and
# public-code conventions"): the paper's equations, or the public code's conventions.
CONVENTIONS: dict[str, dict[str, str]] = {
    "paper": {"kd_pixels": "valid", "cp_pairing": "permutation", "cp_prototypes": "masked",
              "ifv_divergence": "kl_spatial"},
    "public": {"kd_pixels": "all", "cp_pairing": "iid", "cp_prototypes": "public", "ifv_divergence": "kl_width"},
}


_ANYSEG_WEIGHTS = ("kd_weight", "umd_weight", "cmd_weight")  # the weighted terms of AnySeg's objective


@dataclass(frozen=True)
class DistillConfig(_Checked):
    """A distillation student's losses. `method="robustseg"` (docs/METHOD.md, "The objectives"):
    L_hp = L_CE + lambda L_KL + alpha L_cp + beta L_ifv, and the feedback step on the teacher;
    `method="anyseg"`: AnySeg's L_CE + lambda L_KL + UMD + CMD (docs/METHOD.md, "The paper's ablation and
    main table"). Fields that default to None follow `conventions` (`option(name)` gives the value in use)."""

    _section = "distill"
    enabled: bool = False  # False: the baseline / teacher (all modalities, CE only)
    method: DistillMethod = "robustseg"  # the student objective: RobustSeg's L_hp, or AnySeg's (below)
    conventions: Conventions = "paper"  # one switch: the paper's conventions or the public code's
    dropout: DropoutMode = "sample"  # Anymodal Dropout
    dropout_p_full: float | None = None  # P(every modality kept); None: the paper's law (k uniform in 1..M: 1/M)
    student_init: StudentInit = "from_teacher"  # the student starts as the trained teacher, or as it began
    epochs: int | None = None  # the student's epochs after the teacher's train.epochs; None: train.epochs
    kd_weight: float = 50.0  # lambda (paper)
    kd_temperature: float = 1.0
    kd_reduction: KDReduction = "element"  # mean over K*pixels (public code; lambda=50 was tuned to it)
    kd_pixels: KDPixels | None = None  # paper: labelled pixels; public: every pixel
    cp_weight: float = 100.0  # alpha (paper); 0 disables CPD
    cp_pairing: Pairing | None = None  # paper: a permutation per sample; public: i.i.d. per (sample, stage, slot)
    cp_prototypes: Prototypes | None = None  # paper: absent classes masked; public: divided by the count twice
    cp_divergence: ProtoDivergence = "kl_class"
    cp_temperature: float = 1.0
    ifv_weight: float = 12.0  # beta (paper); 0 disables IFV distillation
    ifv_modalities: IFVModalities = "primary"  # primary (ASM) | all | cross (the paper's negative row)
    ifv_divergence: IFVDivergence | None = None  # paper: KL over all h*w; public: softmax along the width
    ifv_temperature: float = 2.0
    aggregation: Aggregation = "sum"  # L_cp, L_ifv: summed over stages and modalities, 1/B (paper and public)
    stages: tuple[int, ...] = (0, 1, 2, 3)  # encoder stages that the prototype losses use
    asm_stage: AsmStage = "last"
    weighting: Weighting = "paper"  # lambda/alpha/beta as written, or set by gradient shares (methods.robustseg)
    weights_resolved: bool = False  # gradient_share: the rule's lambda/alpha/beta are written in (workbench.runs)
    share_kd: float | None = None  # gradient_share: |grad lambda L_KL| / |grad L_CE| (None keeps kd_weight)
    share_cp: float = 0.5  # gradient_share: |grad alpha L_cp| / |grad lambda L_KL|
    share_ifv: float = 0.5  # gradient_share: |grad beta L_ifv| / |grad lambda L_KL|
    probe_batches: int = 8  # gradient_share: training batches the gradient norms are averaged over
    feedback: bool = False  # student -> teacher step on the teacher's non-primary encoders
    feedback_lr_scale: float = 0.1  # 6e-6 / 6e-5 in the paper
    teacher: str | None = None  # checkpoint path; None = train/reuse the cached baseline
    # AnySeg (method="anyseg"): L = L_CE + lambda L_KL + umd_weight L_UMD + cmd_weight L_CMD
    # (workbench.losses, "AnySeg (comparator)"); its weights are not public, both default to 1
    umd_weight: float = 1.0
    cmd_weight: float = 1.0
    anyseg_axis: AnySegAxis = "height"  # the softmax axis of UMD and CMD (public code: height)
    cmd_features: CMDFeatures = "softmax"
    cmd_reduction: CMDReduction = "sample"  # per-sample mean (intended) or the public loop's last-iteration loss

    def check(self) -> None:
        for f in fields(self):  # every loss weight and gradient share (share_kd: None, or > 0 below)
            if f.name.endswith("_weight") or (f.name.startswith("share_") and f.name != "share_kd"):
                _positive(f"distill.{f.name}", getattr(self, f.name), allow_zero=True)
        for key in ("kd_temperature", "cp_temperature", "ifv_temperature", "feedback_lr_scale", "probe_batches"):
            _positive(f"distill.{key}", getattr(self, key))
        if self.share_kd is not None:
            _positive("distill.share_kd", self.share_kd)
        if self.epochs is not None:
            _positive("distill.epochs", self.epochs)
        if self.dropout_p_full is not None and not 0 <= self.dropout_p_full <= 1:
            raise ConfigError(f"distill.dropout_p_full={self.dropout_p_full} must be in [0, 1] (or None: the paper's law)")
        if self.weights_resolved and self.weighting != "gradient_share":
            raise ConfigError("distill.weights_resolved=True marks weights chosen by the gradient_share rule; with "
                              f"distill.weighting={self.weighting!r} the weights are as written: set "
                              "distill.weights_resolved=false")
        if not self.stages or any(s not in (0, 1, 2, 3) for s in self.stages):
            raise ConfigError(f"distill.stages={self.stages!r} must be a non-empty subset of 0,1,2,3")
        if self.method == "anyseg":
            used = [f"distill.{f.name}={getattr(self, f.name)}" for f in fields(self)
                    if f.name.endswith("_weight") and f.name not in _ANYSEG_WEIGHTS and getattr(self, f.name)]
            if used or self.feedback:
                raise ConfigError(f"distill.method='anyseg' has no {', '.join(used) or 'feedback'} term (its losses "
                                  f"are CE, KD, UMD and CMD); set distill.cp_weight=0, distill.ifv_weight=0 and "
                                  f"distill.feedback=false, or use distill.method=robustseg")

    def option(self, name: str) -> str:
        """The value in use of a convention-dependent field: its own, or the one `conventions` sets."""
        value = getattr(self, name)
        return CONVENTIONS[self.conventions][name] if value is None else value


@dataclass(frozen=True)
class MagicConfig(_Checked):
    """MAGIC's objective (`workbench.models.magic.magic_losses`, used when model.arch='magic'):
    L = seg(aggregated) + selected_weight seg(selected) + consistency_weight L_con. The paper gives no
    weights: both default to 1. `dropout`: Anymodal Dropout on top (MAGIC trains on every modality)."""

    _section = "magic"
    selected_weight: float = 1.0
    consistency_weight: float = 1.0
    dropout: DropoutMode = "none"

    def check(self) -> None:
        for key in ("selected_weight", "consistency_weight"):
            _positive(f"magic.{key}", getattr(self, key), allow_zero=True)


# DistillConfig fields that only AnySeg's objective reads (left out of the hash of RobustSeg students)
_ANYSEG_FIELDS = ("method", "umd_weight", "cmd_weight", "anyseg_axis", "cmd_features", "cmd_reduction")


@dataclass(frozen=True)
class Config(_Checked):
    name: str = "baseline"
    profile: str = "quick"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    magic: MagicConfig = field(default_factory=MagicConfig)

    def check(self) -> None:
        check_name("name", self.name)  # both name the run's folder (workbench.runs.cache_dir)
        check_name("profile", self.profile)
        if self.distill.enabled and self.model.arch != "segformer":
            trained = "with MAGIC's own objective" if self.model.arch == "magic" else "supervised"
            raise ConfigError(f"distill.enabled=True needs model.arch='segformer' (students and teachers are "
                              f"Segmentors); model.arch={self.model.arch!r} is trained {trained}: set "
                              f"distill.enabled=false")
        if self.distill.feedback and not self.distill.enabled:
            raise ConfigError("distill.feedback=True needs distill.enabled=True (feedback runs in the student loop)")
        if self.distill.feedback and self.model.shared_encoder:
            raise ConfigError(
                "distill.feedback=True with model.shared_encoder=True: the feedback step updates only the "
                "teacher's non-primary encoders, which needs one encoder per modality; set "
                "model.shared_encoder=False or distill.feedback=False")
        p = self.model.pretrain
        if self.model.init == "pretrained" and self.data.dataset == "synthetic" and self.data.synthetic_seed == p.world_seed:
            raise ConfigError(f"model.init='pretrained' with data.synthetic_seed={self.data.synthetic_seed} = "
                              f"model.pretrain.world_seed: the encoders would be pretrained on the benchmark's own "
                              f"world; give model.pretrain.world_seed another value")

    @property
    def epochs(self) -> int:
        """The epochs this run trains: a student's `distill.epochs` (it continues a teacher trained for
        `train.epochs`), else `train.epochs`."""
        if self.distill.enabled and self.distill.epochs is not None:
            return self.distill.epochs
        return self.train.epochs

    @property
    def method(self) -> TrainMethod:
        """The training method this config describes (`workbench.methods.METHODS`): `magic` for
        model.arch='magic', else `supervised` without distillation, else distill.method."""
        if self.model.arch == "magic":
            return "magic"
        return self.distill.method if self.distill.enabled else "supervised"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        data = d.get("data") if isinstance(d, dict) else None
        if isinstance(data, dict) and "pipeline" not in data and data.get("dataset", "synthetic") != "synthetic":
            # a real-data config written before named pipelines existed was trained with today's "workbench" ones
            d = {**d, "data": {**data, "pipeline": "workbench"}}
        return _from_dict(cls, d, "")

    def teacher_config(self) -> Config:
        """The baseline run this student distils from: same data, model and schedule, no distillation."""
        return replace(self, name="baseline", distill=DistillConfig())

    def hash(self) -> str:
        """Stable identity for caching: everything that changes the trained weights."""
        d = self.to_dict()
        d.pop("name"), d.pop("profile")
        for k in ("device", "val_every", "ckpt_every", "log", "log_every"):
            d["train"].pop(k)
        d["data"].pop("num_workers")
        if not self.distill.enabled:  # a baseline is the same run whatever the (unused) loss weights say
            d["distill"] = {"enabled": False}
        elif self.distill.method == "robustseg":  # nor does a RobustSeg student read AnySeg's options
            for k in _ANYSEG_FIELDS:
                d["distill"].pop(k)
        if self.distill.weighting == "paper":  # the weights are as written (the field counts for gradient_share)
            d["distill"].pop("weights_resolved", None)
        for k in ("epochs", "dropout_p_full"):  # options added later count only when set
            if d["distill"].get(k, 0) is None:
                d["distill"].pop(k)
        # options of the comparators' architectures and objectives count only where they are used (so a
        # config of the segformer arch hashes as it did before they existed)
        if self.model.arch == "segformer":
            d["model"].pop("arch")
        if self.model.arch != "cmnext":
            d["model"].pop("cmnext_public_residual")
        else:  # the RGB branch's LayerNorm eps became the public 1e-5 (was timm's 1e-6): older runs retrain
            d["model"]["cmnext_rgb_ln_eps"] = 1e-5
        if self.model.arch != "magic":
            d["model"].pop("magic_mlp_ratio")
            d.pop("magic")
        if self.model.init == "scratch":  # so configs written before pretraining existed keep their hash
            d["model"].pop("init"), d["model"].pop("pretrain")
        else:  # the pretraining run's own identity: its spec, the encoder and the renderer's version
            d["model"]["pretrain"] = {"config": pretraining_config(self.model).hash()}
        if self.data.dataset == "synthetic":  # regenerated data must not hit an old cache
            from workbench.data.synthetic import VERSION

            d["data"]["synthetic_version"] = VERSION
            if self.data.pipeline is None:  # the synthetic data has one pipeline: naming it changes nothing
                d["data"].pop("pipeline")
        elif self.data.dataset == "mcubes" and self.data.pipeline in (None, "reference"):
            d["data"]["label_resize"] = "opencv"  # its labels follow OpenCV's nearest rule now: older runs retrain
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def pretraining_config(model: ModelConfig) -> Config:
    """The run that pretrains the encoder of `model` (`model.pretrain`; `workbench.pretrain` trains it): the
    RGB-only baseline (CE) on the pretraining world, with the same encoder architecture and the workbench's
    default head, validated once at its end."""
    p = model.pretrain
    return Config(
        name="pretrain", profile="pretrain",
        data=DataConfig(dataset="synthetic", modalities=("rgb",), size=p.size, train_samples=p.samples,
                        val_samples=128, test_samples=128, batch_size=p.batch_size, synthetic_seed=p.world_seed),
        model=ModelConfig(encoder=model.encoder),
        train=TrainConfig(seed=p.seed, epochs=p.epochs, lr=p.lr, warmup_epochs=1.0, val_every=0),
    )


def _coerce(key: str, typ: Any, value: Any) -> Any:
    """`value` as type `typ` (the field's annotation), or a ConfigError naming `key`."""
    origin, args = get_origin(typ), get_args(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, typ):
            raise ConfigError(f"{key} must be a {typ.__name__}, got {type(value).__name__}")
        return value
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
            raise ConfigError(f"{key} may not be None")
        return _coerce(key, next(a for a in args if a is not type(None)), value)
    if value is None:
        raise ConfigError(f"{key} may not be None")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        return tuple(_coerce(key, args[0], v) for v in value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r} must be a boolean (true/false)")
    if typ in (int, float):
        # One rule for every route (--set text, a --config JSON number, a Python value): an integer field
        # takes integers only, written without a decimal point or exponent (10, not 10.0, 1e1 or 1e308).
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be {'an integer' if typ is int else 'a number'}")
        if typ is int:
            if isinstance(value, numbers.Integral) or (isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value)):
                return int(value)
            raise ConfigError(f"{key}={value!r} must be an integer, written without a decimal point or exponent "
                              f"(e.g. {key}=10)")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}={value!r} must be a number") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    return value


def _from_dict(cls: type, d: dict, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '(top)'} must be a mapping, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{sorted(unknown)[0]}; valid keys: {', '.join(sorted(names))}")
    kwargs = {name: _from_dict(hints[name], value, f"{prefix}{name}.") if dataclasses.is_dataclass(hints[name])
              else value for name, value in d.items()}
    return cls(**kwargs)


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any] | None) -> Config:
    """A new config with `section.key=value` overrides (CLI `--set`) applied and checked."""
    if not overrides:
        return cfg
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


def overrides_dict(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`--set`-style overrides (a list of `section.key=value`, or a dict) as a dict, each item checked as
    `apply_overrides` checks it (a ConfigError for an item without `=`)."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    return dict(_split(str(o)) for o in overrides)


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=5")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


# ----------------------------------------------------------------------------------------------
# Presets. Profiles set the scale; methods set the losses; TUNED holds per-profile tuned weights.

def _profile_tiny() -> Config:
    """Seconds on a CPU: unit tests and the smoke suite."""
    return Config(
        profile="tiny",
        data=DataConfig(size=32, train_samples=16, val_samples=8, test_samples=8, batch_size=4, augment=False),
        model=ModelConfig(encoder="mit_tiny", head_dim=16),
        train=TrainConfig(epochs=2, lr=2e-3, warmup_epochs=0.5),
    )


def _profile_quick() -> Config:
    """The synthetic study on 2 CPU cores, in the paper's regime: every encoder starts from the synthetic
    world's pretrained RGB encoder (`model.init=pretrained`, docs/BENCHMARK.md section 6; `scratch` is one
    switch away), the teacher trains 40 epochs and every student continues it for 10 (`distill.epochs`;
    docs/BENCHMARK.md, "7. Converged teachers": the plateau rule reads the teacher's val curve). ASM averages its similarity over the four stages: at this scale last-stage features are nearly
    constant per modality, so the last stage's cosine with the fused feature measures fixed offsets
    (docs/BENCHMARK.md, "4. Reading the table")."""
    return Config(
        profile="quick",
        data=DataConfig(size=64, train_samples=384, val_samples=128, test_samples=256, batch_size=16),
        model=ModelConfig(encoder="mit_tiny", head_dim=64, init="pretrained"),
        train=TrainConfig(epochs=40, lr=2e-3, warmup_epochs=1.0, val_every=4),
        distill=DistillConfig(asm_stage="all", epochs=10),
    )


def _profile_study() -> Config:
    """The claim table's scale: the quick benchmark with the teacher trained twice as long (80 epochs, towards
    the plateau of docs/BENCHMARK.md section 7), the students continuing it for 10 epochs."""
    cfg = _profile_quick()
    return replace(cfg, profile="study", train=replace(cfg.train, epochs=80, val_every=8))


def _profile_paper() -> Config:
    """DeLiVER at the paper's scale (docs/DATASETS.md "DeLiVER", docs/METHOD.md): for GPUs."""
    return Config(
        profile="paper",
        data=DataConfig(dataset="deliver", root="data/DELIVER", size=1024, eval_size=1024, batch_size=2,
                        num_workers=4),
        model=ModelConfig(encoder="mit_b0", head_dim=768),
        train=TrainConfig(epochs=120, lr=6e-5, warmup_epochs=10.0, loss="ohem", val_every=5, ckpt_every=1),
    )


PROFILES = {"tiny": _profile_tiny, "smoke": _profile_tiny, "quick": _profile_quick, "study": _profile_study,
            "paper": _profile_paper}

# Loss weights tuned for a profile (on its val split, never on test), applied on top of the paper's
# defaults by `preset`: profile -> {config key: (value, where it was tuned)}.
TUNED: dict[str, dict[str, tuple[Any, str]]] = {
    "quick": {
        "distill.cp_weight": (1.0, "hpd, seed 0, val EMM (drop): alpha in {1, 10, 100} x beta in {12, 100}; "
                                   "figures/sweep_hpd_quick.csv (alpha <= 10 within 0.3 points, alpha = 100 -1.8)"),
        "distill.ifv_weight": (12.0, "the same sweep (the paper's beta)"),
    },
}

# Method presets: the rows of the paper's ablation table (docs/METHOD.md) and the comparators of its main
# table, each a set of `section.key` overrides applied on top of the profile (and its TUNED weights).
def _distill(**fields: Any) -> dict[str, Any]:
    return {f"distill.{k}": v for k, v in fields.items()}


PRESETS: dict[str, dict[str, Any]] = {
    "baseline": _distill(enabled=False),  # M-SegFormer: all modalities, CE (the paper profile: OHEM)
    "basic_kd": _distill(enabled=True, cp_weight=0.0, ifv_weight=0.0),
    "ifv_single": _distill(enabled=True, cp_weight=0.0, ifv_modalities="all"),
    "ifv_cross": _distill(enabled=True, cp_weight=0.0, ifv_modalities="cross"),
    "cpd": _distill(enabled=True, ifv_weight=0.0),
    "ifv_cpd": _distill(enabled=True, ifv_modalities="all"),
    "hpd": _distill(enabled=True, ifv_modalities="primary"),
    "robustseg": _distill(enabled=True, ifv_modalities="primary", feedback=True),
    # Compute-matched controls (docs/METHOD.md, "Controls"): students of the same teacher, trained as long, with
    # no distillation term: CE on every modality (the teacher trained longer), and CE under Anymodal Dropout
    "baseline_long": _distill(enabled=True, kd_weight=0.0, cp_weight=0.0, ifv_weight=0.0, dropout="none"),
    "dropout_only": _distill(enabled=True, kd_weight=0.0, cp_weight=0.0, ifv_weight=0.0),
    # An approximation of AnySeg built from RobustSeg's losses (single-modal distillation, Anymodal Dropout,
    # no cross-modal term): each modality's prototypes and IFV maps distilled from the same modality of the
    # teacher. Kept for the ablation; `anyseg` below is AnySeg's own objective.
    "anyseg_approx": _distill(enabled=True, cp_pairing="same", ifv_modalities="all"),
    # AnySeg (main table): a shared-encoder student distilled from the full-modality shared-encoder baseline
    # with CE + 50 KL (element mean) + UMD + CMD, Anymodal Dropout per sample, no feedback
    "anyseg": {"model.shared_encoder": True,
               **_distill(enabled=True, method="anyseg", kd_weight=50.0, kd_reduction="element", dropout="sample",
                          cp_weight=0.0, ifv_weight=0.0, feedback=False)},
    # CMNeXt (main table): RGB branch + self-query hub, trained supervised with OHEM as in DELIVER's configs
    "cmnext": {"model.arch": "cmnext", "train.loss": "ohem"},
    # MAGIC (main table, re-implemented from the paper): shared encoder, MAM + ASM, its own objective
    "magic": {"model.arch": "magic", "model.shared_encoder": True},
}


def preset(name: str, profile: str | None = None) -> Config:
    """A named preset. Profiles (`tiny`/`smoke`, `quick`, `paper`) alone give the baseline at that
    scale; methods (`baseline`, `basic_kd`, ..., `robustseg`, `anyseg_approx`, and the comparators `anyseg`,
    `cmnext`, `magic`) take `profile` (default quick). The profile's `TUNED` weights apply to the methods
    whose losses use them."""
    if name in PROFILES:
        if profile is not None and profile != name:
            raise ConfigError(f"preset {name!r} is itself a profile; drop --profile {profile!r}")
        profile, method = name, "baseline"
    elif name in PRESETS:
        profile, method = profile or "quick", name
    else:
        raise UnknownName(f"unknown preset {name!r}; valid presets: {', '.join(list(PROFILES) + list(PRESETS))}")
    if profile not in PROFILES:
        raise UnknownName(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    profile = "tiny" if profile == "smoke" else profile
    tuned = {k: v for k, (v, _) in TUNED.get(profile, {}).items()}
    return replace(apply_overrides(PROFILES[profile](), {**tuned, **PRESETS[method]}), name=method, profile=profile)
