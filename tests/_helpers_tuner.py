"""Shared helpers of the tuner tests: a cheap, deterministic, picklable evaluator.

``BowlEvaluator`` is a real (analytic) objective, not a mock: it maps a configuration through
the space's encoding to a smooth bowl with one optimum and returns the full metric dict an
evaluator must return, so objectives, studies, executors and resume are exercised end to end
without the simulator.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from servetune.tuner import SearchSpace


class BowlEvaluator:
    """Goodput peaks at ``optimum`` (encoded coordinates); latencies rise away from it."""

    def __init__(self, space: dict, optimum: list[float] | None = None, delay_s: float = 0.0,
                 calls_dir: str | None = None) -> None:
        self.space = space
        self.optimum = optimum
        self.delay_s = delay_s
        self.calls_dir = calls_dir

    def __call__(self, config: dict) -> dict:
        space = SearchSpace.from_dict(self.space)
        u = space.encode({k: config[k] for k in space.names})
        opt = np.full(space.dim, 0.7) if self.optimum is None else np.asarray(self.optimum)
        d2 = float(((u - opt) ** 2).sum())
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.calls_dir:
            with open(os.path.join(self.calls_dir, f"{os.getpid()}.log"), "a") as fh:
                fh.write("x\n")
        goodput = 10.0 * math.exp(-3.0 * d2)
        ttft = 200.0 * (1 + 5 * d2)
        tpot = 20.0 * (1 + 3 * d2)
        metrics = {"num_requests": 100.0, "completed": 100.0, "success_rate": 1.0,
                   "duration_s": 50.0, "request_throughput_rps": 2.0,
                   "output_throughput_tok_s": 1000.0 * math.exp(-d2), "goodput_rps": goodput,
                   "slo_attainment": goodput / 10.0}
        for name, base in (("ttft", ttft), ("tpot", tpot), ("e2e", ttft + 100 * tpot)):
            for stat, factor in (("mean", 1.0), ("p50", 0.9), ("p90", 1.5), ("p99", 2.0)):
                metrics[f"{name}_{stat}_ms"] = base * factor
        return metrics


def run_bowl_study(directory: str, delay_s: float = 0.0) -> None:
    """Create (or resume) a small PSO study over the transformers-cb space and run it."""
    from pathlib import Path

    from servetune.tuner import Study

    space = SearchSpace.builtin("transformers-cb")
    path = Path(directory)
    if (path / "study.json").exists():
        study = Study.load(path)
    else:
        study = Study.create(path, space=space, seed=7,
                             optimizer={"name": "pso", "particles": 8, "iterations": 12})
    study.run(BowlEvaluator(space.to_dict(), delay_s=delay_s))


if __name__ == "__main__":  # used by the kill -9 test as a real subprocess
    import sys

    run_bowl_study(sys.argv[1], delay_s=float(sys.argv[2]))
