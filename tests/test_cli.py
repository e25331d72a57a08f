import json

from workbench.cli import main


def test_train_then_evaluate_from_the_command_line(tmp_path, capsys):
    over = ["--set", "data.train_samples=8", "--set", "data.val_samples=4", "--set", "data.test_samples=4"]
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet", *over]) == 0
    out = capsys.readouterr().out
    assert "All-combination mIoU" in out and "EMM" in out and "Shapley" in out
    assert main(["evaluate", str(tmp_path / "run" / "final.pt"), "--protocol", "zero", "--quiet"]) == 0
    data = json.loads((tmp_path / "run" / "combos_test_model.json").read_text())
    assert set(data["summary"]) == {"zero"} and len(data["rows"]) == 15


def test_bad_names_exit_2_with_the_valid_ones(capsys):
    assert main(["train", "--preset", "nope"]) == 2
    assert "valid presets" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--set", "train.lr=fast"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["evaluate", "/nonexistent/final.pt"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_every_protocol_from_the_command_line(tmp_path, capsys):
    """`evaluate --protocol all`: combinations with per-condition/per-case breakdowns, RMM and NM tables,
    on a case subset; a second call reads the cached results."""
    over = ["--set", "data.train_samples=8", "--set", "data.val_samples=4", "--set", "data.test_samples=4"]
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet", "--eval-split", "none",
                 *over]) == 0
    capsys.readouterr()
    args = ["evaluate", str(tmp_path / "run"), "--protocol", "all", "--rates", "0.5", "--levels", "low", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "EMM" in out and "per case (drop)" in out and "per condition (zero)" in out
    assert "RMM r=0.5" in out and "Expectation_p0.1" in out and "NM (seed 0" in out
    assert {p.name.split("-")[0] for p in (tmp_path / "run" / "eval").iterdir()} == {"combos", "rmm", "nm"}
    assert main(args) == 0 and capsys.readouterr().out == out, "the cached results print the same tables"
    assert main(["evaluate", str(tmp_path / "run"), "--case", "night", "--protocol", "drop", "--quiet"]) == 0
    assert "(night)" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run"), "--case", "snow", "--quiet"]) == 2
    assert "data.case='snow'" in capsys.readouterr().err
