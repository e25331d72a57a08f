"""Every named option of the workbench, declared once as a `Literal` alias.

The config fields are typed with these aliases (so `Config` validates against them) and the modules
that branch on an option import the same alias, so a new value is added in one place. `choices(Alias)`
gives the valid values; `check(name, value, Alias)` raises a `ConfigError` that lists them.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from workbench.errors import ConfigError

# data
DatasetName = Literal["synthetic", "deliver", "muses", "mcubes"]
DepthSource = Literal["hha", "depth"]  # DeLiVER: 3-channel HHA (reference loader) or the raw depth/ folder
Split = Literal["train", "val", "test"]
Pipeline = Literal["reference", "workbench"]  # the reference loader's transforms, or the workbench's own
# model
Arch = Literal["segformer", "cmnext", "magic"]  # the Segmentor, or a comparator's architecture (workbench.models)
Fusion = Literal["mean", "softmax"]  # parameter-free mean (public code) or learned per-pixel softmax weights
Protocol = Literal["drop", "zero"]  # an absent modality is not encoded / is zeroed and encoded
ModelInit = Literal["scratch", "pretrained"]  # encoders start at random, or from the synthetic world's RGB encoder
# training
SegLoss = Literal["ce", "ohem"]
Amp = Literal["auto", "bf16", "off"]
MetricsLog = Literal["jsonl", "tensorboard"]  # metrics.jsonl always; tensorboard: TensorBoard event files beside it
# training method: derived from the config (`Config.method`), see workbench.methods.METHODS
TrainMethod = Literal["supervised", "robustseg", "anyseg", "magic"]
# distillation (docs/METHOD.md, "Losses")
DistillMethod = Literal["robustseg", "anyseg"]  # the student objective of a distillation run
DropoutMode = Literal["sample", "batch", "none"]  # Anymodal Dropout per sample, per batch, or off
KDReduction = Literal["element", "pixel"]  # KL mean over B*K*H*W elements (public code) or over pixels
Pairing = Literal["permutation", "derangement", "same", "iid"]  # CPD pairing; iid: the public code's draw
Aggregation = Literal["sum", "mean"]  # L_cp, L_ifv: sum over stages and modalities, 1/B (paper), or a mean
Conventions = Literal["paper", "public"]  # one switch for the paper's or the public code's conventions
KDPixels = Literal["valid", "all"]  # L_KL over labelled pixels (paper) or every pixel (public code)
StudentInit = Literal["from_teacher", "same_init"]  # the student starts as the trained teacher, or as it began
Weighting = Literal["paper", "gradient_share"]  # loss weights: fixed numbers, or set from gradient shares
ProtoDivergence = Literal["kl_class", "cosine"]
Prototypes = Literal["masked", "public"]  # absent classes masked out, or the public code's zero rows
IFVModalities = Literal["primary", "all", "cross"]
IFVDivergence = Literal["kl_spatial", "kl_width", "mse"]
AsmStage = Literal["last", "all"]
# comparators (AnySeg's UMD / CMD, docs/METHOD.md)
AnySegAxis = Literal["height", "channel", "width"]  # the softmax axis of a (C, h, w) map; public code: height
CMDFeatures = Literal["softmax", "public", "raw"]
CMDReduction = Literal["sample", "public"]
# evaluation
Convention = Literal["deliver", "present"]  # mIoU: absent classes count 0 over all K, or nan-mean
Metric = Literal["miou", "macc", "mf1"]
Which = Literal["model", "teacher"]  # a run's trained model, or the teacher stored with a distillation run


def check_device(name: str, key: str = "device") -> str:
    """`name` if it names a device the workbench accepts (auto, cpu, cuda, cuda:N), else a ConfigError. Whether
    the machine has it is `workbench.train.resolve_device`'s question."""
    if not (name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name)):
        raise ConfigError(f"{key}={name!r} is not valid; choose auto, cpu, cuda or cuda:N")
    return name


def choices(alias: Any) -> tuple[str, ...]:
    """The values of a `Literal` alias, in declaration order."""
    return tuple(get_args(alias))


def check(name: str, value: Any, alias: Any) -> Any:
    """`value` if it is one of the alias's values, else a ConfigError naming `name` and the valid values."""
    valid = choices(alias)
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, valid))}")
    return value
