"""CTF (prunekit.ctf.ctf): the penalty, the schedule, the hard phase, finalize and the plan — numbers, not smoke.

Small models (attention GCN with channels (8, 16), ST-GCN with (8, 8)) and a handful of
calls to ``find_structures`` keep the file fast on a 2-core machine.
"""
import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import prunekit
from prunekit.ctf import CTF, CTFMask
from prunekit.pipeline.train import fit
from tests.ctf.helpers import COARSE_OPEN, count_zeros, gcn, inputs, set_threshold, templates, untuned


def test_head_gate_is_shared_by_query_key_and_value():
    model = gcn()
    ctf = CTF(model, 0.5, example_inputs=inputs())
    layer = model.blocks[0].gcn
    names = [f"blocks.0.gcn.{p}.weight" for p in ("query", "key", "value")]
    masks = [ctf.masks_by_name[n] for n in names]
    assert all(m.blocks == 4 for m in masks) and masks[0].head_tie is masks[2].head_tie
    assert masks[0].columns == 8 and masks[2].columns == 8 and masks[2].rows == 3
    with torch.no_grad():  # head 2 small in query, key and value: its shared rms falls under a = 0.5
        for conv in (layer.query, layer.key):
            conv.parametrizations["weight"].original[16:24] *= 0.05
        layer.value.parametrizations["weight"].original[16:24] *= 0.05
    set_threshold(masks[0], "channel", 0.5)
    ctf.tau = 0.01
    for conv in (layer.query, layer.key, layer.value):
        w = conv.weight.detach()
        assert float(w[16:24].abs().max()) < 1e-12
        assert float(w[:16].abs().max()) > 0.01


def test_penalty_is_zero_when_the_mask_sum_equals_the_budget():
    model = gcn()
    ctf = CTF(model, 0.4, example_inputs=inputs(), lam=7.0, relative=False, budget="soft")
    ctf.tau = 0.3
    soft = ctf.kept_fraction()["soft"]
    with torch.no_grad():
        psi_sum = sum(float(ctf.masks_by_name[n].mask(ctf._latent(n)).sum()) for n in ctf.names)
    n_weights = sum(ctf._latent(n).numel() for n in ctf.names)
    assert soft == pytest.approx(psi_sum / n_weights, rel=1e-6)
    # the paper's form λ' (Σψ − c)² with λ' = λ / N², c = (1 − r) N
    c = (1 - 0.4) * n_weights
    assert float(ctf.penalty().detach()) == pytest.approx(7.0 / n_weights ** 2 * (psi_sum - c) ** 2, rel=1e-4)
    ctf.rate = 1.0 - soft  # now c = Σψ exactly
    ctf.target_keep = 1.0 - ctf.rate
    assert abs(float(ctf.penalty().detach())) < 1e-9


def test_tau_is_annealed_geometrically_to_tau_end():
    model = gcn()
    ctf = CTF(model, 0.5, example_inputs=inputs(), tau_start=0.8, tau_end=0.01, hard=0.0)
    taus = []
    for epoch in range(6):
        ctf.on_epoch_start(epoch, 6)
        taus.append(ctf.tau)
    assert taus[0] == pytest.approx(0.8) and taus[-1] == pytest.approx(0.01)
    ratios = [b / a for a, b in zip(taus, taus[1:])]
    assert ratios == pytest.approx([(0.01 / 0.8) ** (1 / 5)] * 5, rel=1e-9)


def test_budget_ramp_moves_the_target_from_the_initial_masks_to_the_rate():
    model = gcn()
    ctf = CTF(model, 0.8, example_inputs=inputs(), ramp=0.5, hard=0.0)
    assert ctf.target_keep == pytest.approx(0.2)  # outside fit: the final target
    ctf.on_epoch_start(0, 4)
    k0 = ctf._start_keep
    assert k0 == pytest.approx(ctf.kept_fraction()["soft"]) and 0.5 < k0 <= 1.0
    for _ in range(3):  # epoch 0: 3 steps, the step count is unknown yet: epoch 0's end value
        ctf.penalty()
        assert ctf.target_keep == pytest.approx(k0 - (k0 - 0.2) * 0.5)
    ctf.on_epoch_start(1, 4)  # now 3 steps per epoch are known: per-step progress
    targets = []
    for _ in range(3):
        ctf.penalty()
        targets.append(ctf.target_keep)
    assert targets == pytest.approx([k0 - (k0 - 0.2) * min(1.0, (1 + s / 3) / 2) for s in (1, 2, 3)])
    ctf.on_epoch_start(3, 4)
    ctf.penalty()
    assert ctf.target_keep == pytest.approx(0.2)


def test_relative_penalty_divides_the_error_by_the_budget():
    model = gcn()
    ctf = CTF(model, 0.8, example_inputs=inputs(), lam=3.0, relative=True, budget="soft")
    ctf.tau = 0.3
    soft = ctf.kept_fraction()["soft"]
    assert ctf.target_keep == pytest.approx(0.2)
    assert float(ctf.penalty().detach()) == pytest.approx(3.0 * ((soft - 0.2) / 0.2) ** 2, rel=1e-5)
    absolute = CTF(gcn(), 0.8, example_inputs=inputs(), lam=3.0, relative=False, budget="soft")
    absolute.tau = 0.3
    assert float(absolute.penalty().detach()) == pytest.approx(3.0 * (soft - 0.2) ** 2, rel=1e-5)


@pytest.mark.parametrize("weight_penalty", [False, True])
def test_weight_penalty_switch_decides_who_gets_the_penalty_gradient(weight_penalty):
    model = gcn()
    ctf = CTF(model, 0.8, example_inputs=inputs(), weight_penalty=weight_penalty, a_init={g: 0.5 for g in COARSE_OPEN})
    ctf.tau = 0.2
    value = ctf.penalty()
    value.backward()
    latent = [ctf._latent(n).grad for n in ctf.names]
    rho = [p.grad for p in ctf.parameters()]
    assert all(g is not None for g in rho) and sum(float(g.abs()) for g in rho) > 0  # thresholds: always
    weight_grad = sum(float(g.abs().sum()) for g in latent if g is not None)
    if weight_penalty:
        assert weight_grad > 0
    else:
        assert weight_grad == 0.0  # the budget moves the thresholds only (tied head gates included)
    other = CTF(gcn(), 0.8, example_inputs=inputs(), weight_penalty=not weight_penalty,
                a_init={g: 0.5 for g in COARSE_OPEN})
    other.tau = 0.2
    assert float(other.penalty().detach()) == pytest.approx(float(value.detach()), rel=1e-6)  # same value


@pytest.mark.parametrize("budget,cost", [("binary", "params"), ("soft", "params"), ("binary", "macs")])
def test_threshold_penalty_gradient_equals_autograd_through_the_detached_masks(budget, cost):
    # the default path (thresholds only) differentiates Σψ analytically; the reference is autograd
    # through soft_mask(detach=True), tied head gates, MAC costs and the straight-through count included
    model = gcn()
    ctf = CTF(model, 0.8, example_inputs=inputs(), budget=budget, cost=cost, lam=3.0)
    assert not ctf.weight_penalty
    generator = torch.Generator().manual_seed(0)
    for mask in ctf.masks_by_name.values():
        for g in mask.granularities:
            set_threshold(mask, g, 0.2 + 0.6 * float(torch.rand((), generator=generator)))
    ctf.tau = 0.15
    value = ctf.penalty()
    value.backward()
    analytic = {id(p): p.grad.clone() for p in ctf.parameters()}
    for p in ctf.parameters():
        p.grad = None
    total = 0.0
    for name, mask in ctf.masks_by_name.items():
        psi = mask.soft_mask(ctf._latent(name), detach=True)
        if budget == "binary":
            psi = (psi > 0.5).to(psi.dtype) + psi - psi.detach()
        total = total + mask.cost * psi.sum()
    reference = ctf.lam * ((total / ctf.total_cost - ctf.target_keep) / (1 - 0.8)) ** 2
    reference.backward()
    assert float(value.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    assert len(analytic) == len(ctf.parameters()) > 10
    for p in ctf.parameters():
        assert torch.allclose(analytic[id(p)], p.grad, rtol=1e-4, atol=1e-7), p
    assert sum(float(g.abs()) for g in analytic.values()) > 0


def test_fixed_thresholds_always_put_the_penalty_on_the_weights():
    assert CTF(gcn(), 0.8, example_inputs=inputs(), thresholds="fixed").weight_penalty
    with pytest.raises(ValueError, match="weight_penalty"):  # nothing else could carry the budget
        CTF(gcn(), 0.8, example_inputs=inputs(), thresholds="fixed", weight_penalty=False)


def test_ctf_refuses_a_masked_model_and_a_rate_out_of_range():
    model = gcn()
    CTF(model, 0.5, example_inputs=inputs())
    with pytest.raises(ValueError, match="already carries CTF masks"):
        CTF(model, 0.5, example_inputs=inputs())
    for rate in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="rate must be in"):
            CTF(gcn(), rate, example_inputs=inputs())


def test_binary_budget_counts_what_finalize_keeps_with_the_soft_gradient():
    model = gcn()
    a = {"channel": 0.1, "column": 0.1, "row": 0.1, "entry": 0.8}
    binary = CTF(model, 0.8, example_inputs=inputs(), lam=2.0, relative=False, budget="binary", a_init=a)
    soft = CTF(gcn(), 0.8, example_inputs=inputs(), lam=2.0, relative=False, budget="soft", a_init=a)
    for c in (binary, soft):
        c.tau = 0.3
    kept = binary.kept_fraction()
    assert kept["soft"] - kept["binary"] > 0.02  # a real soft / binary gap at this temperature
    value = binary.penalty()
    assert float(value.detach()) == pytest.approx(2.0 * (kept["binary"] - 0.2) ** 2, rel=1e-5)
    assert float(soft.penalty().detach()) == pytest.approx(2.0 * (kept["soft"] - 0.2) ** 2, rel=1e-5)
    # the gradient is the soft ψ's, scaled by the binary error: ratio of the two = ratio of the errors
    value.backward()
    soft_value = soft.penalty()
    soft_value.backward()
    g_bin = torch.stack([p.grad for p in binary.parameters()])
    g_soft = torch.stack([p.grad for p in soft.parameters()])
    ratio = (kept["binary"] - 0.2) / (kept["soft"] - 0.2)
    assert torch.allclose(g_bin, g_soft * ratio, rtol=1e-4, atol=1e-12)
    with pytest.raises(ValueError, match="budget"):
        CTF(gcn(), 0.5, example_inputs=inputs(), budget="hard")


def test_defaults_depend_on_whether_thresholds_learn():
    learn = CTF(gcn(), 0.9, example_inputs=inputs())
    assert (learn.lam, learn.relative, learn.weight_penalty, learn.budget, learn.hard) == (50.0, True, False,
                                                                                          "binary", 0.25)
    fixed = CTF(gcn(), 0.9, example_inputs=inputs(), thresholds="fixed")
    assert (fixed.lam, fixed.relative, fixed.weight_penalty) == (200.0, False, True)


def test_hard_phase_schedule_freezes_the_masks_at_the_exact_budget():
    model = gcn()
    ctf = CTF(model, 0.5, example_inputs=inputs(), tau_start=0.8, tau_end=0.01, hard=0.25)
    assert ctf.soft_epochs(8) == 6 and ctf.soft_epochs(1) == 1 and ctf.soft_epochs(3) == 3
    taus, frozen = [], []
    for epoch in range(8):
        ctf.on_epoch_start(epoch, 8)
        taus.append(ctf.tau)
        frozen.append(ctf.frozen)
    assert taus[:6] == pytest.approx([0.8 * (0.01 / 0.8) ** (e / 5) for e in range(6)], rel=1e-9)
    assert taus[6:] == pytest.approx([0.01, 0.01])
    assert frozen == [False] * 6 + [True] * 2
    n = sum(ctf._latent(k).numel() for k in ctf.names)
    kept = ctf.kept_fraction()
    assert kept["soft"] == kept["binary"] == pytest.approx(round(0.5 * n) / n, abs=1e-12)
    masks = ctf.masks()
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * n)
    assert float(ctf.penalty()) == 0.0 and ctf.extra_loss(model) is None
    for name, mask in ctf.masks_by_name.items():  # the forward uses exactly the frozen 0/1 mask
        w = ctf._latent(name)
        assert torch.equal(mask(w), w * masks[name].to(w.dtype))


class _Recorder:
    def __init__(self, ctf):
        self.ctf, self.rows = ctf, []

    def on_epoch_end(self, epoch, metrics):
        self.rows.append({"masks": {n: m.clone() for n, m in self.ctf.masks().items()},
                          "thresholds": self.ctf.thresholds()})


@pytest.fixture(scope="module")
def hard_trained():
    """attention GCN, CTF at rate 0.8 for 4 epochs, the last 2 with frozen masks (nothing shrunk by hand)."""
    torch.manual_seed(0)
    model = gcn()
    X, y = inputs(batch=24, frames=16, seed=2), torch.randint(0, 8, (24,), generator=torch.Generator().manual_seed(3))
    ctf = CTF(model, 0.8, example_inputs=X[:2], a_init={"channel": 0.3, "column": 0.3}, threshold_lr=0.5, hard=0.5)
    recorder = _Recorder(ctf)
    fit(model, (X, y), epochs=4, batch_size=8, lr=0.05, callbacks=[ctf, recorder], progress=False, seed=0)
    # a second CTF restored from the first one's state reproduces the hard phase (fit's resume path)
    clone = gcn()
    ctf_clone = CTF(clone, 0.8, example_inputs=X[:2], a_init={"channel": 0.3, "column": 0.3}, hard=0.5)
    clone.load_state_dict(model.state_dict())
    ctf_clone.load_state_dict(ctf.state_dict())
    model.eval()
    clone.eval()
    with torch.no_grad():
        before = model(X)
        restored = clone(X)
    bias_before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("value.bias")}
    plan = ctf.finalize()
    return {"model": model, "ctf": ctf, "plan": plan, "X": X, "before": before, "restored": restored,
            "recorder": recorder, "ctf_clone": ctf_clone, "bias_before": bias_before}


def test_hard_phase_keeps_masks_and_thresholds_fixed(hard_trained):
    ctf, rows = hard_trained["ctf"], hard_trained["recorder"].rows
    assert [r["frozen"] for r in ctf.history] == [False, False, True, True]
    total = ctf.report()["prunable_weights"]
    for row in ctf.history[2:]:
        assert row["binary"] == pytest.approx(round(0.2 * total) / total, abs=1e-12)
    assert all(torch.equal(rows[2]["masks"][n], rows[3]["masks"][n]) for n in ctf.names)
    assert rows[2]["thresholds"] == rows[3]["thresholds"]
    assert rows[1]["thresholds"] != rows[0]["thresholds"]  # they did learn before
    assert ctf.report()["hard_phase"] is True


def test_finalize_after_the_hard_phase_returns_the_trained_model(hard_trained):
    model, plan, X, ctf = hard_trained["model"], hard_trained["plan"], hard_trained["X"], hard_trained["ctf"]
    total = ctf.report()["prunable_weights"]
    zeros, _ = count_zeros(model, ctf.names)
    assert zeros == total - round(0.2 * total)  # exact, nothing left for finalize to fix
    units = [tuple(d) for d in plan.removed_desc if d[1] == "unit"]
    assert units  # the frozen masks closed whole output units of the graph attentions
    for layer, _, j in units:  # their biases were held at 0 during the hard phase, before finalize
        columns = ctf.masks_by_name[f"{layer}.value.weight"].columns
        assert float(hard_trained["bias_before"][f"{layer}.value.bias"][j::columns].abs().max()) == 0.0
    with torch.no_grad():
        after = model(X)
        small = prunekit.materialize(model, plan)(X)
    assert torch.allclose(after, hard_trained["before"], atol=1e-6)  # finalize changes nothing
    assert torch.allclose(small, after, atol=1e-5)
    assert torch.allclose(hard_trained["restored"], hard_trained["before"], atol=1e-6)
    clone = hard_trained["ctf_clone"]
    assert clone.frozen and clone.report()["pruned_by_masks"] == pytest.approx(
        hard_trained["ctf"].report()["pruned_by_masks"])


@pytest.fixture(scope="module")
def trained():
    """attention GCN trained 4 epochs with CTF at rate 0.9 (coarse thresholds start at 0.3), finalized; the learned
    binary masks ψ > ½ are kept from just before finalize. Nothing is shrunk or zeroed by hand."""
    torch.manual_seed(0)
    model = gcn()
    X, y = inputs(batch=24, frames=16, seed=2), torch.randint(0, 8, (24,), generator=torch.Generator().manual_seed(3))
    ctf = CTF(model, 0.9, example_inputs=X[:2], a_init={"channel": 0.3, "column": 0.3}, threshold_lr=0.5, hard=0.0)
    history = fit(model, (X, y), epochs=4, batch_size=8, lr=0.05, callbacks=[ctf], progress=False, seed=0)
    before = ctf.report()
    masks = {n: m.clone() for n, m in ctf.masks().items()}  # the learned binary masks ψ > ½, before the rank fix
    plan = ctf.finalize()
    return {"model": model, "ctf": ctf, "plan": plan, "X": X, "history": history, "before": before, "masks": masks}


def _closed_by_masks(ctf, masks) -> tuple[set, set]:
    """``(units, heads)`` of both graph attentions that binary masks close entirely: a unit is an output column of
    the value weight (rows ``k·Cc + j``), a head a block of its query, key and value weights."""
    units, heads = set(), set()
    for layer in ("blocks.0.gcn", "blocks.1.gcn"):
        view = {p: masks[f"{layer}.{p}.weight"].reshape(ctf.masks_by_name[f"{layer}.{p}.weight"].view_shape)
                for p in ("query", "key", "value")}
        value = view["value"]
        units |= {(layer, "unit", j) for j in range(value.shape[1]) if not bool(value[:, j].any())}
        heads |= {(layer, "head", h) for h in range(value.shape[0]) if not any(bool(v[h].any()) for v in view.values())}
    return units, heads


def test_fit_drives_the_masks_toward_the_budget_and_anneals_tau(trained):
    ctf, history = trained["ctf"], trained["history"]
    assert all(v is not None and v >= 0 for v in history["extra_loss"])
    assert ctf.history[-1]["tau"] == pytest.approx(ctf.tau_end)
    kept = [row["soft"] for row in ctf.history]
    assert kept[-1] < kept[0]  # the penalty prunes


def test_final_rate_equals_the_target_within_one_weight(trained):
    model, ctf = trained["model"], trained["ctf"]
    zeros, total = count_zeros(model, ctf.names)
    assert abs(zeros - round(0.9 * total)) <= 1
    assert ctf.report()["rate"] == pytest.approx(0.9, abs=1 / total)
    assert trained["plan"].meta["ctf"]["rate"] == pytest.approx(0.9, abs=1 / total)


def test_parametrizations_are_gone_after_finalize(trained):
    model = trained["model"]
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any(isinstance(m, CTFMask) for m in model.modules())
    assert type(model.blocks[0].gcn.value) is nn.Conv2d
    assert not any("parametrizations" in k for k in model.state_dict())
    assert not model._forward_pre_hooks  # the threshold-update hook is removed
    with pytest.raises(RuntimeError, match="finalized"):
        trained["ctf"].penalty()


def test_plan_removes_the_units_and_heads_the_learned_masks_closed(trained):
    plan, ctf, masks = trained["plan"], trained["ctf"], trained["masks"]
    units, heads = _closed_by_masks(ctf, masks)
    assert len(units) >= 2 and len(heads) >= 2  # closed by training alone
    rank_fix = ctf.report()["rank_fix"]
    assert rank_fix["moved"] <= 0.01 * rank_fix["prunable"] and rank_fix["revived"] == 0
    removed = {tuple(d) for d in plan.removed_desc}
    assert units | heads <= removed
    final = {n: p.detach() != 0 for n, p in trained["model"].named_parameters() if n in masks}
    assert {d for d in removed if d[1] in ("unit", "head")} == set().union(*_closed_by_masks(ctf, final))
    # the entry part holds the other zeros; nothing in it overlaps a removed structure
    params = {n: p.detach() for n, p in trained["model"].named_parameters()}
    for name, keep in plan.entry_masks.items():
        assert torch.equal(params[name] == 0, ~keep | (params[name] == 0)) and not bool(keep.all())
    layer, _, j = min(units)
    columns = ctf.masks_by_name[f"{layer}.value.weight"].columns
    value_keep = plan.entry_masks.get(f"{layer}.value.weight")
    if value_keep is not None:
        assert bool(value_keep[j::columns].all())  # the removed unit is not repeated as entry zeros
    # the removed structures' biases and BatchNorm were zeroed with them
    block = layer.rsplit(".", 1)[0]
    assert float(params[f"{layer}.value.bias"][j::columns].abs().max()) == 0.0
    assert float(params[f"{block}.bn1.weight"][j]) == 0.0


def test_masked_and_materialized_outputs_agree(trained):
    model, plan, X = trained["model"].eval(), trained["plan"], trained["X"]
    small = prunekit.materialize(model, plan)
    with torch.no_grad():
        assert torch.allclose(small(X), model(X), atol=1e-5)
        replay = prunekit.apply_masks(model, plan)
        assert torch.equal(replay(X), model(X))  # the finalized model already equals the plan's masks
    removed = [tuple(d) for d in plan.removed_desc]
    heads = sum(1 for d in removed if d[:2] == ("blocks.1.gcn", "head"))
    units = sum(1 for d in removed if d[:2] == ("blocks.0.gcn", "unit"))
    assert small.blocks[1].gcn.num_heads == 4 - heads and small.blocks[0].gcn.out_channels == 8 - units
    assert prunekit.count(small, X)["params"] < prunekit.count(model, X)["params"]


def test_report_attributes_every_pruned_entry_to_one_granularity(trained):
    before, after = trained["before"], trained["ctf"].report()
    assert sum(before["attributed"].values()) == pytest.approx(before["pruned_by_masks"], abs=1e-9)
    for g in before["granularities"]:
        assert before["attributed"][g] <= before["zeroed_by"][g] + 1e-12
    assert before["zeroed_by"]["column"] > 0 and before["zeroed_by"]["channel"] > 0
    assert set(after) >= {"rate", "rank_fix", "removed_structures", "zeroed_by", "layers"}
    assert after["removed_structures"] == len(trained["plan"].removed)
    kept = sum(v["kept"] * math.prod(v["shape"]) for v in after["layers"].values())
    assert kept / after["prunable_weights"] == pytest.approx(1 - after["rate"], abs=1e-6)


def _short_run(seed):
    model = gcn(seed=3)
    X = inputs(batch=16, frames=16, seed=5)
    y = torch.randint(0, 8, (16,), generator=torch.Generator().manual_seed(6))
    ctf = CTF(model, 0.7, example_inputs=X[:2])
    fit(model, (X, y), epochs=2, batch_size=8, lr=0.05, callbacks=[ctf], progress=False, seed=seed)
    masks = {n: m.clone() for n, m in ctf.masks().items()}
    return masks, ctf


def test_the_same_seed_gives_the_same_masks():
    first, _ = _short_run(seed=11)
    second, ctf = _short_run(seed=11)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert 0.0 < ctf.kept_fraction()["binary"] < 1.0


def test_macs_cost_hits_the_mac_budget_within_one_entry():
    model = gcn()
    x = inputs(batch=2)
    ctf = CTF(model, 0.6, example_inputs=x, cost="macs")
    for mask in ctf.masks_by_name.values():
        set_threshold(mask, "entry", 0.8)
    ctf.tau = 0.05
    ctf.finalize()
    params = dict(model.named_parameters())
    kept = sum(ctf.costs[n] * int((params[n] != 0).sum()) for n in ctf.names)
    assert abs(kept - 0.4 * ctf.total_cost) <= max(ctf.costs.values())
    assert ctf.report()["rate"] == pytest.approx(0.6, abs=max(ctf.costs.values()) / ctf.total_cost)


def test_stgcn_subsets_are_blocks_and_materialize_agrees():
    torch.manual_seed(0)
    model = prunekit.models.create("stgcn", graph="sbu", channels=(8, 8))
    x = inputs(batch=2)
    ctf = CTF(model, 0.8, example_inputs=x)
    assert ctf.masks_by_name["blocks.0.gcn.conv.weight"].blocks == 3  # K adjacency subsets
    assert ctf.masks_by_name["blocks.0.gcn.conv.weight"].columns == 8
    assert ctf.classifier == "fc" and "fc.weight" not in ctf.names
    with torch.no_grad():  # output unit 3 of block 1: rows {3, 11, 19}
        model.blocks[1].gcn.conv.parametrizations["weight"].original[3::8] *= 0.01
    for mask in ctf.masks_by_name.values():
        set_threshold(mask, "column", 0.3)
        set_threshold(mask, "entry", 0.5)
    ctf.tau = 0.02
    plan = ctf.finalize()
    assert ("blocks.1.gcn", "unit", 3) in {tuple(d) for d in plan.removed_desc}
    model.eval()
    small = prunekit.materialize(model, plan)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)


def test_fixed_thresholds_are_not_trained_and_model_can_be_copied():
    model = gcn()
    ctf = CTF(model, 0.5, example_inputs=inputs(), thresholds="fixed")
    assert ctf.parameters() == []
    assert all(float(m.threshold("entry")) == pytest.approx(0.5, rel=1e-5) for m in ctf.masks_by_name.values())
    assert not any(m.a_entry.requires_grad for m in ctf.masks_by_name.values())
    x = inputs()
    model(x).sum().backward()  # caches Σψ with a graph; a deep copy must still work
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


@pytest.mark.parametrize("arch", ["resnet", "mlp"])
@pytest.mark.parametrize("rate", [0.5, 0.95])
def test_masks_reach_the_rate_before_they_freeze_on_untuned_architectures(arch, rate):
    # fit with the CTF callback and its defaults (the last quarter with frozen masks): when the masks
    # freeze, their own binary state ψ > ½ must already keep the budget, so the rank fix moves ≤ 1 %
    torch.set_num_threads(1)
    model, shape = untuned(arch)
    X, y = templates(shape)
    fit(model, (X, y), epochs=2, batch_size=32, lr=0.05, progress=False, seed=0)  # a dense start
    ctf = CTF(model, rate, example_inputs=X[:2])
    kept_at_freeze = []

    class Probe:
        def on_epoch_end(self, epoch, metrics):
            if not ctf.frozen:
                kept_at_freeze.append(ctf.kept_fraction()["binary"])

    fit(model, (X, y), epochs=8, batch_size=32, lr=0.05, progress=False, seed=0, callbacks=[ctf, Probe()])
    assert ctf.frozen and len(kept_at_freeze) == ctf.soft_epochs(8) == 6
    assert kept_at_freeze[-1] == pytest.approx(1 - rate, abs=0.01)
    plan = ctf.finalize()
    report = ctf.report()
    rank_fix = report["rank_fix"]
    assert set(rank_fix) == {"moved", "prunable", "dropped", "revived"}
    assert rank_fix["prunable"] == report["prunable_weights"]
    assert rank_fix["moved"] == rank_fix["dropped"] + rank_fix["revived"]
    assert rank_fix["moved"] <= 0.01 * rank_fix["prunable"], rank_fix
    assert report["rate"] == pytest.approx(rate, abs=1 / rank_fix["prunable"])
    # moved is measured against what the trained model ends with: the frozen masks are the final zeros
    zeros, total = count_zeros(model, ctf.names)
    assert total == rank_fix["prunable"] and zeros == total - round((1 - rate) * total)
    assert plan.meta["ctf"]["rank_fix"] == rank_fix


def test_masks_reach_the_rate_in_a_custom_loop():
    # a user's own loop: step() each epoch (τ, budget ramp, freeze) and penalty() on every batch
    torch.set_num_threads(1)
    model, shape = untuned("mlp")
    X, y = templates(shape)
    ctf = CTF(model, 0.95, example_inputs=X[:2])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    kept = None
    for epoch in range(8):
        ctf.step(epoch, 8)
        if not ctf.frozen:
            for i in range(0, len(X), 32):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32]) + ctf.penalty()
                loss.backward()
                opt.step()
            kept = ctf.kept_fraction()["binary"]
    assert kept == pytest.approx(0.05, abs=0.01)
    ctf.finalize()
    rank_fix = ctf.report()["rank_fix"]
    assert rank_fix["moved"] <= 0.01 * rank_fix["prunable"], rank_fix


def test_without_the_controller_the_masks_stall_above_a_high_rate():
    # the diagnosis of issue 11, kept as a regression reference: the Adam step annealed with τ / τ_start
    # alone leaves the masks far above the target, and the rank fix decides the pruning
    torch.set_num_threads(1)
    model, shape = untuned("mlp")
    X, y = templates(shape)
    ctf = CTF(model, 0.95, example_inputs=X[:2], threshold_control=False, settle=0.0)
    fit(model, (X, y), epochs=8, batch_size=32, lr=0.05, progress=False, seed=0, callbacks=[ctf])
    ctf.finalize()
    rank_fix = ctf.report()["rank_fix"]
    assert rank_fix["moved"] > 0.05 * rank_fix["prunable"]


def test_controller_shifts_only_the_finest_thresholds_toward_the_target():
    model = gcn()
    ctf = CTF(model, 0.8, example_inputs=inputs())
    assert ctf.threshold_control and ctf.settle == 0.5
    ctf.tau = 0.2
    before = {k: float(getattr(o, b).detach()) for k, (o, b) in ctf._threshold_buffers().items()}
    ctf.penalty()  # measures the binary kept fraction (≈ 1 at a_init = 0.05) against the target 0.2
    for p in ctf.parameters():
        p.grad = None  # no Adam step: the controller alone
    kept = ctf.kept_fraction()["soft"]
    ctf._update_thresholds()
    after = {k: float(getattr(o, b).detach()) for k, (o, b) in ctf._threshold_buffers().items()}
    moved = {k for k in before if after[k] != before[k]}
    assert moved == {k for k in before if k.endswith("a_entry")}
    shift = {after[k] - before[k] for k in moved}
    assert len(shift) == 1 and 0 < shift.pop() <= 0.25 + 1e-6  # one common shift, clipped
    assert ctf.kept_fraction()["soft"] < kept
    with pytest.raises(ValueError, match="learnable"):
        CTF(gcn(), 0.5, example_inputs=inputs(), thresholds="fixed", threshold_control=True)


def _bottleneck_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("hard", [0.25, 0.0])
def test_masks_that_cut_every_path_are_reported_not_returned_silently(hard):
    # the first layer (8 of 40 masked weights) closed entirely: the output no longer depends on the input
    x = torch.randn(6, 4)
    ctf = CTF(_bottleneck_mlp(), 0.5, example_inputs=x, hard=hard)
    set_threshold(ctf.masks_by_name["0.weight"], "entry", 100.0)
    ctf.tau = 0.01
    with pytest.warns(UserWarning, match=r"output the same for every example.*empty: \['0.weight'\]"):
        if hard:
            ctf.freeze()
        plan = ctf.finalize()
    assert ctf.report()["output_constant"] is True and plan.meta["ctf"]["rate"] == pytest.approx(0.5)
    out = ctf.model(x)
    assert torch.equal(out, out[:1].expand_as(out))  # what the warning says: one output for every input


def test_masks_that_keep_a_path_raise_no_warning():
    import warnings

    x = torch.randn(6, 4)
    ctf = CTF(_bottleneck_mlp(), 0.5, example_inputs=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctf.freeze()
        ctf.finalize()
    assert ctf.report()["output_constant"] is False
    out = ctf.model(x)
    assert not torch.allclose(out, out[:1].expand_as(out))


def test_output_check_cannot_tell_from_identical_examples():
    from prunekit.ctf.common import output_is_constant
    model = _bottleneck_mlp()
    assert output_is_constant(model, torch.ones(3, 4)) is None
    assert output_is_constant(model, torch.randn(1, 4)) is None
    assert output_is_constant(model.train(), torch.randn(2, 4)) is False and model.training


def test_a_dead_network_is_reported_once_when_the_hard_phase_froze_it():
    import warnings

    x = torch.randn(6, 4)
    ctf = CTF(_bottleneck_mlp(), 0.5, example_inputs=x)
    set_threshold(ctf.masks_by_name["0.weight"], "entry", 100.0)
    ctf.tau = 0.01
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctf.freeze()
        ctf.finalize()
    assert sum("no path from the input" in str(w.message) for w in caught) == 1
    assert ctf.report()["output_constant"] is True
