"""What the notebooks analyse about trained models: per-modality features for t-SNE and their cluster
scores, IFV maps and center feature maps (docs/METHOD.md, "Center feature map and IFV map"), what
feedback changed in the teacher, and tables across methods built from all-combination results
(docs/METHOD.md, "Evaluation"). Notebooks orchestrate these and plot them with `workbench.plotting`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workbench import losses as L
from workbench import timing
from workbench.data.transforms import IGNORE_INDEX
from workbench.errors import ConfigError
from workbench.evaluate import CombinationResults, combo_name
from workbench.samples import predict


def model_label(method: str, which: str = "model") -> str:
    """How figures name a model: `robustseg`, `robustseg teacher`, ..."""
    return method if which == "model" else f"{method} {which}"

def melt(rows: Sequence[dict], id_keys: Sequence[str], value_keys: Sequence[str], name: str = "metric") -> list[dict]:
    """Wide rows -> long rows (ids..., `name`, value), e.g. for grouped bars of several metrics."""
    return [{**{k: r[k] for k in id_keys}, name: v, "value": r[v]} for r in rows for v in value_keys if v in r]

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
    modality and class present (docs/METHOD.md, "Class prototypes"); `pixels`: labelled stage pixels, subsampled to
    `max_pixels` per modality (the same positions for every modality)."""
    if mode not in ("prototypes", "pixels"):
        raise ConfigError(f"mode={mode!r} is not valid; choose 'prototypes' or 'pixels'")
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
    with timing.timed("tsne", f"{len(x)} points"):
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
        raise ConfigError("the two models have different parameters; compare models of one config")
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


def robustness_rows(rmm: dict, nm: dict, ps: Sequence[float] = (0.2, 0.1)) -> list[dict]:
    """Per method: the RMM curve (clean, then mIoU^Avg and the expectations per rate) and the NM curve
    (clean, then mIoU per noise level), as long rows (method, protocol, x, metric, miou) for a figure."""
    rows = []
    for meth, res in rmm.items():
        clean = res.score(res.rates[0], ())
        rows.append({"method": meth, "protocol": "rmm", "x": "0", "metric": "Avg", "miou": clean})
        for q in ps:
            rows.append({"method": meth, "protocol": "rmm", "x": "0", "metric": f"E[p={q}]", "miou": clean})
        for r in res.rates:
            rows.append({"method": meth, "protocol": "rmm", "x": f"{r:g}", "metric": "Avg", "miou": res.mean(r)})
            rows += [{"method": meth, "protocol": "rmm", "x": f"{r:g}", "metric": f"E[p={q}]",
                      "miou": res.expected(r, q)} for q in ps]
    for meth, res in nm.items():
        rows += [{"method": meth, "protocol": "nm", "x": lv, "metric": "mIoU", "miou": res.score(lv)}
                 for lv in res.levels]
    return rows
