"""Tests of prunekit.core.measure: every MAC figure is written out by hand from the op's shapes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit.core.measure import MAC_FORMULAS, compare, count, count_params, measure_latency, peak_memory, with_batch
from prunekit.models.layers import GraphConv, MultiHeadGraphAttention


class Fn(nn.Module):
    """Wraps a function so that it can be counted like a model."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def adjacency(k: int = 3, v: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    a = (torch.rand(k, v, v) > 0.5).float()
    return a / a.sum(-1, keepdim=True).clamp(min=1)


def macs(model, inputs) -> int:
    return count(model, inputs)["macs"]


def flop_counter_macs(model, inputs) -> int:
    """MACs according to torch.utils.flop_counter.FlopCounterMode (which reports 2·MACs)."""
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    return fc.get_total_flops() // 2


# ---------------------------------------------------------------- modules and ops by hand


def test_linear_2d_and_3d_inputs():
    lin = nn.Linear(7, 5)
    assert macs(lin, torch.randn(3, 7)) == 3 * 7 * 5
    assert macs(lin, torch.randn(2, 3, 7)) == 2 * 3 * 7 * 5
    assert macs(nn.Linear(7, 5, bias=False), torch.randn(7)) == 7 * 5  # unbatched
    stats = count(lin, torch.randn(3, 7))
    assert stats["params"] == 7 * 5 + 5 and stats["flops"] == 2 * stats["macs"]


@pytest.mark.parametrize(
    "conv, shape, expected",
    [
        # stride 2, padding 1: out = floor((9 + 2 - 3) / 2) + 1 = 5 → N·Ho·Wo·Cout·Cin·k²
        (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 9, 9), 2 * 5 * 5 * 6 * 4 * 9),
        # groups=2: each output channel sees Cin/groups = 2 inputs
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), (1, 4, 8, 8), 8 * 8 * 6 * 2 * 9),
        # depthwise: one input channel per output channel
        (nn.Conv2d(4, 4, 3, padding=1, groups=4), (1, 4, 8, 8), 8 * 8 * 4 * 1 * 9),
        # dilation 2, no padding: out = 10 - 2·(3 - 1) = 6
        (nn.Conv2d(3, 5, 3, dilation=2), (1, 3, 10, 10), 6 * 6 * 5 * 3 * 9),
        # 1×1 and 1-D
        (nn.Conv2d(3, 8, 1), (2, 3, 4, 4), 2 * 16 * 8 * 3),
        (nn.Conv1d(3, 8, 5, padding=2), (2, 3, 20), 2 * 20 * 8 * 3 * 5),
        # transposed, stride 2, groups 2: every *input* position scatters Cout/groups·k² MACs
        # per input channel: N·Hi·Wi·Cin·(Cout/groups)·k²
        (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), (1, 4, 5, 5), 5 * 5 * 4 * 3 * 9),
    ],
)
def test_convolutions(conv, shape, expected):
    x = torch.randn(*shape)
    assert macs(conv, x) == expected
    assert count(conv, x)["by_op"] == {"convolution": expected}


def test_conv_transposed_output_is_what_the_formula_assumes():
    y = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)(torch.randn(1, 4, 5, 5))
    assert y.shape == (1, 6, 11, 11)  # (5-1)·2 + 3


def test_matrix_products():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert macs(Fn(torch.bmm), (a, b)) == 2 * 3 * 4 * 5
    assert macs(Fn(lambda c, a, b: torch.baddbmm(c, a, b)), (torch.randn(2, 3, 5), a, b)) == 2 * 3 * 4 * 5
    assert macs(Fn(torch.mm), (torch.randn(3, 4), torch.randn(4, 6))) == 3 * 4 * 6
    assert macs(Fn(torch.addmm), (torch.randn(6), torch.randn(3, 4), torch.randn(4, 6))) == 3 * 4 * 6
    # broadcast matmul [2,3,4,5] @ [5,6]
    assert macs(Fn(torch.matmul), (torch.randn(2, 3, 4, 5), torch.randn(5, 6))) == 2 * 3 * 4 * 5 * 6
    assert macs(Fn(torch.matmul), (torch.randn(3, 4), torch.randn(4))) == 3 * 4  # mv
    assert macs(Fn(torch.matmul), (torch.randn(4), torch.randn(4))) == 4  # dot


def test_einsum_counted_once():
    x, w = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    stats = count(Fn(lambda x, w: torch.einsum("bij,bjk->bik", x, w)), (x, w))
    assert stats["macs"] == 2 * 3 * 4 * 5
    assert stats["by_op"] == {"bmm": 2 * 3 * 4 * 5}  # the einsum decomposes into one bmm, counted once
    # the graph convolution's aggregation on its own: N·C·T·W·(K·V)
    n, k, c, t, v = 2, 3, 4, 6, 5
    y, a = torch.randn(n, k, c, t, v), torch.randn(k, v, v)
    assert macs(Fn(lambda y, a: torch.einsum("nkctv,kvw->nctw", y, a)), (y, a)) == n * k * c * t * v * v


def test_graph_conv_by_hand():
    n, cin, c, t, k, v = 2, 3, 8, 10, 3, 5
    model = nn.Sequential()
    model.add_module("gc", GraphConv(cin, c, adjacency(k, v)))
    stats = count(model, torch.randn(n, cin, t, v))
    conv = n * t * v * cin * k * c  # 1×1 conv to K·C channels
    aggregate = n * k * c * t * v * v  # einsum 'nkctv,kvw->nctw'
    assert stats["macs"] == conv + aggregate
    assert stats["by_module"] == {"gc.conv": conv, "gc": aggregate}
    assert stats["batch_size"] == n and stats["macs_per_sample"] == (conv + aggregate) / n
    # conv weight + bias + edge importance (the adjacency is a buffer)
    assert stats["params"] == cin * k * c + k * c + k * v * v


def test_multi_head_graph_attention_by_hand():
    n, cin, c, t, v, h, d = 2, 3, 4, 6, 5, 2, 8
    layer = MultiHeadGraphAttention(cin, c, adjacency(3, v), num_heads=h, key_dim=d)
    stats = count(layer, torch.randn(n, cin, t, v))
    value = n * t * v * cin * h * c  # value: 1×1 conv to H·C channels over every frame
    query = n * 1 * v * cin * h * d  # query: 1×1 conv on the time-pooled input (T = 1)
    key = n * 1 * v * cin * h * d  # key: same
    logits = n * h * v * v * d  # einsum 'nhdv,nhdw->nhvw'
    aggregate = n * c * t * v * h * v  # einsum 'nhctv,nhvw->nctw' (contracts h and v)
    # the /√d scaling, softmax and + B_h are element-wise: 0 MACs
    assert stats["macs"] == value + query + key + logits + aggregate
    assert stats["by_module"] == {"value": value, "query": query, "key": key, "": logits + aggregate}
    assert stats["params"] == 2 * (cin * h * d + h * d) + cin * h * c + h * c + h * v * v


def test_scaled_dot_product_attention():
    b, h, L, S, e, ev = 2, 3, 5, 6, 4, 7
    q, k, v = torch.randn(b, h, L, e), torch.randn(b, h, S, e), torch.randn(b, h, S, ev)
    expected = b * h * L * S * e + b * h * L * S * ev  # Q·Kᵀ, then softmax(·)·V
    assert macs(Fn(F.scaled_dot_product_attention), (q, k, v)) == expected  # math path (E ≠ Ev)
    v4 = torch.randn(b, h, S, e)  # E = Ev: fused CPU flash kernel
    stats = count(Fn(F.scaled_dot_product_attention), (q, k, v4))
    assert stats["macs"] == 2 * b * h * L * S * e
    assert list(stats["by_op"]) == ["_scaled_dot_product_flash_attention_for_cpu"]
    mask = torch.zeros(L, S, dtype=torch.bool).tril()
    assert macs(Fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), (q, k, v)) == expected
    # grouped-query attention: 6 query heads share 3 key/value heads, cost by query heads
    q6 = torch.randn(b, 2 * h, L, e)
    assert macs(Fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)), (q6, k, v)) == 2 * expected


def test_fused_attention_kernel_formula():
    b, h, L, S, e = 2, 3, 5, 6, 4
    q, k, v = torch.randn(b, h, L, e), torch.randn(b, h, S, e), torch.randn(b, h, S, e)
    fused = Fn(lambda q, k, v: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0])
    stats = count(fused, (q, k, v))
    assert stats["macs"] == 2 * b * h * L * S * e
    assert stats["by_op"] == {"_scaled_dot_product_flash_attention_for_cpu": 2 * b * h * L * S * e}


def test_multihead_attention_fast_path_is_counted_and_restored():
    bsz, L, E = 2, 5, 8
    mha = nn.MultiheadAttention(E, 2, batch_first=True)
    x = torch.randn(bsz, L, E)
    in_proj, attention, out_proj = 3 * bsz * L * E * E, 2 * bsz * L * L * E, bsz * L * E * E
    assert macs(mha, (x, x, x)) == in_proj + attention + out_proj
    assert torch.backends.mha.get_fastpath_enabled()
    layer = nn.TransformerEncoderLayer(E, 2, 16, batch_first=True)
    ffn = 2 * bsz * L * E * 16
    assert macs(layer, x) == in_proj + attention + out_proj + ffn


def test_lstm_counted_step_by_step():
    bsz, t, i, hid = 2, 5, 4, 6
    lstm = nn.LSTM(i, hid, batch_first=True)
    # input projection of all steps + one recurrent [B,H]@[H,4H] per step
    assert macs(lstm, torch.randn(bsz, t, i)) == bsz * t * i * 4 * hid + t * bsz * hid * 4 * hid


def test_uncounted_matrix_op_is_named_in_a_warning():
    e, heads = 8, 2
    mha = nn.MultiheadAttention(e, heads, batch_first=True).eval()
    fused = Fn(lambda x: torch.ops.aten._native_multi_head_attention(
        x, x, x, e, heads, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias,
        need_weights=False)[0])
    with pytest.warns(UserWarning, match="_native_multi_head_attention"):
        stats = count(fused, torch.randn(2, 5, e))
    assert "aten._native_multi_head_attention" in stats["uncounted_ops"]
    assert torch.ops.aten._native_multi_head_attention not in MAC_FORMULAS


# ---------------------------------------------------------------- params, inputs, modes


def test_shared_parameter_counted_once():
    lin = nn.Linear(4, 4, bias=False)
    assert count_params(nn.Sequential(lin, nn.ReLU(), lin)) == 16

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.head = nn.Linear(6, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.embed(ids))

    stats = count(Tied(), torch.tensor([[1, 2, 3]]))
    assert stats["params"] == 60
    assert stats["macs"] == 3 * 6 * 10  # the embedding lookup is not a product


def test_trainable_params():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    stats = count(model, torch.randn(1, 4))
    assert stats["params"] == 15 + 8 and stats["trainable_params"] == 3 + 8


def test_input_forms_tensor_tuple_dict():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x, y):
            return self.lin(x) @ y

    x, y = torch.randn(2, 4), torch.randn(3, 5)
    expected = 2 * 4 * 3 + 2 * 3 * 5
    assert macs(Two(), (x, y)) == expected
    assert macs(Two(), {"x": x, "y": y}) == expected
    assert macs(nn.Linear(4, 3), x) == 2 * 4 * 3


def test_training_flags_restored():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model stays frozen
    seen = []
    model[2].register_forward_hook(lambda m, i, o: seen.append(m.training))
    count(model, torch.randn(3, 4))
    assert seen == [False]  # counted in eval mode
    assert [m.training for m in model.modules()] == [True, True, False, True]
    assert torch.is_grad_enabled()


def test_flop_counter_mode_agrees_where_it_is_right_and_misses_the_rest():
    """What torch.utils.flop_counter.FlopCounterMode gets right (2·MACs) and wrong (0)."""
    a = adjacency(3, 5)
    right = [
        (nn.Linear(7, 5), torch.randn(3, 7)),
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), torch.randn(1, 4, 8, 8)),
        (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), torch.randn(1, 4, 5, 5)),
        (Fn(torch.bmm), (torch.randn(2, 3, 4), torch.randn(2, 4, 5))),
        # E ≠ Ev: the CPU dispatcher picks the math path, two bmm
        (Fn(F.scaled_dot_product_attention), (torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 7))),
        (GraphConv(3, 8, a), torch.randn(2, 3, 6, 5)),
        (MultiHeadGraphAttention(3, 8, a), torch.randn(2, 3, 6, 5)),
    ]
    for model, x in right:
        assert flop_counter_macs(model, x) == macs(model, x) > 0
    x = torch.randn(2, 5, 8)
    wrong = [
        (Fn(torch.matmul), (torch.randn(3, 4), torch.randn(4))),  # aten.mv has no formula
        (Fn(torch.matmul), (torch.randn(4), torch.randn(4))),  # aten.dot has no formula
        (nn.MultiheadAttention(8, 2, batch_first=True), (x, x, x)),  # eval+no_grad fast path
        (nn.LSTM(4, 6, batch_first=True), torch.randn(2, 5, 4)),  # fused oneDNN RNN kernel
        # E = Ev: the CPU flash kernel, aten._scaled_dot_product_flash_attention_for_cpu, has no formula
        (Fn(F.scaled_dot_product_attention), (torch.randn(2, 3, 5, 4),) * 3),
    ]
    for model, x in wrong:
        assert flop_counter_macs(model, x) == 0 < macs(model, x)


def test_torch_pruning_counter_misses_graph_aggregation():
    tp = pytest.importorskip("torch_pruning")
    cin, c, t, k, v = 3, 8, 10, 3, 5
    gc = GraphConv(cin, c, adjacency(k, v))
    x = torch.randn(1, cin, t, v)
    theirs, their_params = tp.utils.count_ops_and_params(gc, x)
    ours = count(gc, x)
    conv = t * v * cin * k * c
    aggregate = k * c * t * v * v
    # Torch-Pruning hooks modules only: the 1×1 conv (+ its bias adds), the einsum counts 0
    # (it reports per-sample figures; batch 1 here, so ours are per sample too)
    assert theirs == conv + k * c * t * v
    assert ours["macs"] == conv + aggregate
    assert theirs < ours["macs"]
    assert their_params == ours["params"]


# ---------------------------------------------------------------- latency and memory


def test_with_batch_slices_and_repeats():
    x = torch.arange(6).view(3, 2)
    assert with_batch(x, 2).tolist() == [[0, 1], [2, 3]]
    assert with_batch(x, 5)[:, 0].tolist() == [0, 2, 4, 0, 2]
    a = torch.ones(4, 4)  # not batched: passes unchanged
    out = with_batch({"x": x, "a": a, "flag": True}, 7)
    assert out["x"].shape == (7, 2) and out["a"] is a and out["flag"] is True


def test_latency_keys_sweep_and_threads_restored():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model.train()
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    threads_before = torch.get_num_threads()
    lat = measure_latency(model, torch.randn(4, 8), batch_sizes=[1, 3, 8], warmup=2, repeats=4, threads=2)
    assert torch.get_num_threads() == threads_before
    assert lat["threads"] == 2 and lat["device"] == "cpu" and lat["torch"] == torch.__version__
    assert lat["warmup"] == 2 and lat["repeats"] == 4
    assert seen == [1] * 6 + [3] * 6 + [8] * 6  # warm-up + timed passes per batch size
    assert sorted(lat["batches"]) == [1, 3, 8]
    for b, r in lat["batches"].items():
        assert r["batch_size"] == b and len(r["times_ms"]) == 4
        for key in ("median_ms", "mean_ms", "p10_ms", "p90_ms", "min_ms", "max_ms", "throughput"):
            assert r[key] > 0, key
        assert r["std_ms"] >= 0 and r["iqr_ms"] >= 0
        assert r["min_ms"] <= r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["max_ms"]
        assert r["throughput"] == pytest.approx(b / (r["median_ms"] / 1e3))
    assert model.training


def test_latency_default_batch_and_dict_inputs():
    class Agg(nn.Module):
        def forward(self, x, a):
            return x @ a

    a = torch.randn(5, 5)
    seen = []
    model = Agg()
    model.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    lat = measure_latency(model, {"x": torch.randn(2, 5), "a": a}, warmup=0, repeats=2)
    assert list(lat["batches"]) == [2] and seen == [(2, 5)] * 2
    measure_latency(model, {"x": torch.randn(2, 5), "a": a}, batch_sizes=[5], warmup=0, repeats=1)
    assert seen[-1] == (5, 5)  # x resized to 5 rows; a (batch 5 ≠ reference 2) untouched


def test_peak_memory_cpu_counts_live_activations():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    x = torch.randn(4, 64)
    mem = peak_memory(model, x)
    # peak while ReLU runs: its input [4,128] and output [4,128] float32 are both alive
    assert mem["activation_bytes"] == 2 * 4 * 128 * 4
    params = (64 * 128 + 128 + 128 * 32 + 32) * 4
    assert mem["baseline_bytes"] == params + x.numel() * 4
    assert mem["peak_bytes"] == mem["baseline_bytes"] + mem["activation_bytes"]
    assert mem["device"] == "cpu" and mem["rss_delta_bytes"] >= 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_and_latency_cuda():
    model = nn.Linear(256, 256).cuda()
    mem = peak_memory(model, torch.randn(8, 256, device="cuda"))
    assert mem["activation_bytes"] >= 8 * 256 * 4
    lat = measure_latency(model, torch.randn(8, 256), warmup=1, repeats=2, device="cuda")
    assert lat["device"].startswith("cuda") and lat["batches"][8]["median_ms"] > 0


def test_compare_ratios():
    dense, pruned = nn.Linear(16, 16), nn.Linear(16, 4)
    res = compare(dense, pruned, torch.randn(2, 16), batch_sizes=[1, 4], warmup=1, repeats=3)
    r = res["ratios"]
    assert r["mac_reduction"] == 4.0 and r["macs_removed"] == 0.75
    assert r["param_reduction"] == (16 * 16 + 16) / (16 * 4 + 4)
    assert sorted(r["speedup"]) == [1, 4]
    for b in (1, 4):
        expected = res["dense"]["latency"]["batches"][b]["median_ms"] / res["pruned"]["latency"]["batches"][b]["median_ms"]
        assert r["speedup"][b] == pytest.approx(expected)
        assert r["speedup_per_mac_reduction"][b] == pytest.approx(expected / 4.0)
    assert res["dense"]["count"]["macs"] == 2 * 16 * 16 and res["pruned"]["count"]["macs"] == 2 * 16 * 4
    counts_only = compare(dense, pruned, torch.randn(2, 16), latency=False)
    assert counts_only["dense"]["latency"] is None and counts_only["ratios"]["speedup"] == {}
