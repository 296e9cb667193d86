"""Diagnostic figures logged with every training (matplotlib objects, no pyplot global state)."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["predicted_vs_measured", "error_by_batch_size", "feature_importance_plot"]


def _figure(width: float = 6.0, height: float = 4.5):
    from matplotlib.figure import Figure  # Agg canvas by default; no pyplot state

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def predicted_vs_measured(y_true: np.ndarray, y_pred: np.ndarray, title: str):
    """Log-log scatter of predicted against measured step time, with the y = x line."""
    fig, ax = _figure()
    ax.scatter(y_true, y_pred, s=3, alpha=0.3, linewidths=0)
    lo = float(min(np.min(y_true), np.min(y_pred)))
    hi = float(max(np.max(y_true), np.max(y_pred)))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured step time (ms)")
    ax.set_ylabel("predicted step time (ms)")
    ax.set_title(title)
    return fig


def error_by_batch_size(num_seqs: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray):
    """Median and p90 absolute percentage error per batch-size bin (sequences in the step)."""
    ape = np.abs(y_pred - y_true) / y_true * 100.0
    edges = np.unique(np.quantile(num_seqs, np.linspace(0, 1, 11)))
    bins = pd.cut(num_seqs, bins=edges, include_lowest=True, duplicates="drop")
    grouped = pd.Series(ape).groupby(np.asarray(bins.astype(str)), sort=False)
    stats = pd.DataFrame({"p50": grouped.median(), "p90": grouped.quantile(0.9),
                          "n": grouped.size()})
    stats = stats.loc[[str(c) for c in bins.categories if str(c) in stats.index]]
    fig, ax = _figure(7.0, 4.5)
    x = np.arange(len(stats))
    ax.bar(x - 0.2, stats.p50, width=0.4, label="p50 APE")
    ax.bar(x + 0.2, stats.p90, width=0.4, label="p90 APE")
    ax.set_xticks(x, stats.index, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("sequences in the step")
    ax.set_ylabel("absolute percentage error (%)")
    ax.set_title("held-out error by batch size")
    ax.legend()
    return fig


def feature_importance_plot(importance: pd.Series):
    """Horizontal bars of the booster's gain per feature."""
    ordered = importance.sort_values()
    fig, ax = _figure(6.0, 0.3 * len(ordered) + 1.5)
    ax.barh(ordered.index, ordered.values)
    ax.set_xlabel("gain")
    ax.set_title("feature importance")
    return fig
