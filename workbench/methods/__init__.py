"""Training methods: what one step computes, one module each, and `METHODS`, the one registry that maps
a config's training method (`Config.method`) to its class (docs/EXTENDING.md says how to add one).

- `supervised`: the baseline / teacher (and CMNeXt, a model without an objective of its own);
- `robustseg`: RobustSeg's student (`Distiller`: Anymodal Dropout, KD, CPD, IFV, feedback; `TERMS`);
- `anyseg`: AnySeg's student (a comparator of the main table);
- `magic`: MAGIC's objective (a comparator, re-implemented from the paper).

`build_method` is the one place that builds the method a config describes, with its models on a device.
"""

from __future__ import annotations

import torch

from workbench.checkpoint import load_state_strict
from workbench.config import Config
from workbench.errors import ConfigError
from workbench.methods.anyseg import AnySegDistiller
from workbench.methods.base import Draws, Method, Student, dropout_mask, inputs_of, segmentation_loss
from workbench.methods.magic import MagicMethod
from workbench.methods.robustseg import TERMS, Distiller
from workbench.methods.supervised import Supervised
from workbench.models import build_model, load_model
from workbench.options import TrainMethod

__all__ = ["METHODS", "build_method", "Method", "Student", "Supervised", "Distiller", "AnySegDistiller",
           "MagicMethod", "Draws", "TERMS", "dropout_mask", "inputs_of", "segmentation_loss"]

# Config.method -> the class that trains it (a subclass of `Method`; `needs_teacher`: a distillation student)
METHODS: dict[TrainMethod, type[Method]] = {
    "supervised": Supervised,
    "robustseg": Distiller,
    "anyseg": AnySegDistiller,
    "magic": MagicMethod,
}


def build_method(cfg: Config, train_ds, device: torch.device, ctx=None, teacher_checkpoint=None) -> Method:
    """The method `cfg` describes (`Config.method`, looked up in `METHODS`), its network built from `model`
    (`workbench.models.build_model`) on `device`. A student (`needs_teacher`) gets the teacher loaded from
    `teacher_checkpoint` (or `distill.teacher`) and starts as the trained teacher (`distill.student_init=
    from_teacher`, "initialized identically"; the same for AnySeg's student) or from the weights the teacher
    started from (`same_init`: built from the same seed in the same order as in the teacher's run)."""
    cls = METHODS[cfg.method]
    model = build_model(cfg.model, train_ds.modalities, train_ds.num_classes)
    if not cls.needs_teacher:
        return cls(cfg, model.to(device), ctx=ctx)
    teacher_checkpoint = teacher_checkpoint or cfg.distill.teacher
    if teacher_checkpoint is None:
        raise ConfigError("a distillation run needs a teacher: pass teacher_checkpoint or set distill.teacher, or use "
                          "workbench.runs.Run.from_config(cfg).ensure(), which trains or reuses the cached baseline")
    teacher = load_model(teacher_checkpoint, device)
    if teacher.modalities != tuple(train_ds.modalities):
        raise ConfigError(f"teacher modalities {teacher.modalities} differ from the data's {train_ds.modalities}; "
                          f"distil from a teacher trained on the same modalities")
    if cfg.distill.student_init == "from_teacher":
        load_state_strict(model, teacher.state_dict(), "student (initialized from the teacher)")
    return cls(cfg, model.to(device), teacher, ctx=ctx)
