"""Tuning: search spaces, SLO objectives, ask/tell optimisers, checkpointed studies.

The optimisers (:class:`PSO`, :class:`RandomSearch`, :class:`GridSearch`) never call an
objective: a :class:`Study` asks them for points, decodes them through a :class:`SearchSpace`,
has an evaluator (the simulator, the hardware dispatcher, any ``config -> metrics`` callable)
measure them through a ``concurrent.futures.Executor``, scores the metrics with an
:class:`Objective` and tells the optimiser. Hardware is one more evaluator:
:func:`verify_study` measures a study's top-K and the engine default on real service groups and
chooses the best on measurements (:class:`VerificationResult`).

Example:
    >>> from servetune.tuner import SearchSpace, parse_objective
    >>> SearchSpace.builtin("vllm").engine
    'vllm'
    >>> parse_objective("goodput:ttft_ms=500").slo.ttft_ms
    500.0
"""

from servetune.tuner._base import Evaluator, Optimizer
from servetune.tuner._baselines import GridSearch, RandomSearch
from servetune.tuner._candidates import build_candidates, candidates_table, write_candidates
from servetune.tuner._evaluators import SimulatorEvaluator, engine_defaults
from servetune.tuner._executors import open_executor
from servetune.tuner._export import launch_args
from servetune.tuner._expr import Expression
from servetune.tuner._importers import (
    IMPORT_FORMATS,
    import_auto_tuning_vllm,
    import_llmservingtuner,
    import_space,
)
from servetune.tuner._objective import (
    METRIC_KEYS,
    OBJECTIVES,
    SLO,
    FitnessObjective,
    GoodputObjective,
    Objective,
    ThroughputObjective,
    parse_objective,
)
from servetune.tuner._pso import PSO, PSOConfig
from servetune.tuner._space import Constraint, Param, Point, SearchSpace, builtin_spaces
from servetune.tuner._job import DEFAULT_OBJECTIVE, DEFAULT_WORKLOAD, TuneSettings, run_tune
from servetune.tuner._report import render_report, write_report
from servetune.tuner._study import (
    OPTIMIZERS,
    Evaluation,
    Study,
    StudySpec,
    config_key,
    make_optimizer,
)
from servetune.tuner._tracking import StudyTracker

# Verification pulls in the hardware dispatcher (asyncio, the HTTP client); it loads on first use
# so that ``servetune simulate`` and ``tune`` without ``--verify`` do not pay for it.
_VERIFY_NAMES = ("CandidateVerification", "VerificationResult", "engine_to_launch",
                 "study_workload", "verify_candidates", "verify_study")
_LOOP_NAMES = ("LoopResult", "LoopRound", "tune_verify_loop", "calibrate_on_runs")


def __getattr__(name: str):
    """The verification names of :mod:`servetune.tuner._verify`, imported when first used."""
    if name in _VERIFY_NAMES:
        from servetune.tuner import _verify

        return getattr(_verify, name)
    if name in _LOOP_NAMES:
        from servetune.tuner import _loop

        return getattr(_loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CandidateVerification",
    "LoopResult",
    "LoopRound",
    "calibrate_on_runs",
    "tune_verify_loop",
    "DEFAULT_OBJECTIVE",
    "DEFAULT_WORKLOAD",
    "Constraint",
    "Evaluation",
    "Evaluator",
    "Expression",
    "FitnessObjective",
    "GoodputObjective",
    "GridSearch",
    "IMPORT_FORMATS",
    "METRIC_KEYS",
    "OBJECTIVES",
    "OPTIMIZERS",
    "Objective",
    "Optimizer",
    "PSO",
    "PSOConfig",
    "Param",
    "Point",
    "RandomSearch",
    "SLO",
    "SearchSpace",
    "SimulatorEvaluator",
    "Study",
    "StudySpec",
    "StudyTracker",
    "ThroughputObjective",
    "TuneSettings",
    "VerificationResult",
    "build_candidates",
    "builtin_spaces",
    "candidates_table",
    "config_key",
    "engine_defaults",
    "engine_to_launch",
    "import_auto_tuning_vllm",
    "import_llmservingtuner",
    "import_space",
    "launch_args",
    "make_optimizer",
    "open_executor",
    "parse_objective",
    "render_report",
    "run_tune",
    "study_workload",
    "verify_candidates",
    "verify_study",
    "write_candidates",
    "write_report",
]
