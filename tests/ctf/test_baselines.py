"""The baselines CTF is compared against (prunekit.ctf.baselines): magnitude, random, structured-only CTF, lasso."""
import math

import pytest
import torch

from prunekit.ctf import CTF, GroupLasso, magnitude_prune, random_prune, structured_ctf
from tests.ctf.helpers import count_zeros, gcn, inputs, set_threshold


def test_magnitude_prune_keeps_the_largest_weights_globally():
    model = gcn()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = magnitude_prune(model, 0.75, example_inputs=inputs(batch=2))
    selected = plan.meta["names"]
    assert "fc.weight" not in selected
    magnitudes = torch.cat([dense[n].abs().flatten() for n in selected])
    kept_min = min(float(dense[n].abs()[dict(model.named_parameters())[n] != 0].min()) for n in selected)
    pruned_max = max(float(dense[n].abs()[dict(model.named_parameters())[n] == 0].max()) for n in selected)
    assert pruned_max <= kept_min
    zeros, total = count_zeros(model, selected)
    assert zeros == round(0.75 * magnitudes.numel()) and plan.meta["rate"] == pytest.approx(0.75, abs=1 / total)


def test_random_prune_is_seeded():
    plans = [random_prune(gcn(), 0.5, seed=s, example_inputs=inputs(batch=2)) for s in (4, 4, 5)]
    assert plans[0].entry_masks.keys() == plans[1].entry_masks.keys()
    assert all(torch.equal(plans[0].entry_masks[n], plans[1].entry_masks[n]) for n in plans[0].entry_masks)
    assert any(not torch.equal(plans[0].entry_masks[n], plans[2].entry_masks[n]) for n in plans[0].entry_masks)


def test_group_lasso_penalty_and_threshold():
    model = gcn()
    lasso = GroupLasso(model, 0.5, strength=1e-3, granularity="column", example_inputs=inputs(batch=2))
    params = dict(model.named_parameters())
    expected = 0.0
    for n in lasso.names:
        w = params[n].detach()
        g = lasso.groups[n]
        for j in range(int(g.max()) + 1):
            entries = w[g == j]
            expected += math.sqrt(entries.numel()) * float(entries.norm())
    assert float(lasso.extra_loss(model).detach()) == pytest.approx(1e-3 * expected, rel=1e-5)
    plan = lasso.finalize()
    assert plan.meta["rate"] >= 0.5
    l1 = GroupLasso(gcn(), 0.5, strength=1e-3, granularity="entry", example_inputs=inputs(batch=2))
    l1_params = {n: p.detach() for n, p in l1.model.named_parameters()}
    assert float(l1.extra_loss(l1.model).detach()) == pytest.approx(
        1e-3 * sum(float(l1_params[n].abs().sum()) for n in l1.names), rel=1e-5)


def test_structured_only_variant_prunes_whole_columns():
    model = gcn()
    x = inputs(batch=2)
    ctf = structured_ctf(model, 0.5, "column", example_inputs=x)
    assert ctf.granularities == ("column",)
    for mask in ctf.masks_by_name.values():
        set_threshold(mask, "column", 0.9)
    ctf.tau = 0.05
    ctf.finalize()
    params = dict(model.named_parameters())
    zeros, total = count_zeros(model, ctf.names)
    largest_column = max(ctf.masks_by_name[n].rows * ctf.masks_by_name[n].blocks *
                         math.prod(ctf.masks_by_name[n].shape[2:]) for n in ctf.names)
    assert 0 <= zeros - 0.5 * total <= largest_column  # rate met with whole groups
    for n in ctf.names:  # every zero lies in an all-zero column
        m = ctf.masks_by_name[n]
        view = params[n].detach().reshape(m.view_shape)
        col_zero = (view == 0).all(dim=(0, 2, 3))
        assert torch.equal((view == 0).any(dim=(0, 2, 3)), col_zero)


def test_channel_only_cannot_go_past_the_heads_and_never_closes_a_whole_weight():
    model = gcn()
    x = inputs(batch=2)
    probe = structured_ctf(model, 0.1, "channel", example_inputs=x)
    keep = 0
    for n in probe.names:
        m = probe.masks_by_name[n]
        numel = math.prod(m.shape)
        keep += numel // m.blocks if "channel" in m.granularities else numel  # plain layers have no block gate
    total = sum(math.prod(probe.masks_by_name[n].shape) for n in probe.names)
    assert probe.max_rate() == pytest.approx(1 - keep / total, abs=1e-12)
    assert 0.05 < probe.max_rate() < 0.5
    assert CTF(gcn(), 0.99, example_inputs=x).max_rate() == 1.0
    with pytest.warns(UserWarning, match="at most"):
        beyond = structured_ctf(gcn(), 0.9, "channel", example_inputs=x)
    assert beyond.reachable_rate == pytest.approx(probe.max_rate()) and beyond.rate == 0.9
    assert beyond.target_keep == pytest.approx(1 - probe.max_rate())
    beyond.finalize()
    assert probe.max_rate() - 0.05 < beyond.report()["rate"] <= probe.max_rate() + 1e-9  # as far as it goes
    for mask in probe.masks_by_name.values():  # every head gate shut
        if "channel" in mask.granularities:
            set_threshold(mask, "channel", 100.0)
    probe.tau = 0.01
    probe.finalize()
    params = dict(model.named_parameters())
    for n in probe.names:
        m = probe.masks_by_name[n]
        if "channel" in m.granularities:
            blocks = params[n].detach().reshape(m.view_shape).abs().sum(dim=(1, 2, 3))
            assert int((blocks > 0).sum()) >= 1  # the best block of each weight is back
    zeros, total_now = count_zeros(model, probe.names)
    assert zeros >= 0.1 * total_now


def test_layer_normalised_magnitude_ranks_each_layer_in_its_own_scale():
    # |W_e| / rms(W^ℓ): scaling one layer by 100 changes nothing; global |W_e| then keeps that layer whole
    x = inputs(batch=2)
    plain, scaled = gcn(), gcn()
    layer = "blocks.0.tcn.weight"
    with torch.no_grad():
        dict(scaled.named_parameters())[layer].mul_(100.0)
    dense = dict(gcn().named_parameters())[layer].detach().abs()
    normalised = [magnitude_prune(m, 0.6, example_inputs=x, normalize=True) for m in (plain, scaled)]
    weights = [dict(m.named_parameters()) for m in (plain, scaled)]
    for name in normalised[0].meta["names"]:
        assert torch.equal(weights[0][name] == 0, weights[1][name] == 0), name
    kept = weights[0][layer] != 0
    assert 0 < int(kept.sum()) < kept.numel() and float(dense[kept].min()) >= float(dense[~kept].max())
    zeros, total = count_zeros(plain, normalised[0].meta["names"])
    assert zeros == round(0.6 * total) and normalised[0].meta["rate"] == pytest.approx(0.6, abs=1 / total)
    global_scaled = gcn()
    with torch.no_grad():
        dict(global_scaled.named_parameters())[layer].mul_(100.0)
    magnitude_prune(global_scaled, 0.6, example_inputs=x)
    kept_global = float((dict(global_scaled.named_parameters())[layer] != 0).float().mean())
    assert kept_global > 0.95 > float(kept.float().mean())  # the scaled layer escapes a global ranking
