"""One launch of a candidate on a service group: start every node, wait for health, stop.

Each node's command starts in a new session on that node; :meth:`ServiceRun.stop` signals
exactly those sessions (SIGTERM, then SIGKILL after the grace period) on every node and reports
any process it could not account for, so nothing the dispatcher started outlives it.

Example:
    >>> from servetune.tuner.hardware._cluster import NodeSpec, ServiceGroupSpec
    >>> run = ServiceRun(ServiceGroupSpec("g0", (NodeSpec("local"),)), [], tag="t")
    >>> run.started            # nothing started yet, no I/O done
    []
"""

from __future__ import annotations

import logging
import re
import shlex
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from servetune.tuner.hardware._cluster import NodeSpec, ServiceGroupSpec
from servetune.tuner.hardware._errors import (
    HardwareError,
    ServiceLost,
    ServiceStartFailed,
    ServiceUnhealthy,
)
from servetune.tuner.hardware._launchers import LaunchSpec
from servetune.tuner.hardware._transport import Transport

__all__ = ["ServiceRun", "StartedProcess", "Cancelled", "path_segment"]

log = logging.getLogger(__name__)


class Cancelled(HardwareError):
    """The dispatcher was asked to stop (Ctrl-C); the service is being torn down."""

    kind = "cancelled"


@dataclass(frozen=True)
class StartedProcess:
    """A session started on a node: its id, role and log file."""

    node: NodeSpec
    role: str
    rank: int
    sid: int
    log_path: str
    argv: tuple[str, ...]


def path_segment(text: str) -> str:
    """``text`` as one safe file-name segment: anything but letters, digits, ``.``, ``_`` and
    ``-`` becomes ``_``, and a leading dot is escaped (no ``..``, no ``/``, no hidden file)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text) or "_"
    return "_" + safe[1:] if safe.startswith(".") else safe


class ServiceRun:
    """Start, watch and stop one candidate's processes on a group (one transport per node)."""

    def __init__(self, group: ServiceGroupSpec, transports: Sequence[Transport], *, tag: str,
                 env: Mapping[str, str] | None = None, stop_grace_s: float = 15.0,
                 cancel: threading.Event | None = None) -> None:
        self.group = group
        self.transports = list(transports)
        self.tag = path_segment(tag)
        self.env = dict(env or {})
        self.stop_grace_s = stop_grace_s
        self.cancel = cancel
        self.started: list[StartedProcess] = []
        self._ssl: ssl.SSLContext | None = None

    def tls(self) -> ssl.SSLContext:
        """One TLS context for every HTTP client of this run (building one costs ~20 ms CPU)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    # ------------------------------------------------------------------------ start
    def start(self, specs: Sequence[LaunchSpec]) -> None:
        """Start each node's command (workers first, the API head last)."""
        for spec in sorted(specs, key=lambda s: -s.rank):
            node = self.group.nodes[spec.rank]
            transport = self.transports[spec.rank]
            log_path = f"{node.work_dir.rstrip('/')}/logs/{self.tag}-rank{spec.rank}.log"
            env = {**self.env, **self.group.env, **spec.env}
            sid = transport.start(spec.argv, work_dir=node.work_dir, log_path=log_path, env=env)
            self.started.append(StartedProcess(node, spec.role, spec.rank, sid, log_path,
                                               spec.argv))
            log.info("%s: started %s rank %d as session %d: %s", node.label, spec.role,
                     spec.rank, sid, " ".join(shlex.quote(a) for a in spec.argv))

    def _dead_process(self) -> StartedProcess | None:
        for proc in self.started:
            if self.transports[proc.rank].session_processes(proc.sid) == 0:
                return proc
        return None

    def _log_tail(self, proc: StartedProcess) -> str:
        tail = self.transports[proc.rank].tail(proc.log_path, 15).strip()
        return f"; last log lines of {proc.node.label}:{proc.log_path}:\n{tail}" if tail else ""

    def wait_healthy(self, timeout_s: float, *, poll_s: float = 0.5) -> float:
        """Poll the health URL until it answers 200; return the seconds it took.

        Raises :class:`ServiceStartFailed` when a node's process exits first and
        :class:`ServiceUnhealthy` after ``timeout_s``.
        """
        start = time.monotonic()
        deadline = start + timeout_s
        next_process_check = start
        delay = 0.05  # doubles up to poll_s: fast services are seen fast, slow ones cheaply
        with httpx.Client(timeout=httpx.Timeout(5.0), trust_env=False,
                          verify=self.tls()) as client:
            while True:
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled(f"{self.group.name}: cancelled while waiting for health")
                try:
                    if client.get(self.group.health).status_code == 200:
                        return time.monotonic() - start
                except httpx.HTTPError:
                    pass
                now = time.monotonic()
                if now >= next_process_check:
                    dead = self._dead_process()
                    if dead is not None:
                        raise ServiceStartFailed(
                            f"{self.group.name}: the {dead.role} process on {dead.node.label} "
                            f"exited during start-up{self._log_tail(dead)}")
                    next_process_check = now + 2.0
                if now >= deadline:
                    head = self.started[-1] if self.started else None
                    raise ServiceUnhealthy(
                        f"{self.group.name}: {self.group.health} did not answer 200 within "
                        f"{timeout_s:g}s" + (self._log_tail(head) if head else ""))
                time.sleep(min(delay, max(deadline - now, 0.0)))
                delay = min(delay * 2, poll_s)

    # ------------------------------------------------------------------------ watch
    async def watchdog(self) -> None:
        """Raise :class:`ServiceLost` if the service stopped answering and a process is gone."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"{self.group.name}: cancelled during the benchmark")
        async with httpx.AsyncClient(timeout=httpx.Timeout(3.0), trust_env=False,
                                     verify=self.tls()) as client:
            for _ in range(2):
                try:
                    if (await client.get(self.group.health)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
        self.check_alive()

    def check_alive(self) -> None:
        """Raise :class:`ServiceLost` if a node is unreachable or its process exited."""
        try:
            dead = self._dead_process()
        except HardwareError as exc:
            raise ServiceLost(f"{self.group.name}: lost a node during the benchmark: {exc}"
                              ) from None
        if dead is not None:
            raise ServiceLost(f"{self.group.name}: the {dead.role} process on {dead.node.label} "
                              f"exited during the benchmark{self._log_tail(dead)}")

    # ------------------------------------------------------------------------ stop
    def stop(self) -> list[str]:
        """Stop every session this run started, on every node; return what could not be."""
        problems = []
        for proc in sorted(self.started, key=lambda p: p.rank):
            transport = self.transports[proc.rank]
            try:
                survivors = transport.stop_session(proc.sid, grace_s=self.stop_grace_s)
            except HardwareError as exc:
                # the connection may have dropped with the service: one fresh try
                transport.close()
                try:
                    survivors = transport.stop_session(proc.sid, grace_s=self.stop_grace_s)
                except HardwareError:
                    problems.append(f"{proc.node.label}: could not stop session {proc.sid} "
                                    f"({exc})")
                    continue
            if survivors:
                problems.append(f"{proc.node.label}: {survivors} process(es) of session "
                                f"{proc.sid} survived SIGKILL")
            else:
                log.info("%s: stopped session %d", proc.node.label, proc.sid)
        return problems
