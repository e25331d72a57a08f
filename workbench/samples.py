"""One sample or one batch through a model: evaluation data of a run's config, the sample as the
sensors gave it ([0, 1], re-rendered with a chosen synthetic condition or failure case), its
prediction under a modality subset (or under many subsets from one encoder pass), its mIoU and error
map, each modality's contribution to it (Shapley values over the modalities, docs/METHOD.md "Shapley
values", here of one sample's mIoU), and curated samples of a split by condition or failure case.
Used by the sliders, the classroom app, predict and analysis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench.config import Config
from workbench.data import collate, dataset_from_config, denormalize
from workbench.data.transforms import IGNORE_INDEX, eval_transform, normalize
from workbench.errors import DataError
from workbench.evaluate import confusion_matrix, miou, pixel_argmax, predict_combinations, shapley
from workbench.options import Protocol

__all__ = ["eval_dataset", "class_info", "load_batch", "raw_sample", "normalize_inputs", "predict", "sample_miou",
           "error_map", "predict_subsets", "shapley", "contributions", "CURATED", "curated_samples"]


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


@torch.no_grad()
def predict_subsets(model, inputs: dict, combos: Sequence[tuple[str, ...]], protocol: Protocol = "drop",
                    one_pass: bool | None = None) -> dict[tuple[str, ...], torch.Tensor]:
    """Class maps (B, H, W) of a normalized batch for each modality subset in `combos`. `one_pass=None`: the
    one-pass engine (`workbench.evaluate.predict_combinations`: each encoder once, every subset formed
    from those encodings) for several subsets of a `Segmentor`, one forward per subset otherwise."""
    from workbench.models import Segmentor

    mods = tuple(model.modalities)
    x0 = inputs[mods[0]]
    b, (h, w) = x0.shape[0], x0.shape[-2:]
    combos = [tuple(m for m in mods if m in c) for c in combos]
    if one_pass is None:
        one_pass = isinstance(model, Segmentor) and len(combos) > 1
    out = {}
    if one_pass:
        for _, part, logits in predict_combinations(model, inputs, (protocol,), combos, chunk=len(combos)):
            pred = pixel_argmax(logits).view(len(part), b, h, w)
            out |= {c: pred[i].cpu() for i, c in enumerate(part)}
        return out
    for c in combos:
        present = torch.tensor([[m in c for m in mods]] * b, device=x0.device)
        out[c] = model(inputs, present, protocol).logits.argmax(1).cpu()
    return out

def contributions(values: dict[tuple[str, ...], float], present: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per present modality: its Shapley value over the present set (they add up to the present set's
    value) and the drop of the value when it alone is switched off (v(present) - v(present - m); with one
    modality present, switching it off leaves nothing: the drop is its whole value)."""
    present = tuple(present)
    phi = shapley(values, present)
    full = values[present]
    return {m: {"shapley": phi[m], "drop": full - values.get(tuple(p for p in present if p != m), 0.0)}
            for m in present}

# The classroom's curated samples: (what the teacher sees, meta key, value) picked from a split's meta.
CURATED = (("clear day (sun)", "condition", "sun"), ("night", "condition", "night"), ("fog", "condition", "fog"),
           ("over-exposed camera", "case", "overexposure"), ("rain", "condition", "rain"),
           ("under-exposed camera", "case", "underexposure"), ("motion blur", "case", "motionblur"),
           ("LiDAR jitter", "case", "lidarjitter"))

def curated_samples(cfg: Config, split: str = "test", picks: Sequence[tuple[str, str, str]] = CURATED,
                    scan: int | None = None) -> list[tuple[str, int]]:
    """(name, index) of the first sample of `split` for each pick (a meta key and value: the weather
    condition of a sample without a sensor failure, or the failure case), in order; picks the split does
    not hold are left out. `scan` limits the samples looked at (default: the whole split)."""
    ds = eval_dataset(cfg, split)
    found: dict[str, int] = {}
    for i in range(len(ds) if scan is None else min(scan, len(ds))):
        meta = ds.records[i].meta if hasattr(ds, "records") else ds.load(i)["meta"]  # real: no decoding
        for name, key, value in picks:
            if name in found or meta.get(key) != value:
                continue
            if key == "condition" and meta.get("case", "none") != "none":
                continue  # a weather pick shows the weather alone
            found[name] = i
        if len(found) == len(picks):
            break
    return [(name, found[name]) for name, _, _ in picks if name in found]
