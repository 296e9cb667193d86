"""The evaluator entry point: one engine configuration replayed against one workload.

Example:
    >>> from servetune.data import synthetic_workload
    >>> from servetune.tuner.simulator import simulate
    >>> workload = synthetic_workload("poisson:rate=5,n=50", seed=0)
    >>> result = simulate("vllm", {"max_num_seqs": 64}, workload, step_model, seed=0)  # doctest: +SKIP
    >>> result.metrics["completed"]  # doctest: +SKIP
    50
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from servetune import ConfigError, ServetuneError
from servetune.data import Workload
from servetune.features import KNOB_COLUMNS, get_feature_set
from servetune.models import CompiledStepTime, forest_predict_row
from servetune.models._domain import DOMAIN_COLUMNS, domain_report
from servetune.tuner.simulator import _kernel as K
from servetune.tuner.simulator._forest import pack_forest
from servetune.tuner.simulator._policies import EnginePolicy, get_policy
from servetune.tuner.simulator._result import SLO, SimulationResult

__all__ = ["Simulator", "simulate", "model_knobs", "simulation_domain"]

log = logging.getLogger(__name__)

_ROUTERS = {"round_robin": K.ROUTER_ROUND_ROBIN, "least_pending_tokens": K.ROUTER_LEAST_PENDING}


def model_knobs(policy: EnginePolicy, resolved: Mapping[str, object]) -> np.ndarray:
    """The step-time model's knob vector (``KNOB_COLUMNS`` order) for a resolved configuration;
    knobs the engine has no value for are NaN (the model's missing value)."""
    values = policy.model_knobs(resolved)
    out = np.full(len(KNOB_COLUMNS), np.nan, dtype=np.float64)
    for j, name in enumerate(KNOB_COLUMNS):
        if name in values:
            out[j] = values[name]
    return out


@dataclass(frozen=True)
class Simulator:
    """One engine configuration with a compiled step-time model; :meth:`run` replays a workload.

    Construction only validates the configuration (no I/O, no compilation), so it is cheap and
    picklable: a study can build thousands and ship them to worker processes.

    Attributes:
        engine: a registered engine policy (``transformers``, ``vllm``, ``static``).
        config: configuration keys of that engine (missing keys take defaults; unset hardware
            sizes and CUDA-graph capture costs the step model's ``engine_constants``).
        step_model: a :class:`servetune.models.CompiledStepTime`.
        slo: latency objectives for goodput.
        labels: ``model``, ``hardware``, ``model_uri``, ... recorded in the output rows.
        predict_row: a numba function with ``models.forest_predict_row``'s signature to use
            instead of the compiled forest (the speed benchmark passes one that calls
            ``Booster.inplace_predict``); None for the normal path.
        fast_forest: evaluate the forest with the branch-free walk (bit-identical to
            ``forest_predict_row``; False forces the reference evaluator).
        policy: an :class:`EnginePolicy` to simulate with instead of the engine's shipped one
            (a new scheduler is one policy module plus its spec; ``engine`` then takes the
            policy's engine name). Such a simulator runs in-process only.
    """

    engine: str
    config: Mapping[str, object]
    step_model: object
    slo: SLO | dict | None = None
    labels: Mapping[str, object] = field(default_factory=dict)
    predict_row: object = field(default=None, compare=False)
    fast_forest: bool = True
    policy: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        policy = self.policy if self.policy is not None else get_policy(self.engine)
        if not isinstance(policy, EnginePolicy):
            raise ConfigError(f"policy must be an EnginePolicy; got {type(policy).__name__}")
        object.__setattr__(self, "policy", policy)
        object.__setattr__(self, "engine", policy.name)
        for name in ("kernel", "arrays", "n_features", "log_target"):
            if not hasattr(self.step_model, name):
                raise ConfigError(f"step_model must be a CompiledStepTime (has no {name!r}); "
                                  "get one with StepTimeModel.compile()")
        # unset hardware sizes and capture costs come from the step-time model's fitted constants
        resolved = policy.resolve(self.config, getattr(self.step_model, "engine_constants", None))
        policy.params(resolved)  # checks derived values (e.g. vLLM's block count) early
        object.__setattr__(self, "config", resolved)
        object.__setattr__(self, "slo", SLO.coerce(self.slo))
        object.__setattr__(self, "labels", dict(self.labels))

    def __reduce__(self):
        """Pickle the step model as its forest plus the name of its (registered) feature set:
        feature-set kernels are numba closures that plain pickle cannot always carry."""
        if self.policy is not get_policy(self.engine):
            raise ConfigError(f"a simulator with its own {self.engine} policy runs in this "
                              "process only (its compiled functions do not pickle)")
        sm = self.step_model
        forest, fs = getattr(sm, "forest", None), getattr(sm, "feature_set", None)
        if forest is not None and fs is not None:
            try:
                registered = get_feature_set(fs.name)
            except ServetuneError:
                registered = None
            if registered is not None and registered.version == fs.version:
                return (_rebuild_simulator, (self.engine, dict(self.config), forest, fs.name,
                                             self.slo, dict(self.labels), self.fast_forest,
                                             getattr(sm, "domain", None),
                                             getattr(sm, "engine_constants", None)))
        return (_rebuild_plain, (self.engine, dict(self.config), sm, self.slo, dict(self.labels),
                                 self.predict_row, self.fast_forest))

    def _packed(self, knobs: np.ndarray) -> tuple:
        """The branch-free forest for this run, with splits on run-constant NaN features (an
        unknown knob) folded into their missing-value direction, and the mask of those
        features."""
        forest = getattr(self.step_model, "forest", None)
        n_features = int(self.step_model.n_features)
        if forest is None or not self.fast_forest or self.predict_row is not None:
            empty_i, empty_f = np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.float32)
            return empty_i, empty_f, empty_i, 0, False, np.zeros(n_features, dtype=np.uint8)
        feat, thr, left, max_depth, ok = pack_forest(forest)
        probe = np.empty(n_features, dtype=np.float32)
        self.step_model.kernel(np.array([2.0, 1, 1, 64, 1, 128, 96, 4096,
                                         1.0, 0, 1, 0, 1, 64, 64, 0, 0]), knobs, probe)
        fold = np.isnan(probe).astype(np.uint8)
        if fold.any():
            splits = forest.feature >= 0
            folded = splits & (fold[np.where(splits, forest.feature, 0)] == 1)
            direction = np.where(forest.default_left == 1, np.float32(np.inf),
                                 np.float32(-np.inf))
            thr = np.where(folded, direction, thr).astype(np.float32)
        return feat, thr, left, max_depth, ok, fold

    def domain_report(self, result: SimulationResult | None = None) -> dict:
        """This configuration (and ``result``'s recorded steps) against the step model's
        training domain; see :func:`simulation_domain`."""
        return simulation_domain(self, result)

    def run(self, workload: Workload, seed: int = 0, *, record_steps: bool = False,
            step_stride: int = 1) -> SimulationResult:
        """Simulate ``workload``; the same workload, configuration and seed give identical output.

        ``record_steps`` keeps the steps (``result.steps``), every ``step_stride``-th one (1:
        all; a larger stride bounds the memory of a domain check on a very long workload)."""
        if not isinstance(workload, Workload):
            raise ConfigError(f"workload must be a servetune.data.Workload, got "
                              f"{type(workload).__name__}")
        policy = self.policy
        c = self.config
        params = policy.params(c)
        knobs = model_knobs(policy, c)
        sm = self.step_model
        arrays = sm.arrays
        (req, first_sched, first_tok, finish, token_s, token_offset, steps, n_steps,
         total_steps, box_hits, n_captures) = K.run_kernel(
            policy.schedule, policy.hook_init, policy.step_hook, _ROUTERS[c["router"]],
            int(c["dp_size"]), params,
            np.ascontiguousarray(workload.arrival_s, dtype=np.float64),
            np.ascontiguousarray(workload.input_tokens, dtype=np.int64),
            np.ascontiguousarray(workload.output_tokens, dtype=np.int64),
            knobs, sm.kernel, int(sm.n_features), *arrays[:7], float(arrays[7]),
            sm.base_arrays[0], float(sm.base_arrays[1]), bool(sm.log_target),
            self.predict_row or forest_predict_row, *self._packed(knobs),
            float(c["step_noise_cv"]),
            int(seed) & 0x7FFFFFFFFFFFFFFF, _stride(record_steps, step_stride))
        log.debug("%d steps, %d step times reused from the last walk's input box", total_steps,
                  box_hits)
        failed = int((req[:, 1] != K._DONE).sum())
        if failed:
            log.warning("%d of %d requests could not be served (larger than the KV cache of "
                        "%g blocks)", failed, len(workload), params[1])
        return SimulationResult(
            engine=self.engine, store_engine=self.engine,
            config=dict(c), seed=int(seed), workload=workload, slo=self.slo,
            replica=req[:, 0], status=req[:, 1], preemptions=req[:, 2], generated=req[:, 3],
            first_scheduled_s=first_sched, first_token_s=first_tok, finish_s=finish,
            token_s=token_s, token_offset=token_offset, num_steps=int(total_steps),
            steps=steps if record_steps else None, labels=dict(self.labels),
            graph_captures=int(n_captures))


def _stride(record_steps: bool, step_stride: int) -> int:
    """The kernel's ``record_steps``: 0 (none) or the stride of the recorded steps."""
    if not record_steps:
        return 0
    if int(step_stride) < 1:
        raise ConfigError(f"step_stride must be >= 1; got {step_stride}")
    return int(step_stride)


def _rebuild_simulator(engine, config, forest, feature_set, slo, labels, fast_forest,
                       domain=None, engine_constants=None):
    step_model = CompiledStepTime(forest, get_feature_set(feature_set))
    object.__setattr__(step_model, "domain", domain)
    object.__setattr__(step_model, "engine_constants", engine_constants)
    return Simulator(engine, config, step_model, slo=slo, labels=labels, fast_forest=fast_forest)


def simulation_domain(simulator: Simulator, result: SimulationResult | None = None) -> dict:
    """The ``domain`` block of a simulation (``models.domain_report``): the configuration
    checked against the step model's training domain (its ``domain`` attribute; a model without
    one reads "domain unknown") and, when ``result`` recorded its steps, the share of steps
    outside the trained ranges and the worst column."""
    policy = simulator.policy
    params = policy.params(simulator.config)
    knobs = policy.model_knobs(simulator.config)
    steps = None
    if result is not None and result.steps is not None:
        steps = result.steps[:, [K.STEP_COLUMNS.index(c) for c in DOMAIN_COLUMNS]]
    return domain_report(getattr(simulator.step_model, "domain", None), knobs,
                         int(params[0] * params[1]), steps)


def _rebuild_plain(engine, config, step_model, slo, labels, predict_row, fast_forest):
    return Simulator(engine, config, step_model, slo=slo, labels=labels,
                     predict_row=predict_row, fast_forest=fast_forest)


def simulate(engine: str, config: Mapping[str, object] | None, workload: Workload,
             step_model: object, seed: int = 0, *, slo: SLO | dict | None = None,
             labels: Mapping[str, object] | None = None,
             record_steps: bool = False) -> SimulationResult:
    """Simulate ``engine`` with ``config`` serving ``workload``; see :class:`Simulator`.

    Raises:
        ConfigError: an unknown engine, an unknown configuration key or a bad value.
    """
    simulator = Simulator(engine, dict(config or {}), step_model, slo=slo, labels=labels or {})
    return simulator.run(workload, seed, record_steps=record_steps)
