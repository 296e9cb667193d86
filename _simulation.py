"""One simulation with its domain report and prediction interval: shared by
``servetune simulate`` and :func:`servetune.simulate`."""

from __future__ import annotations

from servetune._results import SimulationReport

__all__ = ["run_simulation", "DOMAIN_TOKENS"]

#: output tokens whose steps the domain check looks at one by one; beyond, every k-th step
DOMAIN_TOKENS = 20_000_000


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
    # a very long workload's check looks at every k-th step: at most ~20 M output tokens' worth
    # (1 M requests, 153 M tokens: every 8th of 21 M steps; 0.2 GiB instead of 2-3 GiB)
    stride = 1 if record_steps else max(1, -(-int(trace.output_tokens.sum()) // DOMAIN_TOKENS))
    result = simulator.run(trace, seed, record_steps=record_steps or check_steps,
                           step_stride=stride)
    domain = simulator.domain_report(result)
    if stride > 1 and domain.get("steps"):
        domain["steps"]["sampled_every"] = stride
    calibrated = bool(domain.get("known")) and not domain.get("outside")
    interval = simulation_interval(simulator, trace, seed, result.flat_metrics(), calibrated)
    if not record_steps:
        result.steps = None
    return SimulationReport(engine=simulator.engine, config=result.config, seed=seed,
                            workload=trace.descriptor, model_uri=uri, metrics=result.metrics,
                            domain=domain, interval=interval, result=result, trace=trace)
