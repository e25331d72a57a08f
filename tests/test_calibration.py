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
