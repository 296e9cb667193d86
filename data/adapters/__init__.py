"""Ingestion adapters: real benchmark formats into the three trace kinds."""

from collections.abc import Mapping

from servetune.data.adapters._base import Adapter, AdapterRegistry, file_sha256, read_head
from servetune.data.adapters._common import OVERRIDABLE
from servetune.data.adapters._generic import GENERIC_FORMATS, GenericTraceAdapter
from servetune.data.adapters._parquet import ServetuneParquetAdapter
from servetune.data.adapters._vllm import VllmBenchAdapter
from servetune.data.adapters._vllm_iteration_log import VllmIterationLogAdapter
from servetune.data.adapters._vllm_sweep import VllmSweepAdapter

__all__ = [
    "Adapter",
    "AdapterRegistry",
    "GENERIC_FORMATS",
    "GenericTraceAdapter",
    "OVERRIDABLE",
    "ServetuneParquetAdapter",
    "VllmBenchAdapter",
    "VllmIterationLogAdapter",
    "VllmSweepAdapter",
    "default_registry",
    "file_sha256",
    "read_head",
]


def default_registry(overrides: Mapping[str, str] | None = None) -> AdapterRegistry:
    """A fresh registry of the built-in adapters, in detection order.

    Args:
        overrides: identity values (see :data:`OVERRIDABLE`) that the adapters of foreign
            formats set on every row they read, e.g. ``{"hardware": "H200"}``.
    """
    return AdapterRegistry([
        ServetuneParquetAdapter(),
        VllmBenchAdapter(overrides),
        VllmIterationLogAdapter(overrides),
        VllmSweepAdapter(overrides),
        *(GenericTraceAdapter(kind, syntax, overrides)
          for kind in ("steps", "requests") for syntax in ("csv", "jsonl")),
    ])
