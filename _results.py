"""Typed results of the Python API (:mod:`servetune`): frozen dataclasses with ``to_dict()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SimulationReport", "Candidate", "TuneResult"]


@dataclass(frozen=True)
class SimulationReport:
    """One simulated run (``servetune simulate``).

    Attributes:
        engine: the engine's canonical name.
        config: the resolved configuration that was simulated.
        seed: the simulation seed.
        workload: the workload's descriptor (source, size, rate).
        model_uri: the step-time model used.
        metrics: completed, throughput, goodput, latency statistics (``ttft_ms``: mean, p50...).
        domain: the run against the model's training domain (``known``, ``outside``, ...).
        interval: the prediction interval (``level``, ``ratios``, ``metrics``: key -> [low,
            mid, high]); ``None`` when the model has none.
        result: the full :class:`~servetune.tuner.simulator.SimulationResult` (requests,
            ``flat_metrics()``, ``write_parquet()``).
    """

    engine: str
    config: dict
    seed: int
    workload: dict
    model_uri: str
    metrics: dict
    domain: dict
    interval: dict | None
    result: Any = field(default=None, repr=False, compare=False)
    trace: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready summary (what ``servetune simulate --json`` prints)."""
        return {"engine": self.engine, "config": self.config, "seed": self.seed,
                "workload": self.workload, "model_uri": self.model_uri,
                "metrics": self.metrics, "domain": self.domain, "interval": self.interval}


@dataclass(frozen=True)
class Candidate:
    """One recommended configuration of a study (or the engine default, ``baseline``).

    Attributes:
        name: ``rank1``... or ``default``.
        rank: 1-based rank; ``None`` for the baseline.
        baseline: whether this is the engine's default configuration.
        config: the configuration.
        objective: its predicted objective value.
        metrics: its predicted metrics.
        domain: ``status`` (inside/outside/unknown) and a ``message``.
        interval: the prediction interval, or ``None``.
        launch: how to start the engine with it (``command``, ``cli``, ``env``).
    """

    name: str
    rank: int | None
    baseline: bool
    config: dict
    objective: float | None
    metrics: dict
    domain: dict
    interval: dict | None
    launch: dict

    @classmethod
    def from_dict(cls, data: dict) -> "Candidate":
        """From one entry of the study summary's ``candidates``."""
        return cls(name=data["name"], rank=data.get("rank"), baseline=bool(data["baseline"]),
                   config=data["config"], objective=data.get("objective"),
                   metrics=data.get("metrics", {}), domain=data.get("domain", {}),
                   interval=data.get("interval"), launch=data.get("launch", {}))

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"name": self.name, "rank": self.rank, "baseline": self.baseline,
                "config": self.config, "objective": self.objective, "metrics": self.metrics,
                "domain": self.domain, "interval": self.interval, "launch": self.launch}


@dataclass(frozen=True)
class TuneResult:
    """A finished tuning study (``servetune tune``).

    Attributes:
        study: the study's name.
        study_path: its folder (checkpoint, candidates, report).
        best: the recommended candidate (``None`` if none gave a result).
        baseline: the engine default, evaluated the same way.
        candidates: the top-K tuned candidates, best first (the baseline excluded).
        notes: the verdict lines (domain, near-best default, ...).
        near_best: whether the engine default is already near the best.
        improvement_over_baseline: best / baseline objective, when both exist.
        summary: the whole ``servetune tune --json`` document.
    """

    study: str
    study_path: Path
    best: Candidate | None
    baseline: Candidate | None
    candidates: tuple[Candidate, ...]
    notes: tuple[str, ...]
    near_best: Any
    improvement_over_baseline: float | None
    summary: dict = field(repr=False, compare=False)

    @classmethod
    def from_summary(cls, summary: dict) -> "TuneResult":
        """From :func:`servetune.tuner._job.run_tune`'s summary."""
        every = [Candidate.from_dict(c) for c in summary["candidates"]]
        tuned = tuple(c for c in every if not c.baseline)
        baseline = next((c for c in every if c.baseline), None)
        return cls(study=summary["study"]["name"], study_path=Path(summary["study"]["path"]),
                   best=tuned[0] if tuned else None, baseline=baseline, candidates=tuned,
                   notes=tuple(summary.get("notes", ())), near_best=summary.get("near_best"),
                   improvement_over_baseline=summary.get("improvement_over_baseline"),
                   summary=summary)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"study": self.study, "study_path": str(self.study_path),
                "best": None if self.best is None else self.best.to_dict(),
                "baseline": None if self.baseline is None else self.baseline.to_dict(),
                "candidates": [c.to_dict() for c in self.candidates],
                "notes": list(self.notes), "near_best": self.near_best,
                "improvement_over_baseline": self.improvement_over_baseline}
