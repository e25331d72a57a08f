"""`workbench.claims`: every claim judged per protocol from rows paired by seed (tiny profile)."""

import matplotlib

matplotlib.use("Agg")

from workbench import plotting  # noqa: E402
from workbench.claims import CLAIMS, format_claims, lambda_line, run_claims  # noqa: E402
from workbench.stats import VERDICTS  # noqa: E402
from workbench.tables import read_csv  # noqa: E402

OVER = {"data.train_samples": 8, "data.val_samples": 4, "data.test_samples": 4, "train.epochs": 1}


def test_claims_table_from_paired_rows(tmp_path):
    table = run_claims("tiny", seeds=(0, 1), overrides=OVER, out=tmp_path / "claims.csv", progress=False)
    rows = table.rows
    assert len(rows) == 2 * len(CLAIMS)
    for r in rows:
        assert r["seeds"] == 2 and r["verdict"] in VERDICTS and r["ci_low"] <= r["difference"] <= r["ci_high"]
    per_seed = read_csv(tmp_path / "claims_seeds.csv")
    assert {r["row"] for r in per_seed} >= {"baseline", "robustseg", "robustseg:teacher"}
    # the paired difference is the mean of the per-seed differences of the two rows
    emm = {(r["row"], r["seed"]): r["emm"] for r in per_seed if r["protocol"] == "drop"}
    expected = sum(emm[("basic_kd", s)] - emm[("baseline", s)] for s in (0, 1)) / 2
    got = next(r["difference"] for r in rows if r["claim"] == "distillation" and r["protocol"] == "drop")
    assert abs(got - expected) < 1e-3  # the CSV keeps 4 decimals
    assert "verdict" in format_claims(rows) and "MDE" in format_claims(rows)
    # the controls: the same teacher, the students' budget; lambda 0 is dropout alone
    assert {"baseline_long", "dropout_only", "basic_kd_l5"} <= {r["row"] for r in per_seed}
    control = next(r for r in rows if r["claim"] == "kd_vs_dropout" and r["protocol"] == "drop")
    assert control["kind"] == "control" and control["paper"] != control["paper"]
    expected = sum(emm[("basic_kd", s)] - emm[("dropout_only", s)] for s in (0, 1)) / 2
    assert abs(control["difference"] - expected) < 1e-3
    line = lambda_line(table.per_seed)
    assert [r["lambda"] for r in line] == [0.0, 5.0, 50.0] and line[0]["emm_vs_0"] == 0.0
    text = table.format()
    assert "controls (the same training budget" in text and "lambda" in text
    fig = plotting.plot_claims(rows)
    assert len(fig.axes) == 2


def test_regime_table_puts_each_claim_beside_itself_in_every_regime(tmp_path, capsys):
    from workbench.claims import format_regime_table, regime_table
    from workbench.cli import main
    from workbench.tables import read_csv, write_csv

    def row(claim, kind, protocol, d, verdict, seeds=3):
        return {"claim": claim, "kind": kind, "protocol": protocol, "difference": d, "ci_low": d - 1,
                "ci_high": d + 1, "seeds": seeds, "verdict": verdict}

    a = [row("distillation", "paper", "drop", 9.0, "reproduced"), row("distillation", "paper", "zero", 2.0, "reproduced"),
         row("kd_vs_dropout", "control", "drop", -0.2, "inconclusive at this power")]
    b = [row("kd_vs_dropout", "control", "drop", 0.5, "inconclusive at this power", seeds=2),
         row("distillation", "paper", "drop", 15.0, "reproduced", seeds=2)]
    rows = regime_table({"pretrained": a, "scratch": b})
    assert [r["claim"] for r in rows] == ["distillation", "kd_vs_dropout"]  # the paper's claims first
    assert rows[0]["pretrained:difference"] == 9.0 and rows[0]["scratch:difference"] == 15.0  # drop, not zero
    assert rows[1]["scratch:seeds"] == 2
    text = format_regime_table(rows, ["pretrained", "scratch"])
    assert "+9.00 [+8.00, +10.00] reproduced" in text and "+15.00 [+14.00, +16.00] reproduced" in text
    assert "pretrained 3; scratch 2" in text
    # a claim one regime lacks is left empty, not dropped
    only = regime_table({"pretrained": a, "scratch": b[1:]})
    assert only[1]["scratch:difference"] == ""

    write_csv(tmp_path / "a.csv", a)
    write_csv(tmp_path / "b.csv", b)
    assert main(["claims", "--regimes", f"pretrained={tmp_path / 'a.csv'}", f"scratch={tmp_path / 'b.csv'}",
                 "--out", str(tmp_path / "regimes.csv"), "--figure", str(tmp_path / "regimes.png")]) == 0
    assert (tmp_path / "regimes.png").stat().st_size > 0
    from workbench import plotting
    fig = plotting.plot_claims([{**r, "regime": k} for k, t in (("p", a), ("s", b)) for r in t if r["protocol"] == "drop"],
                               panel="regime")
    # the first claim at the top in every panel (shared y axis: inverted once, not flipped back by the second)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["regime: p", "regime: s"]
    assert all(ax.yaxis_inverted() for ax in fig.axes[:2])
    assert "+15.00 [+14.00, +16.00] reproduced" in capsys.readouterr().out
    assert read_csv(tmp_path / "regimes.csv")[0]["scratch:difference"] == 15.0
    for bad in (["x"], [f"p={tmp_path / 'none.csv'}"], [f"p={tmp_path / 'a.csv'}", f"p={tmp_path / 'b.csv'}"]):
        assert main(["claims", "--regimes", *bad]) == 2
    assert "error:" in capsys.readouterr().err
