"""Remote failures, classified so the dispatcher knows what a retry could fix.

Every error here is a :class:`~servetune.RemoteError`. ``transient`` says whether trying again
(later, or on another service group) may succeed; ``group_fault`` says whether the failure
belongs to the service group (its hosts, keys, network) rather than to the candidate.

Example:
    >>> HostKeyRejected("n0: unknown host key").transient
    False
"""

from __future__ import annotations

from servetune import RemoteError

__all__ = [
    "HardwareError",
    "HostUnreachable",
    "AuthenticationFailed",
    "HostKeyRejected",
    "CommandFailed",
    "CommandTimeout",
    "ServiceStartFailed",
    "ServiceUnhealthy",
    "ServiceLost",
    "BenchmarkTimeout",
    "BenchmarkFailed",
]


class HardwareError(RemoteError):
    """Base class of the hardware path's failures."""

    #: a retry (later or elsewhere) may succeed
    transient = False
    #: the service group is at fault (counts against its circuit breaker)
    group_fault = False
    #: a short machine-readable kind for reports and ``--json``
    kind = "error"


class HostUnreachable(HardwareError):
    """A host refused or dropped the connection, or did not answer in time."""

    transient = True
    group_fault = True
    kind = "host-unreachable"


class AuthenticationFailed(HardwareError):
    """The host rejected our credentials; retrying cannot help."""

    group_fault = True
    kind = "authentication-failed"


class HostKeyRejected(HardwareError):
    """The host's key is unknown or does not match known_hosts; retrying cannot help."""

    group_fault = True
    kind = "host-key-rejected"


class CommandFailed(HardwareError):
    """A remote command exited non-zero."""

    kind = "command-failed"


class CommandTimeout(HardwareError):
    """A remote command did not finish within its timeout."""

    transient = True
    group_fault = True
    kind = "command-timeout"


class ServiceStartFailed(HardwareError):
    """The engine process exited during start-up (bad flags, out of memory, ...)."""

    kind = "service-start-failed"


class ServiceUnhealthy(HardwareError):
    """The engine stayed up but never answered its health check in time."""

    kind = "service-unhealthy"


class ServiceLost(HardwareError):
    """The service or its host went away while it was being benchmarked."""

    transient = True
    group_fault = True
    kind = "service-lost"


class BenchmarkTimeout(HardwareError):
    """The benchmark ran past the candidate's timeout."""

    kind = "benchmark-timeout"


class BenchmarkFailed(HardwareError):
    """The benchmark finished but too few requests succeeded to score the candidate."""

    kind = "benchmark-failed"
