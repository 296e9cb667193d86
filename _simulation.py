"""One simulation with its domain report and prediction interval: shared by
``servetune simulate`` and :func:`servetune.simulate`."""

from __future__ import annotations

from servetune._results import SimulationReport

__all__ = ["run_simulation"]


def run_simulation(workspace, engine: str, config: dict, workload, *, seed: int = 0,
                   model_uri: str | None = None, slo=None, record_steps: bool = False,
                   workload_options: dict | None = None, progress: bool | None = None
                   ) -> SimulationReport:
    """Simulate ``engine`` with ``config`` on ``workload`` using the engine's step-time model.

    Args:
        workspace: a :class:`~servetune.data.Workspace`.
        workload: a :class:`~servetune.data.Workload`, or a file / synthetic spec resolved with
            ``workload_options`` (``qps``, ``limit``) and ``seed``.
        slo: a :class:`~servetune.tuner.simulator.SLO` (goodput bounds) or ``None``.
        record_steps: keep every simulated step on ``report.result.steps``.

    The configuration is validated before the (possibly long) first training of a model.
    """
    from servetune.data import Workload, resolve_workload
    from servetune.models import step_model_for_engine
    from servetune.tuner._intervals import simulation_interval
    from servetune.tuner.simulator import SLO, Simulator, get_policy

    slo = slo if slo is not None else SLO()
    # sizes derived from the model's engine constants (the KV cache) are checked once it exists
    get_policy(engine).resolve(config)
    trace = (workload if isinstance(workload, Workload)
             else resolve_workload(workload, seed=seed, **(workload_options or {})))
    model = step_model_for_engine(workspace, engine, model_uri, progress=progress)
    uri = model_uri or (f"models:/{model.name}@champion" if model.name else "")
    simulator = Simulator(engine, config, model.compile(), slo=slo, labels={"model_uri": uri})
    # the domain check needs the steps: recorded whenever the model knows its domain (whole
    # Splitwise trace: 5,724 steps, run time unchanged at ~0.08 s, check 0.5 ms), dropped
    # again unless record_steps asked for them
    check_steps = getattr(simulator.step_model, "domain", None) is not None
    result = simulator.run(trace, seed, record_steps=record_steps or check_steps)
    domain = simulator.domain_report(result)
    calibrated = bool(domain.get("known")) and not domain.get("outside")
    interval = simulation_interval(simulator, trace, seed, result.flat_metrics(), calibrated)
    if not record_steps:
        result.steps = None
    return SimulationReport(engine=simulator.engine, config=result.config, seed=seed,
                            workload=trace.descriptor, model_uri=uri, metrics=result.metrics,
                            domain=domain, interval=interval, result=result, trace=trace)
