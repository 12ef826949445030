"""``Structures.summary()`` and ``prunekit.core.summary.summary_rows``: the per-group table adds up."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.summary import summary_rows


class SmallCNN(nn.Module):
    """Two stages with a residual add (one coupled group) and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 12, 3, padding=1)
        self.b = nn.Conv2d(12, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.b(torch.relu(self.a(x)))
        return self.head(x.mean((2, 3)))


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=3, pad_token_id=0)
    config._attn_implementation = "eager"
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(3, 100, (2, 8))
    return model, {"input_ids": ids, "attention_mask": torch.ones(2, 8, dtype=torch.long)}


def _check_adds_up(structures):
    rows = summary_rows(structures)
    assert [r["group"] for r in rows] == [g.id for g in structures.groups]
    assert sum(r["structures"] for r in rows) == len(structures)
    params, macs = sum(r["params"] for r in rows), sum(r["macs"] for r in rows)
    assert 0 < params <= structures.total_params and 0 < macs <= structures.total_macs
    # every parameter entry a structure removes is counted once: the rest is exactly the frozen share
    frozen = structures.frozen
    assert params == frozen["prunable_params"]
    assert 1 - sum(r["params_share"] for r in rows) == pytest.approx(frozen["share"], abs=1e-12)
    for r in rows:
        assert r["width"] >= 1 and r["tensors"] >= 1 and 0 <= r["params_share"] <= 1 and 0 <= r["macs_share"] <= 1
    table = structures.summary()
    assert f"frozen: {frozen['share']:.1%} of params" in table
    assert all(r["root"] in table for r in rows)
    return rows


def test_small_cnn_table_adds_up_and_couples_the_residual():
    model = SmallCNN().eval()
    structures = prunekit.find_structures(model, torch.randn(1, 3, 16, 16))
    rows = {r["root"]: r for r in _check_adds_up(structures)}
    assert set(rows) == {"stem", "a"}
    # the residual stream: stem, bn, b's outputs and a's / head's inputs are one coupled group
    assert rows["stem"]["structures"] == rows["stem"]["width"] == 8 and rows["stem"]["tensors"] >= 7
    assert rows["a"]["structures"] == 12 and rows["a"]["kind"] == "channel"
    # a covers its own output rows and bias: 12·8·9 + 12 params
    assert rows["a"]["params"] == 12 * 8 * 9 + 12
    # the convolutions' MACs are all covered; only the head's output columns are frozen
    assert sum(r["macs"] for r in rows.values()) == structures.total_macs


def test_tiny_bert_table_adds_up_and_lists_heads_and_frozen_ops():
    model, inputs = tiny_bert()
    structures = prunekit.find_structures(model, inputs)
    rows = _check_adds_up(structures)
    heads = [r for r in rows if "head" in r["kind"]]
    assert len(heads) == 2 and all(r["width"] == 32 for r in heads)  # 4 heads × head dim 8 per layer
    table = structures.summary()
    assert "no rule for" in table if structures.frozen["unknown"] else "no rule for" not in table


def test_summary_of_a_model_with_no_structures():
    structures = prunekit.find_structures(nn.Linear(4, 2), torch.randn(1, 4))
    assert summary_rows(structures) == []
    assert "frozen: 100.0% of params" in structures.summary()
