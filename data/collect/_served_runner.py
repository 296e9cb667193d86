"""Collect traces from ``transformers serve``: the engine users deploy, its own steps recorded.

The in-process collector (:mod:`._runner`) drives the continuous-batching manager directly with
non-streaming requests. A served engine streams every token through its HTTP front end, and its
steps take longer (``benchmarks/http_reconstruction.py`` measured 1.09-1.33x the busy time on two
H100 hosts). :class:`ServedCollector` measures that engine: per run it starts ``transformers
serve`` through :mod:`._served` (the unchanged command line, the engine's steps recorded in the
server process), replays the workload through servetune's streaming client, stops the server with
SIGTERM and stores

* ``requests``/``runs`` as the hardware path stores a measurement
  (``tuner.hardware._records.measurement_tables``: TTFT/ITL as the client saw them);
* ``steps``: the server's recorded steps that started during the replay (``source =
  measured``, ``start_s`` from the replay's start), instead of steps rebuilt from token times.

Knobs are ``ContinuousBatchingConfig`` names; one the ``transformers serve`` command line cannot
express is refused before the server starts (the engine spec's ``check_launchable``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from servetune.data.collect._plan import EngineConfig
from servetune.data.collect._recorder import records_from_rows, step_columns

__all__ = ["ServedOptions", "ServedCollector", "wait_healthy"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedOptions:
    """How ``transformers serve`` is run and measured.

    Attributes:
        model: a local model directory, or a preset name (``llama-1b-like``, ...): a random-weight
            model with a word-level tokenizer is then saved under ``work_dir``.
        work_dir: the served model (for a preset), the server logs and the recorded steps.
        device, dtype, attn_implementation: ``transformers serve`` flags.
        port: the server's port on 127.0.0.1.
        seed: seeds the prompt words (and a preset's weights are seeded by the builder).
        warmup_requests: unrecorded requests after the server turns healthy.
        health_timeout_s: seconds for the server to load the model and answer ``/health``.
        run_timeout_s: seconds for one replay.
        slo_ttft_ms, slo_tpot_ms: goodput SLOs of the runs rows.
        label: prefix of every run id.
    """

    model: str
    work_dir: str
    device: str = "cuda"
    dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"
    port: int = 8321
    seed: int = 0
    warmup_requests: int = 4
    health_timeout_s: float = 600.0
    run_timeout_s: float = 900.0
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    label: str = ""


class ServedCollector:
    """Measures runs of ``transformers serve`` (module docstring); drives
    :func:`~servetune.data.collect.collect_sweep` like the in-process collector. No I/O until
    :meth:`load`."""

    def __init__(self, options: ServedOptions) -> None:
        self.options = options
        self._model_dir: Path | None = None
        self._fingerprint: dict | None = None

    def load(self) -> "ServedCollector":
        """Build a preset's model directory (once) and read the machine fingerprint."""
        self.model_dir()
        self.fingerprint()
        return self

    def valid_knobs(self) -> tuple[str, ...]:
        """``ContinuousBatchingConfig``'s fields (the serve command line takes a subset)."""
        from servetune.data.collect._plan import knob_names

        return knob_names()

    def model_dir(self) -> Path:
        """The served model directory (a preset is built once, on first use)."""
        if self._model_dir is None:
            from servetune.data.collect._presets import PRESETS
            from servetune.data.collect._served_model import word_level_model

            source = self.options.model
            if source in PRESETS:
                self._model_dir = word_level_model(Path(self.options.work_dir) / f"model-{source}",
                                                   preset=source)
            elif Path(source).is_dir():
                self._model_dir = Path(source)
            else:
                from servetune import InputError

                raise InputError(f"expected a model directory or one of the presets "
                                 f"{', '.join(sorted(PRESETS))}, got {source!r}", field="--model")
        return self._model_dir

    def fingerprint(self) -> dict:
        """This machine and its GPU (the runs' provenance and ``hardware``)."""
        if self._fingerprint is None:
            from servetune.data.collect._provenance import machine_fingerprint

            self._fingerprint = machine_fingerprint(self.options.device)
        return self._fingerprint

    def serve_argv(self, knobs: dict, steps_out: Path) -> list[str]:
        """The launcher's command line: ``serve-recorded`` around the ``transformers serve``
        arguments of ``knobs`` (refused when the serve command line cannot express one)."""
        from servetune.data.engines import TRANSFORMERS_CB

        o = self.options
        # the model-level knobs go through the engine spec like the configuration's own
        launch = {**knobs, "dtype": o.dtype, "device": o.device,
                  "attn_implementation": o.attn_implementation}
        flags = list(TRANSFORMERS_CB.check_launchable(launch, unapplied="error").flags)
        serve_args = [str(self.model_dir()), *TRANSFORMERS_CB.fixed_args, "--host", "127.0.0.1",
                      "--port", str(o.port), *flags]
        return [sys.executable, "-m", "servetune.data.collect", "serve-recorded", "--steps-out",
                str(steps_out), "--", *serve_args]

    def run(self, config: EngineConfig, workload, *, workload_name: str, repeat: int):
        """Measure one run: a :class:`~servetune.data.collect.RunResult`. A server that fails
        or cannot be measured raises ``RuntimeError`` (the sweep goes on)."""
        from servetune.data.collect._runner import RunResult

        run_id = (f"{self.options.label}{config.name}-{workload_name}-r{repeat}-"
                  f"{uuid.uuid4().hex[:6]}")
        work = Path(self.options.work_dir) / run_id
        work.mkdir(parents=True, exist_ok=True)
        steps_path = work / "served_steps.parquet"
        argv = self.serve_argv(config.knobs, steps_path)
        try:
            result, replay_start = self._serve_and_replay(argv, workload, work)
        except TimeoutError as exc:
            raise RuntimeError(str(exc) or "the replay timed out") from None
        if not steps_path.exists():
            raise RuntimeError(f"transformers serve wrote no steps; see {work / 'serve.log'}")
        tables = self._tables(run_id, config, workload, repeat, argv, result, replay_start,
                              steps_path)
        return RunResult(run_id, tables["steps"].to_pydict(), tables["requests"].to_pydict(),
                         tables["runs"].to_pydict())

    # -- the server ----------------------------------------------------------------------------

    def _serve_and_replay(self, argv: list[str], workload, work: Path):
        from servetune.data._workload import Workload
        from servetune.tuner.hardware._client import ClientOptions, replay

        o = self.options
        base = f"http://127.0.0.1:{o.port}"
        client = ClientOptions(model=str(self.model_dir()), seed=o.seed)
        with open(work / "serve.log", "w") as log_file:
            server = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      env={**os.environ, "HF_HUB_OFFLINE": "1"})
            try:
                wait_healthy(base, server, o.health_timeout_s, work / "serve.log")
                if o.warmup_requests:
                    n = min(o.warmup_requests, len(workload))
                    head = workload.head(n)
                    warm = Workload.from_arrays([0.0] * n, head.input_tokens, head.output_tokens,
                                                name="warmup")
                    asyncio.run(replay(base, warm, client))
                # CLOCK_MONOTONIC (perf_counter on Linux): the server's steps carry the same
                # clock, so the window holds even when the wall clock is stepped meanwhile
                replay_start = time.perf_counter()
                result = asyncio.run(asyncio.wait_for(replay(base, workload, client),
                                                      timeout=o.run_timeout_s))
            finally:
                _stop(server)
        return result, replay_start

    # -- rows ----------------------------------------------------------------------------------

    def _tables(self, run_id, config, workload, repeat, argv, result, replay_start: float,
                steps_path: Path) -> dict:
        from servetune.data._schemas import conform
        from servetune.data.engines import TRANSFORMERS_CB
        from servetune.tuner.hardware._records import (
            aggregate_metrics,
            measurement_tables,
            model_label,
        )

        o = self.options
        fingerprint = self.fingerprint()
        hardware = fingerprint.get("gpu_name") or "cpu"
        model = model_label(o.model)  # a preset's name, or a directory's last component
        metrics = aggregate_metrics(result.requests, {"ttft_ms": o.slo_ttft_ms,
                                                      "tpot_ms": o.slo_tpot_ms})
        tables, _ = measurement_tables(
            result, run_id=run_id, engine=TRANSFORMERS_CB.name, model=model, hardware=hardware,
            config=config.knobs, workload=workload,
            host=fingerprint.get("hostname") or "", command=argv, gpu_count=1, metrics=metrics,
            extra={"config_name": config.name, "repeat": repeat, "served": True,
                   "knobs": config.knobs},
            provenance={**fingerprint, "model_source": o.model, "dtype": o.dtype,
                        "attn_implementation": o.attn_implementation, "seed": o.seed,
                        "warmup_requests": o.warmup_requests,
                        "steps": "recorded in the server process (serve-recorded)"})
        rows = [r for r in pq.read_table(steps_path).to_pylist()
                if r["start_monotonic"] >= replay_start]
        for r in rows:
            r["start_s"] = r["start_monotonic"] - replay_start
        records = records_from_rows(rows)
        n = len(records)
        steps = {"run_id": [run_id] * n, "engine": [TRANSFORMERS_CB.name] * n,
                 "model": [model] * n, "hardware": [hardware] * n, "source": ["measured"] * n,
                 "gpu_count": [1] * n, "tp_size": [1] * n, "pp_size": [1] * n,
                 "dp_rank": [0] * n, "block_size": [config.knobs.get("block_size")] * n,
                 **step_columns(records)}
        tables["steps"] = conform(steps, "steps", path=f"served run {run_id}")
        log.info("%s: %d steps recorded, %d requests", run_id, n, len(result.requests))
        return tables


def wait_healthy(base_url: str, server: subprocess.Popen, timeout_s: float,
                 log_path: Path | None = None) -> None:
    """Wait until the server answers ``GET /health`` with 200 (``/v1/models`` would scan the
    Hugging Face cache and fail without one). Raises ``RuntimeError`` when it exits first,
    ``TimeoutError`` past ``timeout_s``; both name ``log_path``."""
    import httpx

    see = f"; see {log_path}" if log_path else ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {server.returncode} before it "
                               f"was healthy{see}")
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"transformers serve was not healthy within {timeout_s:g}s{see}")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's session (it writes its steps), SIGKILL after 120 s."""
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=120)
    except subprocess.TimeoutExpired:
        log.error("transformers serve did not stop on SIGTERM; killing its session")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass

