"""`workbench.analysis`: t-SNE points, IFV maps and parameter distance on an untrained tiny model."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workbench import analysis as A  # noqa: E402
from workbench import plotting as P  # noqa: E402
from workbench import samples as S  # noqa: E402
from workbench.models import build_model  # noqa: E402
from workbench.runs import Run  # noqa: E402


def test_feature_points_and_tsne(tiny):
    model, cfg = tiny
    pts = A.feature_points(model, Run.from_config(cfg).loader("test", num_samples=4), stage=1, mode="prototypes")
    assert pts.x.shape[1] == 32 and len(pts) == len(pts.cls) == len(pts.modality) == len(pts.sample)
    per_mod = [int((pts.modality == j).sum()) for j in range(4)]
    assert len(set(per_mod)) == 1, "one prototype per sample, class present and modality"
    pix = A.feature_points(model, Run.from_config(cfg).loader("test", num_samples=4), stage=0, mode="pixels", max_pixels=50)
    assert len(pix) == 4 * 50
    j0, j1 = pix.modality == 0, pix.modality == 1
    assert np.array_equal(pix.cls[j0], pix.cls[j1]) and np.array_equal(pix.sample[j0], pix.sample[j1])
    emb = A.tsne_embedding(pts, seed=0, max_iter=250)
    assert emb.shape == (len(pts), 2) and np.isfinite(emb).all()
    scores = A.cluster_scores(pts)
    assert -1 <= scores["silhouette_class"] <= 1 and -1 <= scores["silhouette_modality"] <= 1


def test_ifv_maps_match_the_losses(tiny):
    model, cfg = tiny
    batch = S.load_batch(cfg, "test", [0, 1])
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


def test_robustness_rows_and_curves(tiny):
    """RMM/NM results of a tiny model as curve rows (clean point first) and their figure."""
    from workbench.robustness import evaluate_nm, evaluate_rmm

    model, cfg = tiny
    loader = Run.from_config(cfg).loader("test", num_samples=4)
    rmm = {"m": evaluate_rmm(model, loader, rates=(0.5,), progress=False)}
    nm = {"m": evaluate_nm(model, loader, levels=("low",), progress=False)}
    rows = A.robustness_rows(rmm, nm, ps=(0.1,))
    avg = [r for r in rows if r["protocol"] == "rmm" and r["metric"] == "Avg"]
    assert [r["x"] for r in avg] == ["0", "0.5"] and avg[1]["miou"] == rmm["m"].mean(0.5)
    assert avg[0]["miou"] == rmm["m"].score(0.5, ())
    assert [r["miou"] for r in rows if r["protocol"] == "nm"] == [nm["m"].score("low")]
    fig = P.plot_robustness_curves(rows, {"m": 10.0})
    assert len(fig.axes) == 2
