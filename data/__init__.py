"""Trace schemas, the Parquet store, the workspace, ingestion adapters, collectors, workloads."""

from servetune.data._atomic import atomic_write_bytes, atomic_write_text
from servetune.data._metrics import SLO, metric_name, run_metrics
from servetune.data._reconstruct import (
    RECONSTRUCTED_SOURCE,
    ReconstructionPolicy,
    compare_reconstruction,
    reconstruct_steps,
)
from servetune.data._schemas import (
    KINDS,
    PARTITION_COLUMNS,
    REQUESTS_SCHEMA,
    RUNS_SCHEMA,
    SOURCES,
    STEPS_SCHEMA,
    conform,
    file_schema_for,
    partition_value,
    schema_for,
)
from servetune.data._store import IngestResult, TableStream, TraceStore
from servetune.data._synthetic import (
    LengthDistribution,
    SyntheticSpec,
    parse_workload_spec,
    resolve_workload,
    synthetic_workload,
)
from servetune.data._workload import Workload
from servetune.data._workload_formats import (
    WORKLOAD_FORMATS,
    WorkloadFormat,
    detect_workload_format,
    load_workload,
)
from servetune.data._workspace import WORKSPACE_ENV, Workspace

__all__ = [
    "KINDS",
    "PARTITION_COLUMNS",
    "RECONSTRUCTED_SOURCE",
    "REQUESTS_SCHEMA",
    "RUNS_SCHEMA",
    "SLO",
    "SOURCES",
    "STEPS_SCHEMA",
    "IngestResult",
    "LengthDistribution",
    "ReconstructionPolicy",
    "SyntheticSpec",
    "TableStream",
    "TraceStore",
    "WORKSPACE_ENV",
    "WORKLOAD_FORMATS",
    "Workload",
    "WorkloadFormat",
    "Workspace",
    "atomic_write_bytes",
    "atomic_write_text",
    "compare_reconstruction",
    "conform",
    "detect_workload_format",
    "file_schema_for",
    "load_workload",
    "metric_name",
    "parse_workload_spec",
    "reconstruct_steps",
    "partition_value",
    "resolve_workload",
    "run_metrics",
    "schema_for",
    "synthetic_workload",
]
