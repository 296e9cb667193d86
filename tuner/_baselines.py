"""Baseline optimisers behind the same ask/tell protocol: random search and grid search.

Example:
    >>> rs = RandomSearch(dim=3, budget=10, batch_size=4, seed=0)
    >>> [len(rs.ask()) for _ in range(1)]
    [4]
"""

from __future__ import annotations

import math

import numpy as np

from servetune import ConfigError
from servetune.tuner._base import Optimizer, restore_rng, rng_state

__all__ = ["RandomSearch", "GridSearch"]


class _Tracked(Optimizer):
    """Shared best-score bookkeeping of the baselines."""

    def __init__(self) -> None:
        self.best_score = -math.inf
        self.best_position: np.ndarray | None = None
        self.history: list[float] = []
        self.iteration = 0
        self._pending: np.ndarray | None = None

    def _record(self, points: np.ndarray, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        if self._pending is None or scores.shape != (len(self._pending),):
            raise ConfigError(f"tell() expects one score per asked point; got {scores.shape}")
        if not np.allclose(points, self._pending):
            raise ConfigError("tell() got points that were not asked")
        best = int(np.argmax(scores))
        if scores[best] > self.best_score:
            self.best_score = float(scores[best])
            self.best_position = np.asarray(points[best], dtype=np.float64).copy()
        self.history.append(self.best_score)
        self.iteration += 1
        self._pending = None

    def _base_state(self) -> dict:
        return {"optimizer": self.name, "iteration": self.iteration,
                "best_score": None if not math.isfinite(self.best_score) else self.best_score,
                "best_position": None if self.best_position is None
                else self.best_position.tolist(),
                "history": [None if not math.isfinite(h) else h for h in self.history]}

    def _load_base(self, state: dict) -> None:
        if state.get("optimizer") != self.name:
            raise ConfigError(f"checkpoint holds a {state.get('optimizer')!r} state, not "
                              f"{self.name!r}")
        self.iteration = int(state["iteration"])
        self.best_score = -math.inf if state["best_score"] is None else state["best_score"]
        self.best_position = (None if state["best_position"] is None
                              else np.asarray(state["best_position"], dtype=np.float64))
        self.history = [-math.inf if h is None else h for h in state["history"]]
        self._pending = None


class RandomSearch(_Tracked):
    """Uniform random points, ``batch_size`` per ask, ``budget`` in total."""

    name = "random"

    def __init__(self, dim: int, budget: int, batch_size: int = 30, seed: int = 0) -> None:
        super().__init__()
        if budget < 1 or batch_size < 1:
            raise ConfigError(f"random search needs budget >= 1 and batch_size >= 1; got "
                              f"{budget} and {batch_size}")
        self.dim, self.budget, self.batch_size, self.seed = dim, budget, batch_size, seed
        self._rng = np.random.default_rng(seed)
        self.asked = 0

    def params(self) -> dict:
        return {"optimizer": self.name, "budget": self.budget, "batch_size": self.batch_size,
                "seed": self.seed}

    @property
    def done(self) -> bool:
        return self.asked >= self.budget and self._pending is None

    def ask(self) -> np.ndarray:
        if self.done:
            raise ConfigError("random search has spent its budget")
        if self._pending is None:
            n = min(self.batch_size, self.budget - self.asked)
            self._pending = self._rng.random((n, self.dim))
            self.asked += n
        return self._pending.copy()

    def tell(self, points: np.ndarray, scores: np.ndarray) -> None:
        self._record(points, scores)

    def state_dict(self) -> dict:
        return {**self._base_state(), "asked": self.asked, "rng": rng_state(self._rng),
                "budget": self.budget, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self._load_base(state)
        self.asked = int(state["asked"])
        self._rng = restore_rng(state["rng"])


class GridSearch(_Tracked):
    """Every point of a fixed list (encoded grid configurations), ``batch_size`` at a time."""

    name = "grid"

    def __init__(self, points: np.ndarray, batch_size: int = 30) -> None:
        super().__init__()
        self.points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if len(self.points) == 0 or batch_size < 1:
            raise ConfigError("grid search needs at least one point and batch_size >= 1")
        self.batch_size = batch_size
        self.cursor = 0

    def params(self) -> dict:
        return {"optimizer": self.name, "points": len(self.points),
                "batch_size": self.batch_size}

    @property
    def done(self) -> bool:
        return self.cursor >= len(self.points) and self._pending is None

    def ask(self) -> np.ndarray:
        if self.done:
            raise ConfigError("grid search has visited every point")
        if self._pending is None:
            end = min(self.cursor + self.batch_size, len(self.points))
            self._pending = self.points[self.cursor:end]
            self.cursor = end
        return self._pending.copy()

    def tell(self, points: np.ndarray, scores: np.ndarray) -> None:
        self._record(points, scores)

    def state_dict(self) -> dict:
        return {**self._base_state(), "cursor": self.cursor, "size": len(self.points)}

    def load_state_dict(self, state: dict) -> None:
        self._load_base(state)
        if state.get("size") != len(self.points):
            raise ConfigError(f"checkpoint grid has {state.get('size')} points; this space's "
                              f"grid has {len(self.points)}")
        self.cursor = int(state["cursor"])
