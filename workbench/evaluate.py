"""All-combination evaluation: a pure engine (docs/METHOD.md, "Evaluation").

- `confusion_matrix` / `iou_per_class` / `miou`: mIoU from one confusion matrix over the split, under
  two named conventions: `deliver` (a class with no union counts 0 and stays in the mean over all
  K, as the DeLiVER code does) and `present` (nan-mean over classes with a union).
- `acc_per_class` / `macc` and `f1_per_class` / `mf1`: the other two metrics of DeLiVER's
  `semseg/metrics.py` (which the robustness benchmark reports beside mIoU), from the same confusion
  matrix with the same two conventions: per-class accuracy TP / (TP + FN) is undefined for a class
  without ground-truth pixels, F1 = 2 TP / (2 TP + FP + FN) for a class never present nor predicted.
- `evaluate_combinations`: every non-empty modality subset (2^M - 1) under `zero` and `drop`, in one
  pass: each encoder runs once per batch; `drop` combinations fuse those features, `zero`
  combinations substitute the cached encoding of an all-zero input (encoders in eval mode give the
  same output for every zero sample). With `mean` fusion the head's affine part commutes with the
  average over modalities, so each modality is projected once and combinations average projections.
  The result equals the naive loop of one forward per combination (tests check the confusion
  matrices are identical; `python -m workbench bench combos` measures both).
- `CombinationResults`: tables, EMM, failure-weighted expectations (each modality missing
  independently with probability p; weight of subset S = p^(M-|S|) (1-p)^|S|, empty set excluded,
  renormalized), per-modality Shapley values of mIoU over the lattice (with v(empty set) = 0, so the
  values add up to the full-modality mIoU), and breakdowns per condition and per sensor-failure case
  (the batch `meta`'s "condition" and "case") from the same pass (`ConfusionAccumulator`, which the
  RMM / NM protocols of `workbench.robustness` share).
- `TTA`: optional multi-scale + horizontal-flip test-time augmentation, the convention of DeLiVER's
  `tools/val_mm.py` (`evaluate_msf`): each scale s resizes the input to ceil(int(s H) / 32) * 32 by
  ceil(int(s W) / 32) * 32 (bilinear, align_corners=True), the logits of it and of its mirror image
  (flipped back) are resized to H x W (bilinear, align_corners=True), and their softmax probabilities
  are summed; the prediction is the argmax of the sum. Through the one-pass engine each view is
  encoded once and serves every combination.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench.data.transforms import IGNORE_INDEX
from workbench.errors import CheckpointError, ConfigError, DataError
from workbench.options import Convention, Metric, check, choices
from workbench.tables import write_csv

CONVENTIONS = choices(Convention)
METRICS = choices(Metric)
SHORT = {"rgb": "R", "depth": "D", "event": "E", "lidar": "L", "image": "I", "aolp": "A", "dolp": "P", "nir": "N",
         "frame_camera": "F", "event_camera": "E", "radar": "Ra"}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(K, K) int64 counts; rows = ground truth, columns = prediction; `ignore_index` pixels skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"target has values outside 0..{num_classes - 1} other than {ignore_index}")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU per class in [0, 1]; nan where a class has no union (never predicted and never present)."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def acc_per_class(cm: torch.Tensor) -> torch.Tensor:
    """Per-class accuracy (recall) TP / (TP + FN) in [0, 1]; nan where a class has no ground-truth pixel."""
    cm = cm.double()
    total = cm.sum(1)
    return torch.where(total > 0, cm.diag() / total.clamp(min=1), torch.full_like(total, float("nan")))


def f1_per_class(cm: torch.Tensor) -> torch.Tensor:
    """Per-class F1 = 2 TP / (2 TP + FP + FN) in [0, 1]; nan where a class is never present nor predicted."""
    cm = cm.double()
    denom = cm.sum(0) + cm.sum(1)
    return torch.where(denom > 0, 2 * cm.diag() / denom.clamp(min=1), torch.full_like(denom, float("nan")))


PER_CLASS = {"miou": iou_per_class, "macc": acc_per_class, "mf1": f1_per_class}


def class_mean(values: torch.Tensor, convention: str = "deliver") -> float:
    """Mean of per-class values in percent: `deliver` counts undefined (nan) classes as 0 over all K (as
    DeLiVER's `semseg/metrics.py`), `present` averages the defined ones."""
    check("convention", convention, Convention)
    if convention == "deliver":
        return float(torch.nan_to_num(values, nan=0.0).mean() * 100)
    valid = ~values.isnan()
    return float(values[valid].mean() * 100) if valid.any() else float("nan")


def score(cm: torch.Tensor, metric: str = "miou", convention: str = "deliver") -> float:
    """`miou`, `macc` or `mf1` of a confusion matrix, in percent, under `convention`."""
    check("metric", metric, Metric)
    return class_mean(PER_CLASS[metric](cm), convention)


def miou(cm: torch.Tensor, convention: str = "deliver") -> float:
    """Mean IoU in percent. `deliver`: classes without union count 0 over all K; `present`: nan-mean."""
    return score(cm, "miou", convention)


def macc(cm: torch.Tensor, convention: str = "deliver") -> float:
    """Mean class accuracy in percent (`deliver`: classes without ground truth count 0; `present`: nan-mean)."""
    return score(cm, "macc", convention)


def mf1(cm: torch.Tensor, convention: str = "deliver") -> float:
    """Mean F1 in percent (`deliver`: classes never present nor predicted count 0; `present`: nan-mean)."""
    return score(cm, "mf1", convention)


def combinations(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty subset, by size then in modality order (2^M - 1 of them)."""
    return [c for k in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, k)]


def combo_name(combo: tuple[str, ...]) -> str:
    return "".join(SHORT.get(m, m[:1].upper()) for m in combo) if all(m in SHORT for m in combo) else "+".join(combo)


def failure_weights(modalities: tuple[str, ...], p: float) -> dict[tuple[str, ...], float]:
    """P(S | S non-empty) when each modality fails independently with probability p."""
    m = len(modalities)
    w = {c: p ** (m - len(c)) * (1 - p) ** len(c) for c in combinations(modalities)}
    z = sum(w.values())
    return {c: v / z for c, v in w.items()}


def shapley(values: dict[tuple[str, ...], float], players: Sequence[str]) -> dict[str, float]:
    """Shapley value of each player of a game given on every non-empty subset of `players` (v(empty) = 0):
    phi_m = sum over S without m of |S|! (n - |S| - 1)! / n! (v(S + m) - v(S)) (docs/METHOD.md, "Shapley
    values"). The values add up to v(players). Subsets are keys in `players` order."""
    players = tuple(players)
    n = len(players)

    def v(s) -> float:
        return values[tuple(p for p in players if p in s)] if s else 0.0

    out = {}
    for m in players:
        rest = [p for p in players if p != m]
        out[m] = sum(math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
                     * (v(set(s) | {m}) - v(s)) for k in range(n) for s in itertools.combinations(rest, k))
    return out


@dataclass
class CombinationResults:
    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    cms: dict[tuple[str, tuple[str, ...]], torch.Tensor]  # (protocol, combo) -> (K, K)
    condition_cms: dict[tuple[str, tuple[str, ...], str], torch.Tensor] = field(default_factory=dict)
    convention: str = "deliver"
    case_cms: dict[tuple[str, tuple[str, ...], str], torch.Tensor] = field(default_factory=dict)  # per failure case

    @property
    def protocols(self) -> list[str]:
        return sorted({p for p, _ in self.cms})

    @property
    def combos(self) -> list[tuple[str, ...]]:
        return [c for c in combinations(self.modalities) if any((p, c) in self.cms for p in self.protocols)]

    def score(self, protocol: str, combo: tuple[str, ...], metric: str = "miou") -> float:
        """`miou`, `macc` or `mf1` (percent) of one combination."""
        return score(self.cms[(protocol, tuple(combo))], metric, self.convention)

    def miou(self, protocol: str, combo: tuple[str, ...]) -> float:
        return self.score(protocol, combo)

    def full(self, protocol: str, metric: str = "miou") -> float:
        return self.score(protocol, self.modalities, metric)

    def emm(self, protocol: str, metric: str = "miou") -> float:
        return sum(self.score(protocol, c, metric) for c in self.combos) / len(self.combos)

    def expected(self, protocol: str, p: float, metric: str = "miou") -> float:
        return sum(w * self.score(protocol, c, metric) for c, w in failure_weights(self.modalities, p).items())

    def worst(self, protocol: str) -> tuple[tuple[str, ...], float]:
        return min(((c, self.miou(protocol, c)) for c in self.combos), key=lambda t: t[1])

    def shapley(self, protocol: str) -> dict[str, float]:
        """Each modality's Shapley value over the combinations' mIoU (`shapley`)."""
        return shapley({c: self.miou(protocol, c) for c in combinations(self.modalities)}, self.modalities)

    def _breakdown(self, table: dict, protocol: str, combo, metric: str) -> dict[str, float]:
        combo = tuple(combo or self.modalities)
        return {group: score(cm, metric, self.convention) for (p, c, group), cm in sorted(table.items())
                if p == protocol and c == combo}

    def per_condition(self, protocol: str, combo: tuple[str, ...] | None = None, metric: str = "miou") -> dict[str, float]:
        return self._breakdown(self.condition_cms, protocol, combo, metric)

    def per_case(self, protocol: str, combo: tuple[str, ...] | None = None, metric: str = "miou") -> dict[str, float]:
        """Per sensor-failure case (DeLiVER: motionblur, overexposure, underexposure, lidarjitter, eventlowres;
        "none" for samples without one)."""
        return self._breakdown(self.case_cms, protocol, combo, metric)

    def summary(self, protocol: str) -> dict:
        worst_c, worst_v = self.worst(protocol)
        return {
            "protocol": protocol, "full": self.full(protocol), "emm": self.emm(protocol),
            "full_macc": self.full(protocol, "macc"), "full_mf1": self.full(protocol, "mf1"),
            "emm_macc": self.emm(protocol, "macc"), "emm_mf1": self.emm(protocol, "mf1"),
            "worst_combo": combo_name(worst_c), "worst": worst_v,
            **{f"expected_p{p}": self.expected(protocol, p) for p in (0.2, 0.1, 0.05)},
            "shapley": self.shapley(protocol),
        }

    def rows(self) -> list[dict]:
        out = []
        for p in self.protocols:
            for c in self.combos:
                iou = iou_per_class(self.cms[(p, c)])
                out.append({"protocol": p, "combo": combo_name(c), "modalities": "+".join(c), "miou": self.miou(p, c),
                            "macc": self.score(p, c, "macc"), "mf1": self.score(p, c, "mf1"),
                            **{f"iou/{k}": float(v * 100) for k, v in zip(self.classes, iou)}})
        return out

    def format_table(self, metric: str = "miou") -> str:
        lines = [f"{'combo':<8}" + "".join(f"{p:>9}" for p in self.protocols) + ("" if metric == "miou" else f"  ({metric})")]
        for c in self.combos:
            lines.append(f"{combo_name(c):<8}" + "".join(f"{self.score(p, c, metric):9.2f}" for p in self.protocols))
        lines.append(f"{'EMM':<8}" + "".join(f"{self.emm(p, metric):9.2f}" for p in self.protocols))
        for q in (0.2, 0.1, 0.05):
            lines.append(f"{'E[p=' + str(q) + ']':<8}"
                         + "".join(f"{self.expected(p, q, metric):9.2f}" for p in self.protocols))
        if metric == "miou":
            for p in self.protocols:
                sh = ", ".join(f"{combo_name((m,))}={v:.2f}" for m, v in self.shapley(p).items())
                lines.append(f"Shapley ({p}): {sh}")
        return "\n".join(lines)

    def format_breakdown(self, protocol: str, by: str = "case") -> str:
        """One row per case (or condition): full-modality mIoU / mAcc / mF1, the mean mIoU over the
        combinations (EMM restricted to that group) and its labelled pixel count."""
        if by not in ("case", "condition"):
            raise ConfigError(f"by={by!r} is not valid; choose 'case' or 'condition'")
        table = self.case_cms if by == "case" else self.condition_cms
        groups = sorted({g for (p, c, g), cm in table.items() if p == protocol and c == self.modalities and cm.sum()})
        lines = [f"{by + ' (' + protocol + ')':<22}{'mIoU':>8}{'mAcc':>8}{'mF1':>8}{'EMM':>8}{'pixels':>12}"]
        for g in groups:
            full = table[(protocol, self.modalities, g)]
            emm = sum(score(table[(protocol, c, g)], "miou", self.convention) for c in self.combos) / len(self.combos)
            lines.append(f"{g:<22}" + "".join(f"{score(full, m, self.convention):8.2f}" for m in METRICS)
                         + f"{emm:8.2f}{int(full.sum()):12d}")
        return "\n".join(lines)

    def save(self, out_dir: str | Path, prefix: str = "combos") -> dict[str, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        csv_path, json_path = write_csv(out_dir / f"{prefix}.csv", rows), out_dir / f"{prefix}.json"
        payload = {"convention": self.convention, "modalities": self.modalities, "classes": self.classes,
                   "summary": {p: self.summary(p) for p in self.protocols}, "rows": rows,
                   "per_condition": {p: self.per_condition(p) for p in self.protocols},
                   "per_case": {p: self.per_case(p) for p in self.protocols}}
        json_path.write_text(json.dumps(payload, indent=2))
        return {"csv": csv_path, "json": json_path}

    def state(self) -> dict:
        return {"modalities": self.modalities, "classes": self.classes, "convention": self.convention,
                "cms": {f"{p}|{'+'.join(c)}": v.tolist() for (p, c), v in self.cms.items()},
                "condition_cms": {f"{p}|{'+'.join(c)}|{d}": v.tolist() for (p, c, d), v in self.condition_cms.items()},
                "case_cms": {f"{p}|{'+'.join(c)}|{d}": v.tolist() for (p, c, d), v in self.case_cms.items()}}

    @classmethod
    def from_state(cls, s: dict) -> CombinationResults:
        def key(k):
            parts = k.split("|")
            return (parts[0], tuple(parts[1].split("+")), *parts[2:])

        return cls(tuple(s["modalities"]), tuple(s["classes"]),
                   {key(k): torch.tensor(v) for k, v in s["cms"].items()},
                   {key(k): torch.tensor(v) for k, v in s["condition_cms"].items()}, s.get("convention", "deliver"),
                   {key(k): torch.tensor(v) for k, v in s.get("case_cms", {}).items()})


def _to_device(batch: dict, modalities, device) -> tuple[dict, torch.Tensor]:
    inputs = {m: batch[m].to(device, non_blocking=True) for m in modalities}
    return inputs, batch["label"].to(device, non_blocking=True)


class _ZeroCache:
    """Encodings of an all-zero input per modality and size (encoders in eval mode), computed once."""

    def __init__(self, model):
        self.model, self.cache = model, {}

    def features(self, m: str, like: torch.Tensor) -> list[torch.Tensor]:
        key = (m, tuple(like.shape[1:]), like.dtype, like.device)
        if key not in self.cache:
            self.cache[key] = [f for f in self.model.encoder(m)(torch.zeros_like(like[:1]))]
        return self.cache[key]


def argmax_channels(logits: torch.Tensor) -> torch.Tensor:
    """argmax over dim 1 of (N, K, H, W), first index on ties (as torch.argmax): a running max over K,
    several times faster on CPU than a reduction across the strided channel axis."""
    best, idx = logits[:, 0].clone(), torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long,
                                                  device=logits.device)
    for k in range(1, logits.shape[1]):
        better = logits[:, k] > best
        best = torch.where(better, logits[:, k], best)
        idx.masked_fill_(better, k)
    return idx


def pixel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Class map of (N, K, H, W) logits: a contiguous reduction when the tensor is channels-last."""
    if logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous():
        return logits.permute(0, 2, 3, 1).argmax(-1)
    return argmax_channels(logits)


def _combo_weights(mods, combos, protocol, device) -> torch.Tensor:
    """(C, M) averaging weights: 1/|S| on S (`drop`) or 1/M on every modality (`zero`)."""
    mask = torch.tensor([[m in c for m in mods] for c in combos], dtype=torch.float, device=device)
    return mask / mask.sum(1, keepdim=True) if protocol == "drop" else torch.full_like(mask, 1 / len(mods))


def encode(model, inputs: dict, modalities=None) -> dict[str, list[torch.Tensor]]:
    """Stage features of each modality (default: all of the model's): one encoder pass each, which
    `predict_combinations(feats=..., replacements=...)` reuses."""
    return {m: list(model.encoder(m)(inputs[m])) for m in (model.modalities if modalities is None else modalities)}


@torch.no_grad()
def predict_combinations(model, inputs: dict, protocols=("zero", "drop"), combos=None, zero_cache=None,
                         chunk: int = 2, feats: dict | None = None, replacements: dict | None = None):
    """Yield (protocol, combos_chunk, logits (C * B, K, H, W)) for every combination from one encoder pass.

    `feats` (from `encode(model, inputs)`) skips that pass when the caller already has it. `replacements`
    (modality -> stage features, batch-sized) stands in under `zero` for the modalities a combination
    leaves out, instead of the encoding of an all-zero input: the RMM protocol substitutes the encoding of
    a corrupted input there (`workbench.robustness`)."""
    mods = model.modalities
    combos = combos or combinations(mods)
    x0 = inputs[mods[0]]
    (b, (h, w)), dev = (x0.shape[0], x0.shape[-2:]), x0.device
    feats = feats if feats is not None else encode(model, inputs)
    zero_cache = zero_cache or _ZeroCache(model)
    linear = model.fusion.kind == "mean"
    if linear:  # project each modality once: head.project is affine, so it commutes with the average
        proj = torch.stack([model.head.project(feats[m]) for m in mods])  # (M, B, E, h4, w4)
    for protocol in protocols:
        if protocol == "zero":
            zfeats = {m: replacements[m] if replacements and m in replacements else zero_cache.features(m, inputs[m])
                      for m in mods}
            if linear:
                zp = [model.head.project(zfeats[m]) for m in mods]  # (1 or B, E, h4, w4) each
                zproj = (torch.stack(zp).expand_as(proj) if len({z.shape for z in zp}) == 1
                         else torch.stack([z.expand_as(proj[0]) for z in zp]))
        for i in range(0, len(combos), chunk):
            part = combos[i:i + chunk]
            if linear:
                wts = _combo_weights(mods, part, protocol, dev).to(proj.dtype)
                pre = torch.einsum("cm,mbehw->cbehw", wts, proj)
                if protocol == "zero":
                    off = torch.tensor([[m not in c for m in mods] for c in part], dtype=proj.dtype, device=dev)
                    pre = pre + torch.einsum("cm,mbehw->cbehw", off / len(mods), zproj - proj)
                out = model.head.classify(pre.flatten(0, 1))
            else:
                outs = []
                for combo in part:
                    if protocol == "drop":
                        use = feats
                        weights = torch.tensor([[m in combo for m in mods]] * b, dtype=torch.float, device=dev)
                    else:
                        use = {m: feats[m] if m in combo else [z.expand_as(f) for z, f in zip(zfeats[m], feats[m])]
                               for m in mods}
                        weights = torch.ones(b, len(mods), device=dev)
                    outs.append(model.head(model.fuse(use, weights)))
                out = torch.cat(outs)
            # channels-last makes the full-resolution upsample and the argmax over K several times faster
            out = F.interpolate(out.contiguous(memory_format=torch.channels_last), size=(h, w), mode="bilinear",
                                align_corners=False)
            yield protocol, part, out


@dataclass(frozen=True)
class TTA:
    """Multi-scale + flip test-time augmentation (DeLiVER `tools/val_mm.py`, `evaluate_msf`; its configs'
    `EVAL.MSF`: scales 0.5 to 1.75 in steps of 0.25, flip on). See the module docstring."""

    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    flip: bool = True
    multiple: int = 32  # each scaled side is rounded up to a multiple of the encoder's stride

    def __post_init__(self):
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"TTA scales {self.scales!r} must be a non-empty list of positive numbers")

    def size(self, scale: float, h: int, w: int) -> tuple[int, int]:
        return (math.ceil(int(scale * h) / self.multiple) * self.multiple,
                math.ceil(int(scale * w) / self.multiple) * self.multiple)

    def views(self, inputs: dict, h: int, w: int):
        """Yield (view inputs, flipped) for every scale, then its mirror image when `flip`."""
        for s in self.scales:
            x = {m: F.interpolate(v, size=self.size(s, h, w), mode="bilinear", align_corners=True)
                 for m, v in inputs.items()}
            yield x, False
            if self.flip:
                yield {m: v.flip(-1) for m, v in x.items()}, True

    @staticmethod
    def probabilities(logits: torch.Tensor, flipped: bool, h: int, w: int) -> torch.Tensor:
        """A view's logits back to the label grid, as softmax probabilities (what the views sum)."""
        logits = logits.flip(-1) if flipped else logits
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True).softmax(1)


@torch.no_grad()
def predict_tta(model, inputs: dict, tta: TTA, protocols=("zero", "drop"), combos=None, zero_cache=None,
                chunk: int = 4):
    """`predict_combinations` under test-time augmentation: each view is encoded once (its features are
    kept), every combination is formed from them; yields (protocol, combos_chunk, summed probabilities)."""
    mods = model.modalities
    combos = combos or combinations(mods)
    h, w = inputs[mods[0]].shape[-2:]
    zero_cache = zero_cache or _ZeroCache(model)
    views = [(x, flipped, encode(model, x)) for x, flipped in tta.views({m: inputs[m] for m in mods}, h, w)]
    for protocol in protocols:
        for i in range(0, len(combos), chunk):
            part, total = combos[i:i + chunk], None
            for x, flipped, feats in views:
                _, _, logits = next(predict_combinations(model, x, (protocol,), part, zero_cache, chunk=len(part),
                                                         feats=feats))
                p = TTA.probabilities(logits, flipped, h, w)
                total = p if total is None else total + p
            yield protocol, part, total


def _window_starts(n: int, window: int, stride: int) -> list[int]:
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, stride))
    return starts if starts[-1] == n - window else starts + [n - window]


@torch.no_grad()
def predict_sliding(model, inputs: dict, protocols=("zero", "drop"), combos=None, zero_cache=None,
                    window: int = 1024, stride: int = 768, one_pass: bool = True):
    """Sliding-window inference (large images at the reference resolution): windows of `window`
    pixels every `stride`, overlapping logits averaged; every window is one pass over all combinations
    (`one_pass=False`: one forward per combination, `predict_naive`).
    Yields the same (protocol, combos, logits (C * B, K, H, W)) as `predict_combinations`."""
    mods = model.modalities
    combos = combos or combinations(mods)
    x0 = inputs[mods[0]]
    b, (h, w) = x0.shape[0], x0.shape[-2:]
    zero_cache = zero_cache or _ZeroCache(model)
    for protocol in protocols:
        acc = x0.new_zeros(len(combos) * b, model.num_classes, h, w)
        count = x0.new_zeros(1, 1, h, w)
        for top in _window_starts(h, window, stride):
            for left in _window_starts(w, window, stride):
                crop = {m: inputs[m][..., top:top + window, left:left + window] for m in mods}
                if one_pass:
                    _, _, logits = next(predict_combinations(model, crop, (protocol,), combos, zero_cache,
                                                             chunk=len(combos)))
                else:  # one (B, K, h, w) block per combination, in the order of `combos`
                    logits = torch.cat([out for _, _, out in predict_naive(model, crop, (protocol,), combos)])
                acc[..., top:top + window, left:left + window] += logits
                count[..., top:top + window, left:left + window] += 1
        yield protocol, combos, (acc / count).contiguous(memory_format=torch.channels_last)


def _present(mods, combo, b, device) -> torch.Tensor:
    return torch.tensor([[m in combo for m in mods]] * b, device=device)


@torch.no_grad()
def predict_naive(model, inputs: dict, protocols=("zero", "drop"), combos=None, tta: TTA | None = None):
    """The reference: one full forward per combination and protocol (and per view under `tta`)."""
    mods = model.modalities
    x0 = inputs[mods[0]]
    b, (h, w) = x0.shape[0], x0.shape[-2:]
    for protocol in protocols:
        for combo in combos or combinations(mods):
            present = _present(mods, combo, b, x0.device)
            if tta is None:
                yield protocol, [combo], model(inputs, present, protocol).logits
                continue
            total = None
            for x, flipped in tta.views({m: inputs[m] for m in mods}, h, w):
                p = TTA.probabilities(model(x, present, protocol).logits, flipped, h, w)
                total = p if total is None else total + p
            yield protocol, [combo], total


class ConfusionAccumulator:
    """Confusion matrices per key (e.g. (protocol, combo)), in total and per condition and per case, from
    one bincount per chunk of predictions over (key, group, target, prediction)."""

    def __init__(self, num_classes: int, keys, conditions=(), cases=()):
        self.k = num_classes
        zeros = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.zeros = zeros
        self.cms = {key: zeros.clone() for key in keys}
        self.condition_cms = {(*key, d): zeros.clone() for key in keys for d in conditions}
        self.case_cms = {(*key, c): zeros.clone() for key in keys for c in cases}

    def add(self, keys: list, logits: torch.Tensor, labels: torch.Tensor, meta: list[dict]) -> None:
        """`logits` (len(keys) * B, K, H, W) for the B samples of `labels` (B, H, W), one block per key."""
        k, c = self.k, len(keys)
        pred = pixel_argmax(logits).view(c, *labels.shape)  # (C, B, H, W)
        tags = [(m.get("condition", "all"), m.get("case", "none")) for m in meta]
        groups = sorted(set(tags))
        gidx = torch.tensor([groups.index(t) for t in tags], device=labels.device)
        bins = c * len(groups) * k * k
        # ignored pixels go to one extra bin that is dropped (cheaper than boolean indexing)
        base = torch.where(labels == IGNORE_INDEX, bins, gidx.view(-1, 1, 1) * k * k + labels * k)
        offset = torch.arange(c, device=pred.device).view(c, 1, 1, 1) * (len(groups) * k * k)
        key = torch.where(base == bins, bins, base + offset + pred)
        counts = torch.bincount(key.flatten(), minlength=bins + 1)[:bins].cpu().view(c, len(groups), k, k)
        for j, name in enumerate(keys):
            self.cms[name] += counts[j].sum(0)
            for gi, (cond, case) in enumerate(groups):
                for table, group in ((self.condition_cms, cond), (self.case_cms, case)):
                    table[(*name, group)] = table.get((*name, group), self.zeros) + counts[j, gi]

    def reduce(self, reduce_fn) -> None:
        """Sum every matrix across processes (`reduce_fn(tensor)`, DDP), in a key order all processes share."""
        for table in (self.cms, self.condition_cms, self.case_cms):
            for key in sorted(table):
                table[key] = reduce_fn(table[key])


def check_labels(labels: torch.Tensor, k: int, meta: list[dict]) -> None:
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= k))
    if bad.any():
        raise DataError(f"labels outside 0..{k - 1} (255 = ignore) in batch with {meta[0]}")


def check_finite(model: torch.nn.Module) -> None:
    """A CheckpointError when a weight or buffer of `model` holds NaN or inf (a diverged run's weights would
    otherwise be evaluated to a meaningless score)."""
    bad = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"the model holds non-finite weights (NaN or inf) in {len(bad)} tensors ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): it comes from a run that diverged; train it again "
                              f"with a lower train.lr or with train.grad_clip set")


def one_pass_supported(model) -> bool:
    """Whether the one-pass engine applies to `model`: a `Segmentor` (per-modality encoders, fusion over
    modalities) declares `supports_one_pass = True`; CMNeXt and MAGIC declare False and are evaluated with
    one forward per combination (`predict_naive`): their modalities meet inside the encoder."""
    return bool(getattr(model, "supports_one_pass", False))


@torch.no_grad()
def evaluate_combinations(model, loader, protocols=("zero", "drop"), combos=None, device=None, one_pass=True,
                          convention="deliver", classes=None, progress=True, desc="eval",
                          reduce_fn=None, conditions=None, window: int | None = None,
                          stride: int | None = None, tta: TTA | None = None, cases=None) -> CombinationResults:
    """Confusion matrices for every combination and protocol over a loader (model in eval mode).

    `reduce_fn(tensor)` sums confusion matrices across processes (DDP sharded evaluation); with it,
    pass the dataset's `conditions` and `cases` so that every process holds the same keys. `window`
    (and `stride`, default 3/4 of it) switches to sliding-window inference for images larger than the
    training crop; `tta` to multi-scale + flip test-time augmentation (not both). Models without one-pass
    support (`one_pass_supported`) take the per-combination loop whatever `one_pass` says."""
    if window is not None and window < 32:
        raise ConfigError(f"window={window}: sliding-window inference needs windows of at least 32 pixels (the "
                          f"encoder's stride); leave window out to evaluate whole images")
    if window is not None and stride is not None and not 0 < stride <= window:
        raise ConfigError(f"stride={stride} must be in 1..window ({window})")
    if window and tta is not None:
        raise ConfigError("sliding-window inference and test-time augmentation cannot be combined; choose one")
    check_finite(model)
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    mods, k = model.modalities, model.num_classes
    one_pass = one_pass and one_pass_supported(model)
    combos = [tuple(c) for c in (combos or combinations(mods))]
    acc = ConfusionAccumulator(k, [(p, c) for p in protocols for c in combos], tuple(conditions or ()),
                               (*cases, "none") if cases else ())
    zero_cache = _ZeroCache(model)
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            inputs, labels = _to_device(batch, mods, device)
            check_labels(labels, k, batch["meta"])
            if window:
                preds = predict_sliding(model, inputs, protocols, combos, zero_cache, window, stride or window * 3 // 4,
                                        one_pass)
            elif not one_pass:
                preds = predict_naive(model, inputs, protocols, combos, tta)
            elif tta is not None:
                preds = predict_tta(model, inputs, tta, protocols, combos, zero_cache)
            else:
                preds = predict_combinations(model, inputs, protocols, combos, zero_cache)
            for protocol, part, logits in preds:
                acc.add([(protocol, c) for c in part], logits, labels, batch["meta"])
    finally:
        model.train(was_training)
    if reduce_fn is not None:
        acc.reduce(reduce_fn)
    classes = tuple(classes or (str(i) for i in range(k)))
    return CombinationResults(mods, classes, acc.cms, acc.condition_cms, convention, acc.case_cms)

