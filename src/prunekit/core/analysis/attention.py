"""``nn.MultiheadAttention`` under the analysis: followed through the attention materialize puts in its place.

``F.multi_head_attention_forward`` cannot run pruned (it checks that the q/k/v width equals
the input width), so materialize replaces a pruned ``nn.MultiheadAttention`` by
:class:`prunekit.core.pruned_attention.PrunedMultiheadAttention`. During the pass, a supported
module (no ``bias_k``/``bias_v``, no ``add_zero_attn``, not ignored) runs that class's
function, :func:`prunekit.core.pruned_attention.multi_head_attention`, instead of its own
``forward``: the same math, written with ops the rules follow. So the analysis sees what the
materialized model runs, and two things ``F.multi_head_attention_forward`` does are avoided:

* the packed ``in_proj_weight`` ``[3E, E]`` is cut into its q, k and v blocks outside the
  rules (a ``split`` would tie the blocks position by position, a slice would freeze them):
  each block keeps its own row atoms, so q/k head dims and v head dims are separate
  structures, and materialize reads the rows each block kept off the plan;
* the key padding mask broadcasts over heads instead of being expanded to ``(N·H, 1, S)``,
  and the scale ``1/√head_dim`` is passed explicitly: neither freezes heads nor head dims.

Heads come out as for hand-written attention (``num_heads`` is passed to the views, so the
plan keeps it up to date). A 3-D ``attn_mask`` (one per head) or head-averaged weights
(``need_weights=True``) freeze the heads, as they must.

Example:
    >>> import torch
    >>> from prunekit.core.analysis.trace import trace
    >>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    >>> x = torch.randn(1, 3, 8)
    >>> t = trace(mha, (x, x, x, None, False))
    >>> rows = t.atoms.roots(t.labels["in_proj_weight"][0])
    >>> bool(rows.all()), sorted({r.tag[1] for r in t.sizes})   # q/k/v rows prunable, heads tracked
    (True, ['num_heads'])
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
from torch import nn

from .trace import TensorInfo

__all__ = ["supported", "follow"]


def supported(module: nn.Module) -> bool:
    """Can :class:`~prunekit.core.pruned_attention.PrunedMultiheadAttention` stand in for ``module``?"""
    return (isinstance(module, nn.MultiheadAttention) and module.bias_k is None and module.bias_v is None
            and not module.add_zero_attn)


def _blocks(tracer, mha: nn.MultiheadAttention):
    """q, k, v weights and biases, with the row labels of the packed tensors they come from."""
    E = mha.embed_dim
    tracer.suppress += 1  # the cuts below are bookkeeping, not ops of the model
    try:
        if mha.in_proj_weight is not None:
            packed = mha.in_proj_weight
            weights = [packed[i * E:(i + 1) * E] for i in range(3)]
            sources = [(packed, i * E) for i in range(3)]
        else:
            weights = [mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight]
            sources = [None] * 3
        biases = ([mha.in_proj_bias[i * E:(i + 1) * E] for i in range(3)] if mha.in_proj_bias is not None
                  else [None] * 3)
    finally:
        tracer.suppress -= 1
    for w, src in zip(weights, sources):
        if src is not None:
            _label_rows(tracer, w, *src)
    for i, b in enumerate(biases):
        if b is not None:
            _label_rows(tracer, b, mha.in_proj_bias, i * E)
    return weights, biases


def _label_rows(tracer, piece, packed, start: int) -> None:
    info = tracer.get(packed)  # fresh atoms for the packed parameter (once)
    n = piece.shape[0]
    name = tracer.param_names.get(id(packed))
    if name is not None:  # q, k and v are three layers for the collapse guard, not one
        tracer.t.segments.setdefault((name, 0), set()).add((start, start + n))
    dims = [np.asarray(info.dims[0][start:start + n])] + list(info.dims[1:])
    tracer.set(piece, TensorInfo(dims, [False] * piece.dim(), src=list(info.src)))


def _forward(tracer, mha: nn.MultiheadAttention):
    from ..pruned_attention import multi_head_attention

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        (wq, wk, wv), (bq, bk, bv) = _blocks(tracer, mha)
        head_dim = int(mha.head_dim)  # a plain int: q/k and v head dims are not tied through it
        return multi_head_attention(
            query, key, value, q_weight=wq, q_bias=bq, k_weight=wk, k_bias=bk, v_weight=wv, v_bias=bv,
            out_weight=mha.out_proj.weight, out_bias=mha.out_proj.bias, num_heads=mha.num_heads,
            qk_head_dim=head_dim, v_head_dim=head_dim, scale=1.0 / math.sqrt(head_dim), dropout_p=mha.dropout,
            training=mha.training, batch_first=mha.batch_first, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, average_attn_weights=average_attn_weights,
            is_causal=is_causal)
    return forward


@contextlib.contextmanager
def follow(tracer, model: nn.Module, ignored: set):
    """While active, every supported, not ignored ``nn.MultiheadAttention`` of ``model`` runs
    :func:`~prunekit.core.pruned_attention.multi_head_attention`; ``tracer.followed`` holds their ids."""
    patched = []
    for name, module in model.named_modules():
        if name not in ignored and supported(module) and id(module) not in tracer.followed:
            tracer.followed.add(id(module))
            had = "forward" in module.__dict__
            patched.append((module, had, module.__dict__.get("forward")))
            module.forward = _forward(tracer, module)
    try:
        yield
    finally:
        for module, had, old in patched:
            if had:
                module.forward = old
            else:
                del module.forward
