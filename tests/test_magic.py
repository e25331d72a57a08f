"""MAGIC comparator (re-implemented from the paper): shapes and gradients for every subset and protocol,
ASM's ranking and selection against a per-sample loop, and the objective against hand-computed values."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from workbench.models.magic import MAGIC, MagicOutput, consistency_loss, magic_losses, remaining_modalities

MODS = ("rgb", "depth", "event", "lidar")


def _inputs(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, 3, size, size, generator=g) for m in MODS}


@pytest.mark.parametrize("protocol", ["drop", "zero"])
def test_every_subset_gives_finite_outputs_and_gradients(protocol):
    torch.manual_seed(0)
    model = MAGIC(MODS, 5, head_dim=16).train()
    x, labels = _inputs(), torch.randint(0, 5, (2, 32, 32))
    for k in range(1, 5):
        for combo in itertools.combinations(range(4), k):
            present = torch.zeros(2, 4, dtype=torch.bool)
            present[:, list(combo)] = True
            model.zero_grad(set_to_none=True)
            out = model(x, present, protocol)
            assert out.logits.shape == out.selected_logits.shape == (2, 5, 32, 32)
            assert [f.shape[1:] for f in out.fused] == [(16, 8, 8), (32, 4, 4), (64, 2, 2), (96, 1, 1)]
            losses = magic_losses(out, labels)
            assert all(torch.isfinite(v) for v in losses.values())
            losses["loss"].backward()
            # Only the MAM MLP of an absent modality may lack a gradient: under `drop` it is left out; under
            # `zero` a freshly initialized MiT maps an all-zero image to all-zero features, so the first layer
            # of an MLP fed only such features (MAM's, or ASM's when it selects a zeroed modality) has none.
            absent = {f".mlps.{j}." for j in range(4) if j not in combo}
            if protocol == "zero":
                zeroed = [j for j in range(4) if j not in combo]
                absent |= {f"asm.{i}.{kind}.0.weight" for i in range(4) for kind, idx in
                           (("robust", out.robust[i]), ("fragile", out.fragile[i])) if set(idx.tolist()) <= set(zeroed)}
            missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
            assert all(any(a in n for a in absent) for n in missing), (combo, missing)
            if protocol == "drop":  # absent modalities are never ranked, so never selected
                assert all(present[torch.arange(2), r].all() for r in out.robust + out.fragile)


def test_a_dropped_modality_changes_nothing_and_rows_are_independent():
    model = MAGIC(MODS, 5, head_dim=16).eval()
    x = _inputs(b=3)
    present = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = model(x, present, "drop")
    for i in range(3):
        xi = {m: v[i:i + 1] for m, v in x.items()}
        torch.testing.assert_close(out.logits[i:i + 1], model(xi, present[i:i + 1], "drop").logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits[0], model(dict(x, depth=x["depth"] + 5), present, "drop").logits[0])


def test_per_modality_encoders_option():
    model = MAGIC(MODS, 5, head_dim=16, shared_encoder=False)
    assert set(model.encoders) == set(MODS) and model.encoder("rgb") is not model.encoder("depth")
    with pytest.raises(ValueError, match="equal channel counts"):
        MAGIC(MODS, 5, in_chans={"depth": 1})


def test_asm_ranking_and_selection_equal_a_per_sample_loop():
    """Per stage and sample: cosine of each present modality's pooled map with the aggregate, the most and
    least similar modality, and MLP_robust + MLP_fragile of their maps, which the head turns into the
    selected logits."""
    torch.manual_seed(0)
    model = MAGIC(MODS, 5, head_dim=16).eval()
    present = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = model(_inputs(b=4), present, "drop")
        selected = []
        for i, (g, agg) in enumerate(zip(out.pooled, out.fused)):
            rows = []
            for b in range(4):
                scores = {j: float(F.cosine_similarity(g[b, j].flatten(), agg[b].flatten(), dim=0))
                          for j in range(4) if present[b, j]}
                robust, fragile = max(scores, key=scores.get), min(scores, key=scores.get)
                assert (int(out.robust[i][b]), int(out.fragile[i][b])) == (robust, fragile)
                for j in range(4):
                    assert abs(float(out.scores[i][b, j]) - scores[j]) < 1e-5 if j in scores else \
                        out.scores[i][b, j] == float("-inf")
                asm = model.asm[i]
                rows.append(asm.robust(g[b:b + 1, robust]) + asm.fragile(g[b:b + 1, fragile]))
            selected.append(torch.cat(rows))
        want = F.interpolate(model.head(selected), size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.selected_logits, want, atol=1e-5, rtol=1e-4)


def test_mam_aggregate_is_the_mean_of_the_present_modalities():
    torch.manual_seed(0)
    model = MAGIC(MODS, 5, head_dim=16).eval()
    present = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = model(_inputs(), present, "drop")
        for i, g in enumerate(out.pooled):
            for b in range(2):
                ys = [g[b:b + 1, j] + model.mam[i].mlps[j](g[b:b + 1, j]) for j in range(4) if present[b, j]]
                torch.testing.assert_close(out.fused[i][b:b + 1], sum(ys) / len(ys), atol=1e-6, rtol=1e-5)


def _hand_output():
    """One sample, four modalities, one stage with C = 2 channels on a 1 x 1 map; robust = 0, fragile = 3,
    so modalities 1 and 2 remain with channel softmax [1/2, 1/2] and [3/4, 1/4]."""
    g = torch.zeros(1, 4, 2, 1, 1)
    g[0, 2, 0] = math.log(3.0)
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, K=2, 1, 2)
    selected = torch.tensor([[[[0.0, 0.0]], [[0.0, 3.0]]]])
    return MagicOutput(logits=logits, features={}, fused=[], present=torch.ones(1, 4, dtype=torch.bool),
                       selected_logits=selected, pooled=[g], scores=[torch.tensor([[0.9, 0.5, 0.4, 0.1]])],
                       robust=[torch.tensor([0])], fragile=[torch.tensor([3])], ranked=torch.ones(1, 4, dtype=torch.bool))


def test_objective_terms_equal_hand_computed_values():
    out = _hand_output()
    labels = torch.tensor([[[0, 1]]])
    # CE: pixel 0 logits (2, 0), class 0; pixel 1 logits (0, 1), class 1
    ce_agg = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    ce_sel = (math.log(2) + math.log(1 + math.exp(-3))) / 2
    p, q = (0.5, 0.5), (0.75, 0.25)
    mix = (0.625, 0.375)
    jsd = (sum(a * math.log(a / c) for a, c in zip(p, mix)) + sum(a * math.log(a / c) for a, c in zip(q, mix))) / 2
    assert remaining_modalities(out, 0).tolist() == [[False, True, True, False]]
    got = magic_losses(out, labels, selected_weight=0.5, consistency_weight=2.0)
    assert abs(float(got["aggregated"]) - ce_agg) < 1e-6
    assert abs(float(got["selected"]) - ce_sel) < 1e-6
    assert abs(float(got["consistency"]) - jsd) < 1e-6
    assert abs(float(got["loss"]) - (ce_agg + 0.5 * ce_sel + 2.0 * jsd)) < 1e-6


def test_consistency_is_zero_without_two_remaining_modalities():
    out = _hand_output()
    out.ranked = torch.tensor([[True, False, True, True]])  # only modality 2 remains
    loss = consistency_loss(out)
    assert float(loss) == 0.0
