import itertools

import pytest
import torch

from workbench.models import Segmentor, build_encoder

MODS = ("rgb", "depth", "event", "lidar")


def _inputs(b=2, size=32, mods=MODS):
    g = torch.Generator().manual_seed(0)
    return {m: torch.randn(b, 3, size, size, generator=g) for m in mods}


@pytest.mark.parametrize("fusion", ["mean", "softmax"])
@pytest.mark.parametrize("protocol", ["drop", "zero"])
def test_every_subset_gives_finite_logits_of_the_right_shape(fusion, protocol):
    model = Segmentor(MODS, 5, head_dim=16, fusion=fusion).eval()
    x = _inputs()
    for k in range(1, 5):
        for combo in itertools.combinations(range(4), k):
            present = torch.zeros(2, 4, dtype=torch.bool)
            present[:, list(combo)] = True
            out = model(x, present, protocol)
            assert out.logits.shape == (2, 5, 32, 32) and torch.isfinite(out.logits).all()
            assert [f.shape[-1] for f in out.fused] == [8, 4, 2, 1]
            assert set(out.features) == set(MODS)


def test_mixed_present_rows_equal_per_sample_runs():
    """`drop` with different subsets per sample equals running each sample alone with its subset."""
    model = Segmentor(MODS, 5, head_dim=16).eval()
    x = _inputs(b=3)
    present = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = model(x, present, "drop").logits
    for i in range(3):
        xi = {m: v[i:i + 1] for m, v in x.items()}
        torch.testing.assert_close(out[i:i + 1], model(xi, present[i:i + 1], "drop").logits, atol=1e-5, rtol=1e-4)
    # a dropped modality's input does not matter; a zeroed one does not either under `zero` (it is zeroed)
    x2 = dict(x, depth=x["depth"] + 5)
    torch.testing.assert_close(out[0], model(x2, present, "drop").logits[0])
    torch.testing.assert_close(model(x, present, "zero").logits[0], model(x2, present, "zero").logits[0])


@pytest.mark.parametrize("fusion", ["mean", "softmax"])
@pytest.mark.parametrize("shared", [False, True])
def test_every_trainable_parameter_gets_a_gradient(fusion, shared):
    model = Segmentor(MODS, 5, head_dim=16, fusion=fusion, shared_encoder=shared).train()
    out = model(_inputs(b=2), None, "drop")
    out.logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing


def test_shared_encoder_has_one_set_of_weights():
    a = Segmentor(MODS, 5, head_dim=16, shared_encoder=True)
    b = Segmentor(MODS, 5, head_dim=16)
    n_enc = sum(p.numel() for p in a.encoders.parameters())
    assert sum(p.numel() for p in b.encoders.parameters()) == 4 * n_enc
    assert a.encoder("rgb") is a.encoder("lidar")


def test_bad_inputs_say_what_to_fix():
    with pytest.raises(KeyError, match="valid: mit_tiny"):
        build_encoder("mit_b9")
    model = Segmentor(MODS, 5, head_dim=16)
    with pytest.raises(KeyError, match="expects modalities"):
        model({"rgb": torch.zeros(1, 3, 32, 32)})
    with pytest.raises(ValueError, match="at least one True"):
        model(_inputs(b=1), torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="'drop', 'zero'"):
        model(_inputs(b=1), None, "mask")


def test_mit_b0_is_pvt_v2_b0_with_mix_ffn_ratio_4():
    enc = build_encoder("mit_b0", in_chans=1)
    feats = enc(torch.zeros(1, 1, 64, 64))
    assert [f.shape[1] for f in feats] == [32, 64, 160, 256] and [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    # Mix-FFN hidden width = 4 x dim in every stage (timm's pvt_v2_b0 default is 8, 8, 4, 4)
    hidden = [m.fc1.out_features for n, m in enc.named_modules() if n.endswith("blocks.0.mlp")]
    assert hidden == [128, 256, 640, 1024]


def test_any_timm_features_only_model_works():
    model = Segmentor(("rgb", "depth"), 3, encoder="test_convnext", head_dim=8)
    out = model(_inputs(b=1, size=64, mods=("rgb", "depth")))
    assert out.logits.shape == (1, 3, 64, 64)
