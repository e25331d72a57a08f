import pytest

from workbench.config import PRESETS, PROFILES, Config, ConfigError, apply_overrides, preset


def test_every_preset_builds_and_roundtrips():
    for name in list(PROFILES) + list(PRESETS):
        cfg = preset(name, "tiny" if name in PRESETS else None)
        assert Config.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
        assert cfg.hash() == Config.from_dict(cfg.to_dict()).hash()


def test_unknown_preset_lists_valid_names():
    with pytest.raises(KeyError, match="valid presets: .*robustseg"):
        preset("robustsegg")


def test_overrides_coerce_types_and_name_the_key():
    cfg = apply_overrides(preset("tiny"), ["train.epochs=3", "train.lr=0.01", "data.modalities=rgb,depth",
                                           "train.grad_clip=none", "model.shared_encoder=true"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01 and cfg.data.modalities == ("rgb", "depth")
    assert cfg.train.grad_clip is None and cfg.model.shared_encoder is True
    with pytest.raises(ConfigError, match="train.epochs"):
        apply_overrides(preset("tiny"), ["train.epochs=three"])
    with pytest.raises(ConfigError, match="train.epochs"):
        apply_overrides(preset("tiny"), ["train.epochs=-1"])
    with pytest.raises(ConfigError, match="valid keys here: .*epochs"):
        apply_overrides(preset("tiny"), ["train.epoch=3"])
    with pytest.raises(ConfigError, match="valid: data, distill, magic, model, train"):
        apply_overrides(preset("tiny"), ["trian.epochs=3"])
    with pytest.raises(ConfigError, match="choose one of"):
        apply_overrides(preset("tiny"), ["train.protocol=mask"])


def test_shared_encoder_with_feedback_is_an_error_that_says_why():
    with pytest.raises(ConfigError, match="one encoder per modality"):
        apply_overrides(preset("robustseg", "tiny"), ["model.shared_encoder=true"])


def test_hash_ignores_cosmetic_keys_but_not_training_ones():
    a = preset("tiny")
    assert apply_overrides(a, ["train.device=cpu"]).hash() == a.hash()
    assert apply_overrides(a, ["train.seed=1"]).hash() != a.hash()
    assert preset("hpd", "tiny").hash() != preset("robustseg", "tiny").hash()


def test_a_baseline_hash_ignores_unused_distillation_weights():
    """The ablation's baseline row and a student's teacher are the same cached run."""
    for profile in ("tiny", "quick", "paper"):
        assert preset("baseline", profile).hash() == preset("robustseg", profile).teacher_config().hash()


def test_one_coercion_rule_for_set_and_config_files(tmp_path, capsys):
    """`--set train.epochs=1e3` was refused while a --config JSON number 1e308 trained until killed: every
    route now follows one rule (an integer field takes integers only)."""
    import json

    from workbench.cli import main

    cfg = preset("tiny")
    for value in ("1e3", 1e308, 10.0, "10.0", 1e3, float("inf")):
        with pytest.raises(ConfigError, match="train.epochs=.* must be an integer, written without a decimal point"):
            apply_overrides(cfg, {"train.epochs": value})
        with pytest.raises(ConfigError, match="must be an integer"):
            Config.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": value}})
    for value in (3, "3", " 3 ", "+3"):
        assert apply_overrides(cfg, {"train.epochs": value}).train.epochs == 3
    import numpy as np

    assert apply_overrides(cfg, {"train.seed": np.int64(2)}).train.seed == 2
    assert apply_overrides(cfg, {"train.lr": "1e-2"}).train.lr == apply_overrides(cfg, {"train.lr": 1e-2}).train.lr == 0.01
    with pytest.raises(ConfigError, match="train.lr=.* must be"):
        apply_overrides(cfg, {"train.lr": 10**400})
    # the command line: the same error line from --set and from a config file
    d = json.loads(cfg.to_json())
    d["train"]["epochs"] = 1e308
    (tmp_path / "cfg.json").write_text(json.dumps(d))
    assert main(["train", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run")]) == 2
    from_file = capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--set", "train.epochs=1e308", "--out", str(tmp_path / "run")]) == 2
    from_set = capsys.readouterr().err
    assert "train.epochs=1e+308 must be an integer" in from_file and "train.epochs='1e308' must be an integer" in from_set
    assert not (tmp_path / "run").exists()

