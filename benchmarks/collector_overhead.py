"""The collector's own overhead: engine step time with and without the step recorder.

Builds the model once, then for each configuration runs the same workload alternately without
(A) and with (B) the :class:`~servetune.data.collect.StepRecorder` installed, ``--pairs`` times
(A B A B ...). The compared quantity is the same in both arms: the run's wall time from the first
submission to the last finished request divided by the number of forward passes the engine counted
itself (``manager.current_batch``). The instrumented arm also reports the recorder's own mean step
duration. Prints one JSON document (and writes it to ``--out`` if given).

Run on the GPU host::

    PYTHONPATH=... python3 benchmarks/collector_overhead.py --pairs 5 --out overhead.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

from servetune.data._benchmark_record import RESULTS_DIR, write_record
from servetune.data._synthetic import synthetic_workload
from servetune.data.collect import CollectorOptions, EngineConfig, TransformersCBCollector

CONFIGS = {
    "g-fifo-512-bs64-sync": {"use_cuda_graph": True, "scheduler_type": "fifo",
                             "max_batch_tokens": 512, "block_size": 64, "num_blocks": 4096,
                             "use_async_batching": False},
    "g-fifo-512-bs64-async": {"use_cuda_graph": True, "scheduler_type": "fifo",
                              "max_batch_tokens": 512, "block_size": 64, "num_blocks": 4096,
                              "use_async_batching": True},
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-1b-like")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--warmup-runs", type=int, default=1,
                        help="discarded runs per configuration before the pairs")
    parser.add_argument("--workload", default="poisson:rate=2000,n=64,input=const:256,"
                                              "output=const:256")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a knob of every configuration (e.g. num_blocks=64)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from servetune.data.collect import parse_assignments

    overrides = parse_assignments(args.set)
    collector = TransformersCBCollector(CollectorOptions(
        model=args.model, device=args.device, dtype=args.dtype, command=" ".join(sys.argv)))
    workload = synthetic_workload(args.workload, seed=0)
    report = {"model": args.model, "workload": args.workload, "pairs": args.pairs,
              "warmup_runs": args.warmup_runs,
              "machine": collector.fingerprint, "configs": {}}
    for name in args.config or sorted(CONFIGS):
        config = EngineConfig(name, {**CONFIGS[name], **overrides})
        arms: dict[str, list[dict]] = {"without": [], "with": []}
        for _ in range(args.warmup_runs):
            collector.run(config, workload, instrument=False)
        for _ in range(args.pairs):
            for arm, instrument in (("without", False), ("with", True)):
                result = collector.run(config, workload, instrument=instrument)
                wall_s = result.runs["duration_s"][0]
                arms[arm].append({
                    "engine_steps": result.engine_steps, "wall_s": wall_s,
                    "wall_per_step_ms": wall_s * 1e3 / result.engine_steps,
                    "recorded_steps": result.num_steps,
                    "recorded_mean_step_ms": (statistics.fmean(result.steps["duration_ms"])
                                              if result.num_steps else None)})
        ratios = [b["wall_per_step_ms"] / a["wall_per_step_ms"]
                  for a, b in zip(arms["without"], arms["with"])]
        without = statistics.fmean(r["wall_per_step_ms"] for r in arms["without"])
        with_ = statistics.fmean(r["wall_per_step_ms"] for r in arms["with"])
        report["configs"][name] = {
            "knobs": config.knobs, "runs": arms,
            "mean_wall_per_step_ms_without": without, "mean_wall_per_step_ms_with": with_,
            "overhead_pct_of_means": 100 * (with_ / without - 1),
            "overhead_pct_per_pair": [100 * (r - 1) for r in ratios],
            "overhead_pct_pair_mean": 100 * (statistics.fmean(ratios) - 1),
        }
    print(json.dumps(report, indent=2, default=str))
    out = Path(args.out) if args.out else RESULTS_DIR / "collector_overhead.json"
    write_record(out.stem, report, args=args, results_dir=out.parent)
    return report


if __name__ == "__main__":
    main()
