"""Collectors: real per-step and per-request traces from serving engines on real hardware.

``servetune collect transformers-cb`` drives transformers' continuous-batching engine online
(requests submitted at their arrival times) and records every engine step's batch composition and
wall time through a :class:`StepRecorder` installed on the live manager instance.
``servetune collect transformers-serve`` (:class:`ServedCollector`) measures the engine users
deploy, ``transformers serve``, over HTTP with the same recorder in the server process
(``collect serve-recorded``).

torch and transformers are imported only when a collector runs (the ``collect`` extra).
"""

from servetune.data.collect._collect import CollectSummary, collect_sweep, resolve_spec
from servetune.data.collect._output import TraceWriter, merge_outputs, read_output, write_kind
from servetune.data.collect._plan import (
    EngineConfig,
    RunPlan,
    SweepPlan,
    WorkloadSpec,
    knob_names,
    load_sweep,
    parse_assignments,
    parse_value,
)
from servetune.data.collect._presets import PRESETS, ModelPreset, build_model
from servetune.data.collect._provenance import cpu_model, machine_fingerprint
from servetune.data.collect._recorder import StepRecord, StepRecorder
from servetune.data.collect._served_model import word_level_model
from servetune.data.collect._served_runner import ServedCollector, ServedOptions
from servetune.data.collect._runner import (
    ENGINE,
    CollectorOptions,
    RunResult,
    TransformersCBCollector,
)

__all__ = [
    "ServedCollector",
    "ServedOptions",
    "word_level_model",
    "ENGINE",
    "PRESETS",
    "CollectSummary",
    "CollectorOptions",
    "EngineConfig",
    "ModelPreset",
    "RunPlan",
    "RunResult",
    "StepRecord",
    "StepRecorder",
    "SweepPlan",
    "TraceWriter",
    "TransformersCBCollector",
    "WorkloadSpec",
    "build_model",
    "collect_sweep",
    "cpu_model",
    "knob_names",
    "load_sweep",
    "machine_fingerprint",
    "merge_outputs",
    "parse_assignments",
    "parse_value",
    "read_output",
    "resolve_spec",
    "write_kind",
]
