"""`workbench.plotting` (saving, tables, images, the slider app) and the notebook computations in
`workbench.analysis` they draw (degradations, per-sample mIoU, t-SNE points, IFV maps, parameter
distance), on hand-made inputs and an untrained tiny model: seconds on a CPU."""

from __future__ import annotations

import dataclasses
import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from workbench import analysis as A  # noqa: E402
from workbench import plotting as P  # noqa: E402
from workbench.config import apply_overrides, preset  # noqa: E402
from workbench.models import build_model  # noqa: E402


@pytest.fixture
def tiny():
    cfg = apply_overrides(preset("robustseg", "smoke"), {"data.test_samples": 4})
    torch.manual_seed(0)
    model = build_model(cfg.model, ("rgb", "depth", "event", "lidar"), 12).eval()
    return model, cfg


# ----------------------------------------------------------------------------------------------
# degradations


def test_degradations_are_deterministic_and_in_range():
    x = torch.rand(3, 16, 16)
    for kind in A.NOISE_KINDS:
        a = A.degrade(x, noise=0.3, noise_kind=kind, dropout=0.2, blur=1.0, seed=5)
        assert torch.equal(a, A.degrade(x, noise=0.3, noise_kind=kind, dropout=0.2, blur=1.0, seed=5))
        assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(A.degrade(x), x), "no degradation leaves the input as it is"
    with pytest.raises(ValueError, match="noise_kind"):
        A.degrade(x, noise_kind="speckle")


def test_each_degradation_does_what_it_says():
    flat = torch.full((3, 20, 20), 0.4)
    assert torch.allclose(A.gaussian_blur(flat, 2.0), flat), "blur keeps a constant image"
    x = torch.rand(3, 64, 64)
    y = A.element_dropout(x, 0.5, seed=1)
    zeroed = (y == 0).all(0).float().mean()
    assert 0.4 < zeroed < 0.6 and torch.equal((y == 0).all(0), (y == 0).any(0)), "whole pixels, at the rate"
    sp = A.salt_and_pepper(x, 0.3, seed=2)
    changed = (sp != x).any(0)
    assert 0.25 < changed.float().mean() < 0.35 and set(sp[:, changed].unique().tolist()) <= {0.0, 1.0}
    spike = torch.zeros(1, 9, 9)
    spike[0, 4, 4] = 1
    b = A.gaussian_blur(spike, 1.0)
    assert abs(float(b.sum()) - 1) < 1e-5 and b[0, 4, 4] == b.max() and torch.allclose(b, b.flip(-1))


def test_sample_miou_and_error_map():
    label = torch.tensor([[0, 0, 1], [1, 2, 255]])
    assert A.sample_miou(label.clamp(max=2), label, 3) == pytest.approx(100.0)
    pred = torch.tensor([[0, 0, 1], [1, 1, 0]])  # class 2 missed: IoU 0, class 1: 2/3, class 0: 1
    assert A.sample_miou(pred, label, 3) == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert A.error_map(pred, label).tolist() == [[0, 0, 0], [0, 1, 2]]


def test_input_state_describe_and_grid():
    s = A.InputState.clean(("rgb", "depth"))
    assert s.describe() == "clean, all modalities"
    s2 = s.with_modality("rgb", on=False).with_modality("depth", noise=0.5)
    assert s2.describe() == "rgb off, depth noise 0.5" and s.modalities["rgb"].on, "states are not shared"
    grid = A.slider_states(("rgb", "depth"), ("auto", "none", "motionblur"))
    names = [g.describe() for g in grid]
    assert names[0] == "clean, all modalities" and "rgb off" in names and "case motionblur" in names
    assert len(set(names)) == len(names)


# ----------------------------------------------------------------------------------------------
# model-side computations on an untrained tiny model


def test_sample_predictor_reacts_to_state(tiny):
    model, cfg = tiny
    sp = A.SamplePredictor(model, cfg, "test", 1)
    clean = sp(A.InputState.clean(sp.modalities))
    assert clean["pred"].shape == clean["label"].shape == (32, 32)
    assert 0 <= clean["miou"] <= 100 and clean["present"] == list(sp.modalities)
    off = sp(A.InputState.clean(sp.modalities).with_modality("rgb", on=False))
    assert off["inputs"]["rgb"].abs().sum() == 0 and off["present"] == ["depth", "event", "lidar"]
    none = sp(A.InputState({m: A.ModalityState(on=False) for m in sp.modalities}))
    assert none["miou"] == 0.0 and (none["error"] != 0).all()
    case = sp(dataclasses.replace(A.InputState.clean(sp.modalities), case="underexposure"))
    assert case["meta"]["case"] == "underexposure" and case["inputs"]["rgb"].mean() < clean["inputs"]["rgb"].mean()


def test_raw_sample_matches_the_dataset(tiny):
    _, cfg = tiny
    raw = A.raw_sample(cfg, "test", 2)
    ds = A.eval_dataset(cfg, "test")
    item = ds[2]
    assert torch.equal(raw["label"], item["label"])
    for m in raw["modalities"]:
        assert torch.allclose(A.normalize_inputs(raw["inputs"])[m][0], item[m], atol=1e-5)


def test_feature_points_and_tsne(tiny):
    model, cfg = tiny
    pts = A.feature_points(model, A.batches(cfg, "test", 4), stage=1, mode="prototypes")
    assert pts.x.shape[1] == 32 and len(pts) == len(pts.cls) == len(pts.modality) == len(pts.sample)
    per_mod = [int((pts.modality == j).sum()) for j in range(4)]
    assert len(set(per_mod)) == 1, "one prototype per sample, class present and modality"
    pix = A.feature_points(model, A.batches(cfg, "test", 4), stage=0, mode="pixels", max_pixels=50)
    assert len(pix) == 4 * 50
    j0, j1 = pix.modality == 0, pix.modality == 1
    assert np.array_equal(pix.cls[j0], pix.cls[j1]) and np.array_equal(pix.sample[j0], pix.sample[j1])
    emb = A.tsne_embedding(pts, seed=0, max_iter=250)
    assert emb.shape == (len(pts), 2) and np.isfinite(emb).all()
    scores = A.cluster_scores(pts)
    assert -1 <= scores["silhouette_class"] <= 1 and -1 <= scores["silhouette_modality"] <= 1


def test_ifv_maps_match_the_losses(tiny):
    model, cfg = tiny
    batch = A.load_batch(cfg, "test", [0, 1])
    maps = A.ifv_maps(model, batch, stages=(0, 1))
    assert set(maps) == set(model.modalities) and set(maps["rgb"]) == {0, 1}
    d = maps["depth"][0]
    assert d["ifv"].shape == (2, 8, 8) and d["feature_rgb"].shape == d["cfm_rgb"].shape == (2, 8, 8, 3)
    assert (np.abs(d["ifv"]) <= 1 + 1e-5).all() and 0 <= d["cfm_rgb"].min() and d["cfm_rgb"].max() <= 1
    rows = A.ifv_summary(maps, "m", sample=1)
    assert len(rows) == 8 and all(-1 <= r["mean_ifv"] <= 1 for r in rows)


def test_parameter_distance(tiny):
    model, cfg = tiny
    other = build_model(cfg.model, model.modalities, 12)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in other.encoder("lidar").parameters():
            p.add_(0.01)
    rows = {r["part"]: r for r in A.parameter_distance(model, other)}
    assert set(rows) == {"encoder/rgb", "encoder/depth", "encoder/event", "encoder/lidar", "head", "fusion"}
    assert rows["encoder/lidar"]["changed_fraction"] == 1.0 and rows["encoder/lidar"]["l2"] > 0
    assert all(rows[k]["l2"] == 0 for k in ("encoder/rgb", "head", "fusion"))


# ----------------------------------------------------------------------------------------------
# plotting


def test_figures_save_png_pdf_csv_and_index(tmp_path):
    figs = P.Figures("99_test", "smoke", root=tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    figs.save(fig, "line", rows=[{"x": 0, "y": 1.0}, {"x": 1, "y": 0.0}], title="A line", caption="c")
    table = figs.table([{"a": 1, "b": 0.12345}], "tab", title="T")
    plt.close(fig)
    for name in ("line.png", "line.pdf", "line.csv", "tab.csv", "tab.md"):
        assert (figs.dir / name).stat().st_size > 0
    index = json.loads((figs.dir / "index.json").read_text())
    assert [e["name"] for e in index["entries"]] == ["line", "tab"]
    assert index["entries"][0]["files"] == {"png": "line.png", "pdf": "line.pdf", "csv": "line.csv"}
    assert "0.12" in table._repr_html_() and "| a | b |" in table._repr_markdown_()
    P.Figures("99_test", "smoke", root=tmp_path)  # a re-run starts a fresh index
    assert json.loads((figs.dir / "index.json").read_text())["entries"] == []


def test_images():
    lab = np.array([[0, 1], [255, 11]])
    img = P.colorize(lab, ((1, 2, 3), (4, 5, 6)))
    assert img.dtype == np.uint8 and img[0, 1].tolist() == [4, 5, 6] and img[1, 0].tolist() == [0, 0, 0]
    assert P.error_image(np.array([[0, 1, 2]])).shape == (1, 3, 3)
    assert P.modality_image(torch.rand(1, 4, 5)).shape == (4, 5, 3)
    png = P.png_bytes(np.zeros((4, 4, 3), np.uint8), scale=3)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_slider_app_updates(tiny):
    pytest.importorskip("ipywidgets")
    model, cfg = tiny
    sp = A.SamplePredictor(model, cfg, "test", 0)
    app = P.SliderApp(sp, [str(i) for i in range(12)], [(i * 20, 0, 0) for i in range(12)])
    assert app.pred_img.value[:4] == b"\x89PNG"
    assert app.miou.value.endswith("</span>") and "mIoU: " in app.miou.value
    app.toggles["rgb"].value = False
    assert not app.state.modalities["rgb"].on and "rgb off" in app.info.value
    app.sliders[("depth", "noise")].value = 0.9
    assert app.state.modalities["depth"].noise == 0.9 and app.last["present"] == ["depth", "event", "lidar"]
    assert "wb-toggle-rgb" in app.toggles["rgb"]._dom_classes and "wb-prediction" in app.pred_img._dom_classes
