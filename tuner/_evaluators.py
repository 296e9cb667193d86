"""Evaluators: configuration -> flat metrics. The simulator is the one the main job uses.

Example:
    >>> evaluator = SimulatorEvaluator.for_space(space, workload, compiled)  # doctest: +SKIP
    >>> evaluator({"max_batch_tokens": 1024})["goodput_rps"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from servetune import ConfigError
from servetune.data import Workload
from servetune.tuner._objective import SLO, DOMAIN_METRIC_KEYS
from servetune.tuner._space import SearchSpace

__all__ = ["SimulatorEvaluator", "simulator_keys", "engine_defaults", "domain_metrics"]

log = logging.getLogger(__name__)


def simulator_keys(engine: str, *, modelled_only: bool = False) -> set[str]:
    """Configuration keys (and aliases) the simulator accepts for ``engine``; with
    ``modelled_only``, less the engine knobs it carries without modelling their effect."""
    from servetune.tuner.simulator import get_policy

    policy = get_policy(engine)
    keys = set(policy.keys()) | set(policy.aliases)
    if modelled_only:
        for knob in policy.engine.knobs:
            if not knob.simulated:
                keys -= {knob.name, *knob.aliases, *knob.negated_aliases}
    return keys


def engine_defaults(engine: str) -> dict:
    """The simulator's defaults for ``engine``, also under each key's alias."""
    from servetune.tuner.simulator import get_policy

    policy = get_policy(engine)
    defaults = policy.default_config()
    for alias, name in policy.aliases.items():
        defaults.setdefault(alias, defaults[name])
    return defaults


# check_config's reason for a new combination of trained knob values (interpolation, the
# model's job): not counted among the extrapolations
_COMBINATION_REASON = "knob combination"


def domain_metrics(report: dict) -> dict:
    """The ``DOMAIN_METRIC_KEYS`` of a simulation's domain report
    (:meth:`Simulator.domain_report`); all None when the model carries no domain."""
    if not report.get("known"):
        return dict.fromkeys(DOMAIN_METRIC_KEYS)
    reasons = report.get("reasons") or []
    steps = report.get("steps") or {}
    return {"domain_reasons": float(len(reasons)),
            "domain_extrapolations": float(sum(not r.startswith(_COMBINATION_REASON)
                                               for r in reasons)),
            "domain_share_outside": steps.get("share_outside"),
            "domain_worst_ratio": steps.get("worst_ratio")}


@dataclass(frozen=True)
class SimulatorEvaluator:
    """Simulates one configuration against a fixed workload with the compiled step-time model.

    Picklable (process pools, Dask) and deterministic: the same configuration always gives the
    same metrics, which is what makes a resumed study exact.

    Attributes:
        engine: the simulator's engine name (``transformers-cb``, ``vllm``, ...).
        workload: the requests to replay.
        step_model: a :class:`servetune.models.CompiledStepTime`.
        slo: the objective's SLO; goodput counts requests within both bounds.
        seed: the simulation seed.
        base_config: engine keys applied under every tuned configuration (hardware, memory).
        keys: the configuration keys passed to the simulator (others, e.g. a space's ``gpus``
            bookkeeping field, are dropped); set by :meth:`for_space`.
    """

    engine: str
    workload: Workload
    step_model: object
    slo: SLO = SLO()
    seed: int = 0
    base_config: dict = field(default_factory=dict)
    keys: frozenset = frozenset()

    @classmethod
    def for_space(cls, space: SearchSpace, workload: Workload, step_model: object, *,
                  slo: SLO = SLO(), seed: int = 0,
                  base_config: dict | None = None) -> "SimulatorEvaluator":
        """An evaluator for ``space``; every tunable must be a simulator key of its engine."""
        accepted = simulator_keys(space.engine)
        modelled = simulator_keys(space.engine, modelled_only=True)
        missing = [n for n in space.names if n not in modelled]
        if missing:
            raise ConfigError(f"space {space.name!r} tunes {missing}, which the {space.engine} "
                              f"simulator does not model; its keys are {sorted(accepted)}")
        names = set(space.names) | set(space.fixed) | set(space.derived)
        dropped = sorted(names - accepted)
        if dropped:
            log.info("not passed to the simulator (bookkeeping fields): %s", dropped)
        return cls(space.engine, workload, step_model, slo=slo, seed=seed,
                   base_config=dict(base_config or {}), keys=frozenset(names & accepted))

    def simulator_config(self, config: dict) -> dict:
        """The keys of ``config`` the simulator receives, over ``base_config``."""
        chosen = {k: v for k, v in config.items() if not self.keys or k in self.keys}
        return {**self.base_config, **chosen}

    def __reduce__(self):
        # Ship the compiled forest (plain numpy arrays) and the feature set's name, and rebuild
        # the step model in the worker: a FeatureSet holds JIT-compiled closures that need not
        # pickle.
        return (_rebuild, (self.engine, self.workload, _portable(self.step_model), self.slo,
                           self.seed, self.base_config, self.keys))

    def _simulator(self, config: dict):
        from servetune.tuner.simulator import Simulator

        return Simulator(self.engine, self.simulator_config(config), self.step_model,
                         slo=self.slo.as_dict())

    def __call__(self, config: dict) -> dict:
        """The run metrics of ``config`` and its ``DOMAIN_METRIC_KEYS`` (steps are recorded
        for the step-level check)."""
        simulator = self._simulator(config)
        result = simulator.run(self.workload, self.seed, record_steps=True)
        return {**result.flat_metrics(), **domain_metrics(simulator.domain_report(result))}

    def domain_report(self, config: dict) -> dict:
        """The configuration-level domain report of ``config`` (reasons and message; no
        steps): what candidates are labelled with."""
        return self._simulator(config).domain_report()


def _portable(step_model) -> tuple:
    forest = getattr(step_model, "forest", None)
    feature_set = getattr(step_model, "feature_set", None)
    if forest is None or feature_set is None:
        return ("object", step_model)
    return ("forest", forest, feature_set.name, feature_set.version,
            getattr(step_model, "domain", None), getattr(step_model, "engine_constants", None))


def _rebuild(engine, workload, portable, slo, seed, base_config, keys) -> SimulatorEvaluator:
    if portable[0] == "object":
        step_model = portable[1]
    else:
        from servetune.features import get_feature_set
        from servetune.models import CompiledStepTime

        _, forest, name, version, domain, constants = portable
        feature_set = get_feature_set(name)
        if feature_set.version != version:
            raise ConfigError(f"worker has feature set {name} version {feature_set.version}, "
                              f"the model needs version {version}: mismatched servetune "
                              "installations")
        step_model = CompiledStepTime(forest, feature_set)
        object.__setattr__(step_model, "domain", domain)  # as StepTimeModel.compile() does
        object.__setattr__(step_model, "engine_constants", constants)
    return SimulatorEvaluator(engine, workload, step_model, slo=slo, seed=seed,
                              base_config=base_config, keys=keys)
