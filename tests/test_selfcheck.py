"""`workbench.selfcheck`: a fresh suite run against the committed figures, number by number."""

import math

import pytest

from workbench.selfcheck import compare, format_check, seed_spread, snapshot

SEEDS = "row,seed,protocol,full,emm\na,0,drop,40,20\na,1,drop,42,22\nb,0,drop,30,10\nb,1,drop,30,10\n"


def test_the_seed_spread_pools_the_rows_over_seeds():
    # groups (a, drop): full var 2, emm var 2; (b, drop): 0, 0 -> pooled sqrt((2 + 2 + 0 + 0) / 4) = 1
    assert seed_spread([SEEDS]) == pytest.approx(1.0)
    assert seed_spread(["row,seed,full\na,0,40\n"]) is None


def test_each_number_is_identical_within_the_spread_or_outside(tmp_path):
    committed = tmp_path / "committed"
    table = committed / "quick" / "02" / "table.csv"
    table.parent.mkdir(parents=True)
    table.write_text("method,full,emm,loss\nbaseline,41.3806,23.5539,0.5\nrobustseg,40.17,31.01,0.25\n")
    (committed / "quick" / "02" / "seeds.csv").write_text(SEEDS)
    before = snapshot(committed, "quick")
    assert set(before) == {"quick/02/table.csv", "quick/02/seeds.csv"}
    # the fresh run: one score moved by less than 2 spreads, one by more, a loss value moved at all
    table.write_text("method,full,emm,loss\nbaseline,41.3806,24.5539,0.5\nrobustseg,40.17,36.01,0.26\n")
    check = compare(before, committed)
    assert check.spread == pytest.approx(1.0)
    t = check.totals
    assert t == {"identical": 3 + 12, "within seed spread": 1, "outside": 2}  # seeds.csv: 4 rows x 3 numbers
    outside = {(r["row"], r["column"]) for r in check.outside}
    assert outside == {("robustseg", "emm"), ("robustseg", "loss")}
    assert not check.reproduced and "differ beyond" in format_check(check)
    assert math.isclose(next(r["change"] for r in check.outside if r["column"] == "emm"), 5.0)


def test_a_file_the_run_did_not_write_or_reshaped_is_said(tmp_path):
    (tmp_path / "quick").mkdir()
    (tmp_path / "quick" / "x.csv").write_text("a,b\n1,2\n")
    before = snapshot(tmp_path, "quick")
    (tmp_path / "quick" / "x.csv").write_text("a,b\n1,2\n3,4\n")
    check = compare(before, tmp_path)
    assert check.files[0]["status"].startswith("changed shape") and not check.reproduced
    (tmp_path / "quick" / "x.csv").unlink()
    assert compare(before, tmp_path).files[0]["status"] == "not written by this run"
