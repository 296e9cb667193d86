"""The ask/tell protocol every optimiser follows, and the evaluator protocol.

An optimiser proposes a batch of points in the unit hypercube (:meth:`Optimizer.ask`), the
caller evaluates them however it likes (in parallel, remotely, from a cache) and reports the
scores back (:meth:`Optimizer.tell`); the optimiser never calls an objective itself. Its whole
state, random generator included, round-trips through :meth:`state_dict` /
:meth:`load_state_dict` as JSON-able data, which is what makes a resumed study exact.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Optimizer", "Evaluator", "rng_state", "restore_rng"]


class Optimizer:
    """Base class of ask/tell optimisers (maximising). Subclasses override the four methods."""

    name = "optimizer"

    def ask(self) -> np.ndarray:
        """The next batch of points to evaluate, shape ``(n, dim)`` in ``[0, 1]``."""
        raise NotImplementedError

    def tell(self, points: np.ndarray, scores: np.ndarray) -> None:
        """Report the scores (higher is better, ``-inf`` for infeasible) of the asked batch."""
        raise NotImplementedError

    @property
    def done(self) -> bool:
        """Whether the optimiser has nothing more to ask."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """All mutable state as JSON-able data."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        raise NotImplementedError

    def params(self) -> dict:
        """The constructor arguments (logged to MLflow)."""
        return {}


@runtime_checkable
class Evaluator(Protocol):
    """Anything that maps a full engine configuration to a flat dict of float metrics.

    It must be picklable (it is shipped to process-pool workers or Dask workers) and
    deterministic for a given configuration (an exact resume relies on it).
    """

    def __call__(self, config: dict) -> dict:  # pragma: no cover - protocol
        ...


def rng_state(rng: np.random.Generator) -> dict:
    """A generator's bit-generator state as JSON-able data."""
    return rng.bit_generator.state


def restore_rng(state: dict) -> np.random.Generator:
    """A generator positioned exactly where ``state`` was taken."""
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)
