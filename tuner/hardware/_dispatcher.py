"""The dispatcher: candidates evaluated in parallel over a pool of service groups.

One worker thread per service group takes the next candidate, starts it on the group, waits
for health, replays the workload ``repeats`` times, persists each measurement to the trace
store the moment it arrives, and stops everything it started. Failures are classified:

* transient group faults (host unreachable, service lost, command timeout): the candidate is
  retried - preferably on another group - after an exponential backoff with jitter;
* authentication and host-key failures: never retried on that group; its circuit breaker opens
  for good and the candidate goes to another group;
* candidate faults (the engine exits at start-up, never becomes healthy, the benchmark passes
  its timeout, a configuration the engine cannot express): the candidate fails with the reason.

A per-group circuit breaker opens after ``breaker_threshold`` consecutive group faults and keeps
the group out for ``breaker_cooldown_s``. Every candidate ends *measured* or *failed* with a
reason.

Example:
    >>> b = CircuitBreaker(threshold=2, cooldown_s=60)
    >>> b.record_failure(now=0.0); b.allows(now=1.0)
    True
    >>> b.record_failure(now=2.0); b.allows(now=3.0), b.allows(now=63.0)
    (False, True)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from servetune import ConfigError, ServetuneError
from servetune.data import TraceStore, Workload
from servetune.data.engines import redact_secrets
from servetune.tuner.hardware._candidates import Candidate
from servetune.tuner.hardware._client import ClientOptions, replay
from servetune.tuner.hardware._cluster import ClusterSpec, NodeSpec, ServiceGroupSpec
from servetune.tuner.hardware._engine_bench import (
    EngineBenchmark,
    metadata_for,
    metrics_from_row,
)
from servetune.tuner.hardware._errors import (
    BenchmarkFailed,
    BenchmarkTimeout,
    HardwareError,
)
from servetune.tuner.hardware._gpu_names import (
    UNKNOWN_HARDWARE,
    hardware_label,
    query_gpu_names,
)
from servetune.tuner.hardware._launchers import EngineLauncher
from servetune.tuner.hardware._records import (
    REPORT_METRICS,
    aggregate_metrics,
    measurement_tables,
    model_label,
)
from servetune.tuner.hardware._service import Cancelled, ServiceRun
from servetune.tuner.hardware._transport import LocalTransport, Transport

__all__ = ["Dispatcher", "DispatchOptions", "DispatchResult", "CandidateOutcome", "Measurement",
           "Attempt", "CircuitBreaker", "default_transport"]

log = logging.getLogger(__name__)


def default_transport(node: NodeSpec, cluster: ClusterSpec) -> Transport:
    """A local transport for host ``local``, else SSH with the cluster's options."""
    if node.is_local:
        return LocalTransport(node, command_timeout_s=cluster.ssh.command_timeout_s)
    from servetune.tuner.hardware._ssh import SSHTransport  # paramiko only when needed

    return SSHTransport(node, cluster.ssh)


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive faults -> half-open after the cooldown."""

    def __init__(self, *, threshold: int, cooldown_s: float) -> None:
        self.threshold = max(1, threshold)
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.open_until: float | None = None
        self.permanent_reason: str | None = None
        self.openings = 0

    def allows(self, *, now: float) -> bool:
        """Whether the group may take work now."""
        if self.permanent_reason is not None:
            return False
        return self.open_until is None or now >= self.open_until

    def record_success(self) -> None:
        self.failures = 0
        self.open_until = None

    def record_failure(self, *, now: float) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown_s
            self.openings += 1

    def open_for_good(self, reason: str) -> None:
        self.permanent_reason = reason
        self.openings += 1

    @property
    def state(self) -> str:
        if self.permanent_reason is not None:
            return "open (permanent)"
        if self.open_until is not None:
            return "open" if time.monotonic() < self.open_until else "half-open"
        return "closed"


@dataclass(frozen=True)
class DispatchOptions:
    """How candidates are measured.

    Attributes:
        repeats: benchmark replays per candidate (mean and spread are reported).
        calibrate: measure the baseline candidate first on every group (per-host correction).
        min_success_rate: below this fraction of successful requests a replay fails.
        hardware: the ``hardware`` value of the measured runs (GPU name); ``unknown`` (the
            default): read from each group's nodes with ``nvidia-smi`` (``._gpu_names``).
        slo_ttft_ms: TTFT SLO for goodput (optional).
        slo_tpot_ms: TPOT SLO for goodput (optional).
        slo_e2e_ms: end-to-end latency SLO for goodput (optional).
        study: study name recorded with each measurement.
        seed: seed of the retry jitter.
        warmup_requests: requests sent (and not recorded) after the service turns healthy,
            so the first replay does not pay for lazy initialisation.
        engine_benchmark: run the engine's own benchmark on the head node instead of the
            built-in client (its JSON is fetched and ingested through the vllm-bench adapter).
    """

    repeats: int = 1
    calibrate: bool = True
    min_success_rate: float = 0.5
    hardware: str = "unknown"
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    slo_e2e_ms: float | None = None
    study: str | None = None
    seed: int = 0
    warmup_requests: int = 2
    engine_benchmark: EngineBenchmark | None = None


@dataclass
class Attempt:
    """One try of a candidate on a group."""

    group: str
    started_s: float
    ended_s: float = 0.0
    status: str = "running"
    error_kind: str | None = None
    reason: str | None = None
    stop_problems: list[str] = field(default_factory=list)
    sessions: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Measurement:
    """One persisted replay of a candidate."""

    candidate: str
    group: str
    repeat: int
    run_id: str
    metrics: dict
    host: str


@dataclass
class CandidateOutcome:
    """How a candidate ended: ``measured`` or ``failed`` with a reason."""

    candidate: Candidate
    status: str = "pending"
    reason: str | None = None
    error_kind: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"candidate": self.candidate.name,
                "config": redact_secrets(self.candidate.config),
                "baseline": self.candidate.baseline, "status": self.status,
                "reason": self.reason, "error_kind": self.error_kind,
                "attempts": [vars(a) for a in self.attempts],
                "measurements": [vars(m) for m in self.measurements]}


@dataclass
class DispatchResult:
    """All outcomes, plus statistics per group and overall."""

    outcomes: list[CandidateOutcome]
    wall_s: float
    groups: dict[str, dict]

    @property
    def measured(self) -> list[CandidateOutcome]:
        return [o for o in self.outcomes if o.status == "measured"]

    @property
    def failed(self) -> list[CandidateOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def statistics(self) -> dict:
        attempts = [a for o in self.outcomes for a in o.attempts]
        return {"candidates": len(self.outcomes), "measured": len(self.measured),
                "failed": len(self.failed), "attempts": len(attempts),
                "retries": sum(g["retries"] for g in self.groups.values()),
                "measurements": sum(len(o.measurements) for o in self.outcomes),
                "wall_s": round(self.wall_s, 3), "groups": self.groups}


@dataclass
class _Task:
    index: int
    not_before: float = 0.0
    tries: int = 0
    tried: set[str] = field(default_factory=set)
    pinned: str | None = None  # the calibration baseline of one group


def _wait_for(finished: Sequence[threading.Event]) -> None:
    """Wait until every worker has stopped its services and ended, through further interrupts.

    Thread state cannot be trusted here: a ``join`` interrupted by a signal on CPython 3.11
    marks the thread stopped while it still runs (its ``is_alive`` turns false and a later
    ``join`` returns at once), so each worker sets its own event when it ends; a second Ctrl-C
    or SIGTERM does not abandon the remote services being stopped.
    """
    while not all(done.is_set() for done in finished):
        try:
            for done in finished:
                done.wait(timeout=0.2)
        except BaseException:  # noqa: BLE001 - keep stopping the services
            log.warning("still stopping the started services; please wait")


class Dispatcher:
    """Evaluate candidates on the cluster's service groups in parallel (one worker per group).

    Example:
        >>> d = Dispatcher(cluster, launcher, workload, client=ClientOptions(model="m"),
        ...                store=TraceStore(ws / "traces"))  # doctest: +SKIP
        >>> result = d.run(candidates)  # doctest: +SKIP
    """

    def __init__(self, cluster: ClusterSpec, launcher: EngineLauncher, workload: Workload, *,
                 client: ClientOptions, store: TraceStore | None = None,
                 options: DispatchOptions | None = None,
                 transport_factory: Callable[[NodeSpec, ClusterSpec], Transport] = default_transport,
                 on_measurement: Callable[[Measurement], None] | None = None,
                 on_outcome: Callable[[CandidateOutcome], None] | None = None) -> None:
        self.cluster = cluster
        self.launcher = launcher
        self.workload = workload
        self.client = client
        self.store = store
        self.options = options or DispatchOptions()
        self.transport_factory = transport_factory
        self.on_measurement = on_measurement
        self.on_outcome = on_outcome
        self.cancel = threading.Event()

    # ------------------------------------------------------------------------ the pool
    def run(self, candidates: Sequence[Candidate]) -> DispatchResult:
        """Measure every candidate; return when each is measured or failed."""
        names = [c.name for c in candidates]
        if len(set(names)) != len(names):
            raise ConfigError(f"candidate names must be unique, got {names}")
        self.cancel.clear()
        self._rng = np.random.default_rng(self.options.seed)
        self._lock = threading.Condition()
        self._store_lock = threading.Lock()
        self._hardware: dict[str, str] = {}  # group -> its GPU names (read once per group)
        self._outcomes = [CandidateOutcome(c) for c in candidates]
        self._in_flight = 0
        self._breakers = {g.name: CircuitBreaker(threshold=self.cluster.breaker_threshold,
                                                 cooldown_s=self.cluster.breaker_cooldown_s)
                          for g in self.cluster.groups}
        self._stats = {g.name: {"attempts": 0, "measured": 0, "retries": 0, "failures": {},
                                "busy_s": 0.0,
                                "calibrated": False} for g in self.cluster.groups}
        baseline = next((i for i, c in enumerate(candidates) if c.baseline), None)
        self._tasks: list[_Task] = []
        self._baseline_pending: set[str] = set()
        if baseline is not None and self.options.calibrate:
            self._tasks += [_Task(baseline, pinned=g.name) for g in self.cluster.groups]
            self._baseline_pending = {g.name for g in self.cluster.groups}
        self._tasks += [_Task(i) for i in range(len(candidates))
                        if not (i == baseline and self.options.calibrate)]
        started = time.monotonic()
        finished = [threading.Event() for _ in self.cluster.groups]
        workers = [threading.Thread(target=self._worker_until_done, args=(g, done),
                                    name=f"servetune-{g.name}", daemon=True)
                   for g, done in zip(self.cluster.groups, finished)]
        for worker in workers:
            worker.start()
        try:
            for done in finished:
                while not done.wait(timeout=0.5):
                    pass
        except BaseException:
            self.cancel.set()  # workers stop their services before they exit
            _wait_for(finished)
            raise
        for task in self._tasks:  # left over: cancelled, or every group gave up
            if self.cancel.is_set():
                self._finish_failed(task.index, "cancelled", "cancelled before it ran")
            else:
                self._finish_failed(task.index, "no-group", "no service group could take it: "
                                    + self._breaker_summary())
        for outcome in self._outcomes:
            if outcome.status == "pending" and outcome.measurements:
                outcome.status = "measured"
            elif outcome.status == "pending":
                errors = [f"{g}: {st['calibration_error']}" for g, st in self._stats.items()
                          if st.get("calibration_error")]
                outcome.status, outcome.error_kind = "failed", "no-group"
                outcome.reason = "not measured on any group: " + (
                    "; ".join(errors) if errors else self._breaker_summary())
        groups = {name: {**stats, "breaker": self._breakers[name].state,
                         "breaker_openings": self._breakers[name].openings}
                  for name, stats in self._stats.items()}
        return DispatchResult(self._outcomes, time.monotonic() - started, groups)

    def _breaker_summary(self) -> str:
        return "; ".join(f"{name}: {b.permanent_reason or b.state}"
                         for name, b in self._breakers.items())

    def _next_task(self, group: ServiceGroupSpec) -> _Task | None:
        """The next task for ``group``, waiting while others may still produce one."""
        breaker = self._breakers[group.name]
        with self._lock:
            while not self.cancel.is_set():
                if breaker.permanent_reason is not None:
                    self._drop_pinned(group.name)
                    return None
                if not self._tasks and not self._in_flight:
                    return None
                now = time.monotonic()
                usable = set(self._usable_groups())
                mine = [t for t in self._tasks
                        if (t.pinned == group.name) or (
                            t.pinned is None and group.name not in self._baseline_pending
                            and (group.name not in t.tried or usable <= t.tried))]
                ready = [t for t in mine if t.not_before <= now]
                if ready and breaker.allows(now=now):
                    task = min(ready, key=lambda t: (t.pinned is None, t.not_before, t.index))
                    self._tasks.remove(task)
                    self._in_flight += 1
                    return task
                waits = [t.not_before - now for t in mine if t.not_before > now]
                if not breaker.allows(now=now) and breaker.open_until is not None:
                    waits.append(breaker.open_until - now)
                self._lock.wait(timeout=max(0.01, min(waits + [1.0])))
        return None

    def _drop_pinned(self, group: str) -> None:
        """A group closed for good: forget its calibration baseline (lock held)."""
        for task in [t for t in self._tasks if t.pinned == group]:
            self._tasks.remove(task)
        self._baseline_pending.discard(group)
        self._lock.notify_all()

    def _usable_groups(self) -> list[str]:
        return [n for n, b in self._breakers.items() if b.permanent_reason is None]

    def _worker_until_done(self, group: ServiceGroupSpec, done: threading.Event) -> None:
        try:
            self._worker(group)
        finally:
            done.set()

    def _worker(self, group: ServiceGroupSpec) -> None:
        while True:
            task = self._next_task(group)
            if task is None:
                with self._lock:
                    self._lock.notify_all()
                return
            requeued = False
            try:
                requeued = self._attempt(task, group)
            except BaseException as exc:  # never lose a candidate to a bug in the worker
                log.exception("%s: unexpected error", group.name)
                self._finish_failed(task.index, "internal", f"{type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._in_flight -= 1
                    if task.pinned and not requeued:
                        self._baseline_pending.discard(task.pinned)
                    self._lock.notify_all()

    # ------------------------------------------------------------------------ one attempt
    def _attempt(self, task: _Task, group: ServiceGroupSpec) -> bool:
        """Run one attempt; return whether the task went back to the queue."""
        outcome = self._outcomes[task.index]
        candidate = outcome.candidate
        attempt = Attempt(group=group.name, started_s=time.time())
        with self._lock:
            outcome.attempts.append(attempt)
            self._stats[group.name]["attempts"] += 1
        task.tries += 1
        task.tried.add(group.name)
        began = time.monotonic()
        try:
            self._evaluate(task, candidate, group, attempt)
        except HardwareError as exc:
            return self._failed_attempt(task, group, attempt, exc)
        except ServetuneError as exc:  # configuration the engine cannot run: not retried
            attempt.status, attempt.error_kind, attempt.reason = "failed", "config", str(exc)
            self._finish_failed(task.index, "config", str(exc), task=task)
        else:
            attempt.status = "measured"
            with self._lock:
                self._breakers[group.name].record_success()
                self._stats[group.name]["measured"] += 1
                if task.pinned:
                    self._stats[group.name]["calibrated"] = True
                if not task.pinned or outcome.status == "pending":
                    outcome.status = "measured"
                    outcome.reason = None
            if self.on_outcome and not task.pinned:
                self.on_outcome(outcome)
        finally:
            attempt.ended_s = time.time()
            with self._lock:
                self._stats[group.name]["busy_s"] += time.monotonic() - began
        return False

    def _failed_attempt(self, task: _Task, group: ServiceGroupSpec, attempt: Attempt,
                        exc: HardwareError) -> bool:
        attempt.status, attempt.error_kind, attempt.reason = "failed", exc.kind, str(exc)
        breaker = self._breakers[group.name]
        with self._lock:
            failures = self._stats[group.name]["failures"]
            failures[exc.kind] = failures.get(exc.kind, 0) + 1
            if exc.group_fault and not exc.transient:
                breaker.open_for_good(f"{exc.kind}: {exc}")
            elif exc.group_fault:
                breaker.record_failure(now=time.monotonic())
        log.warning("%s: candidate %s failed (%s): %s", group.name,
                    self._outcomes[task.index].candidate.name, exc.kind, exc)
        if isinstance(exc, Cancelled):
            self._finish_failed(task.index, exc.kind, str(exc), task=task)
            return False
        if task.pinned:
            # a group's calibration baseline is not moved elsewhere
            if exc.transient and task.tries <= self.cluster.retries and \
                    breaker.permanent_reason is None:
                return self._requeue(task, group.name, backoff=True)
            self._finish_failed(task.index, exc.kind, str(exc), task=task)
            return False
        if exc.group_fault and not exc.transient:
            task.tries -= 1  # not the candidate's fault, and that group is closed for good
            return self._requeue(task, group.name, backoff=False)
        if exc.transient and task.tries <= self.cluster.retries:
            return self._requeue(task, group.name, backoff=True)
        tries = f" after {task.tries} attempt(s)" if task.tries > 1 else ""
        self._finish_failed(task.index, exc.kind, f"{exc}{tries}", task=task)
        return False

    def _requeue(self, task: _Task, group: str, *, backoff: bool) -> bool:
        with self._lock:
            self._stats[group]["retries"] += 1

            if backoff:
                base = self.cluster.backoff_s * 2 ** max(0, task.tries - 1)
                delay = min(self.cluster.backoff_max_s, base) * (0.5 + self._rng.random())
                task.not_before = time.monotonic() + delay
            self._tasks.append(task)
            self._lock.notify_all()
        return True

    def _finish_failed(self, index: int, kind: str, reason: str, *, task: _Task | None = None
                       ) -> None:
        outcome = self._outcomes[index]
        with self._lock:
            if task is not None and task.pinned:
                # one group's baseline failed: that group stays uncalibrated; the baseline
                # candidate fails only if no group measured it
                self._stats[task.pinned]["calibration_error"] = reason
                if outcome.measurements or any(t.index == index for t in self._tasks):
                    return
                if any(a.status == "running" for a in outcome.attempts) or \
                        self._baseline_pending - {task.pinned}:
                    return
            if outcome.status == "measured":
                return
            outcome.status, outcome.error_kind, outcome.reason = "failed", kind, reason
        if self.on_outcome:
            self.on_outcome(outcome)

    def _evaluate(self, task: _Task, candidate: Candidate, group: ServiceGroupSpec,
                  attempt: Attempt) -> None:
        cluster = self.cluster
        deadline = time.monotonic() + cluster.candidate_timeout_s
        specs = self.launcher.render(candidate.config, group, model=cluster.model)
        transports = [self.transport_factory(node, cluster) for node in group.nodes]
        tag = f"{candidate.name}-{uuid.uuid4().hex[:8]}"
        service = ServiceRun(group, transports, tag=tag, env=cluster.env,
                             stop_grace_s=cluster.stop_grace_s, cancel=self.cancel)
        outcome = self._outcomes[task.index]
        try:
            for transport in transports:
                transport.connect()
            self._read_hardware(group, transports)
            service.start(specs)
            attempt.sessions = [(p.node.label, p.sid) for p in service.started]
            remaining = deadline - time.monotonic()
            service.wait_healthy(min(cluster.health_timeout_s, max(remaining, 0.0)))
            self._warm_up(service, deadline, candidate, group)
            done = sum(1 for m in outcome.measurements if m.group == group.name) \
                if task.pinned else len(outcome.measurements)
            for repeat in range(done, self.options.repeats):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchmarkTimeout(f"{group.name}: candidate {candidate.name} used its "
                                           f"{cluster.candidate_timeout_s:g}s before repeat "
                                           f"{repeat + 1}")
                if self.options.engine_benchmark is not None:
                    self._engine_measure(service, transports[0], remaining, outcome, group,
                                         repeat)
                    continue
                result = self._replay(service, remaining, candidate, group)
                self._persist(outcome, candidate, group, repeat, result, specs)
        finally:
            attempt.stop_problems = service.stop()
            for transport in transports:
                transport.close()
            if attempt.stop_problems:
                log.error("%s: %s", group.name, "; ".join(attempt.stop_problems))

    def _read_hardware(self, group: ServiceGroupSpec, transports: list[Transport]) -> None:
        """Name the group's GPUs once, unless the options name the hardware."""
        if self.options.hardware != UNKNOWN_HARDWARE or group.name in self._hardware:
            return
        label = hardware_label([query_gpu_names(t) for t in transports],
                               [node.gpus for node in group.nodes])
        with self._lock:
            self._hardware[group.name] = label

    def hardware_of(self, group: ServiceGroupSpec) -> str:
        """The ``hardware`` value stored with the group's measurements."""
        return self._hardware.get(group.name, self.options.hardware)

    def _engine_measure(self, service: ServiceRun, head: Transport, remaining: float,
                        outcome: CandidateOutcome, group: ServiceGroupSpec, repeat: int) -> None:
        candidate = outcome.candidate
        run_id = f"hw-{candidate.name}-{group.name}-r{repeat}-{uuid.uuid4().hex[:8]}"
        bench = self.options.engine_benchmark
        try:
            row = bench.run(
                head, base_url=f"http://127.0.0.1:{group.service_port}",
                model=self.cluster.model or self.client.model, workload=self.workload,
                work_dir=group.head.work_dir, run_id=run_id,
                metadata=metadata_for(candidate.name, group.name, repeat, candidate.predicted),
                timeout_s=remaining, store=self.store,
                overrides={"engine": self.launcher.engine_label,
                           "hardware": self.hardware_of(group),
                           "model": model_label(self.cluster.model or self.client.model)})
        except BenchmarkFailed:
            service.check_alive()
            raise
        metrics = metrics_from_row(row, [*REPORT_METRICS, "completed", "failed", "success_rate",
                                         "duration_s", "num_requests"])
        self._record(outcome, Measurement(candidate.name, group.name, repeat, run_id, metrics,
                                          group.head.host))

    def _record(self, outcome: CandidateOutcome, measurement: Measurement) -> None:
        with self._lock:
            outcome.measurements.append(measurement)
        if self.on_measurement:
            self.on_measurement(measurement)

    def _warm_up(self, service: ServiceRun, deadline: float, candidate: Candidate,
                 group: ServiceGroupSpec) -> None:
        count = min(self.options.warmup_requests, len(self.workload))
        if count <= 0:
            return
        head = self.workload.head(count)
        warm = Workload.from_arrays(np.zeros(count), head.input_tokens, head.output_tokens,
                                    name="warmup")

        async def bounded():
            return await asyncio.wait_for(
                replay(group.base_url, warm, self.client, watchdog=service.watchdog,
                       verify=service.tls()),
                timeout=max(deadline - time.monotonic(), 0.0))
        try:
            asyncio.run(bounded())
        except TimeoutError:
            raise BenchmarkTimeout(f"{group.name}: the warm-up requests of {candidate.name} ran "
                                   f"past the candidate timeout "
                                   f"({self.cluster.candidate_timeout_s:g}s in all)") from None

    def _replay(self, service: ServiceRun, remaining: float, candidate: Candidate,
                group: ServiceGroupSpec):
        async def bounded():
            return await asyncio.wait_for(
                replay(group.base_url, self.workload, self.client, watchdog=service.watchdog,
                       verify=service.tls()),
                timeout=remaining)
        try:
            result = asyncio.run(bounded())
        except TimeoutError:
            raise BenchmarkTimeout(f"{group.name}: the benchmark of {candidate.name} ran past "
                                   f"the candidate timeout ({self.cluster.candidate_timeout_s:g}s"
                                   " in all)") from None
        ok = sum(r.status == "ok" for r in result.requests)
        if ok < self.options.min_success_rate * len(result.requests):
            service.check_alive()  # a dead service is ServiceLost (transient), not the config
            errors = sorted({r.error for r in result.requests if r.error})[:3]
            raise BenchmarkFailed(f"{group.name}: only {ok}/{len(result.requests)} requests of "
                                  f"{candidate.name} succeeded; errors: {errors}")
        return result

    def _persist(self, outcome: CandidateOutcome, candidate: Candidate, group: ServiceGroupSpec,
                 repeat: int, result, specs) -> None:
        opts = self.options
        metrics = aggregate_metrics(result.requests, {"ttft_ms": opts.slo_ttft_ms,
                                                      "tpot_ms": opts.slo_tpot_ms,
                                                      "e2e_ms": opts.slo_e2e_ms})
        run_id = f"hw-{candidate.name}-{group.name}-r{repeat}-{uuid.uuid4().hex[:8]}"
        head = specs[0]
        extra = {"candidate": candidate.name, "group": group.name, "repeat": repeat,
                 "baseline": candidate.baseline, "predicted": dict(candidate.predicted),
                 "study": opts.study, "api": result.api, "base_url": result.base_url,
                 "unapplied": self.launcher.unapplied(candidate.config)}
        provenance = {"group": group.name, "nodes": [n.label for n in group.nodes],
                      "launcher": self.launcher.name}
        tables, digest = measurement_tables(
            result, run_id=run_id, engine=self.launcher.engine_label,
            model=model_label(self.cluster.model or self.client.model),
            hardware=self.hardware_of(group), config=candidate.config, workload=self.workload,
            host=group.head.host, command=head.argv,
            gpu_count=sum(len(n.gpus) for n in group.nodes), metrics=metrics, extra=extra,
            provenance=provenance)
        if self.store is not None:
            with self._store_lock:
                self.store.ingest(tables, source=f"servetune-validate:{run_id}", sha256=digest,
                                  format="servetune-measured", progress=False)
        self._record(outcome, Measurement(candidate.name, group.name, repeat, run_id, metrics,
                                          group.head.host))
