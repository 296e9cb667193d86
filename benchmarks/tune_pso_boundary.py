"""Choose PSO settings on tuning seeds that the efficiency benchmark never reports.

Scores PSO (20 particles x 15 iterations) with a few setting variants on seeds 100-129 against
the grid cache written by ``tune_efficiency.py --grid-cache FILE`` (the simulator is
deterministic, so looking scores up equals re-simulating), and prints how many runs end within
1 % of the grid optimum.

Run:  python benchmarks/tune_pso_boundary.py --grid-cache grid.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from functools import partial
from pathlib import Path

from servetune.data._benchmark_record import write_record
from servetune.tuner import SearchSpace, Study, config_key, parse_objective

VARIANTS = {
    "reflect": {"boundary": "reflect"},
    "reflect, social 1.0 / cognitive 2.0": {"boundary": "reflect", "social": 1.0,
                                            "cognitive": 2.0},
    "reflect, max_velocity 0.2": {"boundary": "reflect", "max_velocity": 0.2},
    "reflect, inertia 0.9 -> 0.7": {"boundary": "reflect", "inertia_end": 0.7},
    "random": {"boundary": "random"},
}


def _lookup(table: dict[str, dict], config: dict) -> dict:
    """Metrics of a grid point already simulated (the simulator is deterministic)."""
    return table[config_key(config)]


def best_score(space, objective, optimizer, seed, table, folder) -> float:
    """The best score of a study run on the grid cache's metrics."""
    study = Study.create(folder, space=space, objective=objective, optimizer=optimizer,
                         seed=seed)
    study.run(partial(_lookup, table))
    return study.best().score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid-cache", required=True)
    parser.add_argument("--objective", default="goodput:ttft_ms=5000,tpot_ms=150")
    args = parser.parse_args()
    table = json.loads(Path(args.grid_cache).read_text())["table"]
    objective = parse_objective(args.objective)
    space = SearchSpace.builtin("transformers-cb")
    best = max(objective.score(m) for m in table.values())
    rows = []
    for name, extra in VARIANTS.items():
        values = []
        with tempfile.TemporaryDirectory() as tmp:
            for seed in range(100, 130):
                spec = {"name": "pso", "particles": 20, "iterations": 15, **extra}
                score = best_score(space, objective, spec, seed, table, Path(tmp) / str(seed))
                values.append(score)
        within = sum((best - v) / best <= 0.01 for v in values)
        print(f"{name:40s} within 1 %: {within}/{len(values)}  median {statistics.median(values):.4f}"
              f"  min {min(values):.4f}")
        rows.append({"variant": name, **extra, "within_1pct": int(within), "studies": len(values),
                     "median": statistics.median(values), "min": min(values)})
    write_record("tune_pso_boundary", {"grid_best": best, "variants": rows}, args=args)


if __name__ == "__main__":
    main()
