"""Run transformers continuous batching online against a workload and record real traces.

:class:`TransformersCBCollector` builds the model once, then for every run creates a fresh
``ContinuousBatchingManager`` with that run's ``ContinuousBatchingConfig``, installs a
:class:`~servetune.data.collect.StepRecorder` on it, submits each request **at its arrival time**
through ``manager.add_request`` (random prompt token ids, ``max_new_tokens`` = the request's output
length, EOS disabled so every request generates exactly that many tokens), collects the results
with ``manager.get_result``, and turns everything into rows of the three trace kinds.

Example (CPU, tiny model)::

    collector = TransformersCBCollector(CollectorOptions(model="tiny-llama", device="cpu",
                                                         dtype="float32"))
    result = collector.run(EngineConfig("small", {"num_blocks": 64, "max_batch_tokens": 64}),
                           workload)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np

from servetune import ConfigError
from servetune.data._metrics import SLO, run_metrics
from servetune.data._schemas import RUNS_SCHEMA, partition_value
from servetune.data._workload import Workload
from servetune.data.engines import TRANSFORMERS_CB
from servetune.data.collect._plan import EngineConfig, knob_names
from servetune.data.collect._presets import build_model
from servetune.data.collect._provenance import machine_fingerprint
from servetune.data.collect._recorder import StepRecorder, step_columns

__all__ = ["CollectorOptions", "RunResult", "TransformersCBCollector", "ENGINE"]

log = logging.getLogger(__name__)

ENGINE = TRANSFORMERS_CB.name
_RUNS_COLUMNS = frozenset(RUNS_SCHEMA.names)
STEP_DEFINITION = ("wall time of one generation-loop iteration that launched a forward pass: "
                   "schedule + prepare inputs + forward + sample + update (async: launch-to-launch)")


@dataclass(frozen=True)
class CollectorOptions:
    """How to build the model and drive the engine."""

    model: str = "llama-1b-like"  #: preset name or local model directory
    dtype: str = "bfloat16"
    attn_implementation: str = "paged|sdpa"
    device: str = "cuda"
    seed: int = 0  #: seeds the random weights and the prompts
    warmup_requests: int = 4  #: unrecorded requests through each fresh manager before the clock
    run_timeout_s: float = 900.0  #: a run still unfinished after this is stopped, rest = errors
    slo_ttft_ms: float | None = None  #: goodput counts requests within both SLOs (if given)
    slo_tpot_ms: float | None = None
    label: str = ""  #: prefix of run ids
    command: str = field(default_factory=lambda: shlex.join(sys.argv))


@dataclass
class RunResult:
    """Column lists of one run, ready for :func:`servetune.data.conform`."""

    run_id: str
    steps: dict
    requests: dict
    runs: dict
    #: forward passes the engine counted itself (``manager.current_batch``) after the warm-up
    engine_steps: int = 0

    @property
    def num_steps(self) -> int:
        return len(self.steps["step_index"])


class TransformersCBCollector:
    """Measures transformers continuous batching runs; the model is built on first use, once."""

    def __init__(self, options: CollectorOptions) -> None:
        self.options = options
        self._model = None
        self._vocab_size = 0
        self._fingerprint: dict | None = None
        self._valid_knobs: tuple[str, ...] = ()

    # -- setup ---------------------------------------------------------------------------------

    def load(self) -> "TransformersCBCollector":
        """Build the model (idempotent) and read the machine fingerprint."""
        if self._model is None:
            opts = self.options
            self._model, self._vocab_size = build_model(
                opts.model, dtype=opts.dtype, attn_implementation=opts.attn_implementation,
                device=opts.device, seed=opts.seed)
            self._fingerprint = machine_fingerprint(opts.device)
            self._valid_knobs = knob_names()
        return self

    @property
    def fingerprint(self) -> dict:
        """The machine fingerprint (after :meth:`load`)."""
        self.load()
        return dict(self._fingerprint or {})

    @property
    def model_name(self) -> str:
        """The ``model`` column: the preset name, or a local model directory's name."""
        from pathlib import Path

        from servetune.data.collect._presets import PRESETS

        model = self.options.model
        return model if model in PRESETS else Path(model).expanduser().resolve().name

    @property
    def hardware(self) -> str:
        """The ``hardware`` partition value: the GPU name, or ``cpu``."""
        return partition_value(self.fingerprint.get("gpu_name") or "cpu")

    def valid_knobs(self) -> tuple[str, ...]:
        """The ContinuousBatchingConfig fields of the installed transformers."""
        self.load()
        return self._valid_knobs

    # -- one run -------------------------------------------------------------------------------

    def run(self, config: EngineConfig, workload: Workload, *, workload_name: str | None = None,
            repeat: int = 0, progress=None, instrument: bool = True) -> RunResult:
        """Measure ``config`` on ``workload`` once; returns the rows of the three trace kinds.

        ``instrument=False`` runs the same thing without the step recorder (no step rows): the
        baseline of the collector's overhead benchmark.
        """
        import torch
        from transformers import ContinuousBatchingConfig, GenerationConfig

        self.load()
        opts = self.options
        unknown = sorted(set(config.knobs) - set(self._valid_knobs))
        if unknown:
            raise ConfigError(f"configuration {config.name!r}: unknown knob(s) {', '.join(unknown)}")
        try:
            cb_config = ContinuousBatchingConfig(**config.knobs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"configuration {config.name!r}: {exc}") from None
        rng = np.random.default_rng([opts.seed, repeat, len(workload)])
        prompts = [rng.integers(0, self._vocab_size, size=int(n)).tolist()
                   for n in workload.input_tokens]
        outputs = [int(n) for n in workload.output_tokens]
        generation_config = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0,
                                             max_new_tokens=max(outputs))
        run_id = (f"{opts.label}{config.name}-{workload_name or workload.name}-r{repeat}-"
                  f"{uuid.uuid4().hex[:6]}")
        recorder = StepRecorder()
        manager = self._model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=cb_config)
        if instrument:
            recorder.install(manager)
        submit = np.full(len(workload), np.nan)
        results: dict[str, object] = {}
        steps_before = 0
        try:
            manager.warmup()
            manager.start()
            self._warm_up(manager, rng)
            steps_before = getattr(manager, "current_batch", 0)  # set by the thread at start
            t0 = recorder.begin()
            started_at = dt.datetime.now(dt.timezone.utc)
            self._submit_and_collect(manager, workload, prompts, outputs, t0, submit, results,
                                     progress)
        finally:
            recorder.end()
            engine_steps = getattr(manager, "current_batch", 0) - steps_before
            resolved = _config_to_dict(manager.continuous_batching_config)
            manager.stop(block=True, timeout=120)
            manager.destroy()
            recorder.uninstall()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        result = self._rows(run_id, config, workload, workload_name, repeat, resolved, recorder,
                            submit, results, outputs, started_at)
        result.engine_steps = engine_steps
        return result

    def _warm_up(self, manager, rng: np.random.Generator) -> None:
        n = self.options.warmup_requests
        ids = [manager.add_request(rng.integers(0, self._vocab_size, size=32).tolist(),
                                   request_id=f"warmup-{i}", max_new_tokens=4, eos_token_id=-1)
               for i in range(n)]
        pending = set(filter(None, ids))
        deadline = perf_counter() + 300
        while pending and perf_counter() < deadline:
            result = manager.get_result(timeout=1.0)
            if result is not None:
                pending.discard(result.request_id)
            elif not manager.is_running():
                break
        if pending:
            raise RuntimeError(f"warm-up requests did not finish: {sorted(pending)}")

    def _submit_and_collect(self, manager, workload, prompts, outputs, t0, submit, results,
                            progress) -> None:
        arrivals = workload.arrival_s
        for i in range(len(workload)):
            delay = t0 + arrivals[i] - perf_counter()
            if delay > 0:
                time.sleep(delay)
            submit[i] = perf_counter()
            manager.add_request(prompts[i], request_id=f"r{i}", max_new_tokens=outputs[i],
                                record_timestamps=True, eos_token_id=-1)
        deadline = t0 + self.options.run_timeout_s
        while len(results) < len(workload):
            result = manager.get_result(timeout=1.0)
            if result is not None:
                results[result.request_id] = result
                if progress is not None:
                    progress(len(results), len(workload))
            elif not manager.is_running():
                log.error("the generation thread stopped with %d of %d requests finished",
                          len(results), len(workload))
                break
            if perf_counter() > deadline:
                log.error("run timed out after %.0f s with %d of %d requests finished",
                          self.options.run_timeout_s, len(results), len(workload))
                manager.stop(block=True, timeout=60, hard_stop=True)
                while (result := manager.get_result(timeout=0.1)) is not None:
                    results[result.request_id] = result
                break

    # -- rows ----------------------------------------------------------------------------------

    def _identity(self, run_id: str, n: int) -> dict:
        import transformers

        return {"run_id": [run_id] * n, "engine": [ENGINE] * n,
                "model": [partition_value(self.model_name)] * n,
                "hardware": [self.hardware] * n,
                "engine_version": [transformers.__version__] * n, "source": ["measured"] * n}

    def _rows(self, run_id, config, workload, workload_name, repeat, resolved, recorder, submit,
              results, outputs, started_at) -> RunResult:
        steps = self._step_rows(run_id, recorder, resolved)
        requests, per_request = self._request_rows(run_id, workload, recorder, submit, results,
                                                   outputs)
        runs = self._run_row(run_id, config, workload, workload_name, repeat, resolved,
                             recorder, per_request, started_at)
        return RunResult(run_id, steps, requests, runs)

    def _step_rows(self, run_id: str, recorder: StepRecorder, resolved: dict) -> dict:
        records = recorder.steps
        n = len(records)
        rows = self._identity(run_id, n)
        rows.update({"gpu_count": [1] * n, "tp_size": [1] * n, "pp_size": [1] * n,
                     "dp_rank": [0] * n, "block_size": [resolved.get("block_size")] * n})
        rows.update(step_columns(records))
        return rows

    def _request_rows(self, run_id, workload, recorder, submit, results, outputs):
        n = len(workload)
        rows = self._identity(run_id, n)
        columns = {k: [] for k in ("request_id", "arrival_s", "input_tokens", "output_tokens",
                                   "queue_ms", "ttft_ms", "tpot_ms", "e2e_ms", "itl_ms",
                                   "preemptions", "status", "error", "extra")}
        t0 = recorder.t0
        for i in range(n):
            request_id = f"r{i}"
            result = results.get(request_id)
            preemptions = max(recorder.prefill_starts.get(request_id, 1) - 1, 0)
            columns["request_id"].append(request_id)
            sent = submit[i]
            columns["arrival_s"].append(None if np.isnan(sent) else float(sent - t0))
            columns["input_tokens"].append(int(workload.input_tokens[i]))
            columns["preemptions"].append(preemptions)
            stamps = list(getattr(result, "timestamps", None) or [])
            generated = len(getattr(result, "generated_tokens", []) or [])
            error = None if result is None else result.error
            if result is None:
                error = "no result (run stopped or timed out)"
            elif error is None and generated != outputs[i]:
                error = f"generated {generated} tokens, expected {outputs[i]}"
            ok = error is None
            columns["output_tokens"].append(generated if result is not None else None)
            start, finish = getattr(result, "lifespan", (-1, -1)) if result is not None else (-1, -1)
            intact = ok and preemptions == 0 and len(stamps) == generated
            columns["queue_ms"].append((start - sent) * 1e3 if intact and start > 0 else None)
            columns["ttft_ms"].append((stamps[0] - sent) * 1e3 if intact and stamps else None)
            itl = np.diff(stamps) * 1e3 if len(stamps) > 1 else np.array([])
            columns["itl_ms"].append(itl.tolist() if ok else None)
            columns["tpot_ms"].append(float(itl.mean()) if ok and len(itl) and intact else None)
            end = stamps[-1] if stamps else (finish if finish > 0 else None)
            columns["e2e_ms"].append((end - sent) * 1e3 if ok and end is not None else None)
            columns["status"].append("ok" if ok else "error")
            columns["error"].append(error)
            columns["extra"].append(json.dumps({"expected_output_tokens": outputs[i],
                                                "finish_s": None if end is None else end - t0},
                                               separators=(",", ":")))
        rows.update(columns)
        return rows, columns

    def _run_row(self, run_id, config, workload, workload_name, repeat, resolved, recorder,
                 req, started_at) -> dict:
        ok = [s == "ok" for s in req["status"]]
        metrics = run_metrics(arrival_s=req["arrival_s"], ttft_ms=req["ttft_ms"],
                              e2e_ms=req["e2e_ms"], output_tokens=req["output_tokens"],
                              input_tokens=req["input_tokens"], ok=ok,
                              slo=SLO(ttft_ms=self.options.slo_ttft_ms,
                                      tpot_ms=self.options.slo_tpot_ms),
                              itl_ms=req["itl_ms"], preemptions=recorder.evictions)
        cuda_graph = resolved.get("use_cuda_graph")
        row = {
            "gpu_name": self.fingerprint.get("gpu_name") or "cpu", "gpu_count": 1,
            "tp_size": 1, "pp_size": 1, "dp_size": 1,
            "config": json.dumps(resolved, sort_keys=True),
            **TRANSFORMERS_CB.runs_columns({
                **{k: v for k, v in resolved.items() if k in TRANSFORMERS_CB.spellings},
                "use_async_batching": bool(resolved.get("use_async_batching")),
                "use_cuda_graph": bool(any(cuda_graph)) if isinstance(cuda_graph, list)
                else bool(cuda_graph)}),
            "chunked_prefill": True,
            "workload": json.dumps({**json.loads(workload.to_json()),
                                    "name": workload_name or workload.name}, sort_keys=True),
            **{k: v for k, v in metrics.items() if k in _RUNS_COLUMNS},
            "started_at": started_at, "host": self.fingerprint.get("hostname"),
            "command": self.options.command,
            "provenance": json.dumps({**self.fingerprint, "preset": self.options.model,
                                      "dtype": self.options.dtype,
                                      "attn_implementation": self.options.attn_implementation,
                                      "seed": self.options.seed,
                                      "warmup_requests": self.options.warmup_requests},
                                     sort_keys=True),
            "extra": json.dumps({"config_name": config.name, "repeat": repeat,
                                 "knobs": config.knobs, "steps": len(recorder.steps),
                                 "step_definition": STEP_DEFINITION}, sort_keys=True),
        }
        rows = self._identity(run_id, 1)
        rows.update({k: [v] for k, v in row.items()})
        return rows


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    return repr(value)


def _config_to_dict(config) -> dict:
    """A resolved ``ContinuousBatchingConfig`` as a JSON-ready dict (every field)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}
