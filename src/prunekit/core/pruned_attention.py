"""Multi-head attention with pruned heads, head dimensions and widths: what materialize puts in
place of an ``nn.MultiheadAttention`` whose parameters lost rows or columns.

``nn.MultiheadAttention`` (through ``F.multi_head_attention_forward``) needs its q/k/v
projection width to equal its input width and splits it into ``num_heads`` heads of
``embed_dim // num_heads``. :class:`PrunedMultiheadAttention` computes the same function
with every width its own: ``H'`` heads, query/key head dim ``d_qk``, value head dim ``d_v``,
query/key/value input widths and the output width independent::

    Q_h = X_q W_q,hᵀ + b_q,h    K_h = X_k W_k,hᵀ + b_k,h    V_h = X_v W_v,hᵀ + b_v,h     (h = 1..H')
    A_h = softmax(s · Q_h K_hᵀ + M),   s = 1/√d   (d: the original head_dim, what the masked model uses)
    Y = [A_1 V_1, …, A_H' V_H'] W_oᵀ + b_o

with the same ``forward`` signature and return values as ``nn.MultiheadAttention``
(``key_padding_mask``, ``attn_mask``, ``need_weights``, ``average_attn_weights``,
``is_causal``, ``batch_first``, unbatched inputs; dropout on the attention weights in
training). Its projections are plain ``nn.Linear`` modules and its views read
``num_heads``/``qk_head_dim``/``v_head_dim``, so the analysis follows it like
hand-written attention and a pruned model can be pruned again. ``bias_k``/``bias_v`` and
``add_zero_attn`` are not supported (the analysis leaves such an ``nn.MultiheadAttention``
opaque). For ``nn.TransformerEncoderLayer`` & co. it reports ``in_proj_weight = None``,
``in_proj_bias = None`` and ``_qkv_same_embed_dim = False``, so they take their slow path.

Example:
    >>> import copy, torch
    >>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    >>> same = PrunedMultiheadAttention.replacing(copy.deepcopy(mha))   # nothing pruned: equal outputs
    >>> x = torch.randn(3, 5, 8)
    >>> torch.allclose(same(x, x, x)[0], mha(x, x, x)[0], atol=1e-6)
    True
    >>> small = PrunedMultiheadAttention(8, 1, qk_head_dim=3, v_head_dim=2, scale=0.5, batch_first=True)
    >>> y, w = small(x, x, x)
    >>> tuple(y.shape), tuple(w.shape), small.out_proj.in_features
    ((3, 5, 8), (3, 5, 5), 2)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrunedMultiheadAttention", "multi_head_attention"]


def _batch_first(query, key, value, key_padding_mask, *, is_batched: bool, batch_first: bool):
    """The inputs as ``(N, L, E)`` (an unbatched input gets ``N = 1``), and the padding mask to match."""
    if is_batched and not batch_first:  # (L, N, E) -> (N, L, E)
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    elif not is_batched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    return query, key, value, key_padding_mask


def _additive_mask(attn_mask, key_padding_mask, *, is_causal: bool, need_weights: bool, n: int, num_heads: int,
                   tgt_len: int, src_len: int):
    """The one mask added to the scores, shaped to broadcast over ``(N, H, L, S)``, and the causal flag
    left for ``scaled_dot_product_attention``; returns ``(mask, is_causal)``."""
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                           "method `generate_square_subsequent_mask` to create this mask.")
    if is_causal and key_padding_mask is None and not need_weights:
        return None, is_causal  # scaled_dot_product_attention applies the causal mask itself
    if key_padding_mask is not None:
        is_causal = False
    if attn_mask is not None:  # (L, S) for every batch entry and head, or (N·H, L, S)
        attn_mask = (attn_mask.view(1, 1, tgt_len, src_len) if attn_mask.dim() == 2
                     else attn_mask.view(n, num_heads, tgt_len, src_len))
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.view(n, 1, 1, src_len)
        attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
    return attn_mask, is_causal


def _attend(q, k, v, attn_mask, *, scale: float, dropout_p: float, is_causal: bool, need_weights: bool,
            v_head_dim: int):
    """Per-head attention of ``(N, H, L, d)`` queries on keys and values; returns ``(output, weights)``
    (``weights`` per head, ``None`` unless ``need_weights``)."""
    if need_weights:
        scores = torch.matmul(q * scale, k.transpose(-2, -1))
        if attn_mask is not None:
            scores = scores + attn_mask
        weights = F.softmax(scores, dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        return torch.matmul(weights, v), weights
    if v_head_dim == 0:  # scaled_dot_product_attention skips the scores then; the cost model counts them
        return torch.matmul(torch.matmul(q * scale, k.transpose(-2, -1)).softmax(-1), v), None
    return F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale=scale), None


def multi_head_attention(query, key, value, *, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight,
                         out_bias, num_heads: int, qk_head_dim: int, v_head_dim: int, scale: float,
                         dropout_p: float = 0.0, training: bool = False, batch_first: bool = False,
                         key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                         average_attn_weights: bool = True, is_causal: bool = False):
    """The attention of :class:`PrunedMultiheadAttention` on explicit tensors; returns ``(output, weights)``.

    The masks and flags mean what they mean for ``nn.MultiheadAttention`` (a 3-D ``attn_mask``
    is ``(N·num_heads, L, S)``). The analysis runs an ``nn.MultiheadAttention`` through this
    function too (:mod:`prunekit.core.analysis.attention`), so it sees what the materialized model runs.
    """
    is_batched = query.dim() == 3
    key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                         other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                         target_type=query.dtype)
    attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                  target_type=query.dtype, check_other=False)
    query, key, value, key_padding_mask = _batch_first(query, key, value, key_padding_mask,
                                                       is_batched=is_batched, batch_first=batch_first)
    n, tgt_len, src_len = query.shape[0], query.shape[1], key.shape[1]
    attn_mask, is_causal = _additive_mask(attn_mask, key_padding_mask, is_causal=is_causal, need_weights=need_weights,
                                          n=n, num_heads=num_heads, tgt_len=tgt_len, src_len=src_len)
    if not training:
        dropout_p = 0.0

    q = F.linear(query, q_weight, q_bias).view(n, tgt_len, num_heads, qk_head_dim).transpose(1, 2)
    k = F.linear(key, k_weight, k_bias).view(n, src_len, num_heads, qk_head_dim).transpose(1, 2)
    v = F.linear(value, v_weight, v_bias).view(n, src_len, num_heads, v_head_dim).transpose(1, 2)
    out, weights = _attend(q, k, v, attn_mask, scale=scale, dropout_p=dropout_p, is_causal=is_causal,
                           need_weights=need_weights, v_head_dim=v_head_dim)
    out = out.transpose(1, 2).reshape(n, tgt_len, num_heads * v_head_dim)
    out = F.linear(out, out_weight, out_bias)
    if weights is not None and average_attn_weights:
        weights = weights.mean(dim=1)
    if not is_batched:
        out = out.squeeze(0)
        weights = weights.squeeze(0) if weights is not None else None
    elif not batch_first:
        out = out.transpose(0, 1)
    return out, weights


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Parameter) -> nn.Linear:
    """An ``nn.Linear`` holding copies of ``weight`` and ``bias`` (``requires_grad`` as ``like``'s)."""
    grad = like.requires_grad
    layer = nn.Linear.__new__(nn.Linear)  # no initialisation: the tensors are given
    nn.Module.__init__(layer)
    layer.out_features, layer.in_features = weight.shape
    layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=grad)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=grad)
    else:
        layer.register_parameter("bias", None)
    return layer


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with independent head count, q/k and v head dims and widths (see the module).

    Args:
        embed_dim: query input width (and output width unless ``out_dim`` is given).
        num_heads: heads ``H'``.
        qk_head_dim, v_head_dim: query/key and value dims per head (default ``embed_dim // num_heads``).
        kdim, vdim: key and value input widths (default ``embed_dim``).
        out_dim: output width (default ``embed_dim``).
        dropout: dropout on the attention weights in training.
        bias: biases of the four projections.
        batch_first: ``(N, L, E)`` inputs and outputs instead of ``(L, N, E)``.
        scale: the attention scale (default ``1/√qk_head_dim``; a pruned copy keeps the original's).
    """

    def __init__(self, embed_dim: int, num_heads: int, qk_head_dim: int | None = None,
                 v_head_dim: int | None = None, *, kdim: int | None = None, vdim: int | None = None,
                 out_dim: int | None = None, dropout: float = 0.0, bias: bool = True, batch_first: bool = False,
                 scale: float | None = None, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        head = embed_dim // num_heads
        self.num_heads = int(num_heads)
        self.qk_head_dim = int(head if qk_head_dim is None else qk_head_dim)
        self.v_head_dim = int(head if v_head_dim is None else v_head_dim)
        self.scale = float(1.0 / math.sqrt(self.qk_head_dim) if scale is None else scale)
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.q_proj = nn.Linear(embed_dim, self.num_heads * self.qk_head_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(kdim or embed_dim, self.num_heads * self.qk_head_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(vdim or embed_dim, self.num_heads * self.v_head_dim, bias=bias, **factory)
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(
            self.num_heads * self.v_head_dim, out_dim or embed_dim, bias=bias, **factory)
        self._set_compat()

    def _set_compat(self) -> None:
        # what nn.Transformer*Layer / nn.TransformerEncoder read off ``self_attn``: with these they
        # take their slow path, which calls forward below
        self._qkv_same_embed_dim = False
        self.in_proj_weight = None
        self.in_proj_bias = None
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False

    @classmethod
    def replacing(cls, mha: nn.MultiheadAttention, num_heads: int | None = None, q_rows: int | None = None,
                  k_rows: int | None = None, v_rows: int | None = None,
                  scale: float | None = None) -> "PrunedMultiheadAttention":
        """A PrunedMultiheadAttention holding ``mha``'s (already sliced) tensors.

        ``mha.in_proj_weight`` / ``in_proj_bias`` hold the kept rows of the q, k and v blocks
        in that order: ``q_rows``, ``k_rows``, ``v_rows`` say how many each block kept
        (default: a third each); ``num_heads`` defaults to ``mha.num_heads``, ``scale`` to
        ``1/√mha.head_dim`` (the unpruned module's). ``out_proj`` is taken over as it is.
        """
        if mha.bias_k is not None or mha.bias_v is not None or mha.add_zero_attn:
            raise ValueError("PrunedMultiheadAttention does not support bias_k/bias_v or add_zero_attn")
        heads = int(mha.num_heads if num_heads is None else num_heads)
        if mha.in_proj_weight is not None:
            total = mha.in_proj_weight.shape[0]
            if q_rows is None and k_rows is None and v_rows is None:
                if total % 3:
                    raise ValueError(f"in_proj_weight has {total} rows: pass q_rows, k_rows and v_rows")
                q_rows = k_rows = v_rows = total // 3
            sizes = [int(q_rows), int(k_rows), int(v_rows)]
            if sum(sizes) != total:
                raise ValueError(f"q/k/v rows {sizes} do not add up to in_proj_weight's {total}")
            weights = list(mha.in_proj_weight.split(sizes))
            ref = [mha.in_proj_weight] * 3
        else:
            weights = [mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight]
            sizes = [w.shape[0] for w in weights]
            ref = weights
        biases = list(mha.in_proj_bias.split(sizes)) if mha.in_proj_bias is not None else [None] * 3
        if sizes[0] != sizes[1] or sizes[0] % heads or sizes[2] % heads:
            raise ValueError(f"q/k/v rows {sizes} do not make {heads} heads (q and k must match)")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_heads = heads
        new.qk_head_dim, new.v_head_dim = sizes[0] // heads, sizes[2] // heads
        new.scale = float(1.0 / math.sqrt(mha.head_dim) if scale is None else scale)
        new.dropout = float(mha.dropout)
        new.batch_first = bool(mha.batch_first)
        new.q_proj, new.k_proj, new.v_proj = (_linear(w, b, r) for w, b, r in zip(weights, biases, ref))
        new.out_proj = mha.out_proj
        new._set_compat()
        return new.train(mha.training)

    # widths, read off the parameters (not stored: nothing to keep in step)
    @property
    def embed_dim(self) -> int:
        return self.q_proj.in_features

    @property
    def kdim(self) -> int:
        return self.k_proj.in_features

    @property
    def vdim(self) -> int:
        return self.v_proj.in_features

    @property
    def head_dim(self) -> int:
        return self.qk_head_dim

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: ``(attn_output, attn_weights or None)``."""
        return multi_head_attention(
            query, key, value, q_weight=self.q_proj.weight, q_bias=self.q_proj.bias, k_weight=self.k_proj.weight,
            k_bias=self.k_proj.bias, v_weight=self.v_proj.weight, v_bias=self.v_proj.bias,
            out_weight=self.out_proj.weight, out_bias=self.out_proj.bias, num_heads=self.num_heads,
            qk_head_dim=self.qk_head_dim, v_head_dim=self.v_head_dim, scale=self.scale, dropout_p=self.dropout,
            training=self.training, batch_first=self.batch_first, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, average_attn_weights=average_attn_weights,
            is_causal=is_causal)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, qk_head_dim={self.qk_head_dim}, v_head_dim={self.v_head_dim}, "
                f"scale={self.scale:.6g}, dropout={self.dropout}, batch_first={self.batch_first}")
