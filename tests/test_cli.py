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
