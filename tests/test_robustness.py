"""RMM and NM (workbench.robustness) against loops written from the benchmark's definition
(`Chenfei-Liao/Multi-Modal-Semantic-Segmentation-Robustness-Benchmark`, val_mm_RMM.py and val_mm_NM.py)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.data import DataLoader

from workbench.data import build_dataset, collate
from workbench.models import Segmentor
from workbench.robustness import (
    NM_LEVELS,
    NMResults,
    RMMResults,
    draw_generator,
    evaluate_nm,
    evaluate_rmm,
    gaussian_noise,
    nm_corrupt,
    nm_generator,
    rmm_corrupt,
    rmm_generator,
    salt_and_pepper,
)


# ---------------------------------------------------------------- corruptions
@pytest.mark.parametrize("rate", [0.25, 0.5, 0.75])
def test_rmm_zeroes_each_element_independently_at_the_rate(rate):
    x = torch.rand(2, 3, 96, 96) + 0.5  # no zero before corruption
    y = rmm_corrupt(x, rate, torch.Generator().manual_seed(1))
    zero = y == 0
    n = zero.numel()
    assert abs(zero.float().mean().item() - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    assert torch.equal(y[~zero], x[~zero])  # the rest untouched
    # per element, not per pixel: all three channels of a pixel zeroed only with probability rate^3
    all_channels = zero.all(1).float().mean().item()
    assert abs(all_channels - rate ** 3) < 4 * math.sqrt(rate ** 3 * (1 - rate ** 3) / (n / 3))


def test_salt_and_pepper_is_the_benchmark_function():
    """The benchmark's `add_salt_and_pepper_noise` rewritten with the same generator draws."""
    x = torch.rand(2, 3, 20, 24) * 0.5 + 0.25
    x[0, 0, 0, 0], x[1, 2, 3, 4] = 2.0, -1.0  # the extremes salt and pepper take
    density = 0.2
    g = torch.Generator().manual_seed(3)
    ref = x.clone()
    num = int(math.ceil(density * x.numel() * 0.5))
    coords = [torch.randint(0, i, (num,), generator=g) for i in x.shape]
    ref[tuple(coords)] = x.max()
    coords = [torch.randint(0, i, (num,), generator=g) for i in x.shape]
    ref[tuple(coords)] = x.min()
    assert torch.equal(salt_and_pepper(x, density, torch.Generator().manual_seed(3)), ref)


@pytest.mark.parametrize("level", list(NM_LEVELS))
def test_salt_and_pepper_statistics(level):
    density = NM_LEVELS[level][0]
    x = torch.rand(4, 3, 64, 64) * 0.5 + 0.25
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 1.0, 0.0
    y = salt_and_pepper(x, density, torch.Generator().manual_seed(0))
    # ceil(d N / 2) draws with replacement each: an element is hit by pepper w.p. 1 - exp(-d/2), and keeps
    # salt w.p. (1 - exp(-d/2)) exp(-d/2) (pepper comes second)
    hit = 1 - math.exp(-density / 2)
    assert (y == 0).float().mean().item() == pytest.approx(hit, abs=0.004)
    assert (y == 1).float().mean().item() == pytest.approx(hit * (1 - hit), abs=0.004)
    changed = (y != x) & (y != 0) & (y != 1)
    assert not changed.any()


@pytest.mark.parametrize("level", list(NM_LEVELS))
def test_gaussian_noise_statistics_and_no_clipping(level):
    std = NM_LEVELS[level][1]
    x = torch.rand(4, 3, 64, 64)
    y = gaussian_noise(x, std, torch.Generator().manual_seed(0))
    noise = y - x
    assert noise.mean().item() == pytest.approx(0, abs=4 * std / math.sqrt(noise.numel()))
    assert noise.std().item() == pytest.approx(std, rel=0.02)
    assert y.max() > 1 and y.min() < 0  # unclipped


def test_nm_corrupt_follows_the_benchmark_order():
    """val_mm_NM.py: salt-and-pepper on RGB, D, E, L, then Gaussian on RGB, D, L (not E), one generator."""
    inputs = {m: torch.rand(2, 3, 16, 20) for m in ("rgb", "depth", "event", "lidar")}
    density, std = NM_LEVELS["mid"]
    g = torch.Generator().manual_seed(5)
    ref = {m: salt_and_pepper(v, density, g) for m, v in inputs.items()}
    for m in ("rgb", "depth", "lidar"):
        ref[m] = ref[m] + torch.randn(ref[m].shape, generator=g) * std
    out = nm_corrupt(inputs, "mid", torch.Generator().manual_seed(5))
    assert out.keys() == ref.keys()
    for m in inputs:
        assert torch.equal(out[m], ref[m]), m
    values = set(inputs["event"].flatten().tolist()) | {inputs["event"].max().item(), inputs["event"].min().item()}
    assert set(out["event"].flatten().tolist()) <= values  # no Gaussian noise on the event image
    with pytest.raises(ValueError, match="unknown NM level 'extreme'"):
        nm_corrupt(inputs, "extreme", g)


def test_draw_generators_are_deterministic_and_distinct():
    a = torch.rand(5, generator=draw_generator(0, "rmm", 0.5, 3, "rgb"))
    assert torch.equal(a, torch.rand(5, generator=draw_generator(0, "rmm", 0.5, 3, "rgb")))
    for other in (draw_generator(1, "rmm", 0.5, 3, "rgb"), draw_generator(0, "rmm", 0.5, 3, "depth"),
                  draw_generator(0, "rmm", 0.25, 3, "rgb"), draw_generator(0, "rmm", 0.5, 4, "rgb")):
        assert not torch.equal(a, torch.rand(5, generator=other))


# ---------------------------------------------------------------- evaluation against the benchmark's loops
@pytest.fixture(scope="module")
def setup():
    """A tiny model and 6 samples in 2 batches (the last smaller), in float64 so that the one pass's
    different summation order cannot flip a near-tied argmax."""
    torch.manual_seed(0)
    ds = build_dataset("synthetic", "val", size=32, num_samples=6)
    loader = [{k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in b.items()}
              for b in DataLoader(ds, batch_size=4, collate_fn=collate)]
    return ds, loader


def _model(ds, fusion="mean"):
    torch.manual_seed(0)
    model = Segmentor(ds.modalities, ds.num_classes, head_dim=16, fusion=fusion).double().eval()
    model.head.bn.running_mean.normal_()
    return model


def _update(cm, logits, labels, k):
    pred = logits.argmax(1)
    keep = labels != 255
    cm += torch.bincount(labels[keep] * k + pred[keep], minlength=k * k).view(k, k)


def _miou(cm):  # semseg/metrics.py compute_iou: nan -> 0, mean over all classes
    cm = cm.double()
    iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag())
    iou[iou.isnan()] = 0
    return iou.mean().item() * 100


@pytest.mark.parametrize("fusion,draws,rates", [("mean", "shared", (0.25, 0.75)), ("mean", "independent", (0.5,)),
                                                ("softmax", "shared", (0.5,))])
def test_rmm_equals_the_benchmark_loop(setup, fusion, draws, rates):
    ds, loader = setup
    model = _model(ds, fusion)
    mods, k = ds.modalities, ds.num_classes
    res = evaluate_rmm(model, loader, rates=rates, seed=7, draws=draws, progress=False)
    for r in rates:
        results = {}
        for num_missing in range(len(mods)):
            for missing in itertools.combinations(mods, num_missing):
                cm = torch.zeros(k, k, dtype=torch.long)
                for bi, batch in enumerate(loader):
                    images = {m: batch[m].clone() for m in mods}
                    for m in missing:
                        g = rmm_generator(7, r, bi, m, None if draws == "shared" else missing)
                        mask = torch.rand(images[m].shape, generator=g) < r
                        images[m][mask] = 0
                    _update(cm, model(images).logits, batch["label"], k)
                assert torch.equal(res.cms[(r, missing)], cm), (r, missing)
                results[missing] = _miou(cm)
        # the benchmark's aggregation: mean over the 15 sets; p^|S| (1-p)^(N-|S|), renormalized
        assert res.mean(r) == pytest.approx(sum(results.values()) / len(results))
        for p in (0.2, 0.1, 0.05):
            w = {s: p ** len(s) * (1 - p) ** (len(mods) - len(s)) for s in results}
            assert res.expected(r, p) == pytest.approx(sum(w[s] * v for s, v in results.items()) / sum(w.values()))
    if draws == "independent":  # the built-in naive loop (what `bench combos` times) draws the same masks
        naive = evaluate_rmm(model, loader, rates=rates, seed=7, draws=draws, progress=False, one_pass=False)
        assert all(torch.equal(naive.cms[key], res.cms[key]) for key in res.cms)


@pytest.mark.parametrize("fusion", ["mean", "softmax"])
def test_nm_equals_the_benchmark_loop(setup, fusion):
    ds, loader = setup
    model = _model(ds, fusion)
    mods, k = ds.modalities, ds.num_classes
    res = evaluate_nm(model, loader, seed=2, progress=False)
    for level, (density, std) in NM_LEVELS.items():
        cm = torch.zeros(k, k, dtype=torch.long)
        for bi, batch in enumerate(loader):
            g = nm_generator(2, level, bi)
            images = {m: salt_and_pepper(batch[m], density, g) for m in mods}
            for m in ("rgb", "depth", "lidar"):
                images[m] = images[m] + torch.randn(images[m].shape, generator=g, dtype=torch.float64) * std
            _update(cm, model(images).logits, batch["label"], k)
        assert torch.equal(res.cms[level], cm), level
        assert res.score(level) == pytest.approx(_miou(cm))
    naive = evaluate_nm(model, loader, seed=2, progress=False, one_pass=False)
    assert all(torch.equal(naive.cms[lv], res.cms[lv]) for lv in res.levels)


def test_nm_on_some_modalities_reuses_clean_encodings(setup):
    ds, loader = setup
    model = _model(ds)
    fast = evaluate_nm(model, loader, noisy=("depth",), kinds=("gaussian",), progress=False)
    naive = evaluate_nm(model, loader, noisy=("depth",), kinds=("gaussian",), progress=False, one_pass=False)
    assert fast.noisy == ("depth",) and all(torch.equal(fast.cms[lv], naive.cms[lv]) for lv in fast.levels)


def test_determinism_from_the_seed(setup):
    ds, loader = setup
    model = _model(ds)
    a = evaluate_rmm(model, loader, rates=(0.5,), seed=0, progress=False)
    b = evaluate_rmm(model, loader, rates=(0.5,), seed=0, progress=False)
    c = evaluate_rmm(model, loader, rates=(0.5,), seed=1, progress=False)
    assert all(torch.equal(a.cms[key], b.cms[key]) for key in a.cms)
    assert any(not torch.equal(a.cms[key], c.cms[key]) for key in a.cms)
    assert torch.equal(a.cms[(0.5, ())], c.cms[(0.5, ())])  # the clean setting draws nothing
    n1, n2 = (evaluate_nm(model, loader, levels=("high",), seed=s, progress=False) for s in (4, 4))
    assert torch.equal(n1.cms["high"], n2.cms["high"])


def test_results_tables_and_state(setup, tmp_path):
    ds, loader = setup
    model = _model(ds)
    rmm = evaluate_rmm(model, loader, rates=(0.5,), progress=False, classes=ds.classes)
    table = rmm.format_table()
    assert "RMM r=0.5" in table and "Expectation_p0.05" in table and "\nnone " in table and "\nDEL " in table
    assert len(rmm.sets) == 15 and rmm.sets[0] == () and rmm.sets[-1] == ("depth", "event", "lidar")
    again = RMMResults.from_state(rmm.state())
    assert again.mean(0.5) == rmm.mean(0.5) and again.expected(0.5, 0.1, "mf1") == rmm.expected(0.5, 0.1, "mf1")
    assert rmm.save(tmp_path).is_file()
    nm = evaluate_nm(model, loader, progress=False, classes=ds.classes)
    table = nm.format_table()
    assert all(c in table for c in ds.classes) and "low (0.05/0.1)" in table and "high (0.2/0.5)" in table
    assert NMResults.from_state(nm.state()).score("mid", "macc") == nm.score("mid", "macc")
    assert nm.save(tmp_path).is_file()
    with pytest.raises(ValueError, match="draws='fresh' is not valid"):
        evaluate_rmm(model, loader, draws="fresh", progress=False)
