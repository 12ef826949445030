"""A readable per-group table of a model's structures: :meth:`Structures.summary`.

One row per group (a layer's channels, a block's heads, a residual stream):

* ``root``, ``kind`` (``"head:4 neuron:8"`` when a group mixes kinds), ``structures``;
* ``width``: the indices the group spans in the tensor dim its first structure produces
  (a layer's channels; heads × head dim for a head group);
* ``tensors``: how many tensors (parameters and buffers) the group slices, producing and
  reading it — the coupling removing one of its structures touches;
* ``params`` / ``macs`` and their shares of the model: what the group *covers*. Each
  parameter entry (and each MAC) that some structure removes is counted once, for the
  group that removes it along the tensor's first such dim (a weight's output rows
  before its input columns), so the groups' shares add up to ``1 - frozen share``.

The frozen parts follow (``structures.frozen``): the share of parameters no structure
touches, the ops without a rule, the groups the probe froze.

Example:
    >>> import torch, prunekit
    >>> from prunekit.core.summary import summary_rows
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> structures = prunekit.find_structures(net, torch.randn(1, 4))
    >>> [(r["root"], r["kind"], r["structures"], r["width"], r["params"]) for r in summary_rows(structures)]
    [('0', 'neuron', 8, 8, 56)]
    >>> print(structures.summary())  # doctest: +NORMALIZE_WHITESPACE
    Sequential: 58 params, 48 MACs, 1 groups, 8 structures
    group  root  kind    structures  width  tensors  params  params %  MACs  MACs %
        0  0     neuron           8      8        3      56     96.6%    48  100.0%
    covered by groups: 96.6% of params, 100.0% of MACs
    frozen: 3.4% of params (2 of 58)
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

__all__ = ["summary_rows", "summary_table"]


def _owners(closure, group_of: np.ndarray) -> np.ndarray:
    """For each index of one tensor dim, the group of the first structure that removes it (-1: none)."""
    matrix = closure.matrix
    if matrix.shape[1] == 0:
        return np.full(closure.n, -1, dtype=np.int64)
    first = np.where(matrix >= 0, matrix, np.iinfo(np.int64).max).min(axis=1)
    owners = np.full(closure.n, -1, dtype=np.int64)
    hit = first != np.iinfo(np.int64).max
    owners[hit] = group_of[first[hit]]
    return owners


def _attribute(closures, const: int, group_of: np.ndarray, out: np.ndarray) -> None:
    """Add to ``out[g]`` the entries of one tensor (or MAC term) attributed to group ``g``.

    An entry belongs to the owner of its index in the first dim where some structure
    removes it: ``rows_g(d) · ∏_{d'<d} untouched(d') · ∏_{d'>d} n(d')``.
    """
    owners = [_owners(c, group_of) for c in closures]
    sizes = [c.n for c in closures]
    untouched = [int((o < 0).sum()) for o in owners]
    for d, o in enumerate(owners):
        rows = np.bincount(o[o >= 0], minlength=len(out))
        if not rows.any():
            continue
        factor = const * math.prod(untouched[:d]) * math.prod(sizes[d + 1:])
        out += rows * factor


def _width(structures, group) -> int:
    first = structures[group.members[0]]
    if not first.slices:
        return group.size
    name, dim, _ = first.slices[0]
    indices = set()
    for sid in group.members:
        for n, d, idx in structures[sid].slices:
            if n == name and d == dim:
                indices.update(idx)
    return len(indices)


def summary_rows(structures) -> list[dict]:
    """One plain dict per group: ``group, root, kind, structures, width, tensors, params,
    params_share, macs, macs_share`` (shares are fractions of the whole model)."""
    n_groups = len(structures.groups)
    group_of = np.asarray([s.group for s in structures], dtype=np.int64)
    params = np.zeros(n_groups, dtype=np.int64)
    macs = np.zeros(n_groups, dtype=np.int64)
    if len(group_of):
        for closures in structures._tensors.values():
            _attribute(closures, 1, group_of, params)
        for const, closures in structures._terms:
            _attribute(closures, int(const), group_of, macs)
    total_params, total_macs = max(structures.total_params, 1), max(structures.total_macs, 1)
    rows = []
    for group in structures.groups:
        kinds = Counter(structures[sid].kind for sid in group.members)
        kind = next(iter(kinds)) if len(kinds) == 1 else " ".join(f"{k}:{v}" for k, v in kinds.items())
        tensors = {name for sid in group.members for name, _, _ in structures[sid].slices + structures[sid].consumers}
        rows.append({
            "group": group.id, "root": group.root or "<model>", "kind": kind, "structures": group.size,
            "width": _width(structures, group), "tensors": len(tensors),
            "params": int(params[group.id]), "params_share": float(params[group.id]) / total_params,
            "macs": int(macs[group.id]), "macs_share": float(macs[group.id]) / total_macs,
        })
    return rows


def _frozen_lines(frozen: dict) -> list[str]:
    lines = [f"frozen: {frozen['share']:.1%} of params ({frozen['total_params'] - frozen['prunable_params']} of "
             f"{frozen['total_params']})"]
    unknown = frozen.get("unknown") or []
    if unknown:
        shown = ", ".join(f"{op} in {module or '<model>'}" for op, module in unknown[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        lines.append(f"  no rule for: {shown}{more}")
    if frozen.get("probe"):
        lines.append(f"  frozen by the probe (removing them broke the forward): {', '.join(frozen['probe'])}")
    return lines


def summary_table(structures) -> str:
    """The text table of :func:`summary_rows`, a totals line and the frozen parts."""
    rows = summary_rows(structures)
    header = ["group", "root", "kind", "structures", "width", "tensors", "params", "params %", "MACs", "MACs %"]
    keys = ["group", "root", "kind", "structures", "width", "tensors", "params", "params_share", "macs", "macs_share"]
    left = {"root", "kind"}
    cells = [[f"{r[k]:.1%}" if k.endswith("_share") else str(r[k]) for k in keys] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]

    def line(values) -> str:
        return "  ".join(v.ljust(w) if k in left else v.rjust(w)
                         for v, w, k in zip(values, widths, keys)).rstrip()

    out = [f"{structures.model_name}: {structures.total_params} params, {structures.total_macs} MACs, "
           f"{len(structures.groups)} groups, {len(structures)} structures",
           line(header)]
    out += [line(c) for c in cells]
    covered_params = sum(r["params_share"] for r in rows)
    covered_macs = sum(r["macs_share"] for r in rows)
    out.append(f"covered by groups: {covered_params:.1%} of params, {covered_macs:.1%} of MACs")
    out += _frozen_lines(structures.frozen)
    return "\n".join(out)
