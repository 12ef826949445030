"""PrunedMultiheadAttention: equal to nn.MultiheadAttention when nothing is pruned (every option), and
``nn.MultiheadAttention`` blocks / torch transformers pruned exactly (heads, head dims, embed width)."""
from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.materialize import output_error
from prunekit.core.pruned_attention import PrunedMultiheadAttention
from prunekit.core.structures import FrozenWarning

from tests.conformance.test_conformance import FRACTIONS, TOLERANCE, _Main, _random_plan, _run

E, H, N, L, S = 16, 4, 2, 5, 7


def _same(mha: nn.MultiheadAttention) -> PrunedMultiheadAttention:
    return PrunedMultiheadAttention.replacing(copy.deepcopy(mha))


def _close(a, b, atol=1e-10):
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=0, equal_nan=True)


def _inputs(batch_first: bool, kdim: int, vdim: int, batched: bool = True):
    def make(seq, width):
        if not batched:
            return torch.randn(seq, width, dtype=torch.double)
        return torch.randn((N, seq, width) if batch_first else (seq, N, width), dtype=torch.double)
    return make(L, E), make(S, kdim), make(S, vdim)


def _masks(kind: str, batched: bool = True):
    """(key_padding_mask, attn_mask, is_causal) of one kind."""
    kpm = torch.zeros((N, S) if batched else (S,), dtype=torch.bool)
    kpm[..., -2:] = True
    if kind == "none":
        return None, None, False
    if kind == "kpm_bool":
        return kpm, None, False
    if kind == "kpm_float":
        return torch.zeros(kpm.shape, dtype=torch.double).masked_fill(kpm, -1e9), None, False
    if kind == "attn2d_bool":
        return None, torch.ones(L, S, dtype=torch.bool).triu(1), False
    if kind == "attn3d_float":
        return None, torch.randn((N if batched else 1) * H, L, S, dtype=torch.double), False
    if kind == "both":
        return kpm, torch.ones(L, S, dtype=torch.bool).triu(1), False
    if kind == "causal":
        return None, torch.ones(L, S, dtype=torch.bool).triu(1), True
    raise ValueError(kind)


MASKS = ("none", "kpm_bool", "kpm_float", "attn2d_bool", "attn3d_float", "both", "causal")


@pytest.mark.parametrize("batch_first,dims,bias", [(True, None, True), (False, None, True), (True, (6, 10), True),
                                                    (False, (6, 10), False)])
def test_equals_multihead_attention_when_nothing_is_pruned(batch_first, dims, bias):
    torch.manual_seed(0)
    kdim, vdim = dims or (E, E)
    mha = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first).double().eval()
    if bias:
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    same = _same(mha)
    assert (same.embed_dim, same.kdim, same.vdim, same.num_heads, same.qk_head_dim) == (E, kdim, vdim, H, E // H)
    for kind, need, average, batched in itertools.product(MASKS, (True, False), (True, False), (True, False)):
        q, k, v = _inputs(batch_first, kdim, vdim, batched)
        kpm, mask, causal = _masks(kind, batched)
        kwargs = dict(key_padding_mask=kpm, need_weights=need, attn_mask=mask, average_attn_weights=average,
                      is_causal=causal)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mismatched mask dtypes (deprecated, as for nn.MultiheadAttention)
            want, got = mha(q, k, v, **kwargs), same(q, k, v, **kwargs)
        label = f"{kind} need_weights={need} average={average} batched={batched}"
        assert _close(want[0], got[0]), label
        assert _close(want[1], got[1]), label


def test_self_attention_input_and_grad_mode():
    """The packed self-attention path (query is key is value), in training mode without dropout, with grad."""
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(E, H, batch_first=True).double()
    same = _same(mha)
    x = torch.randn(N, L, E, dtype=torch.double, requires_grad=True)
    a, b = mha(x, x, x, need_weights=False)[0], same(x, x, x, need_weights=False)[0]
    assert _close(a, b)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    assert _close(ga, gb)


def test_dropout_applies_in_training_only():
    torch.manual_seed(2)
    small = PrunedMultiheadAttention(E, 2, qk_head_dim=3, v_head_dim=5, dropout=0.5, batch_first=True)
    x = torch.randn(N, L, E)
    eval_out = small.eval()(x, x, x)
    assert _close(eval_out[0], small(x, x, x)[0], atol=0)
    small.train()
    for need in (True, False):
        out, weights = small(x, x, x, need_weights=need, average_attn_weights=False)
        assert out.shape == (N, L, E) and not torch.allclose(out, eval_out[0])
        if need:
            assert weights.shape == (N, 2, L, L) and (weights == 0).any()


def test_transformer_layers_run_their_slow_path_with_it():
    """nn.TransformerEncoderLayer / Encoder / DecoderLayer read self_attn's attributes (fast-path checks)."""
    torch.manual_seed(3)
    enc_layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.1, batch_first=True)
    encoder = nn.TransformerEncoder(enc_layer, 2, enable_nested_tensor=True).eval()
    decoder = nn.TransformerDecoderLayer(E, H, 32, dropout=0.1).eval()
    x, mem = torch.randn(N, L, E), torch.randn(S, N, E)
    pad = torch.zeros(N, L, dtype=torch.bool)
    with torch.no_grad():
        want = (encoder(x), decoder(x.transpose(0, 1), mem))
        for layer in list(encoder.layers) + [decoder]:
            for attr in ("self_attn", "multihead_attn"):
                if hasattr(layer, attr):
                    setattr(layer, attr, _same(getattr(layer, attr)))
        encoder.use_nested_tensor = False  # as materialize does: the nested fast path needs the packed module
        got = (encoder(x), decoder(x.transpose(0, 1), mem))
        encoder(x, src_key_padding_mask=pad)  # runs
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(want, got))


# ------------------------------------------------------------------------------------- pruning


class SelfBlock(nn.Module):
    """Post-norm block, sequence-first nn.MultiheadAttention, key padding and a causal float mask."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 32)
        self.attn = nn.MultiheadAttention(32, 4)
        self.norm = nn.LayerNorm(32)
        self.ffn = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 32))
        self.out = nn.Linear(32, 3)

    def forward(self, x, pad):
        h = self.inp(x).transpose(0, 1)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
        a, _ = self.attn(h, h, h, key_padding_mask=pad, attn_mask=mask, need_weights=False)
        h = self.norm(h + a)
        return self.out(h + self.ffn(h)).mean(0)


class CrossBlock(nn.Module):
    """Cross-attention with kdim/vdim (separate q/k/v weights), no bias, per-head weights computed."""

    def __init__(self):
        super().__init__()
        self.q_in, self.k_in, self.v_in = nn.Linear(6, 24), nn.Linear(5, 12), nn.Linear(5, 20)
        self.attn = nn.MultiheadAttention(24, 3, bias=False, kdim=12, vdim=20, batch_first=True)
        self.out = nn.Linear(24, 2)

    def forward(self, x, memory):
        a, w = self.attn(self.q_in(x), self.k_in(memory), self.v_in(memory), need_weights=True,
                         average_attn_weights=False)
        return self.out(torch.relu(a)).sum(1)


class Encoder(nn.Module):
    """nn.TransformerEncoder (pre-norm, batch-first) with a padding mask, and a TransformerDecoderLayer."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 48, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoderLayer(32, 4, 40, dropout=0.1, batch_first=True)
        self.out = nn.Linear(32, 3)

    def forward(self, x, pad):
        h = self.inp(x)
        memory = self.encoder(h, src_key_padding_mask=pad)
        return self.out(self.decoder(h, memory, memory_key_padding_mask=pad)[:, 0])


def _case(name):
    torch.manual_seed(0)
    x = torch.randn(N, 7, 6)
    pad = torch.zeros(N, 7, dtype=torch.bool)
    pad[1, -2:] = True
    if name == "self":
        return SelfBlock().eval(), (x, pad)
    if name == "cross":
        return CrossBlock().eval(), (x, torch.randn(N, 9, 5))
    return Encoder().eval(), (x, pad)


def _structures(model, inputs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrozenWarning)
        return prunekit.find_structures(model, inputs, **kw)


def _attention_params(model, prefix):
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


@pytest.mark.parametrize("name", ["self", "cross", "encoder"])
def test_random_plans_prune_attention_exactly(name):
    model, inputs = _case(name)
    structures = _structures(model, inputs)
    mha_names = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    heads = [s for s in structures if s.kind == "head" and s.layer in mha_names]
    assert len(heads) == (3 if name == "cross" else 4) * len(mha_names)
    touched = {n for s in structures for n, _, _ in s.slices + s.consumers}
    for m in mha_names:  # every attention parameter is prunable now
        assert _attention_params(model, m + ".") <= touched, m
    assert structures.frozen["share"] < 0.02
    dense = prunekit.count(model, inputs)
    for k, fraction in enumerate(FRACTIONS):
        plan = _random_plan(structures, fraction, seed=k)
        masked = prunekit.apply_masks(model, plan, structures)
        small = prunekit.materialize(model, plan, structures, example_inputs=inputs)
        assert output_error(_run(masked, inputs), _run(small, inputs)) <= TOLERANCE, fraction
        counted = prunekit.count(small, inputs)
        assert counted["params"] == plan.remaining["params"] < dense["params"]
        assert counted["macs"] == plan.remaining["macs"] < dense["macs"]
        assert not any(isinstance(m, nn.MultiheadAttention) for m in small.modules())
        if fraction == 0.5:
            torch.export.export(_Main(small).eval(), inputs, strict=False)


def test_rows_per_block_come_from_the_plan():
    """q/k head dims and v head dims are separate structures: the q, k and v blocks keep different counts."""
    model, inputs = _case("self")
    structures = _structures(model, inputs)
    rows = lambda s: next(i for n, d, i in s.slices if n == "attn.in_proj_weight")
    heads = [s.id for s in structures if s.layer == "attn" and s.kind == "head"]
    qk = [s.id for s in structures if s.layer == "attn" and s.kind != "head" and max(rows(s)) < 64]
    v = [s.id for s in structures if s.layer == "attn" and s.kind != "head" and min(rows(s)) >= 64]
    assert (len(heads), len(qk), len(v)) == (4, 8, 8)
    plan = prunekit.PruningPlan.from_removed(structures, heads[:1] + qk[:3] + v[:1])
    small = prunekit.materialize(model, plan, structures, example_inputs=inputs)
    attn = small.attn
    assert isinstance(attn, PrunedMultiheadAttention)
    assert (attn.num_heads, attn.qk_head_dim, attn.v_head_dim) == (3, 5, 7)
    assert attn.scale == pytest.approx(8 ** -0.5)  # the unpruned head_dim's
    assert output_error(_run(prunekit.apply_masks(model, plan, structures), inputs), _run(small, inputs)) <= TOLERANCE


@pytest.mark.parametrize("removed", ["heads", "head dims"])
def test_pruned_model_is_pruned_again_exactly(removed):
    model, inputs = _case("self")
    structures = _structures(model, inputs)
    pick = [s.id for s in structures if s.layer == "attn" and (s.kind == "head") == (removed == "heads")]
    plan = prunekit.PruningPlan.from_removed(structures, pick[:1] + pick[-1:])
    small = prunekit.materialize(model, plan, structures, example_inputs=inputs)
    again = _structures(small, inputs)
    assert any(s.layer == "attn.q_proj" for s in again)
    if small.attn.qk_head_dim == small.attn.v_head_dim:  # (else the math path's _safe_softmax has no rule yet)
        assert any(s.kind == "head" and s.layer == "attn.q_proj" for s in again)
    plan2 = _random_plan(again, 0.5, seed=3)
    smaller = prunekit.materialize(small, plan2, again, example_inputs=inputs)
    assert output_error(_run(prunekit.apply_masks(small, plan2, again), inputs), _run(smaller, inputs)) <= TOLERANCE
    assert prunekit.count(smaller, inputs)["params"] == plan2.remaining["params"]


def test_need_weights_averaged_freezes_heads_only():
    class Averaged(SelfBlock):
        def forward(self, x, pad):
            h = self.inp(x).transpose(0, 1)
            a, w = self.attn(h, h, h, key_padding_mask=pad)  # need_weights=True, averaged over heads
            return self.out(self.norm(h + a)).mean(0) + w.sum()

    model, inputs = Averaged().eval(), _case("self")[1]
    structures = _structures(model, inputs)
    assert not any(s.kind == "head" for s in structures)
    assert any(s.layer == "attn" for s in structures)  # head dims and the embed width stay prunable
    plan = _random_plan(structures, 0.5, seed=0)
    small = prunekit.materialize(model, plan, structures, example_inputs=inputs)
    assert output_error(_run(prunekit.apply_masks(model, plan, structures), inputs), _run(small, inputs)) <= TOLERANCE


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn", "ignore"])
def test_unsupported_or_ignored_attention_stays_opaque(option):
    model, inputs = _case("self")
    if option != "ignore":
        model.attn = nn.MultiheadAttention(32, 4, **{option: True}).eval()
    structures = _structures(model, inputs, ignore=["attn"] if option == "ignore" else ())
    touched = {n for s in structures for n, _, _ in s.slices + s.consumers}
    assert not touched & _attention_params(model, "attn.")
    assert len(structures) > 0
    if option != "ignore":
        assert ("MultiheadAttention", "attn") in structures.frozen["unknown"]
    plan = _random_plan(structures, 0.5, seed=0)
    small = prunekit.materialize(model, plan, structures, example_inputs=inputs)
    assert isinstance(small.attn, nn.MultiheadAttention)
