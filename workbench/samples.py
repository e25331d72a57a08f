"""One sample or one batch through a model: evaluation data of a run's config, the sample as the
sensors gave it ([0, 1], re-rendered with a chosen synthetic condition or failure case), its
prediction under a modality subset, its mIoU and error map. Used by the sliders, predict and analysis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench.config import Config
from workbench.data import collate, dataset_from_config, denormalize
from workbench.data.transforms import IGNORE_INDEX, eval_transform, normalize
from workbench.errors import DataError
from workbench.evaluate import confusion_matrix, miou
from workbench.options import Protocol

__all__ = ["eval_dataset", "class_info", "load_batch", "raw_sample", "normalize_inputs", "predict", "sample_miou",
           "error_map"]


def eval_dataset(cfg: Config, split: str = "test"):
    """The evaluation dataset of a run's config (normalized, resized, no augmentation)."""
    return dataset_from_config(cfg.data, split, augment=False)

def class_info(cfg: Config, split: str = "test") -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """(class names, palette) of a config's dataset."""
    ds = eval_dataset(cfg, split)
    return tuple(ds.classes), tuple(tuple(c) for c in ds.palette)

def load_batch(cfg: Config, split: str, indices: Sequence[int]) -> dict:
    """The samples `indices` of a split as one normalized batch."""
    ds = eval_dataset(cfg, split)
    bad = [i for i in indices if not 0 <= i < len(ds)]
    if bad:
        raise DataError(f"sample index {bad[0]} is out of range for the {split} split ({len(ds)} samples)")
    return collate([ds[i] for i in indices], ds.modalities)

def raw_sample(cfg: Config, split: str = "test", index: int = 0, case: str | None = "auto",
               condition: str | None = None) -> dict:
    """One evaluation sample with every modality in [0, 1] (as the sensor gave it), its label and meta.

    Synthetic data is re-rendered with the chosen sensor-failure `case` (`"auto"`: the sample's own draw,
    None: no failure, or one of `workbench.data.synthetic.CASES`) and weather `condition` (None: the
    sample's own). Real datasets have fixed recordings: only `case="auto"` and `condition=None`."""
    size = cfg.data.eval_size or cfg.data.size
    if cfg.data.dataset == "synthetic":
        from workbench.data import synthetic as syn

        r = syn.render_sample(cfg.data.synthetic_seed, split, index, cfg.data.size, condition, case)
        sample = {m: torch.from_numpy(r[m]) for m in syn.MODALITIES} | {"label": torch.from_numpy(r["label"])}
        sample = eval_transform(size)(sample, torch.Generator())  # the evaluation resize, then normalize
        mods = cfg.data.modalities or syn.MODALITIES
        meta = r["meta"]
    else:
        if case != "auto" or condition is not None:
            raise DataError(f"{cfg.data.dataset} samples are recordings: they cannot be re-rendered with "
                             f"case={case!r} / condition={condition!r}; use case='auto', condition=None")
        ds = eval_dataset(cfg, split)
        sample, mods = ds[index], ds.modalities
        meta = sample["meta"]
    return {"modalities": tuple(mods), "inputs": {m: denormalize(sample[m], m) for m in mods},
            "label": sample["label"], "meta": meta}

def normalize_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """[0, 1] modality tensors (C, H, W) -> a normalized batch of one (1, C, H, W) per modality."""
    return {m: x[None] for m, x in normalize(dict(inputs)).items()}

@torch.no_grad()
def predict(model, inputs: dict[str, torch.Tensor], modalities: Sequence[str] | None = None,
            protocol: Protocol = "drop"):
    """(prediction (B, H, W) long, SegOutput) of `model` given the present `modalities` (default all)."""
    dev = next(model.parameters()).device
    inputs = {m: x.to(dev) for m, x in inputs.items()}
    b = inputs[model.modalities[0]].shape[0]
    keep = model.modalities if modalities is None else tuple(modalities)
    present = torch.tensor([[m in keep for m in model.modalities]] * b, device=dev)
    out = model(inputs, present, protocol)
    return out.logits.argmax(1).cpu(), out

def sample_miou(pred: torch.Tensor, label: torch.Tensor, num_classes: int, convention: str = "present") -> float:
    """mIoU (%) of one prediction. `present` (default for one sample): mean over classes that occur in
    the label or the prediction; `deliver` would count every absent class as 0."""
    return miou(confusion_matrix(pred, label, num_classes), convention)

def error_map(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(H, W) int: 0 correct, 1 wrong, 2 ignored (unlabelled) pixel."""
    err = (pred != label).long()
    return torch.where(label == IGNORE_INDEX, torch.full_like(err, 2), err)
