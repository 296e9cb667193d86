"""The linear base step time under a model's trees: non-negative least squares on relative error.

A feature set may name ``base_terms`` (features that grow with a step's work). The base is
``intercept + sum(coef[j] * x[j])`` with every coefficient >= 0, fitted to minimise the squared
*relative* error against the measured durations; the trees then fit log(duration / base). Trees
are flat outside the range they were trained on; the base keeps growing with the work, so a step
larger than any trained on is predicted along the base rather than clipped.
"""

from __future__ import annotations

import numpy as np

from servetune import InputError
from servetune.models._compiled import NO_BASE

__all__ = ["fit_linear_base"]


def fit_linear_base(features: np.ndarray, base_indices: np.ndarray,
                    duration_ms: np.ndarray) -> tuple[np.ndarray, float]:
    """``(coef, intercept)``: ``coef`` has one float64 entry per feature column (0 outside
    ``base_indices``); NaN features count as 0, as in ``linear_base_margin``.

    Raises:
        InputError: a duration is not finite and > 0.
    """
    from scipy.optimize import nnls

    base_indices = np.asarray(base_indices, dtype=np.int64)
    if base_indices.size == 0:
        return NO_BASE, 0.0
    y = np.asarray(duration_ms, dtype=np.float64)
    bad = ~np.isfinite(y) | (y <= 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"expected a finite duration > 0, got {y[row]}", row=row + 1,
                         field="duration_ms")
    terms = np.nan_to_num(np.asarray(features, dtype=np.float64)[:, base_indices], nan=0.0)
    design = np.column_stack([np.ones(len(y)), terms])
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0  # a term that is always 0 keeps coefficient 0
    solution, _ = nnls(design / scale / y[:, None], np.ones(len(y)), maxiter=50 * design.shape[1])
    solution = solution / scale
    coef = np.zeros(features.shape[1], dtype=np.float64)
    coef[base_indices] = solution[1:]
    return coef, float(solution[0])
