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
