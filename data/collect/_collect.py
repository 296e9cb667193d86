"""Run a whole sweep: the model once, every planned run, output rewritten after each run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from servetune.data._workload import Workload
from servetune.data.collect._output import TraceWriter
from servetune.data.collect._plan import SweepPlan, WorkloadSpec
from servetune.data.collect._runner import CollectorOptions, TransformersCBCollector

__all__ = ["CollectSummary", "collect_sweep", "resolve_spec"]

log = logging.getLogger(__name__)


@dataclass
class CollectSummary:
    """What a sweep produced."""

    out_dir: str
    runs: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "runs": self.runs, "failed": self.failed,
                "files": self.files,
                "steps": sum(r["steps"] for r in self.runs),
                "requests": sum(r["requests"] for r in self.runs)}


def resolve_spec(spec: WorkloadSpec) -> Workload:
    """The workload of a spec (synthetic spec or trace file), via ``servetune.data``."""
    from servetune.data._synthetic import resolve_workload

    return resolve_workload(spec.text, seed=spec.seed, qps=spec.qps, limit=spec.limit)


def collect_sweep(plan: SweepPlan, options: CollectorOptions | None, out_dir: str | Path, *,
                  progress: bool | None = None, collector=None) -> CollectSummary:
    """Measure every run of ``plan``; ``out_dir`` holds the three Parquet files after each run.

    ``collector`` (default: a :class:`TransformersCBCollector` of ``options``) is anything with
    ``load()``, ``valid_knobs()`` and ``run(config, workload, workload_name=, repeat=)``
    returning a :class:`RunResult`, such as the served collector."""
    from tqdm.auto import tqdm

    collector = collector or TransformersCBCollector(options)
    collector.load()
    plan.check(collector.valid_knobs())
    workloads = {spec.name: resolve_spec(spec) for spec in plan.workloads}
    writer = TraceWriter(out_dir)
    summary = CollectSummary(str(out_dir), files={k: str(p) for k, p in writer.paths().items()})
    runs = plan.runs()
    bar = tqdm(total=len(runs), desc="collect", unit="run",
               disable=None if progress is None else not progress)
    try:
        for item in runs:
            bar.set_postfix_str(f"{item.config.name} on {item.workload.name} #{item.repeat}")
            try:
                result = collector.run(item.config, workloads[item.workload.name],
                                       workload_name=item.workload.name, repeat=item.repeat)
            except RuntimeError as exc:  # the engine failed this run; keep the others
                log.error("run %s on %s #%d failed: %s", item.config.name, item.workload.name,
                          item.repeat, exc)
                summary.failed.append({"config": item.config.name, "workload": item.workload.name,
                                       "repeat": item.repeat, "error": str(exc)})
                bar.update(1)
                continue
            writer.add({"steps": result.steps, "requests": result.requests,
                        "runs": result.runs})
            run = result.runs
            summary.runs.append({
                "run_id": result.run_id, "config": item.config.name,
                "workload": item.workload.name, "repeat": item.repeat,
                "steps": result.num_steps, "requests": len(result.requests["request_id"]),
                "completed": run["completed"][0], "duration_s": run["duration_s"][0],
                "output_throughput_tok_s": run["output_throughput_tok_s"][0],
                "mean_step_ms": (sum(result.steps["duration_ms"]) / result.num_steps
                                 if result.num_steps else None)})
            log.info("run %s: %d steps, %d/%d requests ok, %.1f s", result.run_id,
                     result.num_steps, run["completed"][0], run["num_requests"][0],
                     run["duration_s"][0] or 0.0)
            bar.update(1)
    finally:
        bar.close()
    return summary
