"""Per-step batch composition and wall time, read from a live transformers CB manager.

:class:`StepRecorder` installs thin wrappers as *instance attributes* of one
``ContinuousBatchingManager`` (its ``_generation_loop_body`` and ``_create_batch_processor``) and of
the scheduler that manager creates (``schedule_batch``). Nothing in the installed package is edited
and nothing module-wide is patched: the wrappers live and die with that manager object, and
:meth:`StepRecorder.uninstall` removes them.

One *step* is one iteration of the engine's generation loop that launched a forward pass: the
scheduler picked a batch, the model ran, and the loop updated the request states. Its duration is
the wall time of that whole loop iteration (scheduling, input preparation, forward pass, sampling,
output transfer and state update). With ``use_async_batching`` the loop iteration that launches
batch N+1 also finishes batch N, so the duration is the time between consecutive launches. The
composition is taken from the scheduler's own ``FutureRequestState`` objects before the batch
tensors are built: ``past = state.position_offset`` tokens are already cached and ``query_length``
new tokens are computed; a sequence is a prefill chunk while ``past < len(state.initial_tokens)``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from time import perf_counter

__all__ = ["StepRecord", "StepRecorder", "STEP_FIELDS", "step_columns", "records_from_rows"]


@dataclass(slots=True)
class StepRecord:
    """One engine step: when it started (s since :meth:`StepRecorder.begin`), how long, what ran."""

    start_s: float
    duration_ms: float
    num_seqs: int
    num_prefill_seqs: int
    num_decode_seqs: int
    prefill_tokens: int
    decode_tokens: int
    kv_tokens_sum: int
    kv_tokens_max: int
    prefill_attn_work: int
    waiting: int
    active: int
    decode_fast_path: bool
    graph_captured: bool = False


#: the steps-table columns a record fills directly
STEP_FIELDS = ("start_s", "duration_ms", "num_seqs", "num_prefill_seqs", "num_decode_seqs",
               "prefill_tokens", "decode_tokens", "kv_tokens_sum", "kv_tokens_max",
               "prefill_attn_work")


def step_columns(records: Sequence[StepRecord]) -> dict[str, list]:
    """The steps-table columns of ``records``: :data:`STEP_FIELDS`, ``step_index`` and ``extra``
    (scheduler queue sizes, decode fast path, a CUDA-graph capture)."""
    columns = {name: [getattr(r, name) for r in records] for name in STEP_FIELDS}
    columns["step_index"] = list(range(len(records)))
    columns["extra"] = [json.dumps({"waiting": r.waiting, "active": r.active,
                                    "decode_fast_path": r.decode_fast_path,
                                    **({"graph_captured": True} if r.graph_captured else {})},
                                   separators=(",", ":")) for r in records]
    return columns


def records_from_rows(rows: Sequence[dict]) -> list[StepRecord]:
    """:class:`StepRecord` objects from dict rows holding (at least) its fields."""
    names = [f.name for f in fields(StepRecord)]
    return [StepRecord(**{n: row[n] for n in names}) for row in rows]


@dataclass
class StepRecorder:
    """Records every step of one manager's generation loop; see the module docstring.

    Example:
        >>> recorder = StepRecorder()
        >>> recorder.steps
        []
    """

    steps: list[StepRecord] = field(default_factory=list)
    #: request id -> number of prefill chunks that started at position 0 (1 + recomputations)
    prefill_starts: dict[str, int] = field(default_factory=dict)
    #: requests evicted by the engine's offloading manager (preemptions), counted per eviction call
    evictions: int = 0
    _t0: float = 0.0
    _recording: bool = False
    _pending: tuple | None = None
    _captured: bool = False
    _manager: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, manager) -> None:
        """Wrap ``manager``'s loop body and, once created, its scheduler (instance attributes only)."""
        if self._manager is not None:
            raise RuntimeError("this StepRecorder is already installed on a manager")
        self._manager = manager
        original_body = manager._generation_loop_body
        original_create = manager._create_batch_processor

        def loop_body(batch_processor, bootstrapping):
            started = perf_counter()
            before = manager.current_batch
            self._pending = None
            self._captured = False
            keep_going = original_body(batch_processor, bootstrapping)
            if manager.current_batch != before and self._recording and self._pending is not None:
                ended = perf_counter()
                self._append(started, ended)
            return keep_going

        def create_batch_processor():
            processor = original_create()
            self._wrap_scheduler(processor.scheduler)
            self._wrap_offloading(processor.offloading_manager)
            self._wrap_set_graph(processor.inputs_and_outputs)
            return processor

        manager._generation_loop_body = loop_body
        manager._create_batch_processor = create_batch_processor

    def uninstall(self) -> None:
        """Remove the instance-level wrappers from the manager (the class methods show again)."""
        manager, self._manager = self._manager, None
        if manager is None:
            return
        for name in ("_generation_loop_body", "_create_batch_processor"):
            manager.__dict__.pop(name, None)
        processor = getattr(manager, "batch_processor", None)
        if processor is not None:
            processor.scheduler.__dict__.pop("schedule_batch", None)
            processor.offloading_manager.__dict__.pop("offload_requests", None)
            processor.inputs_and_outputs.__dict__.pop("set_graph", None)

    def begin(self) -> float:
        """Forget what was recorded so far (e.g. warm-up) and start the clock; returns ``t0``."""
        with self._lock:
            self.steps = []
            self.prefill_starts = {}
            self.evictions = 0
            self._t0 = perf_counter()
            self._recording = True
        return self._t0

    def end(self) -> None:
        """Stop recording (later steps are ignored)."""
        self._recording = False

    @property
    def t0(self) -> float:
        """The ``perf_counter`` reading at :meth:`begin`."""
        return self._t0

    # -- wrappers' helpers (run on the engine's background thread) ---------------------------

    def _wrap_scheduler(self, scheduler) -> None:
        if "schedule_batch" in vars(scheduler):  # a reused batch processor is already wrapped
            return
        original = scheduler.schedule_batch

        def schedule_batch(token_budget, cache_budget):
            result = original(token_budget, cache_budget)
            if result[0]:
                self._pending = self._composition(result[0], result[1], scheduler)
            return result

        scheduler.schedule_batch = schedule_batch

    def _wrap_offloading(self, offloading_manager) -> None:
        if "offload_requests" in vars(offloading_manager):
            return
        original = offloading_manager.offload_requests

        def offload_requests():
            evicted = original()
            if self._recording:
                self.evictions += evicted
            return evicted

        offloading_manager.offload_requests = offload_requests

    def _wrap_set_graph(self, inputs_and_outputs) -> None:
        if "set_graph" in vars(inputs_and_outputs):
            return
        original = inputs_and_outputs.set_graph

        def set_graph(graph):
            self._captured = True  # this step captured a new CUDA graph (a one-off, slower step)
            return original(graph)

        inputs_and_outputs.set_graph = set_graph

    def _composition(self, future_states, decode_fast_path, scheduler) -> tuple:
        prefill_seqs = prefill_tokens = decode_tokens = 0
        kv_sum = kv_max = attn_work = 0
        starts = self.prefill_starts
        for future in future_states:
            state = future.state
            past = state.position_offset
            query = future.query_length
            context = past + query
            kv_sum += context
            if context > kv_max:
                kv_max = context
            if past < len(state.initial_tokens):
                prefill_seqs += 1
                prefill_tokens += query
                attn_work += query * context
                if past == 0:
                    starts[state.request_id] = starts.get(state.request_id, 0) + 1
            else:
                decode_tokens += query
        num_seqs = len(future_states)
        return (num_seqs, prefill_seqs, num_seqs - prefill_seqs, prefill_tokens, decode_tokens,
                kv_sum, kv_max, attn_work, len(scheduler.waiting_requests),
                len(scheduler.active_requests), bool(decode_fast_path))

    def _append(self, started: float, ended: float) -> None:
        p = self._pending
        self.steps.append(StepRecord(started - self._t0, (ended - started) * 1e3, p[0], p[1], p[2],
                                     p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10],
                                     self._captured))
