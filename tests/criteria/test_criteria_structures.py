"""Structures that ``find_structures`` finds on three models written as users write them.

The models are in ``tests/criteria/found_cases.py``; the criteria's exactness on these same
structures (``taylor``, ``obd``, ``sosp-h`` in its variants, ``sosp-i`` against brute force to
1e-5 relative) is checked with every other case in ``test_criteria_general.py``.
"""
from __future__ import annotations

from tests.criteria.brute import cached_case


def _rows(structure, name):
    return sorted({i for p, dim, idx in structure.slices if p == name and dim == 0 for i in idx})


def test_transformer_block_has_heads_head_dims_and_mlp_neurons():
    case, _ = cached_case("transformer")
    structures = case["structures"]
    heads = [s for s in structures if s.kind == "head"]
    assert sorted(tuple(_rows(s, "q.weight")) for s in heads) == [(0, 1, 2), (3, 4, 5)]
    for s in heads:  # a head removes the same rows of q, k and v and the matching columns of proj
        assert _rows(s, "k.weight") == _rows(s, "v.weight") == _rows(s, "q.weight")
        assert {(p, d) for p, d, _ in s.consumers} >= {("proj.weight", 1)}
    dims = [s for s in structures if s.kind != "head" and _rows(s, "q.weight")]
    assert sorted(tuple(_rows(s, "q.weight")) for s in dims) == [(0, 3), (1, 4), (2, 5)]  # index j of every head
    mlp = [s for s in structures if _rows(s, "fc1.weight")]
    assert sorted(tuple(_rows(s, "fc1.weight")) for s in mlp) == [(j,) for j in range(5)]
    for s in mlp:
        assert [(p, d, list(i)) for p, d, i in s.consumers] == [("fc2.weight", 1, _rows(s, "fc1.weight"))]
    # the residual stream is normalised by LayerNorm: frozen, so nothing else
    assert len(structures) == len(heads) + len(dims) + len(mlp) == 10


def test_flatten_classifier_couples_conv_channels_to_linear_columns():
    case, _ = cached_case("flatten")
    structures = case["structures"]
    conv1 = [s for s in structures if _rows(s, "conv1.weight")]
    assert sorted(tuple(_rows(s, "conv1.weight")) for s in conv1) == [(c,) for c in range(4)]
    for s in conv1:  # BN affine parameters are produced with the channel
        assert _rows(s, "bn.weight") == _rows(s, "bn.bias") == _rows(s, "conv1.weight")
    conv2 = [s for s in structures if _rows(s, "conv2.weight")]
    assert len(conv2) == 3
    for s in conv2:  # channel c of conv2 feeds the 2×2 = 4 flattened columns 4c..4c+3 of fc1
        (c,) = _rows(s, "conv2.weight")
        columns = [list(i) for p, d, i in s.consumers if p == "fc1.weight" and d == 1]
        assert columns == [[4 * c + j for j in range(4)]]
    hidden = [s for s in structures if _rows(s, "fc1.weight")]
    assert sorted(tuple(_rows(s, "fc1.weight")) for s in hidden) == [(j,) for j in range(5)]
    assert len(structures) == 12


def test_stgcn_has_units_and_subsets():
    case, _ = cached_case("stgcn")
    structures = case["structures"]
    k, c = 3, 4
    units = [s for s in structures if _rows(s, "bn.weight")]
    assert sorted(tuple(_rows(s, "conv.weight")) for s in units) == [tuple(u + c * j for j in range(k))
                                                                     for u in range(c)]
    subsets = [s for s in structures if not _rows(s, "bn.weight")]
    assert sorted(tuple(_rows(s, "conv.weight")) for s in subsets) == [tuple(range(c * j, c * j + c))
                                                                       for j in range(k)]
    for s in subsets:  # a subset's adjacency A[k] is read with it
        assert [p for p, _, _ in s.consumers] == ["A"]
    assert len(structures) == k + c
