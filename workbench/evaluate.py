"""All-combination evaluation: a pure engine (docs/METHOD.md, "Evaluation").

- `confusion_matrix` / `iou_per_class` / `miou`: mIoU from one confusion matrix over the split, under
  two named conventions: `deliver` (a class with no union counts 0 and stays in the mean over all
  K, as the DeLiVER code does) and `present` (nan-mean over classes with a union).
- `evaluate_combinations`: every non-empty modality subset (2^M - 1) under `zero` and `drop`, in one
  pass: each encoder runs once per batch; `drop` combinations fuse those features, `zero`
  combinations substitute the cached encoding of an all-zero input (encoders in eval mode give the
  same output for every zero sample). With `mean` fusion the head's affine part commutes with the
  average over modalities, so each modality is projected once and combinations average projections.
  The result equals the naive loop of one forward per combination (tests check the confusion
  matrices are identical; `python -m workbench bench combos` measures both).
- `CombinationResults`: tables, EMM, failure-weighted expectations (each modality missing
  independently with probability p; weight of subset S = p^(M-|S|) (1-p)^|S|, empty set excluded,
  renormalized), per-condition breakdown, and per-modality Shapley values of mIoU over the lattice
  (with v(empty set) = 0, so the values add up to the full-modality mIoU).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench.data.transforms import IGNORE_INDEX
from workbench.options import Convention, check, choices
from workbench.tables import write_csv

CONVENTIONS = choices(Convention)
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


def miou(cm: torch.Tensor, convention: str = "deliver") -> float:
    """Mean IoU in percent. `deliver`: classes without union count 0 over all K; `present`: nan-mean."""
    check("convention", convention, Convention)
    iou = iou_per_class(cm)
    if convention == "deliver":
        return float(torch.nan_to_num(iou, nan=0.0).mean() * 100)
    valid = ~iou.isnan()
    return float(iou[valid].mean() * 100) if valid.any() else float("nan")


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


@dataclass
class CombinationResults:
    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    cms: dict[tuple[str, tuple[str, ...]], torch.Tensor]  # (protocol, combo) -> (K, K)
    condition_cms: dict[tuple[str, tuple[str, ...], str], torch.Tensor] = field(default_factory=dict)
    convention: str = "deliver"

    @property
    def protocols(self) -> list[str]:
        return sorted({p for p, _ in self.cms})

    @property
    def combos(self) -> list[tuple[str, ...]]:
        return [c for c in combinations(self.modalities) if any((p, c) in self.cms for p in self.protocols)]

    def miou(self, protocol: str, combo: tuple[str, ...]) -> float:
        return miou(self.cms[(protocol, tuple(combo))], self.convention)

    def full(self, protocol: str) -> float:
        return self.miou(protocol, self.modalities)

    def emm(self, protocol: str) -> float:
        return sum(self.miou(protocol, c) for c in self.combos) / len(self.combos)

    def expected(self, protocol: str, p: float) -> float:
        return sum(w * self.miou(protocol, c) for c, w in failure_weights(self.modalities, p).items())

    def worst(self, protocol: str) -> tuple[tuple[str, ...], float]:
        return min(((c, self.miou(protocol, c)) for c in self.combos), key=lambda t: t[1])

    def shapley(self, protocol: str) -> dict[str, float]:
        """phi_m = sum_{S not containing m} |S|!(M-|S|-1)!/M! [v(S + m) - v(S)], v(empty) = 0."""
        mods, m = self.modalities, len(self.modalities)

        def v(s):
            return self.miou(protocol, tuple(x for x in mods if x in s)) if s else 0.0

        out = {}
        for mod in mods:
            rest = [x for x in mods if x != mod]
            out[mod] = sum(
                math.factorial(len(s)) * math.factorial(m - len(s) - 1) / math.factorial(m) * (v(set(s) | {mod}) - v(s))
                for k in range(m) for s in itertools.combinations(rest, k))
        return out

    def per_condition(self, protocol: str, combo: tuple[str, ...] | None = None) -> dict[str, float]:
        combo = tuple(combo or self.modalities)
        return {cond: miou(cm, self.convention) for (p, c, cond), cm in sorted(self.condition_cms.items())
                if p == protocol and c == combo}

    def summary(self, protocol: str) -> dict:
        worst_c, worst_v = self.worst(protocol)
        return {
            "protocol": protocol, "full": self.full(protocol), "emm": self.emm(protocol),
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
                            **{f"iou/{k}": float(v * 100) for k, v in zip(self.classes, iou)}})
        return out

    def format_table(self) -> str:
        lines = [f"{'combo':<8}" + "".join(f"{p:>9}" for p in self.protocols)]
        for c in self.combos:
            lines.append(f"{combo_name(c):<8}" + "".join(f"{self.miou(p, c):9.2f}" for p in self.protocols))
        lines.append(f"{'EMM':<8}" + "".join(f"{self.emm(p):9.2f}" for p in self.protocols))
        for q in (0.2, 0.1, 0.05):
            lines.append(f"{'E[p=' + str(q) + ']':<8}" + "".join(f"{self.expected(p, q):9.2f}" for p in self.protocols))
        for p in self.protocols:
            sh = ", ".join(f"{combo_name((m,))}={v:.2f}" for m, v in self.shapley(p).items())
            lines.append(f"Shapley ({p}): {sh}")
        return "\n".join(lines)

    def save(self, out_dir: str | Path, prefix: str = "combos") -> dict[str, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        csv_path, json_path = write_csv(out_dir / f"{prefix}.csv", rows), out_dir / f"{prefix}.json"
        payload = {"convention": self.convention, "modalities": self.modalities, "classes": self.classes,
                   "summary": {p: self.summary(p) for p in self.protocols}, "rows": rows,
                   "per_condition": {p: self.per_condition(p) for p in self.protocols}}
        json_path.write_text(json.dumps(payload, indent=2))
        return {"csv": csv_path, "json": json_path}

    def state(self) -> dict:
        return {"modalities": self.modalities, "classes": self.classes, "convention": self.convention,
                "cms": {f"{p}|{'+'.join(c)}": v.tolist() for (p, c), v in self.cms.items()},
                "condition_cms": {f"{p}|{'+'.join(c)}|{d}": v.tolist() for (p, c, d), v in self.condition_cms.items()}}

    @classmethod
    def from_state(cls, s: dict) -> CombinationResults:
        def key(k):
            parts = k.split("|")
            return (parts[0], tuple(parts[1].split("+")), *parts[2:])

        return cls(tuple(s["modalities"]), tuple(s["classes"]),
                   {key(k): torch.tensor(v) for k, v in s["cms"].items()},
                   {key(k): torch.tensor(v) for k, v in s["condition_cms"].items()}, s.get("convention", "deliver"))


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


@torch.no_grad()
def predict_combinations(model, inputs: dict, protocols=("zero", "drop"), combos=None, zero_cache=None,
                         chunk: int = 2):
    """Yield (protocol, combos_chunk, logits (C * B, K, H, W)) for every combination from one encoder pass."""
    mods = model.modalities
    combos = combos or combinations(mods)
    x0 = inputs[mods[0]]
    (b, (h, w)), dev = (x0.shape[0], x0.shape[-2:]), x0.device
    feats = {m: list(model.encoder(m)(inputs[m])) for m in mods}
    zero_cache = zero_cache or _ZeroCache(model)
    linear = model.fusion.kind == "mean"
    if linear:  # project each modality once: head.project is affine, so it commutes with the average
        proj = torch.stack([model.head.project(feats[m]) for m in mods])  # (M, B, E, h4, w4)
    for protocol in protocols:
        if protocol == "zero":
            zfeats = {m: zero_cache.features(m, inputs[m]) for m in mods}
            if linear:
                zproj = torch.stack([model.head.project(zfeats[m]) for m in mods]).expand_as(proj)
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


def _window_starts(n: int, window: int, stride: int) -> list[int]:
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, stride))
    return starts if starts[-1] == n - window else starts + [n - window]


@torch.no_grad()
def predict_sliding(model, inputs: dict, protocols=("zero", "drop"), combos=None, zero_cache=None,
                    window: int = 1024, stride: int = 768):
    """Sliding-window inference (large images at the reference resolution): windows of `window`
    pixels every `stride`, overlapping logits averaged; every window is one pass over all combinations.
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
                _, _, logits = next(predict_combinations(model, crop, (protocol,), combos, zero_cache,
                                                         chunk=len(combos)))
                acc[..., top:top + window, left:left + window] += logits
                count[..., top:top + window, left:left + window] += 1
        yield protocol, combos, (acc / count).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_naive(model, inputs: dict, protocols=("zero", "drop"), combos=None):
    """The reference: one full forward per combination and protocol (same output format)."""
    mods = model.modalities
    b = inputs[mods[0]].shape[0]
    for protocol in protocols:
        for combo in combos or combinations(mods):
            present = torch.tensor([[m in combo for m in mods]] * b, device=inputs[mods[0]].device)
            yield protocol, [combo], model(inputs, present, protocol).logits


@torch.no_grad()
def evaluate_combinations(model, loader, protocols=("zero", "drop"), combos=None, device=None, one_pass=True,
                          convention="deliver", classes=None, progress=True, desc="eval",
                          reduce_fn=None, conditions=None, window: int | None = None,
                          stride: int | None = None) -> CombinationResults:
    """Confusion matrices for every combination and protocol over a loader (model in eval mode).

    `reduce_fn(tensor)` sums confusion matrices across processes (DDP sharded evaluation); with it,
    pass the dataset's `conditions` so that every process holds the same keys. `window` (and `stride`,
    default 3/4 of it) switches to sliding-window inference for images larger than the training crop."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    mods, k = model.modalities, model.num_classes
    combos = [tuple(c) for c in (combos or combinations(mods))]
    zeros = torch.zeros(k, k, dtype=torch.long)
    cms: dict = {(p, c): zeros.clone() for p in protocols for c in combos}
    cond_cms: dict = {(p, c, d): zeros.clone() for p in protocols for c in combos for d in (conditions or ())}
    zero_cache = _ZeroCache(model)
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            inputs, labels = _to_device(batch, mods, device)
            conds = [m.get("condition", "all") for m in batch["meta"]]
            bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= k))
            if bad.any():
                raise ValueError(f"labels outside 0..{k - 1} (255 = ignore) in batch with {batch['meta'][0]}")
            cond_names = sorted(set(conds))
            cond_idx = torch.tensor([cond_names.index(c) for c in conds], device=labels.device)
            if window:
                preds = predict_sliding(model, inputs, protocols, combos, zero_cache, window, stride or window * 3 // 4)
            elif one_pass:
                preds = predict_combinations(model, inputs, protocols, combos, zero_cache)
            else:
                preds = predict_naive(model, inputs, protocols, combos)
            for protocol, part, logits in preds:
                # one bincount per chunk over (combo, condition, target, prediction)
                c = len(part)
                pred = pixel_argmax(logits).view(c, *labels.shape)  # (C, B, H, W)
                bins = c * len(cond_names) * k * k
                # ignored pixels go to one extra bin that is dropped (cheaper than boolean indexing)
                base = torch.where(labels == IGNORE_INDEX, bins, cond_idx.view(-1, 1, 1) * k * k + labels * k)
                offset = torch.arange(c, device=pred.device).view(c, 1, 1, 1) * (len(cond_names) * k * k)
                key = torch.where(base == bins, bins, base + offset + pred)
                counts = torch.bincount(key.flatten(), minlength=bins + 1)[:bins].cpu()
                counts = counts.view(c, len(cond_names), k, k)
                for j, combo in enumerate(part):
                    cms[(protocol, combo)] += counts[j].sum(0)
                    for ci, cond in enumerate(cond_names):
                        ck = (protocol, combo, cond)
                        cond_cms[ck] = cond_cms.get(ck, zeros) + counts[j, ci]
    finally:
        model.train(was_training)
    if reduce_fn is not None:
        cms = {key: reduce_fn(v) for key, v in sorted(cms.items())}
        cond_cms = {key: reduce_fn(v) for key, v in sorted(cond_cms.items())}
    classes = tuple(classes or (str(i) for i in range(k)))
    return CombinationResults(mods, classes, cms, cond_cms, convention)
