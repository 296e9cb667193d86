"""Branch-free evaluation of a compiled XGBoost forest, bit-identical to
``servetune.models.forest_predict_row`` on rows without NaN, plus the input box of a walk."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["fast_forest_margin", "fast_forest_margin_box", "pack_forest"]


# ---------------------------------------------------------------------------------------------
# branchless forest evaluation
# ---------------------------------------------------------------------------------------------

_GROUP = 16  # trees walked side by side, so their dependent loads overlap


@numba.njit(cache=True)
def fast_forest_margin(feat, thr, left, value, roots, max_depth, base_margin, x, nodes):
    """The forest's raw margin, equal bit for bit to ``models.forest_predict_row`` for a row
    without NaN, on the layout of ``_simulate.pack_forest`` (children at ``left`` and
    ``left + 1``, leaves loop onto themselves): every tree takes ``max_depth`` branch-free steps,
    16 trees at a time, and leaf values are added in tree order as the reference does."""
    total = base_margin
    n_trees = roots.shape[0]
    for g0 in range(0, n_trees, _GROUP):
        m = min(_GROUP, n_trees - g0)
        for j in range(m):
            nodes[j] = roots[g0 + j]
        for _ in range(max_depth):
            for j in range(m):
                nd = nodes[j]
                nodes[j] = left[nd] + (x[feat[nd]] >= thr[nd])
        for j in range(m):
            total += value[nodes[j]]
    return total


@numba.njit(cache=True)
def fast_forest_margin_box(feat, thr, left, value, roots, max_depth, base_margin, x, nodes, lo,
                           hi):
    """:func:`fast_forest_margin`, also narrowing ``lo``/``hi`` (reset by the caller to -inf/+inf)
    to the box of inputs that take exactly the same path through every tree: any ``y`` with
    ``lo <= y < hi`` feature-wise gets the same margin, bit for bit, without a walk."""
    total = base_margin
    n_trees = roots.shape[0]
    for g0 in range(0, n_trees, _GROUP):
        m = min(_GROUP, n_trees - g0)
        for j in range(m):
            nodes[j] = roots[g0 + j]
        for _ in range(max_depth):
            for j in range(m):
                nd = nodes[j]
                f = feat[nd]
                t = thr[nd]
                if x[f] >= t:
                    nodes[j] = left[nd] + 1
                    if t > lo[f]:
                        lo[f] = t
                else:
                    nodes[j] = left[nd]
                    if t < hi[f]:
                        hi[f] = t
        for j in range(m):
            total += value[nodes[j]]
    return total


def pack_forest(forest) -> tuple:
    """The branch-free layout of a ``CompiledForest``: ``(feat, thr, left, max_depth, ok)``.

    Leaves get feature 0, threshold +inf and ``left`` = themselves, so a walk of ``max_depth``
    steps ``node = left[node] + (x[feat] >= thr)`` ends on each tree's leaf. ``ok`` is False
    when some split's right child is not ``left + 1`` (then the generic evaluator is used).
    """
    is_leaf = forest.feature < 0
    n = forest.feature.shape[0]
    ok = bool(np.all(is_leaf | (forest.right == forest.left + 1)))
    feat = np.where(is_leaf, 0, forest.feature).astype(np.int32)
    thr = np.where(is_leaf, np.float32(np.inf), forest.threshold).astype(np.float32)
    left = np.where(is_leaf, np.arange(n), forest.left).astype(np.int32)
    max_depth = -1
    frontier = np.asarray(forest.roots, dtype=np.int64)
    while frontier.size:  # one tree level at a time
        max_depth += 1
        inner = frontier[~is_leaf[frontier]]
        frontier = np.concatenate([forest.left[inner], forest.right[inner]]).astype(np.int64)
    max_depth = max(max_depth, 0)
    return feat, thr, left, max_depth, ok
