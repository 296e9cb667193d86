"""Particle swarm optimisation in the unit hypercube, ask/tell, mixed-integer aware.

Particles move continuously in ``[0, 1]^dim``; the search space decodes each position to a
valid configuration (ints and enums are snapped, unordered enums take one-hot dimensions decoded
by argmax), so integer and categorical knobs need no special arithmetic here.

Update (maximising)::

    v <- w(t) v + c1 r1 (pbest - x) + c2 r2 (gbest - x),  |v| <= v_max
    x <- x + v, then boundary handling (reflect | clip | random)

``w(t)`` follows a linear or exponential schedule from ``inertia_start`` to ``inertia_end``
over ``iterations`` (or stays constant). The swarm stops after ``iterations`` or, when
``patience > 0``, after ``patience`` iterations in which the best score improved by less than
``tolerance`` (relative).

Example:
    >>> pso = PSO(dim=2, config=PSOConfig(particles=4, iterations=3), seed=1)
    >>> while not pso.done:
    ...     x = pso.ask()
    ...     pso.tell(x, -((x - 0.3) ** 2).sum(axis=1))
    >>> pso.best_score <= 0
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from servetune import ConfigError
from servetune.tuner._base import Optimizer, restore_rng, rng_state

__all__ = ["PSO", "PSOConfig", "BOUNDARY_MODES", "INERTIA_SCHEDULES"]

BOUNDARY_MODES = ("reflect", "clip", "random")
INERTIA_SCHEDULES = ("linear", "exp", "constant")


@dataclass(frozen=True)
class PSOConfig:
    """PSO settings.

    Attributes:
        particles: swarm size (points per iteration).
        iterations: most iterations (ask/tell rounds).
        inertia_start, inertia_end: inertia weight at the first and last iteration.
        inertia_schedule: ``linear``, ``exp`` (geometric) or ``constant`` (``inertia_start``).
        cognitive: c1, pull towards the particle's own best.
        social: c2, pull towards the swarm's best.
        max_velocity: velocity clamp per dimension, as a fraction of the unit range.
        boundary: ``random`` (re-draw the coordinate; the default), ``reflect`` (mirror and
            reverse) or ``clip`` (stop and zero the velocity).
        patience: stop after this many iterations without improvement (0: never).
        tolerance: relative improvement that counts for ``patience``.
    """

    particles: int = 30
    iterations: int = 20
    inertia_start: float = 0.9
    inertia_end: float = 0.4
    inertia_schedule: str = "linear"
    cognitive: float = 1.5
    social: float = 1.5
    max_velocity: float = 0.3
    # "random" re-draws a coordinate that leaves [0, 1]: on the plateau-shaped goodput landscapes
    # of serving configurations it keeps the swarm exploring; on 30 tuning seeds (100-129, not the
    # benchmark's 0-9) of the transformers-cb benchmark it reached the grid optimum in 29/30 runs
    # against 23/30 for "reflect" (benchmarks/tune_efficiency.py, BENCHMARKS.md).
    boundary: str = "random"
    patience: int = 0
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        if self.particles < 1 or self.iterations < 1:
            raise ConfigError(f"PSO needs particles >= 1 and iterations >= 1; got "
                              f"{self.particles} and {self.iterations}")
        if self.boundary not in BOUNDARY_MODES:
            raise ConfigError(f"PSO boundary must be one of {', '.join(BOUNDARY_MODES)}; got "
                              f"{self.boundary!r}")
        if self.inertia_schedule not in INERTIA_SCHEDULES:
            raise ConfigError(f"PSO inertia_schedule must be one of "
                              f"{', '.join(INERTIA_SCHEDULES)}; got {self.inertia_schedule!r}")
        if not 0 < self.max_velocity <= 1:
            raise ConfigError(f"PSO max_velocity must be in (0, 1]; got {self.max_velocity}")
        if self.cognitive < 0 or self.social < 0 or self.patience < 0:
            raise ConfigError("PSO cognitive, social and patience must be >= 0")

    def inertia(self, iteration: int) -> float:
        """Inertia weight at 0-based ``iteration``."""
        if self.inertia_schedule == "constant" or self.iterations == 1:
            return self.inertia_start
        frac = min(iteration / (self.iterations - 1), 1.0)
        if self.inertia_schedule == "linear":
            return self.inertia_start + frac * (self.inertia_end - self.inertia_start)
        ratio = self.inertia_end / self.inertia_start
        return self.inertia_start * math.pow(ratio, frac)


class PSO(Optimizer):
    """A seeded particle swarm (one ``np.random.Generator`` of its own).

    Args:
        dim: dimension of the encoded space.
        config: the swarm settings.
        seed: seed of the swarm's generator.
        initial: optional points (rows in ``[0, 1]``) placed first in the initial swarm, e.g.
            the engine default; the rest are drawn uniformly.
    """

    name = "pso"

    def __init__(self, dim: int, config: PSOConfig = PSOConfig(), seed: int = 0,
                 initial: np.ndarray | None = None) -> None:
        self.dim = int(dim)
        self.config = config
        self.seed = int(seed)
        self.initial = None if initial is None else np.atleast_2d(np.asarray(initial, float))
        self._rng = np.random.default_rng(self.seed)
        self.iteration = 0
        self.positions: np.ndarray | None = None
        self.velocities: np.ndarray | None = None
        self.pbest_positions: np.ndarray | None = None
        self.pbest_scores: np.ndarray | None = None
        self.best_position: np.ndarray | None = None
        self.best_score = -math.inf
        self.history: list[float] = []
        self._stall = 0
        self._stopped = False

    def params(self) -> dict:
        return {"optimizer": self.name, "seed": self.seed, **asdict(self.config)}

    @property
    def done(self) -> bool:
        return self._stopped or self.iteration >= self.config.iterations

    def ask(self) -> np.ndarray:
        if self.done:
            raise ConfigError("the swarm has finished; ask() has nothing more to propose")
        if self.positions is None:
            self._initialise()
        return self.positions.copy()

    def tell(self, points: np.ndarray, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        if self.positions is None or scores.shape != (self.config.particles,):
            raise ConfigError(f"tell() expects {self.config.particles} scores for the asked "
                              f"swarm; got shape {scores.shape}")
        if not np.allclose(points, self.positions):
            raise ConfigError("tell() got points that are not the swarm's current positions")
        improved = scores > self.pbest_scores
        self.pbest_scores = np.where(improved, scores, self.pbest_scores)
        self.pbest_positions[improved] = self.positions[improved]
        leader = int(np.argmax(self.pbest_scores))
        previous = self.best_score
        if self.pbest_scores[leader] > self.best_score:
            self.best_score = float(self.pbest_scores[leader])
            self.best_position = self.pbest_positions[leader].copy()
        self.history.append(self.best_score)
        gain = self.best_score - previous
        if math.isfinite(previous) and gain <= self.config.tolerance * max(abs(previous), 1e-12):
            self._stall += 1
        else:
            self._stall = 0
        self.iteration += 1
        if self.config.patience and self._stall >= self.config.patience:
            self._stopped = True
        if not self.done:
            self._move()

    # -- internals --------------------------------------------------------------------------
    def _initialise(self) -> None:
        n, cfg = self.config.particles, self.config
        positions = self._rng.random((n, self.dim))
        if self.initial is not None:
            k = min(len(self.initial), n)
            positions[:k] = np.clip(self.initial[:k], 0.0, 1.0)
        self.positions = positions
        self.velocities = self._rng.uniform(-cfg.max_velocity, cfg.max_velocity, (n, self.dim))
        self.pbest_positions = positions.copy()
        self.pbest_scores = np.full(n, -math.inf)

    def _move(self) -> None:
        cfg = self.config
        n = cfg.particles
        w = cfg.inertia(self.iteration)
        r1 = self._rng.random((n, self.dim))
        r2 = self._rng.random((n, self.dim))
        leader = self.best_position if self.best_position is not None else self.positions[0]
        v = (w * self.velocities
             + cfg.cognitive * r1 * (self.pbest_positions - self.positions)
             + cfg.social * r2 * (leader - self.positions))
        v = np.clip(v, -cfg.max_velocity, cfg.max_velocity)
        x = self.positions + v
        if cfg.boundary == "reflect":
            low, high = x < 0.0, x > 1.0
            x = np.where(low, -x, np.where(high, 2.0 - x, x))
            v = np.where(low | high, -v, v)
            x = np.clip(x, 0.0, 1.0)
        elif cfg.boundary == "clip":
            out = (x < 0.0) | (x > 1.0)
            x = np.clip(x, 0.0, 1.0)
            v = np.where(out, 0.0, v)
        else:
            out = (x < 0.0) | (x > 1.0)
            redraw = self._rng.random(x.shape)
            x = np.where(out, redraw, x)
        self.positions, self.velocities = x, v

    def state_dict(self) -> dict:
        def arr(a):
            return None if a is None else a.tolist()
        return {
            "optimizer": self.name, "dim": self.dim, "seed": self.seed,
            "config": asdict(self.config), "iteration": self.iteration,
            "positions": arr(self.positions), "velocities": arr(self.velocities),
            "pbest_positions": arr(self.pbest_positions),
            "pbest_scores": None if self.pbest_scores is None else [
                _num(s) for s in self.pbest_scores],
            "best_position": arr(self.best_position), "best_score": _num(self.best_score),
            "history": [_num(h) for h in self.history], "stall": self._stall,
            "stopped": self._stopped, "rng": rng_state(self._rng),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("optimizer") != self.name or state.get("dim") != self.dim:
            raise ConfigError("checkpoint is not a PSO state of this space's dimension")
        if state.get("config") != asdict(self.config):
            raise ConfigError(f"checkpoint PSO settings {state.get('config')} differ from "
                              f"{asdict(self.config)}; resume with the study's own settings")

        def arr(a):
            return None if a is None else np.asarray(a, dtype=np.float64)
        self.iteration = int(state["iteration"])
        self.positions = arr(state["positions"])
        self.velocities = arr(state["velocities"])
        self.pbest_positions = arr(state["pbest_positions"])
        self.pbest_scores = (None if state["pbest_scores"] is None else
                             np.array([_unnum(s) for s in state["pbest_scores"]]))
        self.best_position = arr(state["best_position"])
        self.best_score = _unnum(state["best_score"])
        self.history = [_unnum(h) for h in state["history"]]
        self._stall = int(state["stall"])
        self._stopped = bool(state["stopped"])
        self._rng = restore_rng(state["rng"])


def _num(x: float):
    """JSON has no infinities: -inf (nothing feasible yet) is stored as None."""
    return None if not math.isfinite(x) else float(x)


def _unnum(x) -> float:
    return -math.inf if x is None else float(x)
