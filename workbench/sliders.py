"""Modality sliders: the degradations a slider applies to one modality, the input state a slider move
changes, what each model predicts from it (with each modality's contribution on that sample), and the
ipywidgets app of notebook 06 and of the classroom page (notebook 09).

Degradations (`DEGRADATIONS`), each named for what it does:

- on the sensor image in [0, 1], to look at a model: Gaussian noise (std sigma, clipped), salt-and-pepper
  noise (a fraction of pixel positions set to black or white), pixel dropout (a fraction of whole pixels,
  every channel, set to 0), Gaussian blur (sigma in pixels);
- the robustness benchmark's corruptions on the normalized network input, exactly as
  `workbench.robustness` applies them (docs/METHOD.md, "Evaluation"): RMM (`rmm_corrupt`: every element,
  channel by channel, zeroed with probability r) and NM (`nm_corrupt` at level low / mid / high:
  salt-and-pepper at the tensor's extremes, then Gaussian noise except on the event image). Here the
  "batch" is the one sample, so NM's extremes are the sample's own.

A modality switched off is left out under `drop` and zeroed under `zero` (docs/METHOD.md, "Missing
modalities"). Every draw is seeded per (sample seed, modality), so a state always looks the same and a
larger level corrupts a superset of the elements a smaller one did.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from workbench import robustness as R
from workbench.config import Config
from workbench.data.transforms import IGNORE_INDEX, denormalize
from workbench.errors import ConfigError
from workbench.evaluate import combinations, combo_name
from workbench.plotting import colorize, error_image, modality_image, png_bytes
from workbench.robustness import NM_LEVELS, draw_generator, nm_corrupt, rmm_corrupt
from workbench.samples import (
    contributions,
    error_map,
    normalize_inputs,
    predict_subsets,
    raw_sample,
    sample_miou,
)

__all__ = ["Degradation", "DEGRADATIONS", "gaussian_noise", "salt_and_pepper", "pixel_dropout", "gaussian_blur",
           "degrade", "ModalityState", "InputState", "build_inputs", "SamplePredictor", "slider_states",
           "legend_html", "contributions_html", "SliderApp", "REDUCED_QUICK", "classroom_runs", "comparison",
           "Story", "rgb_off_story", "story_pairs",
           "served_by_voila", "prepare_classroom"]


@dataclass(frozen=True)
class Degradation:
    """One kind of degradation: its name in the app, what its level means, the slider's range, and
    whether it acts on the sensor image ([0, 1]) or on the normalized network input (the benchmark's)."""

    key: str
    name: str
    level: str
    max: float
    step: float
    space: str  # "sensor" | "normalized"


DEGRADATIONS: dict[str, Degradation] = {d.key: d for d in (
    Degradation("gaussian", "Gaussian noise", "std sigma added to the [0, 1] image (clipped)", 1.0, 0.05, "sensor"),
    Degradation("salt_pepper", "salt-and-pepper noise", "fraction of pixels set to black or white", 1.0, 0.05,
                "sensor"),
    Degradation("pixel_dropout", "pixel dropout", "fraction of whole pixels set to 0", 1.0, 0.05, "sensor"),
    Degradation("blur", "Gaussian blur", "sigma in pixels", 4.0, 0.25, "sensor"),
    Degradation("rmm", "RMM (benchmark)", "rate r: each element of the normalized input zeroed with probability r",
                1.0, 0.05, "normalized"),
    Degradation("nm", "NM (benchmark)", "level 1 low, 2 mid, 3 high: salt-and-pepper, then Gaussian noise on the "
                "normalized input", 3.0, 1.0, "normalized"),
)}
NM_NAMES = tuple(NM_LEVELS)  # low, mid, high


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def gaussian_noise(x: torch.Tensor, level: float, seed: int = 0) -> torch.Tensor:
    """x + level * N(0, 1) (the benchmark's Gaussian noise, `robustness.gaussian_noise`), clipped to [0, 1]:
    a sensor image stays an image."""
    if level <= 0:
        return x
    return R.gaussian_noise(x, level, _gen(seed)).clamp(0, 1)


def salt_and_pepper(x: torch.Tensor, level: float, seed: int = 0) -> torch.Tensor:
    """A fraction `level` of pixel positions set to 0 or 1 (half each), all channels alike: a broken sensor
    pixel. Not the benchmark's salt-and-pepper (`robustness.salt_and_pepper`, the `nm` degradation), which
    hits single elements of the normalized input, drawn with replacement, and sets them to its extremes."""
    if level <= 0:
        return x
    g = _gen(seed)
    hit = torch.rand(x.shape[-2:], generator=g) < level
    salt = torch.rand(x.shape[-2:], generator=g) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def pixel_dropout(x: torch.Tensor, rate: float, seed: int = 0) -> torch.Tensor:
    """Each pixel position zeroed (all channels) with probability `rate`. Not the benchmark's RMM, which
    zeroes single elements of the normalized input (the `rmm` degradation)."""
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


def _check_kind(kind: str) -> Degradation:
    if kind not in DEGRADATIONS:
        raise ConfigError(f"degradation {kind!r} is not valid; choose one of {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[kind]


def degrade(x: torch.Tensor, kind: str, level: float, seed: int = 0) -> torch.Tensor:
    """A [0, 1] sensor image (C, H, W) under one sensor-space degradation at `level`."""
    d = _check_kind(kind)
    if d.space != "sensor":
        raise ConfigError(f"{d.name} acts on the normalized input; apply it with `build_inputs`")
    fn = {"gaussian": gaussian_noise, "salt_pepper": salt_and_pepper, "pixel_dropout": pixel_dropout}.get(kind)
    return gaussian_blur(x, level) if kind == "blur" else fn(x, level, seed)


@dataclass
class ModalityState:
    """One modality's switch and its degradation (kind and level) in the sliders."""

    on: bool = True
    kind: str = "gaussian"
    level: float = 0.0

    def describe(self, name: str) -> str:
        if not self.on:
            return f"{name} off"
        if self.level <= 0:
            return ""
        d = _check_kind(self.kind)
        if self.kind == "nm":
            return f"{name} NM {NM_NAMES[min(int(round(self.level)), 3) - 1]}"
        value = f"sigma {self.level:g}" if self.kind in ("gaussian", "blur") else f"{self.level:g}"
        return f"{name} {d.name} {value}"


@dataclass
class InputState:
    """What the models are given: per-modality switches and degradations, the synthetic failure case
    the sample is rendered with, and the missing-modality protocol."""

    modalities: dict[str, ModalityState]
    case: str = "auto"  # auto (the sample's own) | none | a synthetic sensor-failure case
    protocol: str = "drop"

    @classmethod
    def clean(cls, modalities: Sequence[str], **kw) -> InputState:
        return cls({m: ModalityState() for m in modalities}, **kw)

    def with_modality(self, name: str, **kw) -> InputState:
        mods = dict(self.modalities)
        mods[name] = replace(mods[name], **kw)
        return replace(self, modalities=mods)

    @property
    def present(self) -> tuple[str, ...]:
        return tuple(m for m, s in self.modalities.items() if s.on)

    @property
    def degraded(self) -> bool:
        return any(s.on and s.level > 0 for s in self.modalities.values()) or self.case != "auto"

    def describe(self) -> str:
        parts = [p for m, s in self.modalities.items() if (p := s.describe(m))]
        if self.case != "auto":
            parts.append(f"case {self.case}")
        return ", ".join(parts) or "clean, all modalities"


def build_inputs(raw_inputs: dict[str, torch.Tensor], state: InputState, seed: int = 0):
    """(shown, inputs): each modality in [0, 1] as the model receives it (black when off), and the
    normalized batch of one (1, C, H, W) per modality with every degradation applied."""
    mods = list(raw_inputs)
    sensor = {}
    for j, m in enumerate(mods):
        s = state.modalities[m]
        x = raw_inputs[m]
        if s.level > 0 and _check_kind(s.kind).space == "sensor":
            x = degrade(x, s.kind, s.level, seed * 131 + j)
        sensor[m] = x
    inputs = normalize_inputs(sensor)
    for m in mods:
        s = state.modalities[m]
        if s.level <= 0 or s.kind not in ("rmm", "nm"):
            continue
        if s.kind == "rmm":
            inputs[m] = rmm_corrupt(inputs[m], float(s.level), draw_generator(seed, "slider-rmm", m))
        else:
            level = NM_NAMES[min(int(round(s.level)), 3) - 1]
            inputs[m] = nm_corrupt({m: inputs[m]}, level, draw_generator(seed, "slider-nm", m))[m]
        sensor[m] = denormalize(inputs[m][0], m)
    shown = {m: sensor[m] if state.modalities[m].on else torch.zeros_like(sensor[m]) for m in mods}
    return shown, inputs


@dataclass
class SamplePredictor:
    """One model on one sample under an `InputState`: prediction, error map, the sample's mIoU, the
    split's mIoU for the present modalities (from `split_results`, a `CombinationResults` of clean
    inputs, e.g. `Run.evaluation`), and each present modality's contribution on this sample (its Shapley
    value over the present modalities and the drop when it alone is switched off, from every subset of
    the present ones in one encoder pass; `all_subsets=False` predicts the present set alone and leaves the
    contributions out). Re-rendered samples are cached per (index, case)."""

    model: torch.nn.Module
    cfg: Config
    split: str = "test"
    index: int = 0
    seed: int = 0
    split_results: object | None = None
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
        key = (self.index, case)
        if key not in self._raw:
            self._raw[key] = raw_sample(self.cfg, self.split, self.index, None if case == "none" else case)
        return self._raw[key]

    def split_miou(self, present: Sequence[str], protocol: str) -> float | None:
        res = self.split_results
        if res is None or not present or (protocol, tuple(present)) not in getattr(res, "cms", {}):
            return None
        return res.miou(protocol, tuple(present))

    def __call__(self, state: InputState, all_subsets: bool = True) -> dict:
        raw = self.raw(state.case)
        shown, inputs = build_inputs(raw["inputs"], state, self.seed)
        on = tuple(m for m in self.modalities if state.modalities[m].on)
        label = raw["label"]
        k = self.model.num_classes
        dev = next(self.model.parameters()).device
        inputs = {m: x.to(dev) for m, x in inputs.items()}
        contrib, values = {}, {}
        if on:
            combos = combinations(tuple(on)) if all_subsets else [on]
            preds = predict_subsets(self.model, inputs, combos, state.protocol)
            values = {c: sample_miou(p[0], label, k) for c, p in preds.items()}
            pred, score = preds[on][0], values[on]
            if all_subsets:
                contrib = contributions(values, on)
        else:  # nothing to predict from: shown as unlabelled, every labelled pixel counts as wrong
            pred, score = torch.full_like(label, IGNORE_INDEX), 0.0
        return {"pred": pred, "label": label, "error": error_map(pred, label), "miou": score, "inputs": shown,
                "meta": raw["meta"], "present": list(on), "contributions": contrib, "subset_miou": values,
                "split_miou": self.split_miou(on, state.protocol)}


def slider_states(modalities: Sequence[str], cases: Sequence[str] = (), levels: Mapping[str, float] | None = None,
                  degraded: Sequence[str] | None = None) -> list[InputState]:
    """The static grid of the sliders notebook: clean, each modality off, each degradation of `levels`
    (default: every kind at a middle level) on each modality of `degraded` (default: the first), and each
    synthetic failure case."""
    levels = dict(levels or {"gaussian": 0.3, "salt_pepper": 0.1, "pixel_dropout": 0.5, "blur": 1.5, "rmm": 0.5,
                             "nm": 2})
    base = InputState.clean(modalities)
    out = [base]
    out += [base.with_modality(m, on=False) for m in modalities]
    for m in (modalities[:1] if degraded is None else degraded):
        out += [base.with_modality(m, kind=k, level=v) for k, v in levels.items()]
    out += [replace(base, case=c) for c in cases if c != "auto"]
    return out


# ---------------------------------------------------------------- the app
def legend_html(classes: Sequence[str], palette) -> str:
    """The class legend: a colour swatch and the name of each class."""
    items = "".join(
        f"<span style='display:inline-block;margin:1px 8px 1px 0;white-space:nowrap'>"
        f"<span style='display:inline-block;width:12px;height:12px;vertical-align:middle;border:1px solid #888;"
        f"background:rgb({c[0]},{c[1]},{c[2]})'></span> {html.escape(str(n))}</span>"
        for n, c in zip(classes, palette))
    return f"<div style='font-size:0.9em;max-width:900px'><b>classes:</b> {items}</div>"


def contributions_html(contrib: dict[str, dict[str, float]], modalities: Sequence[str], scale: float = 60.0) -> str:
    """A bar per modality: its Shapley value on this sample (the bars add up to the sample's mIoU), and the
    drop of the sample's mIoU when it alone is switched off."""
    rows = []
    for m in modalities:
        if m not in contrib:
            rows.append(f"<tr><td>{html.escape(m)}</td><td colspan=2 style='color:#888'>off</td></tr>")
            continue
        v, drop = contrib[m]["shapley"], contrib[m]["drop"]
        width = min(120, abs(v) / scale * 120)
        colour = "#2a7ab9" if v >= 0 else "#c0392b"
        bar = f"<span style='display:inline-block;height:10px;width:{width:.0f}px;background:{colour}'></span>"
        rows.append(f"<tr><td>{html.escape(m)}</td><td style='width:125px'>{bar}</td>"
                    f"<td style='text-align:right'>{v:+.1f}</td>"
                    f"<td style='text-align:right;color:#555;padding-left:14px'>{-drop:+.1f}</td></tr>")
    head = ("<tr><th></th><th colspan=2 title='Shapley value of the modality on this sample: the values add up "
            "to the sample mIoU'>Shapley</th><th title='change of the sample mIoU when this modality alone is "
            "switched off'>if off</th></tr>")
    note = ("<div style='font-size:0.8em;color:#555;max-width:330px'>Shapley: how much of this sample's mIoU each "
            "sensor carries (the values add up to it); if off: how the sample's mIoU changes when that sensor alone "
            "is switched off.</div>")
    return f"<b>per-sensor contributions on this sample</b><table style='font-size:0.85em'>{head}{''.join(rows)}</table>{note}"


class SliderApp:
    """ipywidgets front end of one or more `SamplePredictor`s on the same sample and input state, side by
    side (e.g. {"baseline": ..., "robustseg": ...}): the class legend, a switch per modality with a
    degradation kind and level, the failure case and the protocol (and, with `samples`, a sample chooser);
    per model the prediction, the error map, the sample's mIoU, the split's mIoU for the present modalities
    and each modality's contribution on this sample. Every change recomputes every model.

    CSS classes for scripted front ends (the browser tests): `wb-legend`, `wb-toggle-<m>`, `wb-<m>-kind`,
    `wb-<m>-level`, `wb-case`, `wb-protocol`, `wb-sample`, `wb-info`, `wb-input-<m>`, `wb-label`, and per
    model key `wb-prediction-<key>`, `wb-errors-<key>`, `wb-miou-<key>` ("sample mIoU: xx.xx"),
    `wb-split-<key>`, `wb-contrib-<key>`."""

    def __init__(self, predictors, classes: Sequence[str], palette, samples: Sequence[tuple[str, int]] | None = None,
                 titles: Mapping[str, str] | None = None, scale: int | None = None, header: str = ""):
        import ipywidgets as W

        if not isinstance(predictors, Mapping):
            predictors = {"model": predictors}
        self.predictors = dict(predictors)
        self.first = next(iter(self.predictors.values()))
        self.modalities = self.first.modalities
        self.classes, self.palette = classes, palette
        self.titles = {k: (titles or {}).get(k, k) for k in self.predictors}
        self.state = InputState.clean(self.modalities)
        h = self.first.raw("auto")["label"].shape[-1]
        self.scale = scale or max(1, 160 // h)
        self._hold = False
        self.toggles, self.kinds, self.levels = {}, {}, {}
        rows = []
        kind_options = [(d.name, d.key) for d in DEGRADATIONS.values()]
        for m in self.modalities:
            t = W.ToggleButton(value=True, description=m, tooltip=f"switch {m} on/off", icon="check",
                               button_style="success", layout=W.Layout(width="120px"))
            t.add_class(f"wb-toggle-{m}")
            kind = W.Dropdown(options=kind_options, value="gaussian", layout=W.Layout(width="190px"))
            kind.add_class(f"wb-{m}-kind")
            level = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="level",
                                  continuous_update=False, style={"description_width": "40px"},
                                  layout=W.Layout(width="300px"))
            level.add_class(f"wb-{m}-level")
            self.toggles[m], self.kinds[m], self.levels[m] = t, kind, level
            rows.append(W.HBox([t, kind, level]))
        self.level_help = W.HTML(value=self._level_help())
        self.case = W.Dropdown(options=list(self.first.cases), value="auto", description="failure case")
        self.case.add_class("wb-case")
        self.protocol = W.Dropdown(options=[("drop (left out)", "drop"), ("zero (zeroed input)", "zero")],
                                   value="drop", description="switched off")
        self.protocol.add_class("wb-protocol")
        controls = [self.case, self.protocol]
        self.sample = None
        if samples:
            self.sample = W.Dropdown(options=[(name, i) for name, i in samples], value=samples[0][1],
                                     description="sample")
            self.sample.add_class("wb-sample")
            controls.insert(0, self.sample)
            self._set_index(samples[0][1])
        legend = W.HTML(value=legend_html(classes, palette))
        legend.add_class("wb-legend")
        self.info = W.HTML(value="")
        self.info.add_class("wb-info")
        self.inputs = {m: W.Image(format="png") for m in self.modalities}
        for m, w in self.inputs.items():
            w.add_class(f"wb-input-{m}")
        self.label_img = W.Image(format="png")
        self.label_img.add_class("wb-label")

        def captioned(w, text):
            return W.VBox([W.HTML(f"<b>{html.escape(text)}</b>"), w])

        images = W.HBox([captioned(self.inputs[m], m) for m in self.modalities] + [captioned(self.label_img, "label")])
        self.pred_imgs, self.err_imgs, self.mious, self.splits, self.contribs = {}, {}, {}, {}, {}
        columns = []
        for key in self.predictors:
            p, e = W.Image(format="png"), W.Image(format="png")
            p.add_class(f"wb-prediction-{key}")
            e.add_class(f"wb-errors-{key}")
            mi, sp, co = W.HTML("sample mIoU: --"), W.HTML(""), W.HTML("")
            mi.add_class(f"wb-miou-{key}")
            sp.add_class(f"wb-split-{key}")
            co.add_class(f"wb-contrib-{key}")
            self.pred_imgs[key], self.err_imgs[key], self.mious[key], self.splits[key], self.contribs[key] = \
                p, e, mi, sp, co
            title = W.HTML(f"<h3 style='margin:4px 0'>{html.escape(self.titles[key])}</h3>")
            columns.append(W.VBox([title, mi, sp, W.HBox([captioned(p, "prediction"), captioned(e, "errors (red)")]),
                                   co], layout=W.Layout(margin="0 24px 0 0")))
        parts = [W.HTML(header)] if header else []
        self.widget = W.VBox([*parts, legend, *rows, self.level_help, W.HBox(controls), self.info, images,
                              W.HBox(columns)])
        watched = [*self.toggles.values(), *self.levels.values(), self.case, self.protocol]
        for w in watched:
            w.observe(self._changed, names="value")
        for w in self.kinds.values():
            w.observe(self._kind_changed, names="value")
        if self.sample is not None:
            self.sample.observe(self._sample_changed, names="value")
        self.update()

    def _level_help(self) -> str:
        used = dict.fromkeys(self.kinds[m].value for m in self.modalities)
        text = "; ".join(f"<b>{html.escape(DEGRADATIONS[k].name)}</b> level: {html.escape(DEGRADATIONS[k].level)}"
                         for k in used)
        return f"<div style='font-size:0.85em;color:#444'>{text}</div>"

    def _set_index(self, index: int) -> None:
        for p in self.predictors.values():
            p.index = index

    def _changed(self, _change=None) -> None:
        if not self._hold:
            self.update()

    def _kind_changed(self, change) -> None:
        """A new kind: the level slider takes its range (the level is kept where it fits)."""
        m = next(m for m, w in self.kinds.items() if w is change["owner"])
        d = DEGRADATIONS[change["new"]]
        s = self.levels[m]
        self._hold = True
        try:
            s.max, s.step = d.max, d.step
            s.value = min(s.value, d.max)
        finally:
            self._hold = False
        self.level_help.value = self._level_help()
        self.update()

    def _sample_changed(self, change) -> None:
        self._set_index(change["new"])
        self.update()

    def current_state(self) -> InputState:
        mods = {m: ModalityState(on=self.toggles[m].value, kind=self.kinds[m].value, level=self.levels[m].value)
                for m in self.modalities}
        return InputState(mods, case=self.case.value, protocol=self.protocol.value)

    def update(self) -> dict:
        self.state = self.current_state()
        for t in self.toggles.values():
            t.icon, t.button_style = ("check", "success") if t.value else ("times", "")
        outs = {key: p(self.state) for key, p in self.predictors.items()}
        first = next(iter(outs.values()))
        for m, w in self.inputs.items():
            w.value = png_bytes(modality_image(first["inputs"][m]), self.scale)
        self.label_img.value = png_bytes(colorize(first["label"], self.palette), self.scale)
        present = self.state.present
        combo = combo_name(present) if present else "nothing"
        for key, out in outs.items():
            self.pred_imgs[key].value = png_bytes(colorize(out["pred"], self.palette), self.scale)
            self.err_imgs[key].value = png_bytes(error_image(out["error"]), self.scale)
            self.mious[key].value = f"<span style='font-size:1.4em'>sample mIoU: {out['miou']:.2f}</span>"
            split = out["split_miou"]
            p = self.predictors[key]
            self.splits[key].value = (
                f"{p.split} split mIoU with {combo} ({self.state.protocol}, clean inputs): "
                + (f"<b>{split:.2f}</b>" if split is not None else "-"))
            self.contribs[key].value = contributions_html(out["contributions"], self.modalities)
        meta = first["meta"]
        self.info.value = (f"sample {html.escape(str(meta.get('file', '')))}: condition "
                           f"{html.escape(str(meta.get('condition', '-')))}, failure case "
                           f"{html.escape(str(meta.get('case', '-')))}; input: {html.escape(self.state.describe())}")
        self.last = outs
        return outs

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# ---------------------------------------------------------------- the runs the apps compare
# What the classroom trains when the quick runs are not cached: the quick profile on half its training samples,
# the teacher 12 epochs and the student 4 (16% of the quick runs' steps), for a page that trains its own runs.
REDUCED_QUICK = {"data.train_samples": 192, "train.epochs": 12, "distill.epochs": 4}


def classroom_runs(profile: str = "quick", method: str = "robustseg", seed: int = 0, overrides=None,
                   reduced: dict | None = None, progress: bool = True):
    """(baseline, student, note): the run of `method` at `profile` and its teacher (the baseline: all
    modalities, CE), trained if missing. With `reduced` (e.g. `REDUCED_QUICK`) and runs that are not both
    cached, the profile with those overrides is used instead (trained now, with a progress bar). `note`
    says in words which runs these are and whether they were trained here."""
    from workbench.runs import Run

    overrides = dict(overrides or {})
    student = Run.of(method, profile, seed, overrides)
    cached = student.done and student.teacher.done
    what = f"{profile} profile, seed {seed}"
    if not cached and reduced:
        student = Run.of(method, profile, seed, {**overrides, **reduced})
        cached = student.done and student.teacher.done
        size = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in reduced.items())
        what = (f"{profile} profile reduced to {size}, seed {seed} (the {profile} runs that `make suite` writes "
                f"were not found)")
    student.ensure(progress=progress)
    baseline = student.teacher
    note = (f"{what}: baseline run {baseline.name}, {method} run {student.name}"
            + ("" if cached else " (trained just now)"))
    return baseline, student, note


def comparison(baseline, student, split: str = "test", device: str = "auto", seed: int = 0, index: int = 0,
               samples: Sequence[tuple[str, int]] | None = None, header: str = "", progress: bool = False,
               app: bool = True):
    """The baseline and the student (`workbench.runs.Run`s) on the same sample, each with its split's
    all-combination evaluation (cached beside the run) for the split mIoU: a `SliderApp`, or with
    `app=False` the predictors {"baseline": ..., <method>: ...} (for static grids)."""
    from workbench.samples import class_info

    method = student.config.name
    preds = {"baseline": SamplePredictor(baseline.model("model", device), baseline.config, split, index, seed,
                                         baseline.evaluation(split, device=device, progress=progress)),
             method: SamplePredictor(student.model("model", device), student.config, split, index, seed,
                                     student.evaluation(split, device=device, progress=progress))}
    if not app:
        return preds
    classes, palette = class_info(student.config, split)
    titles = {"baseline": "baseline (trained with all modalities)", method: f"{method} (student)"}
    return SliderApp(preds, classes, palette, samples=samples, titles=titles, header=header)


@dataclass(frozen=True)
class Story:
    """What the classroom's first prompt says, computed from the runs it shows (`rgb_off_story`)."""

    kind: str  # "repair" | "baseline ahead" | "within noise" | "one seed"
    text: str
    numbers: dict


def rgb_off_story(pairs: Sequence[tuple], method: str, camera: str = "rgb", protocol: str = "drop") -> Story:
    """The classroom's first prompt ("switch the camera off: which model keeps its street?") from the runs
    it loads: `pairs` holds, per seed, the baseline's and the student's all-combination results on the page's
    split. The student's score without the camera is compared with the baseline's, paired by seed
    (`workbench.stats.paired`): the page shows the collapse and the repair only where the runs show it, says
    so when the baseline stays ahead (and asks why), and calls a difference inside the seed spread, or one
    seed, what it is."""
    from workbench.stats import paired

    mods = pairs[0][0].modalities
    if camera not in mods or len(mods) < 2:
        return Story("within noise", "Switch a sensor off with its button: which model keeps its street?", {})
    rest = tuple(m for m in mods if m != camera)
    full_b = [b.full(protocol) for b, _ in pairs]
    off_b = [b.miou(protocol, rest) for b, _ in pairs]
    full_s = [s.full(protocol) for _, s in pairs]
    off_s = [s.miou(protocol, rest) for _, s in pairs]
    d = paired(off_s, off_b)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    n = {"seeds": d.n, "baseline_full": mean(full_b), "baseline_off": mean(off_b), "student_full": mean(full_s),
         "student_off": mean(off_s), "difference": d.mean, "ci_low": d.low, "ci_high": d.high}
    keeps = n["baseline_off"] / n["baseline_full"] if n["baseline_full"] else float("nan")
    n["baseline_keeps"] = keeps
    head = (f"Switch {camera.upper() if camera == 'rgb' else camera} off. With every sensor the baseline scores "
            f"{n['baseline_full']:.1f} mIoU and {method} {n['student_full']:.1f}; without the camera the baseline "
            f"scores {n['baseline_off']:.1f} (it keeps {100 * keeps:.0f}% of its score) and {method} "
            f"{n['student_off']:.1f}")
    seeds = f"{d.n} seed{'s' if d.n > 1 else ''}, {'paired by seed' if d.n > 1 else 'no spread from one seed'}"
    if d.n < 2:
        return Story("one seed", f"{head} ({seeds}: a single pair of runs cannot tell a difference from seed "
                     f"noise). Which model keeps its street on this scene?", n)
    ci = f"{d.mean:+.1f} points, 95% CI [{d.low:+.1f}, {d.high:+.1f}], {seeds}"
    if d.low > 0:
        fall = "collapses" if keeps < 0.5 else "falls"
        return Story("repair", f"{head}: the baseline {fall} without the camera and {method} keeps more of the "
                     f"street ({ci}). Which sensor does each model lean on now?", n)
    if d.high < 0:
        return Story("baseline ahead", f"{head}: on these runs the baseline stays ahead without the camera ({ci}). "
                     f"Why might a model trained with every sensor not lean on the camera here, and what does "
                     f"{method} give up for its robustness?", n)
    return Story("within noise", f"{head}: the two are within seed noise of each other without the camera ({ci}). "
                 f"Look at single scenes: where does each model fail?", n)


def story_pairs(student, seeds: Sequence[int], split: str = "test", device: str = "auto") -> list[tuple]:
    """(baseline, student) all-combination results on `split` for `student` (a `workbench.runs.Run`) and the
    same configuration at every seed of `seeds` whose two runs are trained (nothing is trained here; the
    evaluations are cached beside the runs)."""
    from workbench.config import apply_overrides
    from workbench.runs import Run

    out = []
    for seed in dict.fromkeys([student.config.train.seed, *seeds]):
        run = Run.from_config(apply_overrides(student.config, {"train.seed": seed}), progress=False)
        if run.done and run.teacher.done:
            out.append((run.teacher.evaluation(split, device=device), run.evaluation(split, device=device)))
    return out


def served_by_voila() -> bool:
    """Whether this kernel runs a page served by Voila (which starts kernels with SERVER_SOFTWARE=voila/...)."""
    return os.environ.get("SERVER_SOFTWARE", "").startswith("voila/")


def prepare_classroom(profile: str = "quick", method: str = "robustseg", seed: int = 0, split: str = "test",
                      progress: bool = True) -> str:
    """What `make demo` does before it serves the classroom page: the page's runs (cached, or trained now
    with progress bars; see `classroom_runs`) and their split evaluations, so the page opens at once.
    Returns the note that says which runs these are."""
    reduced = REDUCED_QUICK if profile == "quick" else None
    baseline, student, note = classroom_runs(profile, method, seed, reduced=reduced, progress=progress)
    for run in (baseline, student):
        run.evaluation(split, progress=progress)
    return note
