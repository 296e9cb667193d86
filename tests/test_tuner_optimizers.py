"""Ask/tell optimisers: PSO mechanics and exact state round-trips, random and grid baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from servetune import ConfigError
from servetune.tuner import PSO, GridSearch, PSOConfig, RandomSearch


def _rastrigin_like(x: np.ndarray) -> np.ndarray:
    """A multimodal bowl with its maximum 0 at x = 0.62 in every dimension."""
    z = (x - 0.62) * 4
    return -(z ** 2 - 0.3 * np.cos(2 * np.pi * z) + 0.3).sum(axis=1)


def _drive(opt, fn=_rastrigin_like, stop_after: int | None = None):
    rounds = 0
    while not opt.done and (stop_after is None or rounds < stop_after):
        x = opt.ask()
        opt.tell(x, fn(x))
        rounds += 1
    return opt


def test_pso_beats_random_search_at_the_same_budget_over_seeds():
    pso_best, rnd_best = [], []
    for seed in range(8):
        pso = _drive(PSO(6, PSOConfig(particles=20, iterations=15), seed=seed))
        rnd = _drive(RandomSearch(6, budget=300, batch_size=20, seed=seed))
        pso_best.append(pso.best_score)
        rnd_best.append(rnd.best_score)
    assert np.median(pso_best) > np.median(rnd_best)
    assert sum(p > r for p, r in zip(pso_best, rnd_best)) >= 6


def test_pso_is_deterministic_for_a_seed_and_differs_across_seeds():
    a = _drive(PSO(4, PSOConfig(particles=8, iterations=6), seed=5))
    b = _drive(PSO(4, PSOConfig(particles=8, iterations=6), seed=5))
    c = _drive(PSO(4, PSOConfig(particles=8, iterations=6), seed=6))
    assert a.history == b.history and np.array_equal(a.best_position, b.best_position)
    assert a.history != c.history


def test_pso_state_round_trip_through_json_resumes_exactly():
    config = PSOConfig(particles=10, iterations=12, boundary="random")
    whole = _drive(PSO(5, config, seed=11))
    first = _drive(PSO(5, config, seed=11), stop_after=5)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = PSO(5, config, seed=11)
    resumed.load_state_dict(state)
    _drive(resumed)
    assert resumed.history == whole.history
    assert np.array_equal(resumed.positions, whole.positions)
    assert np.array_equal(resumed.best_position, whole.best_position)


@pytest.mark.parametrize("boundary", ["reflect", "clip", "random"])
def test_positions_stay_in_the_unit_cube_and_velocity_is_clamped(boundary):
    config = PSOConfig(particles=12, iterations=10, boundary=boundary, max_velocity=0.2,
                       cognitive=3.0, social=3.0, inertia_start=1.2, inertia_end=1.2)
    pso = PSO(3, config, seed=2)
    while not pso.done:
        x = pso.ask()
        assert (x >= 0).all() and (x <= 1).all()
        pso.tell(x, -np.abs(x - 1.0).sum(axis=1))  # optimum at the corner: presses on bounds
        if pso.velocities is not None:
            assert np.abs(pso.velocities).max() <= 0.2 + 1e-12


def test_inertia_schedules():
    linear = PSOConfig(iterations=11, inertia_start=0.9, inertia_end=0.4)
    assert linear.inertia(0) == 0.9 and linear.inertia(10) == pytest.approx(0.4)
    assert linear.inertia(5) == pytest.approx(0.65)
    exp = PSOConfig(iterations=11, inertia_schedule="exp", inertia_start=0.8, inertia_end=0.2)
    assert exp.inertia(5) == pytest.approx(0.4)
    assert PSOConfig(inertia_schedule="constant").inertia(7) == 0.9


def test_stagnation_stop_ends_a_flat_search_early():
    pso = _drive(PSO(2, PSOConfig(particles=5, iterations=50, patience=3), seed=0),
                 fn=lambda x: np.ones(len(x)))
    assert pso.done and pso.iteration == 4  # first iteration sets the best, then 3 stalls


def test_initial_points_seed_the_swarm():
    start = np.array([[0.1, 0.2], [0.3, 0.4]])
    pso = PSO(2, PSOConfig(particles=4, iterations=2), seed=0, initial=start)
    assert np.array_equal(pso.ask()[:2], start)


def test_random_search_spends_exactly_its_budget_and_round_trips():
    rs = RandomSearch(3, budget=25, batch_size=10, seed=4)
    sizes = []
    while not rs.done:
        x = rs.ask()
        sizes.append(len(x))
        rs.tell(x, -x.sum(axis=1))
    assert sizes == [10, 10, 5]
    half = RandomSearch(3, budget=25, batch_size=10, seed=4)
    x = half.ask()
    half.tell(x, -x.sum(axis=1))
    again = RandomSearch(3, budget=25, batch_size=10, seed=4)
    again.load_state_dict(json.loads(json.dumps(half.state_dict())))
    _drive(again, fn=lambda x: -x.sum(axis=1))
    assert again.best_score == rs.best_score and again.history == rs.history


def test_grid_search_visits_every_point_once():
    points = np.linspace(0, 1, 23)[:, None]
    grid = GridSearch(points, batch_size=10)
    seen = []
    while not grid.done:
        x = grid.ask()
        seen.extend(x[:, 0])
        grid.tell(x, -np.abs(x[:, 0] - 0.5))
    assert seen == list(points[:, 0])
    assert grid.best_position[0] == pytest.approx(0.5)


def test_tell_rejects_points_that_were_not_asked():
    pso = PSO(2, PSOConfig(particles=3, iterations=2), seed=0)
    x = pso.ask()
    with pytest.raises(ConfigError, match="not the swarm's current positions"):
        pso.tell(x + 0.1, np.zeros(3))
    with pytest.raises(ConfigError, match="expects 3 scores"):
        pso.tell(x, np.zeros(2))
    with pytest.raises(ConfigError, match="boundary must be"):
        PSOConfig(boundary="wrap")
