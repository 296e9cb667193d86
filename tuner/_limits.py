"""Bounds on the size of a tuning study, checked before any work starts.

Example:
    >>> check_study_size(30, 20)
"""

from __future__ import annotations

from servetune import ConfigError

__all__ = ["MAX_PARTICLES", "MAX_EVALUATIONS", "check_study_size", "check_grid_size"]

#: the largest swarm (or batch) a study may ask for
MAX_PARTICLES = 10_000
#: the most simulations one study may plan (particles x iterations)
MAX_EVALUATIONS = 1_000_000


def check_study_size(particles: int, iterations: int) -> None:
    """Refuse a study too large to finish: more than :data:`MAX_PARTICLES` particles or more
    than :data:`MAX_EVALUATIONS` planned simulations."""
    if particles > MAX_PARTICLES:
        raise ConfigError(f"--particles {particles:,d} is beyond the limit of {MAX_PARTICLES:,d}; "
                          "a larger swarm cannot finish (each particle is one simulation per "
                          "iteration)")
    if particles * iterations > MAX_EVALUATIONS:
        raise ConfigError(f"--particles x --iterations = {particles * iterations:,d} simulations "
                          f"is beyond the limit of {MAX_EVALUATIONS:,d}; use fewer particles or "
                          "iterations")


def check_grid_size(space: str, size: int, build_limit: int = MAX_EVALUATIONS) -> None:
    """Refuse a grid search whose grid (``size`` points, computed from the parameters' value
    counts, never by building it) is larger than a study may evaluate (each point is one
    simulation: :data:`MAX_EVALUATIONS`) or than ``build_limit``."""
    limit = min(MAX_EVALUATIONS, build_limit)
    if size > limit:
        raise ConfigError(f"--optimizer grid: space {space!r} has {size:,d} grid points (one "
                          f"simulation each), beyond the limit of {limit:,d}; give its "
                          "parameters a coarser 'step', fewer choices or levels, or use "
                          "--optimizer pso/random with a budget")
