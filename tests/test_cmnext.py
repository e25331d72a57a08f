"""CMNeXt comparator: shapes for every subset and protocol, gradients, and equality with a per-stage
reference written from the public code's definitions (jamycheung/DELIVER, semseg/models/backbones/cmnext.py,
modules/ffm.py, modules/mspa.py)."""

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F

from workbench.models.cmnext import CMNeXt

MODS = ("rgb", "depth", "event", "lidar")


def _inputs(b=2, size=32, mods=MODS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, 3, size, size, generator=g) for m in mods}


def _mask(b, combo, m=4):
    present = torch.zeros(b, m, dtype=torch.bool)
    present[:, list(combo)] = True
    return present


@pytest.mark.parametrize("protocol", ["drop", "zero"])
def test_every_subset_gives_finite_logits_of_the_right_shape(protocol):
    model = CMNeXt(MODS, 5, head_dim=16).eval()
    x = _inputs()
    for k in range(1, 5):
        for combo in itertools.combinations(range(4), k):
            out = model(x, _mask(2, combo), protocol)
            assert out.logits.shape == (2, 5, 32, 32) and torch.isfinite(out.logits).all()
            assert [f.shape[1:] for f in out.fused] == [(16, 8, 8), (32, 4, 4), (64, 2, 2), (96, 1, 1)]
            assert set(out.features) == set(MODS)
            if protocol == "drop":  # dropped modalities report zero features
                for j in set(range(4)) - set(combo):
                    assert all(not f.abs().sum() for f in out.features[MODS[j]])


def test_widths_come_from_the_encoder():
    model = CMNeXt(MODS, 5, encoder="mit_b0", head_dim=16)
    assert model.channels == (32, 64, 160, 256)
    assert [f.heads for f in model.ffm] == [1, 2, 5, 8]  # MiT's heads, the public FFM's num_heads
    assert [len(a.blocks) for a in model.aux] == [2, 2, 2, 2]


def test_every_parameter_gets_a_gradient_from_a_full_modality_forward():
    model = CMNeXt(MODS, 5, head_dim=16).train()
    out = model(_inputs(), None, "drop")
    out.logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing


def test_mixed_rows_equal_per_sample_runs_and_dropped_inputs_do_not_matter():
    model = CMNeXt(MODS, 5, head_dim=16).eval()
    x = _inputs(b=3)
    present = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    for protocol in ("drop", "zero"):
        out = model(x, present, protocol).logits
        for i in range(3):
            xi = {m: v[i:i + 1] for m, v in x.items()}
            torch.testing.assert_close(out[i:i + 1], model(xi, present[i:i + 1], protocol).logits, atol=1e-5, rtol=1e-4)
        x2 = dict(x, depth=x["depth"] + 5, rgb=torch.where(present[:, :1, None, None], x["rgb"], x["rgb"] - 3))
        torch.testing.assert_close(out[0], model(x2, present, protocol).logits[0])


def test_a_dropped_auxiliary_modality_is_left_out_of_the_hub():
    """Dropping `event` equals a CMNeXt built without `event` that has the same weights."""
    full = CMNeXt(MODS, 5, head_dim=16).eval()
    _randomize(full)
    three = CMNeXt(("rgb", "depth", "lidar"), 5, head_dim=16).eval()
    state = {}
    for key, value in full.state_dict().items():  # auxiliary index 1 (event) is removed; lidar 2 -> 1
        for name in ("embed_norms", "scores"):
            if f".{name}.1." in key:
                break
            key = key.replace(f".{name}.2.", f".{name}.1.")
        else:
            state[key] = value
    three.load_state_dict(state)
    x = _inputs(size=64)
    got = full(x, _mask(2, (0, 1, 3)), "drop").logits
    torch.testing.assert_close(got, three({m: x[m] for m in three.modalities}).logits, atol=1e-5, rtol=1e-4)


def test_bad_inputs_say_what_to_fix():
    with pytest.raises(ValueError, match="equal channel counts"):
        CMNeXt(MODS, 5, in_chans={"depth": 1})
    with pytest.raises(ValueError, match="mit_tiny or mit_b0"):
        CMNeXt(MODS, 5, encoder="test_convnext")
    model = CMNeXt(MODS, 5, head_dim=16)
    with pytest.raises(ValueError, match="'drop', 'zero'"):
        model(_inputs(b=1), None, "mask")


# ------------------------------------------------------------------------------------------------
# Reference: the public forward written out per stage and per modality, on the model's own weights

def _randomize(model, seed=1):
    """Move BN statistics, layer scales and biases away from their neutral initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("aux", "frm", "ffm")):
                continue
            if "scale" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.5)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


def _conv_ln(x, ln):  # public ConvLayerNorm
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return ln.weight[:, None, None] * (x - u) / torch.sqrt(s + ln.eps) + ln.bias[:, None, None]


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _conv(x, conv):
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _mspa_block(x, blk):  # public MSPABlock with MSPoolAttention
    u = _bn(x, blk.norm1)
    x_in = _conv(u, blk.mixer.dw)
    pooled = [F.avg_pool2d(x_in, k, 1, k // 2, count_include_pad=False) for k in (3, 7, 11)]
    attn = torch.sigmoid(_conv(x_in + pooled[0] + pooled[1] + pooled[2], blk.mixer.proj)) * u + u
    x = x + blk.scale1.unsqueeze(-1).unsqueeze(-1) * attn
    x_c = F.adaptive_avg_pool2d(x, 1)
    x_c = torch.sigmoid(F.conv1d(x_c.squeeze(-1).transpose(-1, -2), blk.gate.weight, padding=1))
    x_c = x_c.transpose(-1, -2).unsqueeze(-1).expand_as(x)
    h = _bn(x, blk.norm2)
    fc1, dw, _, fc2 = blk.mlp
    mlp = _conv(F.gelu(_conv(_conv(h, fc1), dw)), fc2)
    return x_c * x + blk.scale2.unsqueeze(-1).unsqueeze(-1) * mlp


def _frm(x1, x2, frm):  # public FeatureRectifyModule
    b, c, h, w = x1.shape
    x = torch.cat((x1, x2), dim=1)
    y = torch.cat((F.adaptive_avg_pool2d(x, 1).view(b, 2 * c), F.adaptive_max_pool2d(x, 1).view(b, 2 * c)), dim=1)
    l1, _, l2, _ = frm.channel
    y = torch.sigmoid(F.linear(F.relu(F.linear(y, l1.weight, l1.bias)), l2.weight, l2.bias)).view(b, 2 * c, 1)
    cw = y.reshape(b, 2, c, 1, 1).permute(1, 0, 2, 3, 4)
    c1, _, c2, _ = frm.spatial
    sw = torch.sigmoid(_conv(F.relu(_conv(x, c1)), c2)).reshape(b, 2, 1, h, w).permute(1, 0, 2, 3, 4)
    out1 = x1 + 0.5 * cw[1] * x2 + 0.5 * sw[1] * x2
    out2 = x2 + 0.5 * cw[0] * x1 + 0.5 * sw[0] * x1
    return out1, out2


def _ffm(x1, x2, ffm):  # public FeatureFusionModule = CrossPath + ChannelEmbed
    b, c, h, w = x1.shape
    x1, x2 = x1.flatten(2).transpose(1, 2), x2.flatten(2).transpose(1, 2)
    heads = ffm.heads
    y1, u1 = F.relu(F.linear(x1, ffm.proj_in[0].weight, ffm.proj_in[0].bias)).chunk(2, dim=-1)
    y2, u2 = F.relu(F.linear(x2, ffm.proj_in[1].weight, ffm.proj_in[1].bias)).chunk(2, dim=-1)
    n = u1.shape[1]
    q1 = u1.reshape(b, -1, heads, c // heads).permute(0, 2, 1, 3)
    q2 = u2.reshape(b, -1, heads, c // heads).permute(0, 2, 1, 3)
    k1, v1 = F.linear(u1, ffm.kv[0].weight).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    k2, v2 = F.linear(u2, ffm.kv[1].weight).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    scale = (c // heads) ** -0.5
    ctx1 = ((k1.transpose(-2, -1) @ v1) * scale).softmax(dim=-2)
    ctx2 = ((k2.transpose(-2, -1) @ v2) * scale).softmax(dim=-2)
    v1 = (q1 @ ctx2).permute(0, 2, 1, 3).reshape(b, n, c)
    v2 = (q2 @ ctx1).permute(0, 2, 1, 3).reshape(b, n, c)
    e1, e2 = ffm.proj_out
    o1 = F.layer_norm(x1 + F.linear(torch.cat((y1, v1), -1), e1.weight, e1.bias), (c,), ffm.norms[0].weight,
                      ffm.norms[0].bias, ffm.norms[0].eps)
    o2 = F.layer_norm(x2 + F.linear(torch.cat((y2, v2), -1), e2.weight, e2.bias), (c,), ffm.norms[1].weight,
                      ffm.norms[1].bias, ffm.norms[1].eps)
    merge = torch.cat((o1, o2), dim=-1).permute(0, 2, 1).reshape(b, 2 * c, h, w)
    p1, dw, _, p2, bn = ffm.embed
    emb = _bn(_conv(F.relu(_conv(_conv(merge, p1), dw)), p2), bn)
    return _bn(_conv(merge, ffm.residual) + emb, ffm.norm)


def _reference(model, x, public_residual):
    """Public CMNeXt.forward: per stage RGB blocks, shared aux patch embed + per-modality LN, token
    selection (score * x + x, max), PPX blocks, extra norm, FRM, FFM, aux residual for the next stage."""
    x_cam, x_ext = x[0], list(x[1:])
    outs = []
    for i in range(4):
        x_cam = model._rgb_stage(i, x_cam)  # the MiT stage (timm pvt_v2 blocks)
        b, _, h, w = x_cam.shape
        stage = model.aux[i]
        x_ext = [_conv_ln(_conv(e, stage.embed), stage.embed_norms[k]) for k, e in enumerate(x_ext)]
        if len(x_ext) > 1:
            scores = [torch.sigmoid(_conv(_conv(e, s[0]), s[1])) for e, s in zip(x_ext, stage.scores)]
            for k in range(len(x_ext)):
                x_ext[k] = scores[k] * x_ext[k] + x_ext[k]
            x_f = functools.reduce(torch.max, x_ext)
        else:
            x_f = x_ext[0]
        for blk in stage.blocks:
            x_f = _mspa_block(x_f, blk)
        x_f = _conv_ln(x_f, stage.norm)
        x_cam, x_f = _frm(x_cam, x_f, model.frm[i])
        outs.append(_ffm(x_cam, x_f, model.ffm[i]))
        if len(x_ext) > 1:
            x_ext = [(e.reshape(b, h, w, -1).permute(0, 3, 1, 2) if public_residual else e) + x_f for e in x_ext]
        else:
            x_ext = [x_f]
    return outs


# with one auxiliary modality there is no residual, so the public reshape has nothing to scramble
@pytest.mark.parametrize("mods, public_residual", [(MODS, False), (MODS, True), (("rgb", "depth"), False)])
def test_forward_equals_the_public_definition_written_per_stage(mods, public_residual):
    torch.manual_seed(0)
    model = CMNeXt(mods, 5, head_dim=16, public_aux_residual=public_residual).eval()
    _randomize(model)
    model.double()  # float64 on both sides: what is left is the difference in definitions, not rounding
    x = {m: v.double() for m, v in _inputs(size=64, mods=mods).items()}
    with torch.no_grad():
        out = model(x)
        ref = _reference(model, [x[m] for m in mods], public_residual)
        logits = F.interpolate(model.head(ref), size=(64, 64), mode="bilinear", align_corners=False)
    for got, want in zip(out.fused, ref):
        assert (got - want).abs().max() < 1e-5
    assert (out.logits - logits).abs().max() < 1e-5


def test_the_public_residual_differs_from_the_aligned_one():
    """The quirk matters: the scrambled residual changes the output (so the option is not a no-op)."""
    a = CMNeXt(MODS, 5, head_dim=16).eval()
    b = CMNeXt(MODS, 5, head_dim=16, public_aux_residual=True).eval()
    b.load_state_dict(a.state_dict())
    x = _inputs(size=64)
    assert (a(x).logits - b(x).logits).abs().max() > 1e-4


PUBLIC_LN_EPS = 1e-5  # DELIVER's cmnext.py: nn.LayerNorm(dim) everywhere in the RGB branch (torch's default)


def _public_rgb_stage(model, i, x):
    """Stage i of the public RGB branch (PatchEmbed, Blocks, norm_i), written from its definitions with its
    LayerNorm eps; the weights are the model's."""
    ln = functools.partial(F.layer_norm, eps=PUBLIC_LN_EPS)
    stage = model._rgb_stage_module(i)
    embed = model.rgb.patch_embed if i == 0 else stage.downsample
    x = _conv(x, embed.proj)
    b, c, h, w = x.shape
    x = ln(x.flatten(2).transpose(1, 2), (c,), embed.norm.weight, embed.norm.bias)
    for blk in stage.blocks:
        a = blk.attn
        y = ln(x, (c,), blk.norm1.weight, blk.norm1.bias)
        heads = a.num_heads
        q = F.linear(y, a.q.weight, a.q.bias).reshape(b, -1, heads, c // heads).permute(0, 2, 1, 3)
        if a.sr is not None:
            y = _conv(y.permute(0, 2, 1).reshape(b, c, h, w), a.sr).reshape(b, c, -1).permute(0, 2, 1)
            y = ln(y, (c,), a.norm.weight, a.norm.bias)
        k, v = F.linear(y, a.kv.weight, a.kv.bias).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
        x = x + F.linear((attn @ v).transpose(1, 2).reshape(b, -1, c), a.proj.weight, a.proj.bias)
        m = blk.mlp
        y = F.linear(ln(x, (c,), blk.norm2.weight, blk.norm2.bias), m.fc1.weight, m.fc1.bias)
        y = _conv(y.transpose(1, 2).reshape(b, -1, h, w), m.dwconv).flatten(2).transpose(1, 2)
        x = x + F.linear(F.gelu(y), m.fc2.weight, m.fc2.bias)
    x = ln(x, (c,), stage.norm.weight, stage.norm.bias)
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


def test_the_rgb_branch_equals_the_public_one_with_its_layernorm_eps():
    """timm's pvt_v2 uses LayerNorm eps 1e-6 where DELIVER's CMNeXt uses 1e-5 (about 1e-4 apart per stage);
    with the eps matched the stages agree to float64 rounding."""
    torch.manual_seed(0)
    model = CMNeXt(MODS, 5, head_dim=16).eval()
    _randomize(model)
    model.double()
    assert {m.eps for m in model.rgb.modules() if isinstance(m, torch.nn.LayerNorm)} == {PUBLIC_LN_EPS}
    x = _inputs(size=64)["rgb"].double()
    with torch.no_grad():
        for i in range(4):
            got, want = model._rgb_stage(i, x), _public_rgb_stage(model, i, x)
            assert (got - want).abs().max() < 1e-10, i
            x = got
