"""`workbench.sliders`: degradations, input states, the sample predictor and the widget app, on
hand-made inputs and an untrained tiny model."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from workbench import sliders as SL  # noqa: E402
from workbench.config import apply_overrides, preset  # noqa: E402
from workbench.models import build_model  # noqa: E402


@pytest.fixture
def tiny():
    cfg = apply_overrides(preset("robustseg", "smoke"), {"data.test_samples": 4})
    torch.manual_seed(0)
    model = build_model(cfg.model, ("rgb", "depth", "event", "lidar"), 12).eval()
    return model, cfg


def test_degradations_are_deterministic_and_in_range():
    x = torch.rand(3, 16, 16)
    for kind in SL.NOISE_KINDS:
        a = SL.degrade(x, noise=0.3, noise_kind=kind, dropout=0.2, blur=1.0, seed=5)
        assert torch.equal(a, SL.degrade(x, noise=0.3, noise_kind=kind, dropout=0.2, blur=1.0, seed=5))
        assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(SL.degrade(x), x), "no degradation leaves the input as it is"
    with pytest.raises(ValueError, match="noise_kind"):
        SL.degrade(x, noise_kind="speckle")


def test_each_degradation_does_what_it_says():
    flat = torch.full((3, 20, 20), 0.4)
    assert torch.allclose(SL.gaussian_blur(flat, 2.0), flat), "blur keeps a constant image"
    x = torch.rand(3, 64, 64)
    y = SL.pixel_dropout(x, 0.5, seed=1)
    zeroed = (y == 0).all(0).float().mean()
    assert 0.4 < zeroed < 0.6 and torch.equal((y == 0).all(0), (y == 0).any(0)), "whole pixels, at the rate"
    sp = SL.salt_and_pepper(x, 0.3, seed=2)
    changed = (sp != x).any(0)
    assert 0.25 < changed.float().mean() < 0.35 and set(sp[:, changed].unique().tolist()) <= {0.0, 1.0}
    spike = torch.zeros(1, 9, 9)
    spike[0, 4, 4] = 1
    b = SL.gaussian_blur(spike, 1.0)
    assert abs(float(b.sum()) - 1) < 1e-5 and b[0, 4, 4] == b.max() and torch.allclose(b, b.flip(-1))


def test_input_state_describe_and_grid():
    s = SL.InputState.clean(("rgb", "depth"))
    assert s.describe() == "clean, all modalities"
    s2 = s.with_modality("rgb", on=False).with_modality("depth", noise=0.5)
    assert s2.describe() == "rgb off, depth noise 0.5" and s.modalities["rgb"].on, "states are not shared"
    grid = SL.slider_states(("rgb", "depth"), ("auto", "none", "motionblur"))
    names = [g.describe() for g in grid]
    assert names[0] == "clean, all modalities" and "rgb off" in names and "case motionblur" in names
    assert len(set(names)) == len(names)


def test_sample_predictor_reacts_to_state(tiny):
    model, cfg = tiny
    sp = SL.SamplePredictor(model, cfg, "test", 1)
    clean = sp(SL.InputState.clean(sp.modalities))
    assert clean["pred"].shape == clean["label"].shape == (32, 32)
    assert 0 <= clean["miou"] <= 100 and clean["present"] == list(sp.modalities)
    off = sp(SL.InputState.clean(sp.modalities).with_modality("rgb", on=False))
    assert off["inputs"]["rgb"].abs().sum() == 0 and off["present"] == ["depth", "event", "lidar"]
    none = sp(SL.InputState({m: SL.ModalityState(on=False) for m in sp.modalities}))
    assert none["miou"] == 0.0 and (none["error"] != 0).all()
    case = sp(dataclasses.replace(SL.InputState.clean(sp.modalities), case="underexposure"))
    assert case["meta"]["case"] == "underexposure" and case["inputs"]["rgb"].mean() < clean["inputs"]["rgb"].mean()


def test_slider_app_updates(tiny):
    pytest.importorskip("ipywidgets")
    model, cfg = tiny
    sp = SL.SamplePredictor(model, cfg, "test", 0)
    app = SL.SliderApp(sp, [str(i) for i in range(12)], [(i * 20, 0, 0) for i in range(12)])
    assert app.pred_img.value[:4] == b"\x89PNG"
    assert app.miou.value.endswith("</span>") and "mIoU: " in app.miou.value
    app.toggles["rgb"].value = False
    assert not app.state.modalities["rgb"].on and "rgb off" in app.info.value
    app.sliders[("depth", "noise")].value = 0.9
    assert app.state.modalities["depth"].noise == 0.9 and app.last["present"] == ["depth", "event", "lidar"]
    assert "wb-toggle-rgb" in app.toggles["rgb"]._dom_classes and "wb-prediction" in app.pred_img._dom_classes
