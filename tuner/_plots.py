"""Study plots as PNG (or SVG) bytes: convergence and the TTFT-vs-throughput Pareto view.

Example:
    >>> png = convergence_png(study)  # doctest: +SKIP
    >>> png[:4] == b"\\x89PNG"  # doctest: +SKIP
    True
"""

from __future__ import annotations

import io
import math

import numpy as np

__all__ = ["convergence_png", "pareto_png", "pareto_front"]


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig, plt, fmt: str = "png") -> bytes:
    buffer = io.BytesIO()
    extra = {"metadata": {"Date": None}} if fmt == "svg" else {}  # SVG: reproducible bytes
    fig.savefig(buffer, format=fmt, dpi=110, bbox_inches="tight", **extra)
    plt.close(fig)
    return buffer.getvalue()


def convergence_png(study, fmt: str = "png") -> bytes:
    """Every evaluation's score (dots) and the best so far (line) against evaluations
    (``fmt="svg"``: SVG text as bytes)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    scored = [(r.index, r.score) for r in study.records if r.status == "ok"]
    if scored:
        idx, score = np.array(scored).T
        ax.scatter(idx + 1, score, s=8, alpha=0.35, label="evaluation")
        ax.plot(idx + 1, np.maximum.accumulate(score), color="C3", lw=2, label="best so far")
    bad = [r.index for r in study.records if r.status != "ok"]
    if bad and scored:
        ax.scatter(np.array(bad) + 1, np.full(len(bad), min(s for _, s in scored)), marker="x",
                   s=12, color="grey", label="infeasible / failed")
    ax.set_xlabel("evaluation")
    ax.set_ylabel(f"objective ({study.objective.name})")
    ax.set_title(f"{study.spec.name}: convergence")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig, plt, fmt)


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``points`` (column 0 minimised, column 1 maximised)."""
    order = np.lexsort((-points[:, 1], points[:, 0]))
    front, best = [], -math.inf
    for i in order:
        if points[i, 1] > best:
            front.append(i)
            best = points[i, 1]
    return np.array(front, dtype=int)


def pareto_png(study, candidates: list[dict] | None = None,
               latency_key: str = "ttft_p90_ms",
               throughput_key: str = "output_throughput_tok_s", fmt: str = "png") -> bytes:
    """p90 TTFT vs output throughput of every evaluated configuration, Pareto front marked
    (``fmt="svg"``: SVG text as bytes)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = [(r.metrics.get(latency_key), r.metrics.get(throughput_key)) for r in study.records
            if r.status == "ok" and not r.cached]
    rows = np.array([(a, b) for a, b in rows if a is not None and b is not None], dtype=float)
    if len(rows):
        ax.scatter(rows[:, 0], rows[:, 1], s=10, alpha=0.4, label="evaluated")
        front = rows[pareto_front(rows)]
        ax.plot(front[:, 0], front[:, 1], "-o", color="C3", ms=4, label="Pareto front")
    ax.axvline(study.objective.slo.ttft_ms, color="grey", ls="--", lw=1, label="TTFT SLO")
    for c in candidates or []:
        m = c.get("metrics") or {}
        if m.get(latency_key) is None:
            continue
        marker = "s" if c["label"] == "baseline" else "*"
        ax.scatter(m[latency_key], m[throughput_key], marker=marker, s=90, edgecolor="black",
                   color="gold" if marker == "*" else "white", zorder=5)
        ax.annotate(c["label"], (m[latency_key], m[throughput_key]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"{latency_key} (ms, log)")
    ax.set_ylabel(f"{throughput_key}")
    ax.set_title(f"{study.spec.name}: TTFT vs throughput")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig, plt, fmt)
