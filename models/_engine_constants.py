"""Engine constants of a step-time model: what the simulator needs beyond step times, learned
from the same training runs (or read from their recorded configuration), never hard-coded.

An :class:`EngineConstants` holds, per batching mode (sync / async), the CUDA-graph capture cost
fitted on the training runs' graph-capture steps (:func:`fit_capture_cost`), and the hardware
and model facts the KV-cache sizing needs: GPU name and memory (the runs' provenance), model
weights and KV bytes per token (the collector's model preset and dtype, through
:class:`~servetune.data.engines._transformers_resolve.ModelShape`). A fact the training runs do
not record is None; ``sources`` says where each value came from. It is logged as the MLflow
artifact ``engine_constants.json`` next to the model.

Capture cost of one CUDA-graph capture beyond the step itself, for a new padded query and KV
shape: ``fixed_ms + ms_per_query_token * padded query tokens + ms_per_kv_token * padded KV read
+ ms_per_budget_token * max_batch_tokens``; a shape captured before costs ``repeat_factor`` times
that.

Example:
    >>> c = EngineConstants(capture_sync=CaptureCost(50.0, 0.01, 0.0, 0.001, 0.3))
    >>> c.capture_config(False, max_batch_tokens=1000)["cuda_graph_capture_ms"]
    51.0
    >>> EngineConstants.from_dict(c.to_dict()) == c
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd

__all__ = ["EngineConstants", "CaptureCost", "ENGINE_CONSTANTS_ARTIFACT", "CAPTURE_KEYS",
           "MEMORY_KEYS", "capture_terms", "capture_fit", "fit_capture_cost",
           "repeated_shapes", "hardware_facts", "transformers_sim_config", "fit_h2d_bandwidth",
           "small_decode_floor_ms", "H2D_MIN_BYTES"]

#: async runs whose per-step mask copy is at least this large fit the H2D bandwidth: below it
#: the copy hides under the forward pass (measured on an H200: the floor stays at the ~9.9 ms
#: compute floor up to 0.48 GB, BENCHMARKS.md "Async mask copy vs KV cache size")
H2D_MIN_BYTES = 1.5e9

ENGINE_CONSTANTS_ARTIFACT = "engine_constants.json"  # MLflow artifact path in the training run
#: the simulator's capture-cost keys, in :meth:`CaptureCost.config_values` order
CAPTURE_KEYS = ("cuda_graph_capture_ms", "cuda_graph_capture_ms_per_token",
                "cuda_graph_capture_ms_per_kv_token", "cuda_graph_capture_repeat_factor")
#: the simulator's memory keys an :class:`EngineConstants` can fill
MEMORY_KEYS = ("gpu_memory_gib", "model_weights_gib", "kv_bytes_per_token")
# the transformers engine keys of a recorded run's resolved configuration the simulator takes
_ENGINE_KEYS = ("scheduler_type", "block_size", "num_blocks", "max_batch_tokens",
                "max_requests_per_batch", "safety_margin", "use_async_batching",
                "max_blocks_per_request", "q_padding_interval_size", "kv_padding_interval_size")
_FAST_PATH = '"decode_fast_path":true'


@dataclass(frozen=True)
class CaptureCost:
    """One batching mode's fitted CUDA-graph capture cost (see the module docstring).

    Attributes:
        fixed_ms, ms_per_query_token, ms_per_kv_token, ms_per_budget_token: the non-negative
            least-squares coefficients over the captures of new shapes.
        repeat_factor: a repeated shape's cost over a new one's (1.0 when no repeat was seen).
        n_captures: capture steps the fit used (new and repeated shapes).
    """

    fixed_ms: float
    ms_per_query_token: float
    ms_per_kv_token: float
    ms_per_budget_token: float
    repeat_factor: float
    n_captures: int = 0

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        """``(fixed, per query token, per KV token, per budget token, repeat factor)``."""
        return (self.fixed_ms, self.ms_per_query_token, self.ms_per_kv_token,
                self.ms_per_budget_token, self.repeat_factor)

    def config_values(self, max_batch_tokens: float) -> tuple[float, float, float, float]:
        """The simulator's ``CAPTURE_KEYS`` values for a token budget ``max_batch_tokens``."""
        return (self.fixed_ms + self.ms_per_budget_token * float(max_batch_tokens),
                self.ms_per_query_token, self.ms_per_kv_token, self.repeat_factor)


@dataclass(frozen=True)
class EngineConstants:
    """The fitted and recorded constants that ride with a registered step-time model.

    Attributes:
        capture_sync, capture_async: capture cost per batching mode; None when the training
            runs of that mode captured no CUDA graph.
        gpu_name: the training runs' GPU (None if they disagree or do not say).
        gpu_memory_gib: its memory per device (GiB).
        model_weights_gib: model weights per device (GiB).
        kv_bytes_per_token: KV cache bytes per token per device.
        h2d_gb_per_s: the host-to-device bandwidth of async batching's per-step copy of its
            static inputs (:func:`fit_h2d_bandwidth`); None when no training run copied enough.
        activation_gib: the activation peak the engine reserves before sizing its KV cache
            (vLLM's profiling run; GiB per device); None unless the training runs record it
            (transformers sizes its cache without this term).
        sources: per value above, where it came from (or why it is None).
        n_runs: training runs it was computed from.
    """

    capture_sync: CaptureCost | None = None
    capture_async: CaptureCost | None = None
    gpu_name: str | None = None
    gpu_memory_gib: float | None = None
    model_weights_gib: float | None = None
    kv_bytes_per_token: int | None = None
    h2d_gb_per_s: float | None = None
    activation_gib: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    n_runs: int = 0

    def filled_from(self, other: "EngineConstants | None") -> "EngineConstants":
        """These constants with every unknown (None) value taken from ``other`` (a calibrated
        model's base model), its source saying so."""
        if other is None:
            return self
        names = ("capture_sync", "capture_async", "gpu_name", "gpu_memory_gib",
                 "model_weights_gib", "kv_bytes_per_token", "h2d_gb_per_s", "activation_gib")
        taken = {n: getattr(other, n) for n in names
                 if getattr(self, n) is None and getattr(other, n) is not None}
        sources = {**self.sources, **{n: "from the base model (calibration data lacks it)"
                                      for n in taken}}
        return replace(self, **taken, sources=sources)

    def capture(self, async_batching: bool) -> CaptureCost | None:
        """The capture cost of a batching mode."""
        return self.capture_async if async_batching else self.capture_sync

    def capture_config(self, async_batching: bool, max_batch_tokens: float) -> dict:
        """``CAPTURE_KEYS`` values of a batching mode and token budget; empty when unknown."""
        fit = self.capture(async_batching)
        return {} if fit is None else dict(zip(CAPTURE_KEYS, fit.config_values(max_batch_tokens)))

    def memory_config(self) -> dict:
        """The known ``MEMORY_KEYS`` values and the H2D bandwidth (simulation keys)."""
        return {k: getattr(self, k) for k in (*MEMORY_KEYS, "h2d_gb_per_s", "activation_gib")
                if getattr(self, k) is not None}

    def hardware(self) -> dict:
        """``gpu_name`` and ``gpu_memory_gib`` where known (an engine spec's ``hardware``)."""
        return {k: getattr(self, k) for k in ("gpu_name", "gpu_memory_gib")
                if getattr(self, k) is not None}

    # -- serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-ready form (what ``engine_constants.json`` holds)."""
        def cap(c):
            return None if c is None else {f.name: getattr(c, f.name) for f in fields(c)}
        return {"version": 1, "capture": {"sync": cap(self.capture_sync),
                                          "async": cap(self.capture_async)},
                "gpu_name": self.gpu_name, "gpu_memory_gib": self.gpu_memory_gib,
                "model_weights_gib": self.model_weights_gib,
                "kv_bytes_per_token": self.kv_bytes_per_token,
                "h2d_gb_per_s": self.h2d_gb_per_s, "activation_gib": self.activation_gib,
                "sources": dict(self.sources), "n_runs": self.n_runs}

    @classmethod
    def from_dict(cls, data: Mapping) -> "EngineConstants":
        """Inverse of :meth:`to_dict`."""
        capture = data.get("capture") or {}

        def cap(c):
            return None if c is None else CaptureCost(**{f.name: c[f.name] for f in
                                                         fields(CaptureCost) if f.name in c})
        kv = data.get("kv_bytes_per_token")
        return cls(capture_sync=cap(capture.get("sync")), capture_async=cap(capture.get("async")),
                   gpu_name=data.get("gpu_name"), gpu_memory_gib=data.get("gpu_memory_gib"),
                   model_weights_gib=data.get("model_weights_gib"),
                   kv_bytes_per_token=None if kv is None else int(kv),
                   h2d_gb_per_s=data.get("h2d_gb_per_s"),
                   activation_gib=data.get("activation_gib"),
                   sources=dict(data.get("sources") or {}), n_runs=int(data.get("n_runs", 0)))

    @classmethod
    def from_training(cls, captures: pd.DataFrame, predicted_ms: np.ndarray,
                      runs: pd.DataFrame, repeat_factor: bool = True,
                      steps: pd.DataFrame | None = None) -> "EngineConstants":
        """Fit the capture cost on ``captures`` (graph-capture steps of the training runs, with
        ``predicted_ms`` the step-time model's prediction of each) and read the hardware and
        model facts of ``runs`` (the training runs: ``run_id``, ``engine``, ``config``,
        ``provenance``, ``gpu_name``, ``tp_size``)."""
        facts, sources = hardware_facts(runs)
        fits = fit_capture_cost(captures, predicted_ms, runs, repeat_factor)
        for key, is_async in (("capture_sync", False), ("capture_async", True)):
            sources[key] = ("least squares over the training runs' graph-capture steps"
                            if fits[is_async] is not None else
                            "no graph-capture step of this batching mode in the training runs")
        bandwidth, sources["h2d_gb_per_s"] = (
            fit_h2d_bandwidth(steps, runs) if steps is not None and "engine" in runs
            else (None, "no training steps given"))
        return cls(capture_sync=fits[False], capture_async=fits[True], sources=sources,
                   n_runs=int(runs["run_id"].nunique()), h2d_gb_per_s=bandwidth, **facts)


# --- host-to-device bandwidth of async batching -------------------------------------------------

def small_decode_floor_ms(run_steps: pd.DataFrame, min_steps: int = 5) -> float | None:
    """A run's step floor: the median duration of its small decode steps (<= 8 sequences, no
    prefill tokens, neither a CUDA-graph capture nor the step after one); None with fewer than
    ``min_steps`` of them."""
    mine = run_steps.sort_values("step_index")
    captured = mine["extra"].astype(str).str.contains(r'"graph_captured"\s*:\s*true')
    after = captured.shift(1, fill_value=False)
    small = (mine["num_seqs"] <= 8) & (mine["prefill_tokens"] == 0) & ~captured & ~after
    if small.sum() < min_steps:
        return None
    return float(np.median(mine.loc[small, "duration_ms"]))


def fit_h2d_bandwidth(steps: pd.DataFrame, runs: pd.DataFrame) -> tuple[float | None, str]:
    """The H2D bandwidth (GB/s) async batching's per-step input copy runs at, and its source.

    For every async transformers run whose recorded configuration gives the cache geometry
    and whose attention mask copy (``mask_copy_bytes_per_step``) is at least
    :data:`H2D_MIN_BYTES`, the step floor is the median duration of its small decode steps
    (<= 8 sequences, no prefill tokens, neither a graph capture nor the step after one); the
    copy bounds that floor from below, so bytes / floor is the bandwidth where the copy
    dominates. The median over those runs is returned.

    Args:
        steps: training steps with ``run_id``, ``step_index``, ``num_seqs``,
            ``prefill_tokens``, ``duration_ms`` and ``extra``.
        runs: the training runs' ``run_id``, ``engine``, ``config`` and ``provenance``.
    """
    from servetune.data.engines import ENGINES, TRANSFORMERS_CB
    from servetune.data.engines._transformers_resolve import mask_copy_bytes_per_step

    ratios = []
    for run in runs.itertuples():
        config, provenance = _json(run.config), _json(run.provenance)
        if not config.get("use_async_batching") or str(run.engine) not in ENGINES \
                or ENGINES[str(run.engine)] is not TRANSFORMERS_CB:
            continue
        geometry = {**config, "attn_implementation": provenance.get("attn_implementation")
                    or config.get("attn_implementation") or "paged|sdpa"}
        try:
            copied = mask_copy_bytes_per_step(geometry)
        except Exception:  # noqa: BLE001 - a run without its cache geometry says nothing
            continue
        if copied < H2D_MIN_BYTES:
            continue
        floor_ms = small_decode_floor_ms(steps[steps["run_id"] == run.run_id])
        if floor_ms is not None:
            ratios.append(copied / (floor_ms * 1e-3) / 1e9)
    if not ratios:
        return None, ("no async training run copies >= "
                      f"{H2D_MIN_BYTES / 1e9:g} GB per step (the copy hides under the forward)")
    return float(np.median(ratios)), (f"median over {len(ratios)} async training run(s) of mask "
                                      "bytes / small-decode step floor")


# --- hardware and model facts -------------------------------------------------------------------


def _json(text) -> dict:
    if not isinstance(text, str) or not text:
        return {}
    try:
        out = json.loads(text)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _one(values, what: str) -> tuple[object | None, str]:
    """The single distinct non-missing value, else None and why."""
    distinct = sorted({v for v in values if v is not None and not (isinstance(v, float)
                                                                   and math.isnan(v))}, key=str)
    if len(distinct) == 1:
        return distinct[0], ""
    if not distinct:
        return None, f"the training runs do not record {what}"
    return None, f"the training runs have several {what}s ({', '.join(map(str, distinct))})"


def hardware_facts(runs: pd.DataFrame) -> tuple[dict, dict]:
    """``(values, sources)``: ``gpu_name``, ``gpu_memory_gib`` from the runs' provenance
    (``gpu_memory_bytes``), and ``model_weights_gib``, ``kv_bytes_per_token`` per device from
    the collector's model preset and dtype (:class:`ModelShape`: layers x 2 x KV heads x head dim
    x dtype bytes; the weights a dense-decoder estimate from the same config), divided over the
    runs' tensor-parallel size. A value the runs do not agree on or do not record is None."""
    from servetune.data.collect import PRESETS
    from servetune.data.engines._transformers_resolve import _DTYPE_BYTES, ModelShape

    prov = [_json(p) for p in runs.get("provenance", pd.Series([], dtype=object))]
    values: dict = {k: None for k in ("gpu_name", *MEMORY_KEYS)}
    sources: dict[str, str] = {}
    names = (list(runs["gpu_name"]) if "gpu_name" in runs.columns
             else [p.get("gpu_name") for p in prov])
    values["gpu_name"], why = _one(names, "GPU name")
    sources["gpu_name"] = why or "the runs table's gpu_name"
    memory, why = _one([p.get("gpu_memory_bytes") for p in prov], "GPU memory")
    if memory is not None:
        values["gpu_memory_gib"] = float(memory) / 2**30
    sources["gpu_memory_gib"] = why or "the runs' provenance gpu_memory_bytes"
    preset, why = _one([p.get("preset") for p in prov], "model preset")
    dtype, why_dtype = _one([p.get("dtype") for p in prov], "model dtype")
    tp, why_tp = _one([int(t) for t in runs["tp_size"].dropna()] if "tp_size" in runs.columns
                      else [], "tensor-parallel size")
    reason = why or why_dtype
    if not reason and preset not in PRESETS:
        reason = f"the model {preset!r} is not a collector preset (no model config recorded)"
    if not reason and dtype not in _DTYPE_BYTES:
        reason = f"unknown model dtype {dtype!r}"
    if reason:
        sources["model_weights_gib"] = sources["kv_bytes_per_token"] = reason
        return values, sources
    tp = int(tp or 1)
    shape = ModelShape.from_config(PRESETS[preset].kwargs, dtype_bytes=_DTYPE_BYTES[dtype])
    kv_heads = max(shape.num_kv_heads // tp, 1)
    values["kv_bytes_per_token"] = int(shape.num_layers * 2 * kv_heads * shape.head_dim
                                       * shape.dtype_bytes)
    values["model_weights_gib"] = shape.weights_bytes / tp / 2**30
    where = f"model preset {preset} ({dtype}, tp={tp}{'' if why_tp == '' else ', assumed'})"
    sources["kv_bytes_per_token"] = f"{where}: layers x 2 x kv_heads x head_dim x dtype bytes"
    sources["model_weights_gib"] = f"{where}: dense-decoder parameter count x dtype bytes"
    return values, sources


# --- capture-cost fit ---------------------------------------------------------------------------


def transformers_sim_config(config: Mapping[str, object]) -> dict:
    """The simulator's transformers keys of a recorded run's resolved engine ``config``."""
    out = {k: config[k] for k in _ENGINE_KEYS if k in config}
    graphs = config.get("use_cuda_graph")
    out["use_cuda_graph"] = bool(any(graphs)) if isinstance(graphs, list) else bool(graphs)
    return out


def _padded(size: np.ndarray, interval: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """The engine's ``pad_to_interval``: up to a multiple of ``interval``, at most ``cap``."""
    return np.minimum(np.ceil(np.maximum(size, 1) / interval) * interval, cap)


def _fast_path(captures: pd.DataFrame) -> pd.Series:
    return captures["extra"].fillna("").astype(str).str.contains(_FAST_PATH, regex=False)


def repeated_shapes(captures: pd.DataFrame, runs: pd.DataFrame) -> np.ndarray:
    """Per capture step (in step order within each run): True when the run had already captured
    the same padded query and KV shape (by the other async IO pair, or with another padded key
    length), as the simulator's graph key tells."""
    from servetune.tuner.simulator._policies import get_policy
    from servetune.tuner.simulator._transformers import _graph_key

    policy = get_policy("transformers")
    out = np.zeros(len(captures), dtype=bool)
    position = {index: k for k, index in enumerate(captures.index)}
    by_run = runs.drop_duplicates("run_id").set_index("run_id")
    for run_id, group in captures.sort_values("step_index").groupby("run_id"):
        config = transformers_sim_config(json.loads(by_run.loc[run_id, "config"]))
        # the shape key reads the padding and cache sizes only, not the capture cost
        p = policy.params(policy.resolve({**config, **dict.fromkeys(CAPTURE_KEYS, 0.0)}))
        pair = config["use_async_batching"]
        seen: set[int] = set()
        for row, is_fast in zip(group.itertuples(), _fast_path(group)):
            q = row.prefill_tokens + row.decode_tokens
            _, shape, _, _ = _graph_key(p, row.num_seqs, q, row.kv_tokens_sum - q,
                                        row.kv_tokens_max, bool(is_fast),
                                        row.step_index % 2 if pair else 0)
            out[position[row.Index]] = shape in seen
            seen.add(shape)
    return out


def capture_terms(captures: pd.DataFrame, runs: pd.DataFrame, repeat_factor: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per capture step: the cost terms ``[1, padded query tokens, padded KV read,
    max_batch_tokens]``, whether its run batches asynchronously, and whether the run had captured
    its query and KV shape before (all False with ``repeat_factor=False``)."""
    config = runs.drop_duplicates("run_id").set_index("run_id")["config"].map(json.loads)
    conf = captures["run_id"].map(config)
    q = (captures["prefill_tokens"] + captures["decode_tokens"]).to_numpy()
    q_pad = _padded(q, conf.map(lambda c: c["q_padding_interval_size"]).to_numpy(),
                    conf.map(lambda c: c["max_batch_tokens"]).to_numpy())
    pages = conf.map(lambda c: c["num_blocks"] * c["block_size"]).to_numpy()
    kv_pad = _padded(captures["kv_tokens_sum"].to_numpy() - q,
                     conf.map(lambda c: c["kv_padding_interval_size"]).to_numpy(), pages)
    kv_pad = np.where(_fast_path(captures).to_numpy(), 0.0, kv_pad)
    mode = conf.map(lambda c: bool(c["use_async_batching"])).to_numpy(dtype=bool)
    budget = conf.map(lambda c: c["max_batch_tokens"]).to_numpy()
    repeat = (repeated_shapes(captures, runs) if repeat_factor
              else np.zeros(len(captures), dtype=bool))
    terms = np.column_stack([np.ones(len(captures)), q_pad, kv_pad, budget]).astype(np.float64)
    return terms, mode, repeat


def capture_fit(captures: pd.DataFrame, predicted_ms: np.ndarray, runs: pd.DataFrame,
                repeat_factor: bool = True
                ) -> dict[bool, tuple[float, float, float, float, float]]:
    """Per batching mode (async or not): non-negative least squares
    ``extra_ms = a + b * padded query tokens + c * padded KV read + d * max_batch_tokens`` over the
    graph-capture steps of new shapes, where extra is the measured duration minus the step-time
    model's prediction; then the factor ``f`` that scales that cost for the captures of a query
    and KV shape captured before (least squares). ``(a, b, c, d, f)`` per mode; a mode without
    captures is left out. ``repeat_factor=False`` fits all captures alike (factor 1)."""
    return {mode: fit.as_tuple() for mode, fit in
            fit_capture_cost(captures, predicted_ms, runs, repeat_factor).items()
            if fit is not None}


def fit_capture_cost(captures: pd.DataFrame, predicted_ms: np.ndarray, runs: pd.DataFrame,
                     repeat_factor: bool = True) -> dict[bool, CaptureCost | None]:
    """:func:`capture_fit` as a :class:`CaptureCost` per mode (None for a mode without captures
    of a new shape). ``captures`` are transformers graph-capture steps with the steps columns
    (``run_id``, ``step_index``, composition, ``duration_ms``, ``extra``); ``runs`` holds each
    run's resolved engine ``config`` JSON."""
    from scipy.optimize import nnls

    fits: dict[bool, CaptureCost | None] = {False: None, True: None}
    if not len(captures):
        return fits
    A, mode, repeat = capture_terms(captures, runs, repeat_factor)
    extra = captures["duration_ms"].to_numpy(dtype=np.float64) - np.asarray(predicted_ms)
    for is_async in (False, True):
        new = (mode == is_async) & ~repeat
        if not new.any():
            continue
        coef, _ = nnls(A[new], extra[new])
        again = (mode == is_async) & repeat
        cost = A[again] @ coef
        factor = (float((extra[again] * cost).sum() / (cost * cost).sum())
                  if again.any() and (cost * cost).sum() > 0 else 1.0)
        fits[is_async] = CaptureCost(*(float(v) for v in coef), max(factor, 0.0),
                                     n_captures=int((mode == is_async).sum()))
    return fits
