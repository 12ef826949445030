"""Index atoms: one label per index of every prunable width, merged by union-find.

Every index of a width that could be removed (an output channel of a convolution,
a row of a Linear, an entry of a parameter used in ``forward``) gets an *atom*.
Ops *unify* the atoms of indices that must be removed together (a residual add
unifies two channels); a width viewed as ``(H, D)`` makes each of its atoms the
*product* of a head atom and a head-dim atom, so removing head ``h`` removes every
index ``(h, ·)``. An atom tied to something prunekit cannot resize (the model's
input or output, a normalisation statistic, an op without a rule) is *frozen*.

Atom ``0`` is ``NONE``: the label of indices that are not a prunable width (batch,
tokens, pixels). Unifying an atom with ``NONE`` freezes it; in products ``NONE`` is
the unit, so a batch dim merged with a head dim keeps the head labels.

Example:
    >>> import numpy as np
    >>> a = Atoms()
    >>> x, y = a.fresh(3), a.fresh(3)
    >>> a.unify_arrays(x, y)
    >>> bool((a.roots(x) == a.roots(y)).all())
    True
    >>> heads, dims = a.split(a.fresh(6), 2, 3)
    >>> len(heads), len(dims)
    (2, 3)
"""
from __future__ import annotations

import numpy as np

__all__ = ["Atoms", "NONE"]

NONE = 0


class Atoms:
    """Union-find over atoms, with products (composite atoms) and frozen flags."""

    def __init__(self, capacity: int = 1024):
        self.parent = np.arange(capacity, dtype=np.int64)
        self.left = np.full(capacity, -1, dtype=np.int64)   # composite: first factor (outer)
        self.right = np.full(capacity, -1, dtype=np.int64)  # composite: second factor (inner)
        self.kind: dict[int, str] = {}
        self._kind_keys: list[int] = []
        self.reason: dict[int, str] = {}
        self.size = 1

    # ------------------------------------------------------------------ storage
    def _grow(self, n: int) -> None:
        need = self.size + n
        if need <= len(self.parent):
            return
        cap = max(need, 2 * len(self.parent))
        old = len(self.parent)
        self.parent = np.concatenate([self.parent, np.arange(old, cap, dtype=np.int64)])
        self.left = np.concatenate([self.left, np.full(cap - old, -1, dtype=np.int64)])
        self.right = np.concatenate([self.right, np.full(cap - old, -1, dtype=np.int64)])

    def fresh(self, n: int, kind: str = "channel") -> np.ndarray:
        """``n`` new base atoms (``NONE`` for a width of 1: a single index is never removable alone)."""
        if n <= 1:
            return np.zeros(n, dtype=np.int64)
        self._grow(n)
        ids = np.arange(self.size, self.size + n, dtype=np.int64)
        self.size += n
        self.kind[int(ids[0])] = kind
        return ids

    def kind_of(self, atom: int) -> str:
        """The kind tag of the block of fresh atoms ``atom`` was created in."""
        import bisect
        keys = sorted(self.kind) if len(self._kind_keys) != len(self.kind) else self._kind_keys
        self._kind_keys = keys
        i = bisect.bisect_right(keys, atom) - 1
        return self.kind[keys[i]] if i >= 0 else "channel"

    def product(self, outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
        """Composite atoms ``(o, i)`` for every pair, row-major (``outer`` slowest).

        A factor of a single index carries nothing and is dropped; a ``NONE`` factor is
        kept (``(k, NONE)`` unified with ``(k', v)`` must freeze ``v``).
        """
        outer, inner = self.roots(outer), self.roots(inner)
        if len(outer) == 1:
            return inner.copy()
        if len(inner) == 1:
            return outer.copy()
        if not outer.any() and not inner.any():
            return np.zeros(len(outer) * len(inner), dtype=np.int64)
        n = len(outer) * len(inner)
        self._grow(n)
        ids = np.arange(self.size, self.size + n, dtype=np.int64)
        self.size += n
        self.left[ids] = np.repeat(outer, len(inner))
        self.right[ids] = np.tile(inner, len(outer))
        return ids

    # ---------------------------------------------------------------- union-find
    def _base_roots(self, atoms: np.ndarray) -> np.ndarray:
        r = atoms
        while True:
            p = self.parent[r]
            if np.array_equal(p, r):
                return r
            r = p

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        """Current atom of every entry (a frozen atom is ``NONE``, and so is a product of two)."""
        atoms = np.asarray(atoms, dtype=np.int64)
        while True:
            r = self._base_roots(atoms)
            comp = self.left[r] >= 0
            if not comp.any():
                break
            rc = np.unique(r[comp])
            lr, rr = self.roots(self.left[rc]), self.roots(self.right[rc])
            collapse = (lr == NONE) & (rr == NONE)
            if not collapse.any():
                break
            for c in rc[collapse]:
                self.left[c] = self.right[c] = -1
                self.parent[c] = NONE
        if atoms.size:
            self.parent[atoms] = r
        return r

    def find(self, a: int) -> int:
        parent = self.parent
        r = int(a)
        while True:
            p = int(parent[r])
            if p == r:
                break
            r = p
        while int(parent[a]) != r:  # path compression
            a, parent[a] = int(parent[a]), r
        if self.left[r] >= 0 and self.find(int(self.left[r])) == NONE and self.find(int(self.right[r])) == NONE:
            self.left[r] = self.right[r] = -1
            parent[r] = NONE
            return NONE
        return r

    def freeze(self, a: int, reason: str) -> None:
        """Freeze atom ``a`` (and, for a product, both factors): it becomes ``NONE``, never removed."""
        stack = [a]
        while stack:
            r = self.find(stack.pop())
            if r == NONE:
                continue
            self.reason.setdefault(r, reason)
            if self.left[r] >= 0:
                stack.extend((int(self.left[r]), int(self.right[r])))
                self.left[r] = self.right[r] = -1
            self.parent[r] = NONE

    def freeze_array(self, atoms: np.ndarray, reason: str) -> None:
        for a in np.unique(self.roots(atoms)):
            if a != NONE:
                self.freeze(int(a), reason)

    def unify(self, a: int, b: int, reason: str = "tied to a non-prunable index") -> None:
        """Make ``a`` and ``b`` one atom; products unify factor by factor."""
        stack = [(a, b)]
        while stack:
            x, y = stack.pop()
            rx, ry = self.find(x), self.find(y)
            if rx == ry:
                continue
            if rx == NONE or ry == NONE:
                self.freeze(ry if rx == NONE else rx, reason)
                continue
            cx, cy = self.left[rx] >= 0, self.left[ry] >= 0
            if cx and cy:
                stack.append((int(self.left[rx]), int(self.left[ry])))
                stack.append((int(self.right[rx]), int(self.right[ry])))
            elif cx or cy:  # keep the composite as the root, unless the base atom is one of its factors
                if cy:
                    rx, ry = ry, rx
                if self._occurs(ry, rx):
                    self.freeze(rx, "an index that is a product of itself")
                    self.freeze(ry, "an index that is a product of itself")
                    continue
            self.parent[ry] = rx

    def _occurs(self, base: int, comp: int) -> bool:
        seen, stack = set(), [comp]
        while stack:
            r = self.find(stack.pop())
            if r == base:
                return True
            if r in seen:
                continue
            seen.add(r)
            if self.left[r] >= 0:
                stack.extend((int(self.left[r]), int(self.right[r])))
        return False

    def unify_arrays(self, x: np.ndarray, y: np.ndarray, reason: str = "tied to a non-prunable index") -> None:
        rx, ry = self.roots(x), self.roots(y)
        d = np.nonzero(rx != ry)[0]
        if not len(d):
            return
        a, b = rx[d], ry[d]
        if ((a != NONE) & (b != NONE) & (self.left[a] < 0) & (self.left[b] < 0)).all():
            # base atoms only: one vectorised union when one side is distinct and disjoint from the other
            # (each of its atoms then gets exactly one parent that is itself a root)
            for child, par in ((b, a), (a, b)):
                if len(np.unique(child)) == len(child) and not np.isin(child, par).any():
                    self.parent[child] = par
                    return
        for i in d:
            self.unify(int(rx[i]), int(ry[i]), reason)

    # ------------------------------------------------------------- split / merge
    def split(self, labels: np.ndarray, n_outer: int, n_inner: int, kind: str = "head",
              reason: str = "a reshape that prunekit cannot factor") -> tuple[np.ndarray, np.ndarray]:
        """Labels of a width ``n_outer·n_inner`` viewed as ``(n_outer, n_inner)``.

        A width of fresh atoms is refined into products ``(outer, inner)``; a width
        already built as such products (or tiled with ``NONE``) gives its factors back.
        Anything else is frozen.
        """
        r = self.roots(labels).reshape(n_outer, n_inner)
        if n_outer == 1:
            return np.zeros(1, dtype=np.int64), r[0]
        if n_inner == 1:
            return r[:, 0], np.zeros(1, dtype=np.int64)
        if (r == r[:1]).all():
            return np.zeros(n_outer, dtype=np.int64), r[0]
        if (r == r[:, :1]).all():
            return r[:, 0], np.zeros(n_inner, dtype=np.int64)
        left, right = self.left[r], self.right[r]
        if (left >= 0).all():
            a, b = self.roots(left), self.roots(right)
            if (a == a[:, :1]).all() and (b == b[:1]).all():
                return a[:, 0], b[0]
        elif (left < 0).all() and (r != NONE).all() and len(np.unique(r)) == r.size:
            outer, inner = self.fresh(n_outer, kind), self.fresh(n_inner, self.kind_of(int(r.flat[0])))
            comp = self.product(outer, inner)
            self.parent[r.ravel()] = comp  # distinct base roots onto fresh products: no factor can recur
            return self.roots(outer), self.roots(inner)
        self.freeze_array(r.flatten(), reason)
        return np.zeros(n_outer, dtype=np.int64), np.zeros(n_inner, dtype=np.int64)

    def leaf_matrix(self, atoms: np.ndarray) -> np.ndarray:
        """``(n, k)`` base atoms whose removal removes each entry (``NONE``-padded), vectorized."""
        r = self.roots(atoms)
        comp = self.left[r] >= 0
        if not comp.any():
            return r[:, None]
        left = self.leaf_matrix(self.left[r[comp]])
        right = self.leaf_matrix(self.right[r[comp]])
        out = np.zeros((len(r), left.shape[1] + right.shape[1]), dtype=np.int64)
        out[~comp, 0] = r[~comp]
        out[comp, :left.shape[1]] = left
        out[comp, left.shape[1]:] = right
        return out
