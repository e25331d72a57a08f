"""The synthetic world's pretrained encoder (`workbench.pretrain`, `model.init=pretrained`): a world of its
own, deterministic and cached, loaded into every encoder (input conv adapted), in the run's hash only when
used (docs/BENCHMARK.md, section 6). Tiny sizes only."""

import hashlib
import shlex

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from workbench.config import apply_overrides, preset, pretraining_config
from workbench.data import synthetic as syn
from workbench.errors import ConfigError, MissingFile
from workbench.models import build_model
from workbench.models.mit_weights import adapt_first_conv
from workbench.pretrain import encoder_path, read_metadata
from workbench.runs import ensure_pretrained as pretrained_encoder

TINY_PRETRAIN = {"model.init": "pretrained", "model.pretrain.samples": 8, "model.pretrain.epochs": 1,
                 "model.pretrain.size": 32, "model.pretrain.batch_size": 4}
MODS = ("rgb", "depth", "event", "lidar")


def _cfg(profile="tiny", method="baseline", **extra):
    return apply_overrides(preset(method, profile), {**TINY_PRETRAIN, **extra})


@pytest.fixture(scope="module")
def built():
    """One tiny pretraining in the tests' runs folder, shared by the tests below."""
    cfg = _cfg()
    return cfg, pretrained_encoder(cfg.model, progress=False)


def _tensors(path):
    return load_file(str(path))


# -- hashes ----------------------------------------------------------------------------------------

# Config.hash() of these presets computed on main (commit 712643f), before model.init existed: the cached
# runs and committed figures of scratch configs keep their keys (CMNeXt's changed with its LayerNorm eps fix).
MAIN_HASHES = {("baseline", "quick"): "a0759de79063", ("baseline", "study"): "522316af1803",
               ("baseline", "tiny"): "99ec2636fc52", ("robustseg", "quick"): "e29e7b3830ab",
               ("basic_kd", "study"): "66ae81c478f3", ("cmnext", "quick"): "c133542d898d",  # anew since CMNeXt's eps fix
               ("magic", "quick"): "99fee20d05ef", ("anyseg", "quick"): "47cd7b2b0454",
               ("baseline", "paper"): "9561817669b6"}


@pytest.mark.parametrize("method,profile", list(MAIN_HASHES))
def test_scratch_configs_keep_the_hash_they_had_on_main(method, profile):
    from test_compare import EARLIER_SCHEDULE

    cfg = apply_overrides(preset(method, profile), {**EARLIER_SCHEDULE.get(profile, {}), "model.init": "scratch"})
    assert cfg.hash() == MAIN_HASHES[method, profile]
    # the (unused) pretraining spec of a scratch config does not change its hash either
    assert apply_overrides(cfg, {"model.pretrain.epochs": 99, "model.pretrain.world_seed": 7}).hash() == cfg.hash()


def test_pretrained_init_and_its_spec_change_the_hash():
    base = apply_overrides(preset("baseline", "quick"), {"model.init": "scratch"})
    pre = apply_overrides(base, {"model.init": "pretrained"})
    assert pre.hash() != base.hash()
    for key, value in [("epochs", 11), ("samples", 512), ("world_seed", 7), ("seed", 1), ("lr", 1e-3)]:
        other = apply_overrides(pre, {f"model.pretrain.{key}": value})
        assert other.hash() != pre.hash(), key
        assert pretraining_config(other.model).hash() != pretraining_config(pre.model).hash(), key
    # the pretraining depends on the encoder, not on the downstream head
    assert pretraining_config(apply_overrides(pre, {"model.head_dim": 32}).model).hash() == \
        pretraining_config(pre.model).hash()


def test_a_students_teacher_starts_from_the_same_init():
    student = apply_overrides(preset("robustseg", "quick"), {"model.init": "pretrained"})
    teacher = student.teacher_config()
    assert teacher.model.init == "pretrained" and teacher.model.pretrain == student.model.pretrain
    assert teacher.hash() == apply_overrides(preset("baseline", "quick"), {"model.init": "pretrained"}).hash()


# -- the pretraining world -------------------------------------------------------------------------

def test_the_pretraining_world_is_disjoint_from_the_benchmark_splits():
    cfg = _cfg()
    pre = pretraining_config(cfg.model)
    assert pre.data.synthetic_seed == cfg.model.pretrain.world_seed != cfg.data.synthetic_seed
    assert pre.data.modalities == ("rgb",) and pre.data.dataset == "synthetic"
    # every scene is drawn from the seed sequence (world, split, index): the first draws of the pretraining
    # scenes differ from those of every benchmark scene, and so do the rendered images and labels
    n = 24

    def draws(seed, split):
        return {syn.sample_rng(seed, split, i).random(4).tobytes() for i in range(n)}

    def scenes(seed, split):
        out = set()
        for i in range(n):
            s = syn.render_sample(seed, split, i, 32)
            out.add(hashlib.sha1(s["rgb"].tobytes()).hexdigest())
            out.add(hashlib.sha1(np.ascontiguousarray(s["label"]).tobytes()).hexdigest())
        return out

    world = cfg.model.pretrain.world_seed
    pre_draws, pre_scenes = draws(world, "train"), scenes(world, "train")
    assert len(pre_draws) == n
    for split in syn.SPLITS:
        assert not pre_draws & draws(cfg.data.synthetic_seed, split), split
        assert not pre_scenes & scenes(cfg.data.synthetic_seed, split), split


# -- building, caching, determinism ----------------------------------------------------------------

def test_the_encoder_file_is_small_and_says_what_made_it(built, capsys):
    from workbench.cli import main

    cfg, path = built
    assert path == encoder_path(cfg.model) and path.stat().st_size < 8e6
    meta = read_metadata(path)
    assert meta["seed"] == "0" and meta["config_hash"] == pretraining_config(cfg.model).hash()
    assert meta["config_hash"] in path.parent.name
    assert set(_tensors(path)) == set(build_model(_cfg(**{"model.init": "scratch"}).model, ("rgb",), 12)
                                      .encoder("rgb").state_dict())
    # its recorded command names the same cached file (nothing is trained again)
    stamp = path.stat().st_mtime_ns
    args = shlex.split(meta["command"])
    assert args[:4] == ["python", "-m", "workbench", "pretrain"]
    assert main([*args[3:], "--quiet", "--profile", "tiny"]) == 0
    assert f"encoder: {path}" in capsys.readouterr().out
    assert path.stat().st_mtime_ns == stamp


def test_pretraining_is_deterministic_cached_and_leaves_the_generators_alone(built, tmp_path, monkeypatch):
    cfg, path = built
    stamp = path.stat().st_mtime_ns
    assert pretrained_encoder(cfg.model, progress=False) == path and path.stat().st_mtime_ns == stamp
    # a fresh runs folder: building the model needs the file (it says how to build it); a run that trains the
    # encoder on its way draws the same random numbers afterwards as one that finds it cached
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))
    with pytest.raises(MissingFile, match="python -m workbench pretrain"):
        build_model(cfg.model, MODS, 12)
    torch.manual_seed(0)
    pretrained_encoder(cfg.model, progress=False)
    cold = build_model(cfg.model, MODS, 12)
    after_cold = torch.rand(3)
    fresh = encoder_path(cfg.model)
    assert fresh != path and fresh.read_bytes() == path.read_bytes()  # the same seed gives the same bits
    torch.manual_seed(0)
    pretrained_encoder(cfg.model, progress=False)
    warm = build_model(cfg.model, MODS, 12)
    assert torch.equal(after_cold, torch.rand(3))
    assert all(torch.equal(a, b) for a, b in zip(cold.state_dict().values(), warm.state_dict().values()))
    # another pretraining seed gives other weights, in another file
    other = pretrained_encoder(_cfg(**{"model.pretrain.seed": 1}).model, progress=False)
    assert other.parent != fresh.parent
    a, b = _tensors(fresh), _tensors(other)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_every_encoder_starts_from_the_adapted_pretrained_weights(built):
    cfg, path = built
    weights = _tensors(path)
    conv = "patch_embed.proj.weight"
    torch.manual_seed(0)
    model = build_model(cfg.model, MODS, 12, in_chans={"depth": 1})
    for m in MODS:
        state = model.encoder(m).state_dict()
        assert set(state) == set(weights)
        for k, w in weights.items():
            expected = adapt_first_conv(w, 1) if (m, k) == ("depth", conv) else w
            assert torch.equal(state[k], expected), (m, k)
    assert state[conv].shape[1] == 3 and model.encoder("depth").state_dict()[conv].shape[1] == 1
    # only the encoders change: the head is the scratch model's (same seed)
    torch.manual_seed(0)
    scratch = build_model(_cfg(**{"model.init": "scratch"}).model, MODS, 12, in_chans={"depth": 1})
    assert all(torch.equal(v, scratch.head.state_dict()[k]) for k, v in model.head.state_dict().items())
    assert not torch.equal(scratch.encoder("rgb").state_dict()[conv], weights[conv])


def test_comparators_start_their_mit_branches_from_it(built):
    _, path = built
    weights = _tensors(path)
    magic = build_model(_cfg(method="magic").model, MODS, 12)  # one shared MiT encoder
    assert all(torch.equal(magic.encoders["shared"].state_dict()[k], w) for k, w in weights.items())
    cmnext = build_model(_cfg(method="cmnext").model, MODS, 12)  # the RGB branch; the hub is no MiT encoder
    assert all(torch.equal(cmnext.rgb.state_dict()[k], w) for k, w in weights.items())


def test_a_trained_checkpoint_loads_without_the_pretraining(built, tmp_path, monkeypatch):
    from workbench.runs import Run

    cfg, _ = built
    cfg = apply_overrides(cfg, {"data.train_samples": 8, "data.val_samples": 4, "data.test_samples": 4,
                                "train.epochs": 1})
    run = Run.from_config(cfg).ensure(progress=False)
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))  # no pretrained file here: loading must not need one
    model = run.model(device="cpu")
    assert not encoder_path(cfg.model).exists()
    assert model.modalities == MODS


# -- bad inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,match", [
    ({"model.init": "imagenet"}, "model.init='imagenet' is not valid; choose one of 'scratch', 'pretrained'"),
    ({"model.pretrain.samples": 0}, "model.pretrain.samples=0 must be > 0"),
    ({"model.pretrain.size": 48}, "model.pretrain.size=48 must be a multiple of 32"),
    ({"model.pretrain.world_seed": -1}, r"model.pretrain.world_seed=-1 must be in \[0, 2\*\*32\)"),
    ({"model.pretrain.samples": 8, "model.pretrain.batch_size": 16}, "smaller than model.pretrain.batch_size"),
    ({"model.init": "pretrained", "model.weights": "mit.pth"}, "choose one"),
    ({"model.init": "pretrained", "data.synthetic_seed": 1000}, "pretrained on the benchmark's own world"),
])
def test_bad_inputs_are_one_clear_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(preset("tiny"), overrides)


def test_the_command_reports_a_bad_input_in_one_line(capsys):
    from workbench.cli import main

    assert main(["pretrain", "--profile", "tiny", "--set", "model.pretrain.epochs=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: model.pretrain.epochs=0 must be > 0 and finite"]
