"""No run outside the runs folder (docs/RELIABILITY.md, "Where runs are written"): a run's name and profile
are safe names, and every path the workbench makes from user input is checked to stay under the folder
the user named (WORKBENCH_RUNS or --out). Each attack of issue 20 is tried from the command line."""

from __future__ import annotations

import json
import os

import pytest

from workbench import repro
from workbench.cli import main
from workbench.config import Config, apply_overrides, preset
from workbench.errors import ConfigError
from workbench.paths import child, inside
from workbench.runs import Run, cache_dir

TINY = ["--set", "data.train_samples=8", "--set", "data.val_samples=4", "--set", "data.test_samples=4",
        "--set", "train.epochs=1", "--eval-split", "none", "--quiet"]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """WORKBENCH_RUNS three folders deep in tmp_path, so that `../../../x` would land inside tmp_path."""
    root = tmp_path / "a" / "b" / "runs"
    root.mkdir(parents=True)
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    return root


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("override", ["name=../../../x", "name=/tmp/wb_absolute_name", "profile=../../x",
                                      "name=a/b", "name=..", "name=a-quick", "profile=", "name=x\\y"])
def test_a_bad_name_or_profile_is_refused_before_anything_is_written(runs, tmp_path, capsys, override):
    before = _files(tmp_path)
    assert main(["train", "--preset", "tiny", "--set", override, *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "is not a valid name" in err and "letters, digits and _" in err
    assert _files(tmp_path) == before, "nothing is written anywhere"
    assert not os.path.exists("/tmp/wb_absolute_name")


def test_a_config_file_whose_name_leaves_the_runs_folder_is_refused(runs, tmp_path, capsys):
    cfg = json.loads(preset("tiny").to_json())
    for name in ("../../escaped", "nested/run"):
        cfg["name"] = name
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        before = _files(tmp_path)
        assert main(["train", "--config", str(tmp_path / "cfg.json"), *TINY]) == 2
        err = capsys.readouterr().err
        assert f"name={name!r} is not a valid name" in err and err.count("\n") == 1
        assert _files(tmp_path) == before


def test_the_library_refuses_the_same_names():
    for key, value in (("name", "../x"), ("profile", "a/b"), ("name", "")):
        with pytest.raises(ConfigError, match="is not a valid name"):
            apply_overrides(preset("tiny"), {key: value})
        with pytest.raises(ConfigError, match="is not a valid name"):
            Config.from_dict({**preset("tiny").to_dict(), key: value})
    with pytest.raises(ConfigError, match="is not a valid name"):
        Run.of("baseline", "tiny", 0, ["name=../../x"])


def test_names_cannot_make_two_runs_share_a_folder():
    """`<name>-<profile>-s<seed>-<hash>`: neither part holds '-', so the folder name reads back one way."""
    cfg = preset("tiny")
    with pytest.raises(ConfigError):
        apply_overrides(cfg, {"name": "baseline-tiny"})
    folder = cache_dir(apply_overrides(cfg, {"name": "my_run_2"})).name
    name, profile, seed, digest = folder.split("-")
    assert (name, profile, seed, digest) == ("my_run_2", "tiny", "s0", cfg.hash())


def test_every_cache_path_is_checked_to_stay_under_its_root(runs, tmp_path):
    # a run folder in the cache that is a symbolic link to elsewhere is not written through
    cfg = preset("tiny")
    cache = runs / repro.cache_folder_name()  # `cache-repro` with WORKBENCH_REPRO=1
    cache.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, cache / cache_dir(cfg).name)
    with pytest.raises(ConfigError, match="outside"):
        cache_dir(cfg)
    # file names made from user input (a split, a case, a sample name)
    assert inside(runs, runs / "cache" / "x") == runs / "cache" / "x"
    for bad in ("../x", "a/b", "..", "", "a\\b"):
        with pytest.raises(ConfigError):
            child(runs, bad)
    with pytest.raises(ConfigError, match="outside"):
        inside(runs, runs / ".." / "x")


def test_evaluate_refuses_a_case_that_is_a_path(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), *TINY]) == 0
    before = _files(tmp_path)
    assert main(["evaluate", str(run), "--case", "../../../escaped", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert _files(tmp_path) == before
