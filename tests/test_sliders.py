"""`workbench.sliders`: named degradations (and the benchmark's RMM / NM through `workbench.robustness`),
input states, per-sample contributions, the sample predictor and the side-by-side widget app, on
hand-made inputs and untrained tiny models."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from workbench import samples as S  # noqa: E402
from workbench import sliders as SL  # noqa: E402
from workbench.config import apply_overrides  # noqa: E402
from workbench.data.transforms import normalize  # noqa: E402
from workbench.models import build_model  # noqa: E402
from workbench.robustness import draw_generator, nm_corrupt, rmm_corrupt  # noqa: E402

MODS = ("rgb", "depth", "event", "lidar")




def test_degradations_are_deterministic_and_in_range():
    x = torch.rand(3, 16, 16)
    for kind in ("gaussian", "salt_pepper", "pixel_dropout", "blur"):
        a = SL.degrade(x, kind, 0.3, seed=5)
        assert torch.equal(a, SL.degrade(x, kind, 0.3, seed=5))
        assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
        assert torch.equal(SL.degrade(x, kind, 0.0), x), "level 0 leaves the input as it is"
    with pytest.raises(ValueError, match="degradation 'speckle'"):
        SL.degrade(x, "speckle", 0.1)
    with pytest.raises(ValueError, match="normalized input"):
        SL.degrade(x, "rmm", 0.1)


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
    names = {d.name for d in SL.DEGRADATIONS.values()}
    assert {"salt-and-pepper noise", "pixel dropout", "RMM (benchmark)", "NM (benchmark)"} <= names


def test_benchmark_corruptions_are_the_robustness_modules():
    """RMM and NM in the sliders are `rmm_corrupt` / `nm_corrupt` on the normalized input, nothing else."""
    raw = {m: torch.rand(3, 16, 16) for m in MODS}
    state = SL.InputState.clean(MODS).with_modality("rgb", kind="rmm", level=0.5) \
        .with_modality("event", kind="nm", level=3)
    shown, inputs = SL.build_inputs(raw, state, seed=7)
    clean = {m: x[None] for m, x in normalize(dict(raw)).items()}
    assert torch.equal(inputs["rgb"], rmm_corrupt(clean["rgb"], 0.5, draw_generator(7, "slider-rmm", "rgb")))
    expected = nm_corrupt({"event": clean["event"]}, "high", draw_generator(7, "slider-nm", "event"))["event"]
    assert torch.equal(inputs["event"], expected)
    assert torch.equal(inputs["depth"], clean["depth"]) and torch.equal(inputs["lidar"], clean["lidar"])
    zero = (inputs["rgb"] == 0).float().mean()
    assert 0.4 < zero < 0.6 and shown["rgb"].shape == (3, 16, 16)
    more = SL.build_inputs(raw, state.with_modality("rgb", level=0.8), seed=7)[1]["rgb"]
    assert ((inputs["rgb"] == 0) <= (more == 0)).all(), "a larger rate zeroes a superset"


def test_input_state_describe_and_grid():
    s = SL.InputState.clean(("rgb", "depth"))
    assert s.describe() == "clean, all modalities"
    s2 = s.with_modality("rgb", on=False).with_modality("depth", kind="salt_pepper", level=0.5)
    assert s2.describe() == "rgb off, depth salt-and-pepper noise 0.5" and s.modalities["rgb"].on
    assert s.with_modality("depth", kind="nm", level=2).describe() == "depth NM mid"
    grid = SL.slider_states(("rgb", "depth"), ("auto", "none", "motionblur"))
    names = [g.describe() for g in grid]
    assert names[0] == "clean, all modalities" and "rgb off" in names and "case motionblur" in names
    assert "rgb RMM (benchmark) 0.5" in names and "rgb pixel dropout 0.5" in names
    assert len(set(names)) == len(names)


def test_shapley_and_contributions_against_hand_values():
    v = {("a",): 10.0, ("b",): 20.0, ("a", "b"): 40.0}
    phi = S.shapley(v, ("a", "b"))  # a: (10 + (40 - 20)) / 2, b: (20 + (40 - 10)) / 2
    assert phi == pytest.approx({"a": 15.0, "b": 25.0}) and sum(phi.values()) == pytest.approx(40.0)
    c = S.contributions(v, ("a", "b"))
    assert c["a"]["drop"] == pytest.approx(20.0) and c["b"]["drop"] == pytest.approx(30.0)
    assert S.contributions({("a",): 12.0}, ("a",)) == {"a": {"shapley": 12.0, "drop": 12.0}}


def test_sample_predictor_reacts_to_state(tiny):
    model, cfg = tiny
    sp = SL.SamplePredictor(model, cfg, "test", 1)
    clean = sp(SL.InputState.clean(sp.modalities))
    assert clean["pred"].shape == clean["label"].shape == (32, 32)
    assert 0 <= clean["miou"] <= 100 and clean["present"] == list(sp.modalities)
    assert sum(c["shapley"] for c in clean["contributions"].values()) == pytest.approx(clean["miou"], abs=1e-6)
    assert len(clean["subset_miou"]) == 15 and clean["split_miou"] is None
    naive = S.predict(model, S.normalize_inputs(sp.raw()["inputs"]), ("rgb", "lidar"))[0][0]
    assert S.sample_miou(naive, clean["label"], 12) == pytest.approx(clean["subset_miou"][("rgb", "lidar")])
    off = sp(SL.InputState.clean(sp.modalities).with_modality("rgb", on=False))
    assert off["inputs"]["rgb"].abs().sum() == 0 and off["present"] == ["depth", "event", "lidar"]
    assert set(off["contributions"]) == {"depth", "event", "lidar"}
    none = sp(SL.InputState({m: SL.ModalityState(on=False) for m in sp.modalities}))
    assert none["miou"] == 0.0 and (none["error"] != 0).all()
    case = sp(dataclasses.replace(SL.InputState.clean(sp.modalities), case="underexposure"))
    assert case["meta"]["case"] == "underexposure" and case["inputs"]["rgb"].mean() < clean["inputs"]["rgb"].mean()


def test_curated_samples_follow_the_meta(tiny):
    _, cfg = tiny
    cfg = apply_overrides(cfg, {"data.test_samples": 64})
    picks = S.curated_samples(cfg, "test")
    assert picks and len({i for _, i in picks}) == len(picks)
    ds = S.eval_dataset(cfg, "test")
    wanted = {name: (key, value) for name, key, value in S.CURATED}
    for name, i in picks:
        key, value = wanted[name]
        meta = ds[i]["meta"]
        assert meta[key] == value and (key == "case" or meta["case"] == "none")
        assert all(ds[j]["meta"][key] != value or (key == "condition" and ds[j]["meta"]["case"] != "none")
                   for j in range(i)), "the first such sample"


def test_slider_app_side_by_side(tiny):
    pytest.importorskip("ipywidgets")
    model, cfg = tiny
    torch.manual_seed(1)
    other = build_model(cfg.model, MODS, 12).eval()
    preds = {"baseline": SL.SamplePredictor(other, cfg, "test", 0), "robustseg": SL.SamplePredictor(model, cfg, "test", 0)}
    app = SL.SliderApp(preds, [str(i) for i in range(12)], [(i * 20, 0, 0) for i in range(12)],
                       samples=[("first", 0), ("third", 2)])
    for key in preds:
        assert app.pred_imgs[key].value[:4] == b"\x89PNG" and "sample mIoU: " in app.mious[key].value
        assert "Shapley" in app.contribs[key].value
    assert "classes:" in app.widget.children[0].value
    app.toggles["rgb"].value = False
    assert not app.state.modalities["rgb"].on and "rgb off" in app.info.value
    assert all(out["present"] == ["depth", "event", "lidar"] for out in app.last.values())
    assert "rgb</td><td colspan=2 style='color:#888'>off" in app.contribs["baseline"].value
    app.kinds["depth"].value = "nm"
    assert app.levels["depth"].max == 3.0 and "NM (benchmark)" in app.level_help.value
    app.levels["depth"].value = 2
    assert app.state.modalities["depth"].kind == "nm" and "depth NM mid" in app.info.value
    app.sample.value = 2
    assert all(p.index == 2 for p in preds.values()) and app.last["robustseg"]["meta"]["index"] == 2
    assert "wb-toggle-rgb" in app.toggles["rgb"]._dom_classes
    assert "wb-prediction-robustseg" in app.pred_imgs["robustseg"]._dom_classes


class _Scores:
    """Stands in for CombinationResults: a full score and a score without the camera."""

    modalities = ("rgb", "depth", "event", "lidar")

    def __init__(self, full, off):
        self._full, self._off = full, off

    def full(self, protocol):
        return self._full

    def miou(self, protocol, combo):
        assert combo == ("depth", "event", "lidar")
        return self._off


def test_the_first_prompt_tells_what_the_runs_show():
    repair = SL.rgb_off_story([(_Scores(50, 2 + i), _Scores(48, 20 + i * 0.5)) for i in range(3)], "robustseg")
    assert repair.kind == "repair" and "collapses" in repair.text and "3 seeds" in repair.text
    assert repair.numbers["baseline_off"] == pytest.approx(3.0) and repair.numbers["difference"] == pytest.approx(17.5)
    ahead = SL.rgb_off_story([(_Scores(41, 26 + i), _Scores(40, 25 + i * 1.1)) for i in range(3)], "robustseg")
    assert ahead.kind == "baseline ahead" and "stays ahead" in ahead.text and "Why" in ahead.text
    noise = SL.rgb_off_story([(_Scores(41, 26), _Scores(40, 27)), (_Scores(41, 26), _Scores(40, 25))], "robustseg")
    assert noise.kind == "within noise" and "seed noise" in noise.text
    one = SL.rgb_off_story([(_Scores(41, 26), _Scores(40, 30))], "robustseg")
    assert one.kind == "one seed" and "cannot tell" in one.text
