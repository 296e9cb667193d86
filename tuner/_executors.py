"""Where evaluations run: inline, a local process pool, or a Dask distributed cluster.

Example:
    >>> with open_executor(jobs=1) as executor:
    ...     executor is None
    True
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterator

from servetune import ConfigError

__all__ = ["open_executor", "describe_executor"]

log = logging.getLogger(__name__)


@contextmanager
def open_executor(jobs: int = 1, url: str | None = None,
                  connect_timeout_s: float = 30.0) -> Iterator[Executor | None]:
    """An executor for the study, closed on exit.

    Args:
        jobs: worker processes of the local pool; 1 runs evaluations inline (None is yielded).
        url: a Dask scheduler (``dask://HOST:PORT`` or ``tcp://HOST:PORT``); overrides ``jobs``.
        connect_timeout_s: how long to wait for the Dask scheduler.
    """
    if url:
        address = _dask_address(url)
        try:
            from dask.distributed import Client
        except ImportError:
            raise ConfigError("--executor dask://... needs Dask: pip install "
                              "'dask[distributed]'") from None
        try:
            client = Client(address, timeout=connect_timeout_s, set_as_default=False)
        except OSError as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        try:
            log.info("evaluating on Dask cluster %s", address)
            yield client.get_executor()
        finally:
            client.close()
        return
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1; got {jobs}")
    if jobs == 1:
        yield None
        return
    # Never fork this process: it has threads (pyarrow's jemalloc background thread, MLflow,
    # numba) whose locks a forked child inherits mid-use and can deadlock on. A forkserver
    # (spawn where there is none) starts workers from a clean single-threaded process; each
    # worker imports servetune and JIT-compiles the simulator on its first evaluation.
    method = ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
              else "spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(method))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def describe_executor(jobs: int, url: str | None) -> str:
    """One line for logs and MLflow: where evaluations run."""
    if url:
        return f"dask {_dask_address(url)}"
    return "inline" if jobs == 1 else f"process pool x{jobs}"


def _dask_address(url: str) -> str:
    for scheme in ("dask://", "tcp://", "tls://", "inproc://", "ucx://"):
        if url.startswith(scheme):
            return "tcp://" + url[len("dask://"):] if scheme == "dask://" else url
    raise ConfigError(f"--executor must be dask://HOST:PORT (or tcp://HOST:PORT); got {url!r}")
