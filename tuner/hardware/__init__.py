"""Hardware verification: start candidates on real service groups, benchmark, store the results.

Service groups come from a hostfile, a node string or TOML (:func:`load_cluster`); transports
run commands locally or over verified SSH; engine launchers render a candidate into each node's
command; :class:`Dispatcher` measures candidates in parallel with retries, backoff and a circuit
breaker per group, persisting every measurement to the trace store as it arrives;
:func:`build_report` compares predicted with measured, calibrated per host.

Example:
    >>> from servetune.tuner.hardware import parse_node_string, launcher_for
    >>> cluster = parse_node_string("local", service_port=8001)
    >>> launcher_for("transformers").render({"max_batch_tokens": 512}, cluster.groups[0],
    ...                                     model="/m")[0].argv[:3]
    ('transformers', 'serve', '/m')
"""

from servetune.tuner.hardware._candidates import (
    CANDIDATES_FILE,
    Candidate,
    candidates_from_sets,
    load_study_candidates,
    study_engine,
)
from servetune.tuner.hardware._client import (
    BenchmarkResult,
    ClientOptions,
    RequestResult,
    make_prompt,
    replay,
)
from servetune.tuner.hardware._cluster import (
    LOCAL_HOST,
    ClusterSpec,
    NodeSpec,
    ServiceGroupSpec,
    SSHOptions,
    load_cluster,
    load_cluster_toml,
    parse_node_string,
    read_hostfile,
)
from servetune.tuner.hardware._dispatcher import (
    Attempt,
    CandidateOutcome,
    CircuitBreaker,
    DispatchOptions,
    DispatchResult,
    Dispatcher,
    Measurement,
    default_transport,
)
from servetune.tuner.hardware._engine_bench import EngineBenchmark
from servetune.tuner.hardware._errors import (
    AuthenticationFailed,
    BenchmarkFailed,
    BenchmarkTimeout,
    CommandFailed,
    CommandTimeout,
    HardwareError,
    HostKeyRejected,
    HostUnreachable,
    ServiceLost,
    ServiceStartFailed,
    ServiceUnhealthy,
)
from servetune.tuner.hardware._launchers import (
    LAUNCHERS,
    EngineLauncher,
    LaunchSpec,
    ScriptLauncher,
    SGLangLauncher,
    TransformersLauncher,
    VLLMLauncher,
    launcher_for,
)
from servetune.tuner.hardware._records import REPORT_METRICS, aggregate_metrics, measurement_tables
from servetune.tuner.hardware._report import ValidationReport, build_report, metric_row
from servetune.tuner.hardware._service import Cancelled, ServiceRun, StartedProcess
from servetune.tuner.hardware._transport import CommandResult, LocalTransport, Transport


def __getattr__(name: str):
    """``SSHTransport`` and ``known_hosts_name`` load paramiko only when first used, so hosts
    without it (a GPU node running the local transport) can import this package."""
    if name in ("SSHTransport", "known_hosts_name"):
        from servetune.tuner.hardware import _ssh

        return getattr(_ssh, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Attempt", "AuthenticationFailed", "BenchmarkFailed", "BenchmarkResult", "BenchmarkTimeout",
    "CANDIDATES_FILE", "Cancelled", "Candidate", "CandidateOutcome", "CircuitBreaker",
    "ClientOptions", "ClusterSpec", "CommandFailed", "CommandResult", "CommandTimeout",
    "DispatchOptions", "DispatchResult", "Dispatcher", "EngineBenchmark", "EngineLauncher", "HardwareError",
    "HostKeyRejected", "HostUnreachable", "LAUNCHERS", "LOCAL_HOST", "LaunchSpec",
    "LocalTransport", "Measurement", "NodeSpec", "REPORT_METRICS", "RequestResult",
    "SGLangLauncher", "SSHOptions", "SSHTransport", "ScriptLauncher", "ServiceGroupSpec",
    "ServiceLost", "ServiceRun", "ServiceStartFailed", "ServiceUnhealthy", "StartedProcess",
    "TransformersLauncher", "Transport", "VLLMLauncher", "ValidationReport", "aggregate_metrics",
    "build_report", "candidates_from_sets", "default_transport", "known_hosts_name",
    "launcher_for", "load_cluster", "load_cluster_toml", "load_study_candidates", "study_engine",
    "make_prompt", "measurement_tables", "metric_row", "parse_node_string", "read_hostfile",
    "replay",
]
