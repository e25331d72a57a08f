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


TINY = ["--set", "data.train_samples=8", "--set", "data.val_samples=4", "--set", "data.test_samples=4",
        "--set", "train.epochs=1"]


def _no_traceback(err: str) -> str:
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_train_out_over_a_finished_run_refuses_without_force(tmp_path, capsys):
    out = ["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet", "--eval-split", "none", *TINY]
    assert main(out) == 0
    before = (tmp_path / "run" / "final.pt").read_bytes()
    capsys.readouterr()
    assert main(out) == 2
    err = _no_traceback(capsys.readouterr().err)
    assert str(tmp_path / "run") in err and "--resume" in err and "--force" in err
    assert (tmp_path / "run" / "final.pt").read_bytes() == before
    assert main([*out, "--resume"]) == 0  # finished: reused as it is
    assert main([*out, "--force"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_every_bad_input_is_one_clear_error_line(tmp_path, capsys):
    """Each of these used to end in a traceback or a bare key name."""
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), "--quiet", "--eval-split", "none", *TINY]) == 0
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    weights_only = tmp_path / "weights.pt"
    import torch

    from workbench.checkpoint import load_checkpoint

    torch.save(load_checkpoint(run / "final.pt")["model"], weights_only)
    cases = [  # (argv, exit status, words the message must hold)
        (["evaluate", str(run), "--split", "train2"], 2, ["train2", "valid splits", "train, val, test"]),
        (["evaluate", str(run), "--which", "teacher"], 1, ["holds no teacher", "which"]),
        (["evaluate", str(weights_only)], 1, [str(weights_only), "not a workbench checkpoint", "config"]),
        (["evaluate", str(run), "--device", "cuda"], 2, ["CUDA is not available", "cpu"]),
        (["evaluate", str(run), "--device", "gpu"], 2, ["'gpu'", "auto, cpu, cuda or cuda:N"]),
        (["evaluate", str(run), "--window", "0"], 2, ["--window 0", "at least 32"]),
        (["evaluate", str(run), "--window", "-64"], 2, ["--window -64", "at least 32"]),
        (["evaluate", str(run), "--window", "64", "--protocol", "rmm"], 2, ["--window", "zero", "drop"]),
        (["evaluate", str(run), "--out", str(tmp_path / "file")], 2, [str(tmp_path / "file"), "is a file"]),
        (["train", "--preset", "tiny", "--set", "train.device=cuda", "--out", str(tmp_path / "c"), *TINY], 2,
         ["CUDA is not available"]),
        (["evaluate", str(run), "--protocol", "rmm", "--rates", "half"], 2, ["--rates 'half'", "numbers"]),
        (["ablate", "--profile", "tiny", "--seeds", "0,x"], 2, ["--seeds '0,x'", "integers"]),
        (["train", "--preset", "tiny", "--set", "data.eval_size=16"], 2, ["data.eval_size=16", "32"]),
        (["train", "--preset", "tiny", "--out", str(tmp_path / "file"), *TINY], 2, [str(tmp_path / "file"), "is a file"]),
        (["train", "--preset", "robustseg", "--profile", "tiny", "--set", f"distill.teacher={tmp_path / 'nope.pt'}",
          "--out", str(tmp_path / "s"), *TINY], 1, ["nope.pt", "does not exist"]),
    ]
    for argv, status, words in cases:
        assert main([*argv, "--quiet"]) == status, argv
        err = _no_traceback(capsys.readouterr().err)
        for w in words:
            assert w in err, (argv, w, err)


def _actions(parser, path=()):
    """Every (command path, action) of the parser, subcommands included."""
    import argparse

    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), argparse.Namespace(option_strings=[name], dest=name, help=helps.get(name))
                yield from _actions(sub, (*path, name))


def test_every_option_of_every_command_has_help_text():
    import argparse

    from workbench.cli import build_parser

    parser = build_parser()
    seen, missing, internal = 0, [], []
    for path, action in _actions(parser):
        seen += 1
        where = f"{' '.join(path) or '(top)'} {'/'.join(action.option_strings) or action.dest}"
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(where)
        elif "issue" in action.help.lower():
            internal.append(f"{where}: {action.help}")
    assert seen > 80, "the walk must reach every command and benchmark"
    assert not missing, f"options without help text: {missing}"
    assert not internal, f"help text that refers to issues (not product text): {internal}"


def test_presets_show_prints_only_json_on_stdout_and_the_size_on_stderr(capsys):
    assert main(["presets", "--show", "robustseg", "--profile", "tiny"]) == 0
    out, err = capsys.readouterr()
    cfg = json.loads(out)  # pipeable: `presets --show NAME > cfg.json` is a valid --config FILE
    assert cfg["name"] == "robustseg" and cfg["data"]["size"] == 32
    assert "parameters;" in err and "GFLOPs per forward of one 32x32 image with 4 modalities" in err


def test_model_size_counts_the_real_forward():
    """The meta-device count (no computation) equals a real forward's on CPU; FLOPs grow with the pixels
    and the parameters are those of the model `build_model` makes."""
    from workbench.commands.presets import model_size
    from workbench.config import apply_overrides, preset
    from workbench.models import build_model

    cfg = preset("tiny")
    meta, cpu = model_size(cfg), model_size(cfg, device="cpu")
    assert meta == cpu and meta["flops"] > 0
    model = build_model(cfg.model, meta["modalities"], 12)
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())
    bigger = model_size(apply_overrides(cfg, {"data.size": 64}))
    assert 3.5 < bigger["flops"] / meta["flops"] < 5, "about 4x the pixels, about 4x the FLOPs"


def test_config_file_reruns_a_runs_config(tmp_path, capsys):
    import torch

    from workbench.checkpoint import load_checkpoint

    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["train", "--preset", "tiny", "--out", str(first), "--quiet", "--eval-split", "none",
                 "--set", "train.epochs=1", *TINY]) == 0
    assert main(["train", "--config", str(first / "config.json"), "--out", str(again), "--quiet",
                 "--eval-split", "none"]) == 0
    assert (again / "config.json").read_text() == (first / "config.json").read_text()
    a, b = load_checkpoint(first / "final.pt")["model"], load_checkpoint(again / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the same config trains the same weights"
    assert main(["train", "--config", str(tmp_path / "nope.json")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_train_prints_a_line_at_the_end_of_each_epoch(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--eval-split", "none",
                 *TINY, "--set", "train.epochs=2"]) == 0
    err = capsys.readouterr().err
    for epoch in (1, 2):
        assert f"[train] baseline epoch {epoch}/2: step" in err
    assert "val full" in err and "EMM" in err


def test_tensorboard_logging_needs_its_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet", "--eval-split", "none",
                 "--set", "train.log=tensorboard", *TINY]) == 2
    assert "pip install -e .[tensorboard]" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--set", "train.log=wandb"]) == 2
    assert "'jsonl', 'tensorboard'" in capsys.readouterr().err


def test_tensorboard_logging_writes_events_beside_the_jsonl(tmp_path):
    import pytest

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from workbench.config import apply_overrides, preset
    from workbench.records import read_records

    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), "--quiet", "--eval-split", "none",
                 *TINY, "--set", "train.epochs=2", "--set", "train.log=tensorboard"]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = read_records(run)
    loss = [e.value for e in events.Scalars("train/loss")]
    assert loss == pytest.approx([r["train/loss"] for r in records.train])
    assert [e.step for e in events.Scalars("val/emm")] == [r["step"] for r in records.val]
    cfg = preset("tiny")
    assert apply_overrides(cfg, {"train.log": "tensorboard"}).hash() == cfg.hash(), "logging is not the run's identity"


def test_study_and_option_mistakes_are_refused_before_anything_is_trained(tmp_path, capsys, monkeypatch):
    """Issue 20's command lines: tracebacks (`--set foo` in the studies, `claims --seeds a,b`, `probe --method
    baseline`), silent defaults (repeated seeds, empty lists, an ignored --rates) and late failures
    (`data.case=snow`, `sweep --split train2`). Each is one error line, before any run folder exists."""
    import sys

    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), "--quiet", "--eval-split", "none", *TINY]) == 0
    runs = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(runs))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    capsys.readouterr()
    tiny = ["--profile", "tiny", "--seeds", "0"]
    cases = [  # (argv, exit status, words the message must hold)
        (["ablate", *tiny, "--set", "foo"], 2, ["override 'foo' must look like section.key=value"]),
        (["compare", *tiny, "--set", "foo"], 2, ["override 'foo' must look like section.key=value"]),
        (["claims", *tiny, "--set", "foo"], 2, ["override 'foo' must look like section.key=value"]),
        (["calibrate", *tiny, "--set", "foo"], 2, ["override 'foo' must look like section.key=value"]),
        (["sweep", "--profile", "tiny", "--grid", "distill.cp_weight=1", "--set", "foo"], 2, ["override 'foo'"]),
        (["claims", "--profile", "tiny", "--seeds", "a,b"], 2, ["--seeds 'a,b' must be a comma-separated list of "
                                                                 "integers"]),
        (["claims", "--profile", "tiny", "--seeds", ""], 2, ["--seeds is empty"]),
        (["compare", "--profile", "tiny", "--seeds=-1,-1"], 2, ["--seeds '-1,-1' repeats -1", "distinct"]),
        (["ablate", "--profile", "tiny", "--seeds", "0,1,0"], 2, ["repeats 0"]),
        (["compare", *tiny, "--methods", ""], 2, ["--methods is empty"]),
        (["ablate", *tiny, "--methods", ""], 2, ["--methods is empty"]),
        (["calibrate", *tiny, "--subsets", ""], 2, ["--subsets is empty"]),
        (["probe", "--method", "baseline", "--profile", "tiny"], 2, ["--method baseline trains supervised",
                                                                      "robustseg"]),
        (["probe", "--method", "cmnext", "--profile", "tiny"], 2, ["--method cmnext"]),
        (["evaluate", str(run), "--protocol", "drop", "--rates", "7"], 2, ["--rates applies to --protocol rmm"]),
        (["evaluate", str(run), "--protocol", "both", "--levels", "low"], 2, ["--levels applies to --protocol nm"]),
        (["evaluate", str(run), "--protocol", "zero", "--seed", "3"], 2, ["--seed applies to --protocol rmm or nm"]),
        (["evaluate", str(run), "--protocol", "rmm", "--rates", "0.5,0.5"], 2, ["--rates '0.5,0.5' repeats 0.5"]),
        (["train", "--preset", "tiny", "--set", "data.case=snow"], 2, ["data.case='snow'", "valid"]),
        (["train", "--preset", "robustseg", "--profile", "tiny", "--set", "data.case=snow"], 2, ["data.case='snow'"]),
        (["train", "--preset", "tiny", "--set", "train.log=tensorboard"], 2, ["pip install -e .[tensorboard]"]),
        (["train", "--preset", "tiny", "--set", "data.case=snow", "--out", str(tmp_path / "new")], 2, ["snow"]),
        (["sweep", "--profile", "tiny", "--grid", "distill.cp_weight=1", "--split", "train2"], 2,
         ["unknown split 'train2' for synthetic", "train, val, test"]),
    ]
    for argv, status, words in cases:
        assert main([*argv, "--quiet"]) == status, argv
        err = _no_traceback(capsys.readouterr().err)
        for w in words:
            assert w in err, (argv, w, err)
        assert not runs.exists() and not (tmp_path / "new").exists(), f"{argv} made a folder before refusing"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("eval")) == [], "nothing was evaluated"


def test_a_cached_train_says_it_reused_the_run(tmp_path, capsys, monkeypatch):
    import datetime

    from workbench import repro
    from workbench.runs import Run

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    argv = ["train", "--preset", "tiny", "--eval-split", "none", *TINY]
    assert main(argv) == 0
    first = capsys.readouterr().err
    assert "reused" not in first
    assert main(argv) == 0
    err = capsys.readouterr().err
    (folder,) = (tmp_path / "runs" / repro.cache_folder_name()).iterdir()  # `cache-repro` with WORKBENCH_REPRO=1
    stamp = datetime.datetime.fromtimestamp((folder / "final.pt").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    assert f"reused {folder.name} (trained {stamp})" in err and "epoch 1/1" not in err
    assert Run.at(folder).name == folder.name


def test_presets_lists_the_loss_settings_a_profile_changes(capsys):
    """The README says `presets` states quick's distill.asm_stage=all; every such setting is listed,
    found by comparing each profile with the paper's defaults (not from a hand-written list)."""
    from workbench.config import PROFILES, Config

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    default = Config().distill
    for name, make in PROFILES.items():
        stage = make().distill.asm_stage
        line = f"  {name:<7} distill.asm_stage = {stage}"
        assert (line in out) == (stage != default.asm_stage), (name, out)
    assert "  quick   distill.asm_stage = all" in out
    assert main(["presets", "--show", "hpd", "--profile", "quick"]) == 0
    assert "distill.asm_stage=all" in capsys.readouterr().err
