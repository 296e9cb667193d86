"""The engine's own benchmark client, run on the head node, its JSON fetched and ingested.

Instead of the built-in client, ``vllm bench serve`` (or a compatible program) runs next to the
service with the workload summarised as a Poisson load (``--request-rate`` = the workload's mean
rate, fixed input/output lengths = its medians, ``--ignore-eos``); its ``--save-result
--save-detailed`` JSON is fetched with SFTP (or read locally) and ingested through the
``vllm-bench`` adapter with the run marked measured. The candidate's name, group, repeat and
predicted metrics travel as ``--metadata`` and land in the run's ``config``.

Example:
    >>> from servetune.data import Workload
    >>> w = Workload.from_arrays([0, 1, 2], [100, 120, 140], [10, 20, 30])
    >>> argv = EngineBenchmark().argv(base_url="http://h:8000", model="m", workload=w,
    ...                               result_dir="/tmp/r", result_file="x.json", metadata={})
    >>> argv[argv.index("--random-input-len") + 1], argv[argv.index("--request-rate") + 1]
    ('120', '1')
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from servetune.data import TraceStore, Workload
from servetune.tuner.hardware._errors import BenchmarkFailed, CommandTimeout
from servetune.tuner.hardware._transport import Transport

__all__ = ["EngineBenchmark"]


@dataclass(frozen=True)
class EngineBenchmark:
    """How to run the engine's benchmark client remotely.

    Attributes:
        program: argv prefix (default ``vllm bench serve``).
        extra_args: appended verbatim (each one still quoted), e.g. ``("--backend", "vllm")``.
        seed: ``--seed`` of the benchmark's random prompts.
    """

    program: tuple[str, ...] = ("vllm", "bench", "serve")
    extra_args: tuple[str, ...] = ()
    seed: int = 0

    def argv(self, *, base_url: str, model: str, workload: Workload, result_dir: str,
             result_file: str, metadata: Mapping[str, object]) -> list[str]:
        """The benchmark's command line for ``workload`` against ``base_url``."""
        rate = workload.rate_rps
        argv = [*self.program, "--base-url", base_url, "--model", model,
                "--dataset-name", "random", "--num-prompts", str(len(workload)),
                "--random-input-len", str(int(np.median(workload.input_tokens))),
                "--random-output-len", str(int(np.median(workload.output_tokens))),
                "--request-rate", "inf" if not np.isfinite(rate) else f"{rate:.6g}",
                "--ignore-eos", "--seed", str(self.seed), "--save-result", "--save-detailed",
                "--result-dir", result_dir, "--result-filename", result_file]
        if metadata:
            argv += ["--metadata", *(f"{k}={v}" for k, v in metadata.items())]
        return argv + list(self.extra_args)

    def run(self, transport: Transport, *, base_url: str, model: str, workload: Workload,
            work_dir: str, run_id: str, metadata: Mapping[str, object], timeout_s: float,
            store: TraceStore | None, overrides: Mapping[str, str]) -> dict:
        """Run the benchmark on the node, fetch its JSON, ingest it; return the run's row."""
        from servetune.data._ingest import ingest_paths
        from servetune.data.adapters import default_registry

        result_dir = transport.node_path(f"{work_dir.rstrip('/')}/results")
        argv = self.argv(base_url=base_url, model=model, workload=workload,
                         result_dir=result_dir, result_file=f"{run_id}.json", metadata=metadata)
        transport.run(["mkdir", "-p", result_dir])
        try:
            outcome = transport.run(argv, timeout_s=timeout_s, check=False)
        except CommandTimeout as exc:
            raise BenchmarkFailed(f"{self.program[0]} benchmark: {exc}") from None
        if outcome.exit_status != 0:
            raise BenchmarkFailed(f"{' '.join(self.program)} exited with {outcome.exit_status}: "
                                  f"{outcome.stderr.strip()[-500:]}")
        data = transport.read_file(f"{result_dir}/{run_id}.json")
        registry = default_registry({**overrides, "run_id": run_id, "source": "measured"})
        with tempfile.TemporaryDirectory(prefix="servetune-bench-") as tmp:
            local = Path(tmp) / f"{run_id}.json"
            local.write_bytes(data)
            target = store if store is not None else TraceStore(Path(tmp) / "traces")
            ingest_paths(target, [local], registry, format="vllm-bench", progress=False)
            rows = target.query("runs", run_id=run_id)
        if rows.empty:
            raise BenchmarkFailed(f"{result_dir}/{run_id}.json held no benchmark result")
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                for k, v in rows.iloc[0].to_dict().items()}


def metadata_for(candidate_name: str, group: str, repeat: int,
                 predicted: Mapping[str, float]) -> dict[str, str]:
    """``--metadata`` entries that identify a measurement."""
    return {"servetune_candidate": candidate_name, "servetune_group": group,
            "servetune_repeat": str(repeat),
            "servetune_predicted": json.dumps(dict(predicted), sort_keys=True)}


def metrics_from_row(row: Mapping[str, object], names: Sequence[str]) -> dict:
    """The metrics of an ingested run row."""
    return {name: row.get(name) for name in names if row.get(name) is not None}
