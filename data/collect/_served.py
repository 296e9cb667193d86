"""``transformers serve`` with the engine's steps recorded in-process.

``transformers serve`` keeps no per-step record. :func:`serve_recorded` runs the same server (the
``transformers`` command line, unchanged arguments) in this process with one addition: every
continuous-batching manager that a model creates gets a :class:`StepRecorder` before it starts.
When the server stops (SIGTERM or SIGINT: uvicorn shuts down gracefully and returns), the steps
are written to one Parquet file: the recorder's columns plus the step's start on the wall clock
(``start_unix``) and on the host's monotonic clock (``start_monotonic``, ``time.perf_counter``),
so that the steps can be lined up with what an HTTP client saw on the same host.

The wrapper is installed on ``ContinuousMixin.init_continuous_batching`` *of this process only*
(a process that exists to run this server); the installed package is not edited.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import signal
import time
from pathlib import Path

from servetune.data._atomic import atomic_write_bytes
from servetune.data.collect._recorder import StepRecord, StepRecorder

__all__ = ["serve_recorded", "steps_table"]

log = logging.getLogger(__name__)


def steps_table(recorder: StepRecorder, t0_unix: float):
    """The recorder's steps as a pyarrow table with each step's start on the wall clock
    (``start_unix``) and on ``time.perf_counter`` (``start_monotonic``: CLOCK_MONOTONIC on
    Linux, the same clock in every process of the host, unlike a wall clock that can be
    stepped)."""
    import pyarrow as pa

    names = [f.name for f in dataclasses.fields(StepRecord)]
    columns = {name: [getattr(r, name) for r in recorder.steps] for name in names}
    columns["start_unix"] = [t0_unix + s for s in columns["start_s"]]
    columns["start_monotonic"] = [recorder.t0 + s for s in columns["start_s"]]
    return pa.table(columns)


def _write(recorders: list[tuple[StepRecorder, float]], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [steps_table(r, t0) for r, t0 in recorders]
    if not tables:
        names = [f.name for f in dataclasses.fields(StepRecord)] + ["start_unix",
                                                                     "start_monotonic"]
        table = pa.table({n: pa.array([], pa.float64()) for n in names})
    else:
        table = pa.concat_tables(tables)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return table.num_rows


class _Stopped(Exception):
    """SIGTERM arrived (raised in the main thread by :func:`_stop`)."""


def _stop(signum, frame) -> None:
    raise _Stopped()


def serve_recorded(serve_args: list[str], steps_out: str | Path) -> int:
    """Run ``transformers serve SERVE_ARGS`` here, recording steps; write them on exit.

    Returns the number of steps written. The file is written even when the server fails; the
    engine's generation threads are stopped after it."""
    import sys

    from transformers.cli.transformers import main as transformers_main
    from transformers.generation.continuous_batching.continuous_api import ContinuousMixin

    path = Path(steps_out)
    # (recorder, its t0 on the wall clock, the manager it records)
    engines: list[tuple[StepRecorder, float, object]] = []
    original = ContinuousMixin.init_continuous_batching

    def init_continuous_batching(model, *args, **kwargs):
        manager = original(model, *args, **kwargs)
        recorder = StepRecorder()
        recorder.install(manager)
        t0 = recorder.begin()
        engines.append((recorder, time.time() - (time.perf_counter() - t0), manager))
        return manager

    ContinuousMixin.init_continuous_batching = init_continuous_batching
    argv = sys.argv
    sys.argv = ["transformers", "serve", *serve_args]
    # uvicorn shuts down on SIGTERM, restores the handler it found and raises the signal again:
    # this handler turns that into an exception, so the steps are written before the exit
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        transformers_main()
    except _Stopped:
        log.info("stopped by SIGTERM")
    except SystemExit as exc:
        if exc.code not in (0, None):
            log.warning("transformers serve exited with %s", exc.code)
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.argv = argv
        ContinuousMixin.init_continuous_batching = original
        for recorder, _, _ in engines:
            recorder.end()
        written = _write([(recorder, t0) for recorder, t0, _ in engines], path)
        log.info("wrote %d recorded steps to %s", written, path)
        for _, _, manager in engines:  # its generation thread would keep the process alive
            if manager.is_running():
                manager.stop(block=True, timeout=30, hard_stop=True)
    return written
