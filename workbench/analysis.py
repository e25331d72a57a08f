"""Computation behind the notebooks: training records, samples and degradations, features for t-SNE,
IFV maps and center feature maps, and the teacher's change under feedback (METHOD.md, "Losses" and
"Evaluation"; the notebooks in `notebooks/` only orchestrate these functions and plot).

- Configs: `notebook_overrides` turns a notebook's `dataset` / `data_root` / `device` parameters into
  `--set` overrides, so that notebooks and `python -m workbench` hit the same cached runs.
- Records: `read_metrics` splits a run's `metrics.jsonl` into per-step training rows and validation rows.
- Samples: `raw_sample` gives one evaluation sample in [0, 1] (re-rendered with a chosen synthetic
  sensor-failure case), `normalize_inputs` prepares it for the model, `sample_miou` scores it.
- Degradations (the sliders notebook, the RMM / NM extras of the benchmark): Gaussian and
  salt-and-pepper noise, element dropout, Gaussian blur, applied to the [0, 1] input.
- Features: per-modality stage features, class prototypes or subsampled pixels as t-SNE points,
  silhouette scores by class and by modality; IFV maps and CFMs per modality and stage.
- Feedback: parameter distance per encoder / fusion / head between two models; combination deltas.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workbench import losses as L
from workbench.config import Config
from workbench.data import Collate, collate, dataset_from_config, denormalize
from workbench.data.transforms import IGNORE_INDEX, eval_transform, normalize
from workbench.evaluate import CombinationResults, combo_name, confusion_matrix, miou

NOISE_KINDS = ("gaussian", "salt_pepper")


# ----------------------------------------------------------------------------------------------
# Configs and run records

def notebook_overrides(dataset: str | None = None, data_root: str | None = None, device: str = "auto",
                       overrides: dict | None = None) -> dict:
    """A notebook's data/device parameters as config overrides (`dataset=None` keeps the profile's).
    The device is not part of a run's cache key, so every notebook reuses the same trained runs, and
    `dataset="synthetic", data_root=None` is what the smoke and quick profiles already hold."""
    out = {"train.device": device}
    if dataset is not None:
        out["data.dataset"] = dataset
        out["data.root"] = data_root
    return out | dict(overrides or {})


def resolve_device(device: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_trained(method: str, profile: str, seed: int = 0, overrides: dict | None = None, which: str = "model",
                 device: str = "auto", progress: bool = False):
    """(model in eval mode, its config, the TrainResult): trains `method` (and its teacher) or reuses the
    cached run. `which="teacher"` is the (feedback-updated) teacher stored with a distillation run."""
    from workbench import pipeline, study
    from workbench.methods import load_model

    cfg = study.config_for(method, profile, seed, overrides)
    result = pipeline.run(cfg, progress=progress)
    return load_model(result.checkpoint, resolve_device(device), which), cfg, result


def evaluate_run(cfg: Config, split: str = "test", which: str = "model", progress: bool = False):
    """(all-combination results, TrainResult) of a config: trains or reuses it, evaluates both protocols
    and caches the result beside the run under the same name as `study.evaluate_preset`, so the two share
    it. Takes a config rather than a method name, e.g. `cfg.teacher_config()`: the teacher a student run
    actually started from."""
    from workbench import pipeline
    from workbench.evaluate import evaluate_checkpoint

    result = pipeline.run(cfg, progress=progress)
    cache = result.run_dir / f"combos_{split}_{which}.state.json"
    if cache.exists():
        return CombinationResults.from_state(json.loads(cache.read_text())), result
    res = evaluate_checkpoint(result.checkpoint, split=split, which=which, progress=progress)
    cache.write_text(json.dumps(res.state()))
    return res, result


def model_label(method: str, which: str = "model") -> str:
    """How figures name a model: `robustseg`, `robustseg teacher`, ..."""
    return method if which == "model" else f"{method} {which}"


def class_info(cfg: Config, split: str = "test") -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """(class names, palette) of a config's dataset."""
    ds = eval_dataset(cfg, split)
    return tuple(ds.classes), tuple(tuple(c) for c in ds.palette)


def melt(rows: Sequence[dict], id_keys: Sequence[str], value_keys: Sequence[str], name: str = "metric") -> list[dict]:
    """Wide rows -> long rows (ids..., `name`, value), e.g. for grouped bars of several metrics."""
    return [{**{k: r[k] for k in id_keys}, name: v, "value": r[v]} for r in rows for v in value_keys if v in r]


def feedback_share(train_rows: Sequence[dict]) -> dict[str, float]:
    """Per modality, the share of steps in which its teacher encoder took a feedback step (non-primary)."""
    keys = [k for k in (train_rows[0] if train_rows else {}) if k.startswith("train/feedback/trained/")]
    return {k.rsplit("/", 1)[-1]: float(np.mean([r[k] for r in train_rows if k in r])) for k in keys}


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """A run's `metrics.jsonl` as (training rows, one per step; validation rows, one per validation)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; train the run first (workbench.pipeline.run)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if any(k.startswith("train/") for k in r)]
    val = [r for r in rows if any(k.startswith("val/") for k in r)]
    return train, val


def series(rows: Sequence[dict], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of `key` over the rows that have it."""
    pts = [(r[x], r[key]) for r in rows if key in r and r[key] is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    xs, ys = zip(*pts)
    return np.asarray(xs, float), np.asarray(ys, float)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points (shorter at the start), same length as `y`."""
    y = np.asarray(y, float)
    if window <= 1 or y.size == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    n = np.minimum(np.arange(1, y.size + 1), window)
    return (c[1:] - c[np.arange(1, y.size + 1) - n]) / n


def loss_terms(train_rows: Sequence[dict]) -> list[str]:
    """The logged loss terms (train/loss, train/ce, train/kd, ..., train/feedback/*), not the ASM counts."""
    keys: dict[str, None] = {}
    for r in train_rows:
        for k in r:
            if k.startswith("train/") and not k.startswith(("train/primary/", "train/feedback/trained/")):
                keys[k] = None
    return list(keys)


def curve_rows(runs: dict[str, Sequence[dict]], keys: Iterable[str], x: str = "step") -> list[dict]:
    """Long-format rows (run, metric, x, value) for a CSV beside a curve figure."""
    keys = list(keys)
    return [{"run": name, "metric": k, x: r[x], "value": r[k]}
            for name, rows in runs.items() for r in rows for k in keys if k in r and r[k] is not None]


def primary_frequency(train_rows: Sequence[dict], val_rows: Sequence[dict], modalities: Sequence[str] | None = None,
                      window: int = 10) -> dict[str, dict]:
    """How often ASM chose each modality as primary: per step (the fraction of the batch's samples,
    smoothed over `window` steps), per validation interval (val/primary/*) and, with feedback, how often
    it was primary for the batch (val/primary_batch/*: its teacher encoder got no feedback step)."""
    if modalities is None:  # the modalities the run logged
        modalities = list(dict.fromkeys(k.rsplit("/", 1)[-1] for r in train_rows[:1] for k in r
                                        if k.startswith("train/primary/")))
    out = {}
    for m in modalities:
        xs, ys = series(train_rows, f"train/primary/{m}")
        out[m] = {"step": xs, "per_step": smooth(ys, window), "val": series(val_rows, f"val/primary/{m}", "epoch"),
                  "val_batch": series(val_rows, f"val/primary_batch/{m}", "epoch")}
    return out


# ----------------------------------------------------------------------------------------------
# Samples, predictions, per-sample mIoU

def eval_dataset(cfg: Config, split: str = "test"):
    """The evaluation dataset of a run's config (normalized, resized, no augmentation)."""
    return dataset_from_config(cfg.data, split, augment=False)


def load_batch(cfg: Config, split: str, indices: Sequence[int]) -> dict:
    """The samples `indices` of a split as one normalized batch."""
    ds = eval_dataset(cfg, split)
    bad = [i for i in indices if not 0 <= i < len(ds)]
    if bad:
        raise IndexError(f"sample index {bad[0]} is out of range for the {split} split ({len(ds)} samples)")
    return collate([ds[i] for i in indices], ds.modalities)


def batches(cfg: Config, split: str = "test", num_samples: int | None = None, batch_size: int | None = None):
    """Normalized batches over the first `num_samples` samples of a split."""
    ds = eval_dataset(cfg, split)
    n = len(ds) if num_samples is None else min(num_samples, len(ds))
    subset = torch.utils.data.Subset(ds, range(n))
    return torch.utils.data.DataLoader(subset, batch_size=batch_size or cfg.data.batch_size,
                                       collate_fn=Collate(ds.modalities))


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
            raise ValueError(f"{cfg.data.dataset} samples are recordings: they cannot be re-rendered with "
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
            protocol: str = "drop"):
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


# ----------------------------------------------------------------------------------------------
# Degradations of a [0, 1] modality tensor (C, H, W)

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def gaussian_noise(x: torch.Tensor, level: float, seed: int = 0) -> torch.Tensor:
    """x + level * N(0, 1), clipped to [0, 1]."""
    if level <= 0:
        return x
    return (x + level * torch.randn(x.shape, generator=_gen(seed))).clamp(0, 1)


def salt_and_pepper(x: torch.Tensor, level: float, seed: int = 0) -> torch.Tensor:
    """A fraction `level` of pixel positions set to 0 or 1 (half each), all channels alike."""
    if level <= 0:
        return x
    g = _gen(seed)
    hit = torch.rand(x.shape[-2:], generator=g) < level
    salt = torch.rand(x.shape[-2:], generator=g) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def element_dropout(x: torch.Tensor, rate: float, seed: int = 0) -> torch.Tensor:
    """Each pixel position zeroed (all channels) with probability `rate` (the benchmark's RMM)."""
    if rate <= 0:
        return x
    return x * (torch.rand(x.shape[-2:], generator=_gen(seed)) >= rate).to(x.dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation `sigma` pixels (radius 3 sigma, edges replicated)."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def degrade(x: torch.Tensor, noise: float = 0.0, noise_kind: str = "gaussian", dropout: float = 0.0,
            blur: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Blur, then noise, then element dropout (a sensor's optics, read-out, then lost elements)."""
    if noise_kind not in NOISE_KINDS:
        raise ValueError(f"noise_kind={noise_kind!r} is not valid; choose one of {', '.join(NOISE_KINDS)}")
    y = gaussian_blur(x, blur)
    y = gaussian_noise(y, noise, seed) if noise_kind == "gaussian" else salt_and_pepper(y, noise, seed)
    return element_dropout(y, dropout, seed + 1)


@dataclass
class ModalityState:
    """One modality's switch and degradations in the sliders notebook."""

    on: bool = True
    noise: float = 0.0  # Gaussian std or salt-and-pepper fraction
    dropout: float = 0.0  # element dropout rate
    blur: float = 0.0  # Gaussian blur sigma in pixels


@dataclass
class InputState:
    """What the model is given: per-modality switches and degradations, the synthetic failure case."""

    modalities: dict[str, ModalityState]
    noise_kind: str = "gaussian"
    case: str = "auto"  # auto (the sample's own) | none | a synthetic sensor-failure case
    protocol: str = "drop"

    @classmethod
    def clean(cls, modalities: Sequence[str], **kw) -> InputState:
        return cls({m: ModalityState() for m in modalities}, **kw)

    def with_modality(self, name: str, **kw) -> InputState:
        mods = dict(self.modalities)
        mods[name] = replace(mods[name], **kw)
        return replace(self, modalities=mods)

    def describe(self) -> str:
        parts = []
        for m, s in self.modalities.items():
            if not s.on:
                parts.append(f"{m} off")
                continue
            parts += [f"{m} {k} {getattr(s, k):g}" for k in ("noise", "dropout", "blur") if getattr(s, k) > 0]
        if self.case != "auto":
            parts.append(f"case {self.case}")
        return ", ".join(parts) or "clean, all modalities"


@dataclass
class SamplePredictor:
    """Prediction, error map and mIoU of one sample under an `InputState` (what a slider move recomputes).
    Re-rendered samples are cached per case; the noise seed is fixed so a state always looks the same."""

    model: torch.nn.Module
    cfg: Config
    split: str = "test"
    index: int = 0
    seed: int = 0
    _raw: dict = field(default_factory=dict, repr=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.model.modalities)

    @property
    def cases(self) -> tuple[str, ...]:
        """The failure cases a sample can be re-rendered with (synthetic data only)."""
        if self.cfg.data.dataset != "synthetic":
            return ("auto",)
        from workbench.data.synthetic import CASES

        return ("auto", "none", *CASES)

    def raw(self, case: str = "auto") -> dict:
        if case not in self._raw:
            self._raw[case] = raw_sample(self.cfg, self.split, self.index, None if case == "none" else case)
        return self._raw[case]

    def __call__(self, state: InputState) -> dict:
        raw = self.raw(state.case)
        shown, inputs = {}, {}
        for j, m in enumerate(self.modalities):
            s = state.modalities[m]
            x = degrade(raw["inputs"][m], s.noise, state.noise_kind, s.dropout, s.blur, self.seed * 131 + j)
            shown[m] = x if s.on else torch.zeros_like(x)
            inputs[m] = x
        on = [m for m in self.modalities if state.modalities[m].on]
        label = raw["label"]
        if on:
            pred = predict(self.model, normalize_inputs(inputs), on, state.protocol)[0][0]
            score = sample_miou(pred, label, self.model.num_classes)
        else:  # nothing to predict from: shown as unlabelled, every labelled pixel counts as wrong
            pred, score = torch.full_like(label, IGNORE_INDEX), 0.0
        return {"pred": pred, "label": label, "error": error_map(pred, label), "miou": score, "inputs": shown,
                "meta": raw["meta"], "present": on}


def slider_states(modalities: Sequence[str], cases: Sequence[str] = (), noise: float = 0.3, dropout: float = 0.5,
                  blur: float = 1.5) -> list[InputState]:
    """The static grid of the sliders notebook: clean, each modality off, each modality degraded each
    way, and each synthetic failure case."""
    base = InputState.clean(modalities)
    out = [base]
    out += [base.with_modality(m, on=False) for m in modalities]
    out += [base.with_modality(m, noise=noise) for m in modalities]
    out += [replace(base.with_modality(m, noise=noise / 3), noise_kind="salt_pepper") for m in modalities[:1]]
    out += [base.with_modality(m, dropout=dropout) for m in modalities]
    out += [base.with_modality(m, blur=blur) for m in modalities[:1]]
    out += [replace(base, case=c) for c in cases if c != "auto"]
    return out


# ----------------------------------------------------------------------------------------------
# Per-modality features: t-SNE points and cluster scores

@torch.no_grad()
def stage_features(model, batch: dict, stage: int) -> dict[str, torch.Tensor]:
    """Every modality's stage-`stage` features (B, C, h, w) from a full-modality forward."""
    _, out = predict(model, {m: batch[m] for m in model.modalities})
    return {m: out.features[m][stage].float().cpu() for m in model.modalities}


@dataclass
class FeaturePoints:
    """Feature vectors with what each one is: class, modality and sample indices."""

    x: np.ndarray  # (N, C)
    cls: np.ndarray  # (N,) class index
    modality: np.ndarray  # (N,) index into `modalities`
    sample: np.ndarray  # (N,)
    modalities: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.x)


def feature_points(model, loader, stage: int = 1, mode: str = "prototypes", max_pixels: int = 2000,
                   seed: int = 0) -> FeaturePoints:
    """Per-modality points for t-SNE from a model over a loader. `prototypes`: one point per sample,
    modality and class present (METHOD.md's p_c); `pixels`: labelled stage pixels, subsampled to
    `max_pixels` per modality (the same positions for every modality)."""
    if mode not in ("prototypes", "pixels"):
        raise ValueError(f"mode={mode!r} is not valid; choose 'prototypes' or 'pixels'")
    mods, k = tuple(model.modalities), model.num_classes
    xs, cs, ms, ss, offset = [], [], [], [], 0
    for batch in loader:
        feats = stage_features(model, batch, stage)
        labels = batch["label"]
        stack = torch.stack([feats[m] for m in mods], 1)  # (B, M, C, h, w)
        b, m, c = stack.shape[:3]
        if mode == "prototypes":
            protos, present = L.class_prototypes(stack, labels, k)  # (B, M, K, C), (B, K)
            bi, ki = present.nonzero(as_tuple=True)
            for j in range(m):
                xs.append(protos[bi, j, ki].numpy())
                cs.append(ki.numpy())
                ms.append(np.full(len(bi), j))
                ss.append(bi.numpy() + offset)
        else:
            lab = L.resize_labels(labels, stack.shape[-2:]).flatten()  # (B*h*w,)
            flat = stack.permute(1, 0, 3, 4, 2).reshape(m, -1, c)  # (M, B*h*w, C)
            idx = (lab != IGNORE_INDEX).nonzero().squeeze(1)
            sample_of = torch.arange(b).repeat_interleave(stack.shape[-2] * stack.shape[-1])
            for j in range(m):
                xs.append(flat[j, idx].numpy())
                cs.append(lab[idx].numpy())
                ms.append(np.full(len(idx), j))
                ss.append(sample_of[idx].numpy() + offset)
        offset += b
    pts = FeaturePoints(np.concatenate(xs), np.concatenate(cs), np.concatenate(ms), np.concatenate(ss), mods)
    if mode == "pixels":  # one draw of positions, the same for every modality (they are aligned)
        n = int((pts.modality == 0).sum())
        ranks = np.sort(np.random.default_rng(seed).choice(n, min(max_pixels, n), replace=False))
        keep = np.concatenate([np.flatnonzero(pts.modality == j)[ranks] for j in range(len(mods))])
        pts = FeaturePoints(pts.x[keep], pts.cls[keep], pts.modality[keep], pts.sample[keep], mods)
    return pts


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def tsne_embedding(points: FeaturePoints, seed: int = 0, perplexity: float = 30.0, max_iter: int = 1000) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA init) of the L2-normalized features: (N, 2)."""
    from sklearn.manifold import TSNE

    x = _unit(points.x.astype(np.float64))
    perplexity = float(min(perplexity, max(2.0, (len(x) - 1) / 3)))
    kw = {"max_iter": max_iter}
    try:
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, **kw)
    except TypeError:  # scikit-learn < 1.5 calls it n_iter
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, n_iter=max_iter)
    return tsne.fit_transform(x).astype(np.float32)


def cluster_scores(points: FeaturePoints) -> dict[str, float]:
    """Cosine silhouette of the features grouped by class (higher: classes separate) and by modality
    (lower: the modalities share one feature space, what cross-modal distillation aims for)."""
    from sklearn.metrics import silhouette_score

    x = _unit(points.x.astype(np.float64))
    out = {}
    for name, lab in (("class", points.cls), ("modality", points.modality)):
        ok = 1 < len(np.unique(lab)) < len(x)
        out[f"silhouette_{name}"] = float(silhouette_score(x, lab, metric="cosine")) if ok else float("nan")
    return out


# ----------------------------------------------------------------------------------------------
# IFV maps and center feature maps

def pca_colours(*maps: torch.Tensor) -> list[np.ndarray]:
    """Feature maps (C, h, w) -> RGB images (h, w, 3) in [0, 1] from one shared 3-component PCA basis
    (so a feature map and its CFM are coloured alike)."""
    flat = torch.cat([m.flatten(1).T for m in maps]).double()  # (sum h*w, C)
    mean = flat.mean(0, keepdim=True)
    q = min(3, flat.shape[1], flat.shape[0])
    _, _, v = torch.linalg.svd(flat - mean, full_matrices=False)
    proj = (flat - mean) @ v[:q].T
    if q < 3:
        proj = torch.cat([proj, proj.new_zeros(len(proj), 3 - q)], 1)
    lo, hi = proj.min(0).values, proj.max(0).values
    proj = (proj - lo) / (hi - lo).clamp(min=1e-12)
    out, start = [], 0
    for m in maps:
        n = m.shape[-2] * m.shape[-1]
        out.append(proj[start:start + n].reshape(m.shape[-2], m.shape[-1], 3).float().numpy())
        start += n
    return out


@torch.no_grad()
def ifv_maps(model, batch: dict, stages: Sequence[int] = (0, 1, 2, 3)) -> dict[str, dict[int, dict]]:
    """Per modality and stage: the IFV map M = cos(f, CFM) (B, h, w), and the features and their CFM
    coloured in a shared PCA basis (B, h, w, 3), for a full-modality forward of `model`."""
    _, out = predict(model, {m: batch[m] for m in model.modalities})
    labels, k = batch["label"], model.num_classes
    res: dict[str, dict[int, dict]] = {}
    for m in model.modalities:
        res[m] = {}
        for i in stages:
            f = out.features[m][i].float().cpu()
            protos, _ = L.class_prototypes(f, labels, k)
            cfm = L.center_feature_map(f, labels, protos)
            ifv = L.ifv_map(f, labels, k)
            cols = [pca_colours(f[b], cfm[b]) for b in range(f.shape[0])]
            res[m][i] = {"ifv": ifv.numpy(), "feature_rgb": np.stack([c[0] for c in cols]),
                         "cfm_rgb": np.stack([c[1] for c in cols]),
                         "label": L.resize_labels(labels, f.shape[-2:]).numpy()}
    return res


def ifv_summary(maps: dict[str, dict[int, dict]], who: str, sample: int | None = None) -> list[dict]:
    """Mean IFV value over labelled pixels per modality and stage (1 = every pixel at its prototype),
    over the batch or for one `sample` (batch position) of it."""
    rows = []
    sl = slice(None) if sample is None else slice(sample, sample + 1)
    for m, per_stage in maps.items():
        for i, d in per_stage.items():
            ifv, valid = d["ifv"][sl], d["label"][sl] != IGNORE_INDEX
            rows.append({"model": who, "modality": m, "stage": i + 1,
                         "mean_ifv": float(ifv[valid].mean()) if valid.any() else float("nan")})
    return rows


# ----------------------------------------------------------------------------------------------
# The teacher before / after feedback

def module_groups(model) -> dict[str, str]:
    """Parameter name -> group: `encoder/<modality>`, `fusion`, `head`."""
    out = {}
    for name, _ in model.named_parameters():
        top = name.split(".")
        out[name] = f"encoder/{top[1]}" if top[0] == "encoders" else top[0]
    return out


@torch.no_grad()
def parameter_distance(before, after) -> list[dict]:
    """Per encoder / fusion / head: L2 distance of the weights, relative to the norm before, and the
    fraction of parameters that changed at all (an exactly frozen part shows 0)."""
    a, b = dict(before.named_parameters()), dict(after.named_parameters())
    if a.keys() != b.keys():
        raise ValueError("the two models have different parameters; compare models of one config")
    groups = module_groups(before)
    acc: dict[str, list[float]] = {}
    for name, pa in a.items():
        pb = b[name].to(pa.device)
        d = (pb.double() - pa.double())
        s = acc.setdefault(groups[name], [0.0, 0.0, 0, 0])
        s[0] += float(d.square().sum())
        s[1] += float(pa.double().square().sum())
        s[2] += int((d != 0).sum())
        s[3] += pa.numel()
    acc.setdefault("fusion", [0.0, 0.0, 0, 0])  # `mean` fusion has no parameters: listed, never changes
    return [{"part": g, "l2": math.sqrt(s[0]), "relative": math.sqrt(s[0]) / max(math.sqrt(s[1]), 1e-12),
             "changed_fraction": s[2] / max(s[3], 1), "parameters": s[3]} for g, s in acc.items()]


def combination_delta(before: CombinationResults, after: CombinationResults,
                      others: dict[str, CombinationResults] | None = None) -> list[dict]:
    """Per protocol and combination: mIoU before, after, the change, and `others` (e.g. the student)
    as extra columns; a last row per protocol holds the EMM."""
    rows, others = [], others or {}
    for p in before.protocols:
        for c in [*before.combos, None]:
            get = (lambda r, p=p, c=c: r.miou(p, c)) if c is not None else (lambda r, p=p: r.emm(p))
            b, a = get(before), get(after)
            rows.append({"protocol": p, "combo": combo_name(c) if c else "EMM", "before": b, "after": a,
                         "delta": a - b, **{k: get(v) for k, v in others.items()}})
    return rows


# ----------------------------------------------------------------------------------------------
# All-combination tables across methods

def combination_matrix(results: dict[str, CombinationResults], protocol: str) -> tuple[list[str], list[str],
                                                                                        np.ndarray]:
    """(combo names, method names, (combos, methods) mIoU matrix) for one protocol."""
    methods = list(results)
    combos = results[methods[0]].combos
    mat = np.array([[results[meth].miou(protocol, c) for meth in methods] for c in combos])
    return [combo_name(c) for c in combos], methods, mat


def summary_rows(results: dict[str, CombinationResults], ps: Sequence[float] = (0.2, 0.1, 0.05)) -> list[dict]:
    """Per method and protocol: full, EMM, worst combination and failure-weighted expectations."""
    rows = []
    for meth, res in results.items():
        for p in res.protocols:
            wc, wv = res.worst(p)
            rows.append({"method": meth, "protocol": p, "full": res.full(p), "emm": res.emm(p),
                         "worst": wv, "worst_combo": combo_name(wc),
                         **{f"E[p={q}]": res.expected(p, q) for q in ps}})
    return rows


def condition_rows(results: dict[str, CombinationResults]) -> list[dict]:
    """Per method, protocol and weather condition: full-modality mIoU and the mean over combinations
    (conditions without a labelled pixel in the split are left out)."""
    rows = []
    for meth, res in results.items():
        for p in res.protocols:
            full = res.per_condition(p)
            for cond in full:
                if int(res.condition_cms[(p, tuple(res.modalities), cond)].sum()) == 0:
                    continue
                per_combo = [res.per_condition(p, c).get(cond, float("nan")) for c in res.combos]
                rows.append({"method": meth, "protocol": p, "condition": cond, "full": full[cond],
                             "emm": float(np.nanmean(per_combo))})
    return rows


def shapley_rows(results: dict[str, CombinationResults]) -> list[dict]:
    """Per method, protocol and modality: the Shapley value of mIoU (what the modality adds)."""
    return [{"method": meth, "protocol": p, "modality": m, "shapley": v}
            for meth, res in results.items() for p in res.protocols for m, v in res.shapley(p).items()]
