"""Array-based binary sum tree for proportional prioritized sampling.

Schaul, Quan, Antonoglou & Silver (2016), *Prioritized Experience Replay*,
Appendix B.2.1 ("Proportional prioritization"): a sum-tree whose leaves hold the
priorities and whose internal nodes hold the sum of their children, so that the
total is at the root, an update costs O(log N) and sampling a leaf with probability
proportional to its value is a descent of O(log N).

Layout: the leaf count is padded to a power of two ``P >= capacity``; the tree is one
float64 array of length ``2 * P`` with the root at index 1, the children of node ``n``
at ``2n`` and ``2n + 1``, and leaf ``i`` at ``P + i`` (index 0 unused; padded leaves
stay 0). All operations act on a whole batch at once: the only Python loops are over
the ``log2(P)`` tree levels.
"""

from __future__ import annotations

import numpy as np

TOP_SEARCH_LEVEL = 11
"""Sampling searches the tree's first this many levels (2^11 nodes) with one cumulative sum
and a binary search, then descends the rest level by level; scattered updates recompute
those levels whole, with slices, instead of gathering the parents of each updated leaf."""


class SumTree:
    """A sum tree over ``capacity`` non-negative float64 leaves (Schaul et al. 2016, App. B.2.1).

    Internal nodes are always *recomputed* from their two children (never adjusted by
    deltas), so the tree is a deterministic function of its leaves: no drift builds up,
    and rebuilding from saved leaves reproduces every node bit for bit.

    Args:
        capacity: number of leaves, >= 1.

    Raises:
        ValueError: if ``capacity < 1``.
    """

    def __init__(self, capacity: int):
        capacity = int(capacity)
        if capacity < 1:
            raise ValueError(f"SumTree capacity must be >= 1, got {capacity}")
        self.capacity: int = capacity
        self._depth: int = max(0, (capacity - 1).bit_length())  # levels below the root
        self._num_leaves: int = 1 << self._depth  # P, a power of two >= capacity
        self._tree: np.ndarray = np.zeros(2 * self._num_leaves, dtype=np.float64)
        # The tree viewed as complex128: element n = tree[2n] + 1j * tree[2n + 1], i.e. the
        # left and right child sums of node n, fetched together in one gather.
        self._pairs: np.ndarray = self._tree.view(np.complex128)

    # ------------------------------------------------------------------ queries


    @property
    def nbytes(self) -> int:
        """Bytes of the tree array (``2 * leaves`` float64)."""
        return int(self._tree.nbytes)

    def total(self) -> float:
        """Sum of all leaves (the root), as a Python float."""
        return float(self._tree[1])

    def __getitem__(self, indices: np.ndarray | int) -> np.ndarray:
        """Leaf values at ``indices`` (``[K]`` int64, or an int) as float64.

        Raises:
            IndexError: if an index is outside ``[0, capacity)``.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.capacity):
            raise IndexError(f"SumTree leaf index out of range [0, {self.capacity})")
        return self._tree[self._num_leaves + idx]

    def find_prefix_sum(self, prefix: np.ndarray) -> np.ndarray:
        """For each prefix ``u`` the leaf ``i`` with ``cumsum[i-1] <= u < cumsum[i]``.

        Vectorized top-down descent (Schaul et al. 2016, App. B.2.1): at each node go left
        if ``u`` is below the left child's sum, else subtract it and go right.

        ``u`` is clamped into ``[0, total]`` first. Float rounding can still make ``u``
        overshoot a subtree's sum and reach a zero leaf (an empty slot or the padding);
        those few prefixes are descended again going right only into children with a
        positive sum, so a zero-priority leaf is never returned.

        Args:
            prefix: ``[K]`` float, values in ``[0, total())``.

        Returns:
            ``[K]`` int64 leaf indices in ``[0, capacity)``, each with a positive value.

        Raises:
            ValueError: if the tree's total is not positive or a prefix is NaN.
        """
        total = self._tree[1]
        if not total > 0.0:
            raise ValueError(f"cannot sample from a sum tree with total {total}; insert items with priority > 0 first")
        u = np.clip(np.asarray(prefix, dtype=np.float64), 0.0, total).reshape(-1)
        if not np.isfinite(u).all():
            raise ValueError("find_prefix_sum: prefixes must be finite")
        node = self._descend(u.copy(), careful=False)
        # Rounding can push u past a subtree's sum and into a zero leaf (an empty slot or
        # the padding): redo those few with the careful descent.
        bad = self._tree[node] <= 0.0
        if bad.any():
            node[bad] = self._descend(u[bad], careful=True)
        leaf = node - self._num_leaves
        np.minimum(leaf, self.capacity - 1, out=leaf)
        return leaf.reshape(np.shape(prefix))

    def _descend(self, u: np.ndarray, careful: bool) -> np.ndarray:
        """Tree node reached by each prefix ``u`` (``[K]`` float64, modified in place).

        ``careful``: go right only into a child with positive sum (never ends on a zero
        leaf of a positive subtree); otherwise the plain comparison, fewer array ops.
        """
        pairs = self._pairs
        levels = self._depth
        top = 0 if careful else min(self._depth, TOP_SEARCH_LEVEL)
        if top:
            # The top `top` levels in one step: a cumulative sum over the 2^top nodes of level
            # `top` and a binary search, instead of `top` gathers (the careful path does not
            # need the speed and keeps the plain descent).
            first = 1 << top
            cums = np.cumsum(self._tree[first : 2 * first])
            j = np.searchsorted(cums, u, side="right")
            np.minimum(j, first - 1, out=j)
            u -= np.where(j > 0, cums[j - 1], 0.0)
            np.maximum(u, 0.0, out=u)
            node = j + first
            levels -= top
        else:
            node = np.ones(u.shape, dtype=np.int64)
        go_right = np.empty(u.shape, dtype=bool)
        for _ in range(levels):
            children = pairs.take(node)  # complex: real = left child sum, imag = right
            left = children.real
            np.greater_equal(u, left, out=go_right)
            if careful:
                go_right &= children.imag > 0.0
            u -= left * go_right
            node <<= 1
            node += go_right.view(np.uint8)
        return node

    # ------------------------------------------------------------------ updates

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``indices`` to ``values`` and recompute their ancestors.

        Args:
            indices: ``[K]`` int64 leaf indices in ``[0, capacity)``; duplicates allowed,
                the last write of an index wins.
            values: ``[K]`` float, finite and ``>= 0``.

        Raises:
            ValueError: on mismatched shapes, out-of-range indices, or negative / non-finite values.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        val = np.asarray(values, dtype=np.float64).reshape(-1)
        if idx.shape != val.shape:
            raise ValueError(f"SumTree.update: {idx.shape[0]} indices but {val.shape[0]} values")
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= self.capacity:
            raise ValueError(f"SumTree.update: leaf index out of range [0, {self.capacity})")
        if not (np.isfinite(val).all() and val.min() >= 0.0):
            raise ValueError("SumTree.update: values must be finite and >= 0")
        # Sort (stable) and keep the last occurrence of each index: last write wins,
        # explicitly rather than relying on numpy's fancy-assignment order.
        order = np.argsort(idx, kind="stable")
        idx = idx[order]
        val = val[order]
        if idx.size > 1:
            last = np.empty(idx.shape, dtype=bool)
            np.not_equal(idx[1:], idx[:-1], out=last[:-1])
            last[-1] = True
            idx = idx[last]
            val = val[last]
        node = idx + self._num_leaves
        tree = self._tree
        if int(idx[-1]) - int(idx[0]) + 1 == idx.size:
            # A contiguous run of leaves (what a ring-buffer insert writes): slices, not gathers.
            lo = int(node[0])
            tree[lo : lo + idx.size] = val
            self._propagate_range(lo, lo + idx.size)
            return
        tree[node] = val
        self._propagate(node)

    def _propagate_range(self, lo: int, hi: int) -> None:
        """Recompute the ancestors of tree nodes ``[lo, hi)``, level by level (the same sums
        as :meth:`_propagate`, taken over slices)."""
        tree, pairs = self._tree, self._pairs
        for _ in range(self._depth):
            lo, hi = lo >> 1, ((hi - 1) >> 1) + 1
            children = pairs[lo:hi]
            tree[lo:hi] = children.real + children.imag

    def _propagate(self, node: np.ndarray) -> None:
        """Recompute the ancestors of sorted, unique tree nodes ``node``, level by level."""
        tree, pairs = self._tree, self._pairs
        node = node.copy()
        top = min(self._depth, TOP_SEARCH_LEVEL)
        for _ in range(self._depth - top):
            # Parents may repeat (siblings share one); they get the same value, so no dedupe.
            node >>= 1
            children = pairs.take(node)
            tree[node] = children.real + children.imag
        # The top levels (2^top - 1 nodes) are cheaper to recompute whole, slice by slice.
        self._recompute_above(1 << top)

    def _recompute_above(self, lo: int) -> None:
        """Recompute every node above level ``[lo, 2 lo)`` (``lo`` a power of two), level by
        level over slices: each parent = left + right."""
        pairs, tree = self._pairs, self._tree
        while lo > 1:
            half = lo >> 1
            children = pairs[half:lo]
            tree[half:lo] = children.real + children.imag
            lo = half

    def set_leaves(self, values: np.ndarray) -> None:
        """Replace all leaves at once: leaf ``i`` = ``values[i]``, the rest 0; O(P) rebuild.

        Args:
            values: ``[n]`` float, ``n <= capacity``, finite and ``>= 0``.

        Raises:
            ValueError: if there are too many values or they are negative / non-finite.
        """
        val = np.asarray(values, dtype=np.float64).reshape(-1)
        if val.shape[0] > self.capacity:
            raise ValueError(f"SumTree.set_leaves: {val.shape[0]} values for capacity {self.capacity}")
        if val.size and not (np.isfinite(val).all() and val.min() >= 0.0):
            raise ValueError("SumTree.set_leaves: values must be finite and >= 0")
        p = self._num_leaves
        self._tree[:] = 0.0
        self._tree[p : p + val.shape[0]] = val
        self._recompute_above(p)  # same arithmetic as _propagate

    def leaves(self, n: int | None = None) -> np.ndarray:
        """A float64 copy of the first ``n`` leaves (default: all ``capacity``)."""
        n = self.capacity if n is None else int(n)
        p = self._num_leaves
        return self._tree[p : p + n].copy()
