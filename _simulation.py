"""One simulation with its domain report and prediction interval: shared by
``servetune simulate`` and :func:`servetune.simulate`."""

from __future__ import annotations

from servetune._results import SimulationReport

__all__ = ["run_simulation", "DOMAIN_TOKENS"]

#: output tokens whose steps the domain check looks at one by one; beyond, every k-th step
DOMAIN_TOKENS = 5_000_000


def run_simulation(workspace, engine: str, config: dict, workload, *, seed: int = 0,
                   model_uri: str | None = None, slo=None, record_steps: bool = False,
                   workload_options: dict | None = None, progress: bool | None = None,
                   keep_result: bool = True) -> SimulationReport:
    """Simulate ``engine`` with ``config`` on ``workload`` using the engine's step-time model.

    Args:
        workspace: a :class:`~servetune.data.Workspace`.
        workload: a :class:`~servetune.data.Workload`, or a file / synthetic spec resolved with
            ``workload_options`` (``qps``, ``limit``) and ``seed``.
        slo: a :class:`~servetune.tuner.simulator.SLO` (goodput bounds) or ``None``.
        record_steps: keep every simulated step on ``report.result.steps``.
        keep_result: keep the full result (per-request and per-token arrays) on
            ``report.result``; ``False`` frees it once its metrics are taken, before the
            interval's replays (a long workload's peak memory is then one run's).

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
    # a very long workload's check looks at every k-th step, at most DOMAIN_TOKENS output
    # tokens' worth (BENCHMARKS.md "Simulator memory": 1 M requests peaked at 4.4 GiB with
    # every step recorded; the whole Splitwise trace is checked on every 2nd step)
    stride = 1 if record_steps else max(1, -(-int(trace.output_tokens.sum()) // DOMAIN_TOKENS))
    result = simulator.run(trace, seed, record_steps=record_steps or check_steps,
                           step_stride=stride)
    domain = simulator.domain_report(result)
    if stride > 1 and domain.get("steps"):
        domain["steps"]["sampled_every"] = stride
    calibrated = bool(domain.get("known")) and not domain.get("outside")
    if not record_steps:
        result.steps = None  # before the metrics: their ITL pass is the run's memory peak
    flat, metrics, resolved = result.flat_metrics(), result.metrics, result.config
    if not keep_result:
        result = None  # its arrays go before the interval's two replays allocate theirs
    interval = simulation_interval(simulator, trace, seed, flat, calibrated)
    return SimulationReport(engine=simulator.engine, config=resolved, seed=seed,
                            workload=trace.descriptor, model_uri=uri, metrics=metrics,
                            domain=domain, interval=interval, result=result, trace=trace)
