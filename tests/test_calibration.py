import csv
import math

import pytest
import torch

from workbench import calibration as cal
from workbench.evaluate import CombinationResults, combinations, miou


def _results(mods, accuracy: dict) -> CombinationResults:
    """Two-class results whose confusion matrix for combo c is [[a, 1-a], [1-a, a]] * 100."""
    cms = {}
    for p in ("zero", "drop"):
        for c in combinations(mods):
            a = accuracy[(p, c)] if (p, c) in accuracy else accuracy.get(c, 0.5)
            cms[(p, c)] = torch.tensor([[a, 1 - a], [1 - a, a]]) * 100
    return CombinationResults(tuple(mods), ("x", "y"), cms)


def test_measurements_match_hand_computation():
    full = cal.FULL
    acc = {c: 0.9 if "rgb" in c else 0.3 for c in combinations(full)}
    res = {"RDEL": _results(full, acc), "DEL": _results(("depth", "event", "lidar"), {("depth", "event", "lidar"): 0.8}),
           "R": _results(("rgb",), {("rgb",): 0.7}), "D": _results(("depth",), {("depth",): 0.6})}
    checks = cal._checks(list(res))
    cal._measure(checks, res, {"primary": {"rgb": 0.9, "depth": 0.5, "event": 0.4, "lidar": 0.2}})
    by = {c.name: c.values[0] for c in checks}

    def m(a):  # mIoU (%) of the two-class matrix above
        return miou(torch.tensor([[a, 1 - a], [1 - a, a]]) * 100)

    assert by["full baseline DEL / RDEL [drop]"] == pytest.approx(m(0.3) / m(0.9))
    assert by["D / R (trained models)"] == pytest.approx(m(0.6) / m(0.7))
    assert by["DEL: trained-on-DEL minus full baseline [zero]"] == pytest.approx(m(0.8) - m(0.3))
    # RGB is in every combination that scores high, so its Shapley value is the largest; the values
    # add up to the full-modality mIoU (v(empty) = 0)
    shapley = {x: by[f"full baseline Shapley {x} [drop]"] for x in "RDEL"}
    assert sum(shapley.values()) == pytest.approx(m(0.9))
    assert by["Shapley R - max(other) [drop]"] == pytest.approx(shapley["R"] - max(shapley["D"], shapley["E"], shapley["L"]))
    assert by["Shapley R - max(other) [drop]"] > 0
    assert by["ASM: RGB primary freq - max(other)"] == pytest.approx(0.4)


def test_unknown_subset_is_an_error():
    with pytest.raises(KeyError, match="valid: R, D"):
        cal.calibrate("tiny", seeds=(0,), subsets=["RGBX"])


TINY = {"data.train_samples": 8, "data.test_samples": 8}


@pytest.fixture(scope="module")
def tiny_cache():
    """One tiny calibration (one seed, three baselines), shared by the tests below (runs in the tests'
    WORKBENCH_RUNS, conftest)."""
    from workbench.paths import runs_dir

    return runs_dir() / "cache", cal.calibrate("tiny", seeds=(0,), subsets=["R", "DEL", "RDEL"], progress=False,
                                               overrides=TINY)


def test_calibrate_smoke(tiny_cache, tmp_path):
    """Tiny profile, one seed, three baselines: trains, evaluates, caches, writes the table and CSV."""
    _, out = tiny_cache
    names = [c.name for c in out.checks]
    assert "full baseline Shapley R [zero]" in names and "DEL: trained-on-DEL minus full baseline [drop]" in names
    assert "D / R (trained models)" not in names  # no depth-only model was trained
    assert all(len(c.values) == 1 and math.isfinite(c.values[0]) for c in out.checks)
    # ASM picks ceil(4 / 2) = 2 modalities per sample, at either stage
    for stage in ("last", "all"):
        assert sum(v[0] for v in out.asm[stage].values()) == pytest.approx(2.0)
    assert set(out.per_condition) == {"full baseline, all four [drop]", "full baseline, RGB only [drop]",
                                      "model trained on R", "model trained on DEL"}
    table = out.format_table()
    assert "Shapley" in table and "ASM primary frequency" in table
    path = out.save_csv(tmp_path / "cal.csv")
    rows = list(csv.DictReader(open(path)))
    assert {"quantity", "deliver", "target", "mean", "std", "ok", "seed0"} <= set(rows[0])
    # a second call reuses the cached runs and evaluations
    runs = [cal.baseline_run("tiny", 0, cal.SUBSETS[n], TINY) for n in ("R", "DEL", "RDEL")]
    assert all(r.done for r in runs)
    ckpts = [r.checkpoint for r in runs]
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    again = cal.calibrate("tiny", seeds=(0,), subsets=["R", "DEL", "RDEL"], progress=False, overrides=TINY)
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps
    assert [c.values for c in again.checks] == [c.values for c in out.checks]


def test_calibrate_command_writes_csv(tiny_cache, tmp_path, capsys):
    from workbench.cli import main

    rc = main(["calibrate", "--profile", "tiny", "--seeds", "0", "--subsets", "R,RDEL", "--quiet",
               "--out", str(tmp_path / "t.csv"), "--set", "data.train_samples=8", "--set", "data.test_samples=8"])
    assert rc == 0 and (tmp_path / "t.csv").exists()
    assert "Calibration of the synthetic benchmark" in capsys.readouterr().out


def test_regime_criteria_match_hand_computation():
    """The paper's regime (docs/BENCHMARK.md, section 6): EL / full <= 0.05 under both protocols, DEL-trained
    minus full on DEL >= 8 under drop, RGB's Shapley value the largest, full not lower than scratch."""
    full = cal.FULL
    el, rest = ("event", "lidar"), ("depth", "event", "lidar")
    acc = {c: 0.9 if "rgb" in c else 0.52 for c in combinations(full)}
    acc[("zero", el)], acc[("drop", el)] = 0.05, 0.1
    res = {"RDEL": _results(full, acc), "DEL": _results(rest, {rest: 0.8}),
           "scratch": _results(full, {full: 0.85})}

    def m(a):
        return miou(torch.tensor([[a, 1 - a], [1 - a, a]]) * 100)

    checks = cal._regime_checks(["DEL", "RDEL"], pretrained=True)
    cal._measure(checks, res, None)
    by = {c.name: c for c in checks}
    assert by["full baseline EL / RDEL [drop]"].values == [pytest.approx(m(0.1) / m(0.9))]
    assert by["full baseline EL / RDEL [zero]"].values == [pytest.approx(m(0.05) / m(0.9))]
    assert m(0.05) / m(0.9) <= 0.05 < m(0.1) / m(0.9)  # one on each side of the threshold
    assert (by["full baseline EL / RDEL [zero]"].ok, by["full baseline EL / RDEL [drop]"].ok) == ("yes", "NO")
    assert by["DEL: trained-on-DEL minus full baseline [drop]"].values == [pytest.approx(m(0.8) - m(0.52))]
    assert by["full baseline RDEL minus scratch's (same seed)"].values == [pytest.approx(m(0.9) - m(0.85))]
    assert by["full baseline RDEL minus scratch's (same seed)"].ok == "yes"
    assert by["Shapley R - max(other) [drop]"].ok == "yes"
    # without pretraining there is no scratch reference; without a DEL model no DEL row
    names = [c.name for c in cal._regime_checks(["RDEL"], pretrained=False)]
    assert not any("scratch" in n or "DEL:" in n for n in names) and len(names) == 4


def test_calibrate_in_the_pretrained_regime(tiny_cache):
    """model.init=pretrained: the baselines start from the pretrained encoder, the criteria block compares
    the full baseline with the scratch one of the same seed (the cached scratch run of tiny_cache)."""
    over = {**TINY, "model.init": "pretrained", "model.pretrain.samples": 8, "model.pretrain.epochs": 1,
            "model.pretrain.size": 32, "model.pretrain.batch_size": 4}
    out = cal.calibrate("tiny", seeds=(0,), subsets=["DEL", "RDEL"], progress=False, overrides=over)
    assert out.init == "pretrained"
    by = {c.name: c.values[0] for c in out.regime}
    full = cal.baseline_run("tiny", 0, cal.FULL, over).evaluation("test").full("drop")
    scratch = cal.baseline_run("tiny", 0, cal.FULL, TINY).evaluation("test").full("drop")
    assert by["full baseline RDEL minus scratch's (same seed)"] == pytest.approx(full - scratch)
    table = out.format_table()
    assert "model.init=pretrained" in table and "Criteria of the paper's regime" in table
    assert any(r["quantity"].startswith("regime: ") for r in out.rows())
