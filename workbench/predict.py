"""Predict: a trained model on a folder of one of the supported datasets, or on a synthetic split, for the
full modality set and any chosen subsets, written as images and a CSV.

    workbench.predict("runs/cache/<run>/final.pt", "data/DELIVER", "out/", modalities=["rgb,depth"])

The input is either a folder laid out like the checkpoint's own dataset (read by that dataset's class in
`workbench.data.DATASETS` with `root=` the folder, the checkpoint's modalities and the evaluation
transform), or a split name (`test`, `val`, `train`) of the checkpoint's synthetic benchmark (for a real
dataset: of the folder in the checkpoint's `data.root`). Per sample and per modality subset (the full set
first, then each subset asked for), in `OUT/<subset>/` (`RDEL`, `RD`, ...):

- `<sample>_prediction.png`: the predicted classes in the dataset's palette, at the evaluation resolution;
- `<sample>_error.png` (labelled samples): white correct, red wrong, grey unlabelled;
- `<sample>_inputs.png`: the inputs side by side as the model received them (a left-out modality black),
  then the label, the prediction and the colour legend.

`OUT/legend.png` is the palette's legend (class name beside each colour); the prediction PNGs themselves
hold only palette colours, so they can be read back as class maps.

`OUT/per_sample.csv` holds each sample's mIoU per subset (the `present` convention of one sample: the
mean over classes in its label or prediction, docs/METHOD.md "mIoU and its two conventions") and
`OUT/summary.csv` each subset's mIoU over all predicted samples (the `deliver` convention, from the
summed confusion matrix, as `evaluate` reports it) beside the mean of the per-sample values.

Missing modalities follow `protocol` (`drop` or `zero`, docs/METHOD.md "Missing modalities"). With
several subsets, the mean-fusion segmentor's one-pass engine (`workbench.evaluate.predict_combinations`)
runs each encoder once per batch and forms every subset from those encodings; any other architecture
gets one forward per subset. The predictions are the same either way (tested).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from workbench.checkpoint import ensure_folder
from workbench.data import DATASETS, Collate, dataset_from_config, denormalize
from workbench.data.real import RealDataset
from workbench.data.transforms import IGNORE_INDEX, RGB_KEYS
from workbench.errors import CheckpointError, ConfigError, DataError, MissingFile, UnknownName
from workbench.evaluate import combo_name, confusion_matrix, miou
from workbench.options import Protocol, Which, check
from workbench.plotting import colorize, error_image, legend_image, modality_image, save_png, tile_images
from workbench.samples import error_map, predict_subsets
from workbench.tables import write_csv

log = logging.getLogger(__name__)

__all__ = ["predict", "PredictResult", "parse_subsets", "predict_subsets", "SPLITS", "check_files"]

SPLITS = ("test", "val", "train")
# (dataset, modality) whose files may be smaller than the label: the loader resamples them (DeLiVER's
# low-resolution event images, `DeliverDataset.read`)
RESAMPLED = {("deliver", "event")}


@dataclass
class PredictResult:
    """What `predict` wrote: the folder, the subsets (full set first), one row per sample and per subset."""

    out: Path
    subsets: list[tuple[str, ...]]
    rows: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    dataset: str = ""
    source: str = ""

    def format(self) -> str:
        lines = [f"{'subset':<10}{'mIoU':>8}{'mean sample mIoU':>18}{'samples':>9}"]
        for r in self.summary:
            lines.append(f"{r['subset']:<10}{_fmt(r['miou']):>8}{_fmt(r['mean_sample_miou']):>18}{r['samples']:>9}")
        return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None or v != v else f"{v:.2f}"


# ---------------------------------------------------------------- arguments
def parse_subsets(subsets, modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """The full set, then each subset asked for ("rgb,depth" or ("rgb", "depth")), in the model's
    modality order, without repeats. An unknown or empty subset is an error naming the valid modalities."""
    modalities = tuple(modalities)
    out = [modalities]
    if isinstance(subsets, str):
        subsets = [subsets]
    for s in subsets or ():
        names = [x.strip() for x in (s.split(",") if isinstance(s, str) else s) if x.strip()]
        if not names:
            raise UnknownName(f"--modalities {s!r} names no modality; give a comma-separated subset of "
                              f"{', '.join(modalities)}, e.g. --modalities {','.join(modalities[:2])}")
        unknown = [x for x in names if x not in modalities]
        if unknown:
            raise UnknownName(f"unknown modality {unknown[0]!r} in --modalities {','.join(names)}; the checkpoint's "
                              f"model takes {', '.join(modalities)}")
        combo = tuple(m for m in modalities if m in names)
        if combo not in out:
            out.append(combo)
    return out


def _layout_of(root: Path) -> str | None:
    """The real dataset whose layout `root` follows (some split lists samples), or None."""
    for name, cls in DATASETS.items():
        if not issubclass(cls, RealDataset):
            continue
        for split in cls.splits:
            try:
                scan = cls.scan(root, split, cls.default_modalities or cls.all_modalities)
            except (DataError, OSError):
                continue
            if scan.listed:
                return name
    return None


def _folder_dataset(cfg, data_cfg, root: Path, split: str | None):
    """The dataset of the checkpoint's kind at `root` (its first split with samples unless `split`)."""
    name = cfg.data.dataset
    cls = DATASETS[name]
    if not issubclass(cls, RealDataset):
        other = _layout_of(root)
        hint = f"; {root} is laid out like {other}: predict it with a checkpoint trained on {other}" if other else ""
        raise CheckpointError(f"input {root} is a folder; give {_accepted(cfg)}{hint}")
    other = _layout_of(root)
    if other is not None and other != name:
        raise CheckpointError(f"{root} is laid out like {other}, but the checkpoint was trained on {name} "
                              f"({len(cls.classes)} classes); give a checkpoint trained on {other}, or a folder "
                              f"laid out like {name} ({cls.layout})")
    data_cfg = dataclasses.replace(data_cfg, root=str(root), case=None)
    if split is not None:
        return dataset_from_config(data_cfg, split, augment=False), split
    problems = []
    for s in (x for x in SPLITS if x in cls.splits):
        try:
            return dataset_from_config(data_cfg, s, augment=False), s
        except DataError as e:
            problems.append(f"{s}: {str(e).splitlines()[0]}")
    raise DataError(f"no split of {root} can be read as {name} ({cls.layout}):\n  " + "\n  ".join(problems))


def _accepted(cfg) -> str:
    """What `--input` may be for a checkpoint of `cfg` (the same words in every message)."""
    splits = ", ".join(SPLITS)
    if cfg.data.dataset == "synthetic":
        return (f"a split name of its synthetic benchmark ({splits}); a checkpoint trained on the synthetic "
                f"benchmark reads no folder")
    return f"a folder laid out like {cfg.data.dataset} (its dataset), or a split name ({splits}) of its data.root"


def _dataset(cfg, modalities, source, split: str | None):
    """(dataset, split, what was read) for a folder or a split name."""
    data_cfg = dataclasses.replace(cfg.data, modalities=tuple(modalities))
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        ds, split = _folder_dataset(cfg, data_cfg, path, split)
        return ds, split, f"{path} ({split} split)"
    if text in SPLITS and split is None:
        if cfg.data.dataset != "synthetic":
            if cfg.data.root is None or not Path(cfg.data.root).expanduser().is_dir():
                raise MissingFile(f"input {text!r} is a split name, but the checkpoint was trained on "
                                  f"{cfg.data.dataset} and its data.root ({cfg.data.root}) is not a folder here; "
                                  f"give the folder of a {cfg.data.dataset} tree as the input")
            return _dataset(cfg, modalities, cfg.data.root, text)
        return dataset_from_config(data_cfg, text, augment=False), text, f"synthetic {text} split"
    if path.exists():
        raise DataError(f"input {path} is a file; give {_accepted(cfg)}")
    raise MissingFile(f"input {text!r} is neither a folder nor a split name; give {_accepted(cfg)}")


def _header(path: Path) -> tuple[tuple[int, int], int, str]:
    """((height, width), channels, mode) of an image or .npy file without decoding its pixels."""
    if path.suffix == ".npy":
        a = np.load(path, mmap_mode="r")
        return tuple(a.shape[:2]), (a.shape[2] if a.ndim == 3 else 1), "npy"
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
            bands = len(im.getbands())
    except OSError as e:
        raise DataError(f"{path}: cannot be read as an image ({e}); re-export or re-extract it") from e
    return (h, w), (3 if mode in ("P", "PA") else bands), mode


def check_files(ds) -> None:
    """Every file of a real dataset against its label: the same pixel size (except files the loader
    resamples) and, for the RGB camera, colour channels. Raises a `DataError` naming the first bad file."""
    if not isinstance(ds, RealDataset):
        return
    for record in ds.records:
        label_path = record.files["label"][0]
        size, _, _ = _header(label_path)
        for m in ds.modalities:
            for path in record.files[m]:
                hw, channels, mode = _header(path)
                if m in RGB_KEYS and channels < 3:
                    raise DataError(f"{path}: the {m} image has {channels} channel(s) (mode {mode}); the model reads "
                                    f"{m} as a colour image: re-export it with 3 channels (RGB)")
                if hw != size and (ds.name, m) not in RESAMPLED:
                    raise DataError(f"{path}: {m} is {hw[1]}x{hw[0]} pixels but its label {label_path} is "
                                    f"{size[1]}x{size[0]}; every modality must be registered to the label's pixel "
                                    f"grid (re-export {m} at the label's resolution)")


# ---------------------------------------------------------------- prediction
def _sample_name(meta: dict, split: str, index: int) -> str:
    name = str(meta.get("file") or f"{split}/{index:06d}")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or f"{split}_{index:06d}"


def _panel(inputs: dict, label, pred, palette, legend: np.ndarray, subset, scale: int) -> np.ndarray:
    tiles, captions = [], []
    for m, x in inputs.items():
        img = modality_image(x)
        tiles.append(img if m in subset else np.zeros_like(img))
        captions.append(m if m in subset else f"{m} (off)")
    tiles += [colorize(label, palette), colorize(pred, palette)]
    captions += ["label", "prediction"]
    panel = tile_images(tiles, captions, scale=scale)
    return tile_images([panel, _pad_to(legend, panel.shape[0])])


def _pad_to(img: np.ndarray, height: int) -> np.ndarray:
    """`img` with white rows below it up to `height` (taller images are left as they are)."""
    extra = height - img.shape[0]
    return np.concatenate([img, np.full((extra, *img.shape[1:]), 255, img.dtype)]) if extra > 0 else img


def predict(checkpoint, input, out, modalities=None, protocol: Protocol = "drop", which: Which = "model",
            split: str | None = None, batch_size: int | None = None, device: str = "auto", limit: int | None = None,
            one_pass: bool | None = None, images: bool = True, progress: bool = True) -> PredictResult:
    """Run the model of `checkpoint` (a checkpoint file or a run folder) on `input` (a folder laid out like
    its dataset, or a split name) and write images and CSVs into `out` (see the module docstring).

    `modalities`: subsets to predict with besides the full set ("rgb,depth" or a list of them);
    `protocol`: how a left-out modality is treated (drop | zero); `which`: model | teacher (a distillation
    run's teacher); `split`: which split of a folder (default: its test split, else val, else train);
    `limit`: only the first samples; `one_pass`: force (True) or forbid (False) the one-pass engine;
    `images=False` writes only the CSVs."""
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from workbench.models import load_model
    from workbench.runs import Run
    from workbench.train import resolve_device

    check("protocol", protocol, Protocol)
    check("which", which, Which)
    for option, value, default in (("--limit", limit, "every sample"), ("--batch-size", batch_size,
                                                                        "the run's batch size")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{option} {value!r} must be a whole number of at least 1 (leave {option} out for "
                              f"{default})")
    out = ensure_folder(out)  # before the model is loaded: a file in the way is one clear line
    run = Run.at(checkpoint)
    state = run.state()
    dev = resolve_device(device)
    model = load_model(state, dev, which)
    model_classes = tuple(state["classes"])
    subsets = parse_subsets(modalities, model.modalities)
    ds, split, source = _dataset(run.config, model.modalities, input, split)
    if tuple(ds.classes) != model_classes:
        raise CheckpointError(f"the checkpoint's model predicts {len(model_classes)} classes ({', '.join(model_classes[:3])}, "
                              f"...) but {source} holds {ds.name} with {len(ds.classes)}; give a checkpoint trained "
                              f"on {ds.name}")
    check_files(ds)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise DataError(f"{source} has no samples to predict")
    loader = DataLoader(Subset(ds, range(n)) if n < len(ds) else ds, batch_size=batch_size or run.config.data.batch_size,
                        collate_fn=Collate(ds.modalities), num_workers=0)
    names = {s: combo_name(s) for s in subsets}
    for s in subsets:
        ensure_folder(out / names[s])
    legend = legend_image(ds.classes, ds.palette)
    if images:
        save_png(out / "legend.png", legend)
    k = len(model_classes)
    cms = {s: torch.zeros(k, k, dtype=torch.long) for s in subsets}
    rows: list[dict] = []
    log.info("predicting %d sample(s) of %s with %s (%s) for %s (%s protocol) -> %s", n, source, run.name, which,
             ", ".join(names.values()), protocol, out)
    index = 0
    for batch in tqdm(loader, desc=f"predict {source}", disable=not progress, leave=False):
        inputs = {m: batch[m].to(dev) for m in model.modalities}
        preds = predict_subsets(model, inputs, subsets, protocol, one_pass)
        for b, meta in enumerate(batch["meta"]):
            label = batch["label"][b]
            labelled = bool((label != IGNORE_INDEX).any())
            name = _sample_name(meta, split, index)
            row = {"sample": name, "file": meta.get("file", ""), "condition": meta.get("condition", ""),
                   "case": meta.get("case", ""), "labelled": labelled}
            shown = {m: denormalize(batch[m][b], m) for m in model.modalities}
            scale = max(1, 128 // label.shape[0])
            for s in subsets:
                pred = preds[s][b]
                folder = out / names[s]
                if labelled:
                    cm = confusion_matrix(pred, label, k)
                    cms[s] += cm
                    row[f"miou_{names[s]}"] = miou(cm, "present")
                else:
                    row[f"miou_{names[s]}"] = None
                if images:
                    save_png(folder / f"{name}_prediction.png", colorize(pred, ds.palette))
                    if labelled:
                        save_png(folder / f"{name}_error.png", error_image(error_map(pred, label)))
                    save_png(folder / f"{name}_inputs.png", _panel(shown, label, pred, ds.palette, legend, s, scale))
            rows.append(row)
            index += 1
    summary = []
    for s in subsets:
        values = [r[f"miou_{names[s]}"] for r in rows if r[f"miou_{names[s]}"] is not None]
        summary.append({"subset": names[s], "modalities": "+".join(s), "protocol": protocol,
                        "miou": miou(cms[s], "deliver") if values else None,
                        "mean_sample_miou": float(np.mean(values)) if values else None, "samples": len(values)})
    files = {"per_sample": write_csv(out / "per_sample.csv", rows), "summary": write_csv(out / "summary.csv", summary)}
    log.info("wrote %d sample(s) x %d subset(s) to %s", len(rows), len(subsets), out)
    return PredictResult(out, subsets, rows, summary, files, ds.name, source)


class _CallableModule(types.ModuleType):
    """`workbench.predict(...)` is this module (the package's attribute once it is imported), so calling
    the module calls `predict`."""

    def __call__(self, *args, **kwargs) -> PredictResult:
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
