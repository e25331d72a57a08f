"""Official SegFormer MiT weights -> timm encoders, checked against segmentation-models-pytorch's MiT
(an independent implementation with the official key names; METHOD.md, "Architecture")."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch

from workbench.cli import main
from workbench.models.encoders import build_encoder
from workbench.models.mit_weights import (
    guess_variant,
    import_mit,
    load_encoder_weights,
    official_to_timm,
)

smp = pytest.importorskip("segmentation_models_pytorch")


@pytest.fixture(scope="module")
def smp_b0() -> torch.nn.Module:
    """smp's MiT-B0, random init (weights=None: no download), every tensor perturbed so that a swapped
    mapping (e.g. norm1 <-> norm2, which init to the same 1/0 values) changes the outputs."""
    torch.manual_seed(0)
    enc = smp.encoders.get_encoder("mit_b0", weights=None)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return enc.eval()


@pytest.fixture(scope="module")
def official_sd(smp_b0) -> dict[str, torch.Tensor]:
    """smp's state dict (official names) plus an ImageNet classifier head, as in the official mit_b0.pth."""
    sd = {k: v.clone() for k, v in smp_b0.state_dict().items()}
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    return sd


@pytest.fixture()
def official_file(tmp_path, official_sd):
    path = tmp_path / "mit_b0_official.pth"
    torch.save(official_sd, path)
    return path


def _stages_equal_smp(enc: torch.nn.Module, smp_enc: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = enc.eval()(x)
        ref = smp_enc(x)[2:]  # smp returns [input, empty stride-2 dummy, stride 4, 8, 16, 32]
    assert len(ours) == len(ref) == 4
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.shape == b.shape == (1, (32, 64, 160, 256)[i], 64 // 4 // 2**i, 64 // 4 // 2**i)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"stage {i + 1}")


def test_key_mapping_by_hand():
    t = torch.zeros(1)
    sd = {"patch_embed1.proj.weight": t, "patch_embed3.norm.bias": t, "block2.1.attn.kv.weight": t,
          "block4.0.mlp.dwconv.dwconv.weight": t, "norm3.weight": t, "head.weight": t, "head.bias": t}
    assert set(official_to_timm(sd)) == {
        "patch_embed.proj.weight", "stages_2.downsample.norm.bias", "stages_1.blocks.1.attn.kv.weight",
        "stages_3.blocks.0.mlp.dwconv.weight", "stages_2.norm.weight"}
    timm_named = {"stages_0.blocks.0.mlp.dwconv.weight": t}
    assert official_to_timm(timm_named) == timm_named  # already timm: unchanged


def test_official_checkpoint_matches_smp(official_file, smp_b0):
    enc = load_encoder_weights(build_encoder("mit_b0", 3), official_file)
    _stages_equal_smp(enc, smp_b0)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_checkpoint_loads(tmp_path, official_sd, smp_b0, wrapper):
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: official_sd, "epoch": 300}, path)
    _stages_equal_smp(load_encoder_weights(build_encoder("mit_b0", 3), path), smp_b0)


def test_import_mit_and_cli(tmp_path, official_file, smp_b0):
    out = import_mit(official_file, "b0", tmp_path / "conv" / "mit_b0_timm.pth")
    assert set(torch.load(out, weights_only=True)) == set(build_encoder("mit_b0").state_dict())
    _stages_equal_smp(load_encoder_weights(build_encoder("mit_b0", 3), out), smp_b0)
    cli_out = tmp_path / "cli.pth"
    assert main(["weights", "import-mit", str(official_file), "--variant", "b0", "--out", str(cli_out)]) == 0
    _stages_equal_smp(load_encoder_weights(build_encoder("mit_b0", 3), cli_out), smp_b0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.pth", "conv", "mit_b0_official.pth"]  # no temp left


def test_plain_timm_names_load(tmp_path):
    """A checkpoint of timm's plain (not features_only) pvt_v2 uses `stages.{i}.` and has a head."""
    torch.manual_seed(0)
    plain = timm.create_model("pvt_v2_b0", mlp_ratios=(4, 4, 4, 4), pretrained=False)
    torch.save(plain.state_dict(), tmp_path / "timm.pth")
    enc = load_encoder_weights(build_encoder("mit_b0"), tmp_path / "timm.pth")
    torch.testing.assert_close(enc.state_dict()["stages_3.blocks.1.mlp.dwconv.weight"],
                               plain.state_dict()["stages.3.blocks.1.mlp.dwconv.weight"], rtol=0, atol=0)


def test_mixed_official_and_timm_names_is_an_error(tmp_path, official_sd):
    sd = dict(official_sd)
    sd["stages_0.norm.weight"] = sd["norm1.weight"]
    torch.save(sd, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="mixes official SegFormer and timm names"):
        load_encoder_weights(build_encoder("mit_b0", 3), tmp_path / "mixed.pth")


def test_missing_and_unexpected_keys_are_listed(tmp_path, official_sd):
    sd = dict(official_sd)
    del sd["block2.1.mlp.fc1.weight"]
    sd["block2.1.mlp.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys") as info:
        load_encoder_weights(build_encoder("mit_b0", 3), tmp_path / "bad.pth")
    msg = str(info.value)
    assert "stages_1.blocks.1.mlp.fc1.weight" in msg and "stages_1.blocks.1.mlp.extra.weight" in msg
    assert "unexpected keys" in msg and "bad.pth" in msg


def test_truncated_or_absent_file_is_a_clear_error(tmp_path, official_file):
    data = official_file.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*truncated\.pth.*truncated or corrupt"):
        load_encoder_weights(build_encoder("mit_b0", 3), bad)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_encoder_weights(build_encoder("mit_b0", 3), tmp_path / "absent.pth")


def test_wrong_variant_is_detected(tmp_path, official_file, official_sd):
    assert guess_variant(official_sd) == "b0"
    with pytest.raises(ValueError, match="MiT-B0, not MiT-B1: use --variant b0"):
        import_mit(official_file, "b1", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
    assert main(["weights", "import-mit", str(official_file), "--variant", "b2", "--out", str(tmp_path / "y.pth")]) == 1
    with pytest.raises(ValueError, match=r"shape mismatches.*looks like MiT-B0"):
        load_encoder_weights(build_encoder("mit_b1", 3), official_file)


@pytest.mark.parametrize("in_chans", [1, 2])
def test_input_conv_adaptation(official_file, official_sd, in_chans):
    enc = load_encoder_weights(build_encoder("mit_b0", in_chans), official_file, in_chans=in_chans)
    rgb = official_sd["patch_embed1.proj.weight"]  # (32, 3, 7, 7)
    expected = (rgb.mean(dim=1, keepdim=True) * 3 / in_chans).repeat(1, in_chans, 1, 1)  # = sum(RGB) / in_chans
    torch.testing.assert_close(enc.state_dict()["patch_embed.proj.weight"], expected)
    # The documented property: a grey image over in_chans channels gives the RGB model's response to grey.
    grey = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    enc_rgb = load_encoder_weights(build_encoder("mit_b0", 3), official_file).eval()
    with torch.no_grad():
        for a, b in zip(enc.eval()(grey.repeat(1, in_chans, 1, 1)), enc_rgb(grey.repeat(1, 3, 1, 1))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
