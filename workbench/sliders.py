"""Modality sliders: degradations of a [0, 1] input, the input state a slider move changes, the
prediction it gives, and the ipywidgets app (notebook 06 and the classroom page).

The degradations here are for looking at a model, named for what they do (Gaussian noise,
salt-and-pepper noise, pixel dropout, blur) on the [0, 1] sensor image; the field's RMM/NM protocols
(random element zeroing and noise on the normalized input, at the benchmark's rates) are
`workbench.robustness`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from workbench.config import Config
from workbench.data.transforms import IGNORE_INDEX
from workbench.errors import ConfigError
from workbench.plotting import colorize, error_image, modality_image, png_bytes
from workbench.samples import error_map, normalize_inputs, predict, raw_sample, sample_miou

__all__ = ["NOISE_KINDS", "gaussian_noise", "salt_and_pepper", "pixel_dropout", "gaussian_blur", "degrade",
           "ModalityState", "InputState", "SamplePredictor", "slider_states", "SliderApp"]

NOISE_KINDS = ("gaussian", "salt_pepper")

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

def pixel_dropout(x: torch.Tensor, rate: float, seed: int = 0) -> torch.Tensor:
    """Each pixel position zeroed (all channels) with probability `rate` (not the benchmark's RMM, which zeroes
    single elements of the normalized input: `workbench.robustness`)."""
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
        raise ConfigError(f"noise_kind={noise_kind!r} is not valid; choose one of {', '.join(NOISE_KINDS)}")
    y = gaussian_blur(x, blur)
    y = gaussian_noise(y, noise, seed) if noise_kind == "gaussian" else salt_and_pepper(y, noise, seed)
    return pixel_dropout(y, dropout, seed + 1)

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


class SliderApp:
    """ipywidgets front end of `SamplePredictor`: a toggle per modality (description = its name),
    sliders "<modality> noise" / "dropout" / "blur", the noise type, the synthetic failure case and the
    protocol; the prediction, error map and the sample's "mIoU: xx.xx" update on every change.

    CSS classes for scripted front ends (the browser test): `wb-toggle-<m>`, `wb-<m>-noise`,
    `wb-<m>-dropout`, `wb-<m>-blur`, `wb-miou`, `wb-prediction`, `wb-errors`, `wb-input-<m>`."""

    def __init__(self, predictor, classes: Sequence[str], palette, scale: int | None = None):
        import ipywidgets as W

        self.predictor, self.classes, self.palette = predictor, classes, palette
        self.state = InputState.clean(predictor.modalities)
        raw = predictor.raw("auto")
        h = raw["label"].shape[-1]
        self.scale = scale or max(1, 192 // h)
        self.toggles, self.sliders = {}, {}
        rows = []
        for m in predictor.modalities:
            t = W.ToggleButton(value=True, description=m, tooltip=f"switch {m} on/off", icon="check",
                               button_style="success", layout=W.Layout(width="90px"))
            t.add_class(f"wb-toggle-{m}")
            self.toggles[m] = t
            sl = []
            for kind, hi, step in (("noise", 1.0, 0.05), ("dropout", 1.0, 0.05), ("blur", 4.0, 0.25)):
                s = W.FloatSlider(value=0.0, min=0.0, max=hi, step=step, description=f"{m} {kind}",
                                  continuous_update=False, style={"description_width": "105px"},
                                  layout=W.Layout(width="320px"))
                s.add_class(f"wb-{m}-{kind}")
                self.sliders[(m, kind)] = s
                sl.append(s)
            rows.append(W.HBox([t, *sl]))
        self.noise_kind = W.Dropdown(options=list(NOISE_KINDS), value="gaussian", description="noise type")
        self.case = W.Dropdown(options=list(predictor.cases), value="auto", description="case")
        self.protocol = W.Dropdown(options=["drop", "zero"], value="drop", description="protocol")
        for w in (self.noise_kind, self.case, self.protocol):
            w.add_class(f"wb-{w.description.replace(' ', '-')}")
        self.miou = W.HTML(value="mIoU: --")
        self.miou.add_class("wb-miou")
        self.info = W.HTML(value="")
        self.info.add_class("wb-info")
        self.inputs = {m: W.Image(format="png") for m in predictor.modalities}
        for m, w in self.inputs.items():
            w.add_class(f"wb-input-{m}")
        self.label_img, self.pred_img, self.err_img = (W.Image(format="png") for _ in range(3))
        self.label_img.add_class("wb-label")
        self.pred_img.add_class("wb-prediction")
        self.err_img.add_class("wb-errors")

        def captioned(w, text):
            return W.VBox([W.HTML(f"<b>{html.escape(text)}</b>"), w])

        images = W.HBox([captioned(self.inputs[m], m) for m in predictor.modalities])
        outputs = W.HBox([captioned(self.label_img, "label"), captioned(self.pred_img, "prediction"),
                          captioned(self.err_img, "errors (red)")])
        self.widget = W.VBox([*rows, W.HBox([self.noise_kind, self.case, self.protocol]), self.miou, self.info,
                              images, outputs])
        for w in [*self.toggles.values(), *self.sliders.values(), self.noise_kind, self.case, self.protocol]:
            w.observe(self._changed, names="value")
        self.update()

    def _changed(self, _change=None) -> None:
        self.update()

    def current_state(self):
        mods = {m: ModalityState(on=self.toggles[m].value, noise=self.sliders[(m, "noise")].value,
                                 dropout=self.sliders[(m, "dropout")].value, blur=self.sliders[(m, "blur")].value)
                for m in self.predictor.modalities}
        return InputState(mods, noise_kind=self.noise_kind.value, case=self.case.value, protocol=self.protocol.value)

    def update(self) -> dict:
        self.state = self.current_state()
        for t in self.toggles.values():
            t.icon, t.button_style = ("check", "success") if t.value else ("times", "")
        out = self.predictor(self.state)
        for m, w in self.inputs.items():
            w.value = png_bytes(modality_image(out["inputs"][m]), self.scale)
        self.label_img.value = png_bytes(colorize(out["label"], self.palette), self.scale)
        self.pred_img.value = png_bytes(colorize(out["pred"], self.palette), self.scale)
        self.err_img.value = png_bytes(error_image(out["error"]), self.scale)
        self.miou.value = f"<span style='font-size:1.4em'>mIoU: {out['miou']:.2f}</span>"
        meta = out["meta"]
        self.info.value = (f"sample {html.escape(str(meta.get('file', '')))}, condition "
                           f"{html.escape(str(meta.get('condition', '-')))}, case {html.escape(str(meta.get('case', '-')))}"
                           f"; input: {html.escape(self.state.describe())}")
        self.last = out
        return out

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
