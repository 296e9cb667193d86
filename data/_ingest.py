"""Ingest source files into the store: detect the format, parse everything, then write."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from servetune import InputError
from servetune.data._store import IngestResult, TraceStore
from servetune.data._workload_formats import detect_workload_format
from servetune.data.adapters import AdapterRegistry, file_sha256

__all__ = ["ingest_paths", "sample_paths", "SAMPLES_DIR"]

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


def sample_paths() -> list[Path]:
    """The real traces bundled with servetune (``data/samples/*.parquet``)."""
    return sorted(SAMPLES_DIR.glob("*.parquet"))


def ingest_paths(store: TraceStore, paths: Iterable[str | Path], registry: AdapterRegistry, *,
                 format: str | None = None, progress: bool | None = None) -> list[IngestResult]:
    """Ingest each path; every file is parsed before anything is written.

    A file whose content is already in the store is skipped without being parsed. If any file is
    bad, an :class:`~servetune.InputError` is raised and the store is left untouched. Adapters of
    very large files (``vllm-bench``) validate the whole file first but convert its bulk while the
    store writes (a :class:`~servetune.data.TableStream`); the rare error only that conversion
    can see aborts that file's ingest with nothing of it written (earlier files stay committed).
    """
    parsed = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise InputError("no such file", path=str(path))
        sha256 = file_sha256(path)
        adapter = registry.get(format) if format else _detect(registry, path)
        if store.is_ingested(sha256):
            parsed.append((path, sha256, adapter.name, None))
            continue
        log.info("reading %s as %s", path, adapter.name)
        parsed.append((path, sha256, adapter.name, adapter.read(path, sha256=sha256)))
    if any(batch is None for *_, batch in parsed):
        store.recover()  # a skipped source may be half-committed: finish it under the lock
    results = []
    for path, sha256, name, batch in parsed:
        if batch is None:
            results.append(IngestResult(source=str(path), sha256=sha256, format=name,
                                        skipped=True))
            continue
        results.append(store.ingest(batch, source=str(path), sha256=sha256, format=name,
                                    progress=progress))
    return results


def _detect(registry: AdapterRegistry, path: Path):
    """The adapter for ``path``; a request-arrival workload gets a message saying what to do."""
    try:
        return registry.detect(path)
    except InputError:
        workload_format = detect_workload_format(path)
        if workload_format is None:
            raise
        raise InputError(
            f"this is a request-arrival workload ({workload_format} format: arrival times and "
            "lengths, no measurements), not a trace to ingest; use it as a workload instead, "
            f"e.g. `servetune simulate --workload {path}`", path=str(path)) from None
