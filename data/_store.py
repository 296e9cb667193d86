"""The Parquet trace store: hive-partitioned, append-only, crash-safe.

Layout under ``<workspace>/traces``::

    _manifest.json                                   committed ingests (the source of truth)
    <kind>/engine=E/model=M/hardware=H/part-<id>-<n>.parquet   (values percent-encoded)

An ingest writes hidden ``.pending-<id>-<n>.parquet`` files (every Parquet reader skips names
starting with a dot), then commits by atomically replacing the manifest, then renames the pending
files to their visible names. A crash before the commit leaves only hidden files, which the next
writer deletes; a crash after it is rolled forward by the next writer, and the query helpers read
exactly the files the manifest lists, so no partial ingest is ever visible through servetune. The
manifest records each source's SHA-256, so ingesting the same content twice is a no-op.

Example:
    >>> store = TraceStore(Path("/tmp/ws/traces"))   # no I/O yet
    >>> store.root.name
    'traces'
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from servetune import StoreError
from servetune.data._atomic import atomic_write_text, fsync_file
from servetune.data._schemas import (
    KINDS,
    PARTITION_COLUMNS,
    conform,
    file_schema_for,
    partition_dir,
    schema_for,
)

__all__ = ["TraceStore", "IngestResult", "TableStream"]

log = logging.getLogger(__name__)

_MANIFEST = "_manifest.json"
_LOCK = ".lock"
_PENDING = ".pending-"
_ROW_GROUP = 256 * 1024


@dataclass
class IngestResult:
    """What one ingest did: ``skipped`` when the source's content was already in the store."""

    source: str
    sha256: str
    format: str
    skipped: bool
    rows: dict[str, int] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    ingest_id: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {"source": self.source, "sha256": self.sha256, "format": self.format,
                "skipped": self.skipped, "rows": self.rows, "runs": self.runs,
                "ingest_id": self.ingest_id}


@dataclass
class TableStream:
    """Rows of one kind delivered in chunks, for sources too large to hold in memory at once.

    The store conforms and writes each chunk as it arrives (one Parquet file per partition,
    written row group by row group). An error raised while iterating aborts the ingest and
    removes everything it wrote, exactly like a failure of an in-memory batch.
    """

    chunks: Iterable[pa.Table | pd.DataFrame]
    num_rows: int | None = None  # for the progress bar, if known


class TraceStore:
    """Read and append traces under one ``traces/`` directory. Constructing it does no I/O."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @classmethod
    def for_workspace(cls, workspace) -> "TraceStore":
        """The store inside a :class:`~servetune.data.Workspace`."""
        return cls(workspace.traces_dir())

    # ----------------------------------------------------------------------------- manifest
    def manifest(self) -> dict:
        """The committed manifest (an empty one when the store does not exist yet)."""
        path = self.root / _MANIFEST
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {"version": 1, "ingests": []}
        try:
            manifest = json.loads(text)
            manifest["ingests"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: the store's manifest is corrupt ({exc}); restore it from "
                             "a backup or move the traces directory aside") from None
        return manifest

    def is_ingested(self, sha256: str) -> bool:
        """Whether a source with this content hash is already committed."""
        return any(entry["sha256"] == sha256 for entry in self.manifest()["ingests"])

    # ----------------------------------------------------------------------------- writing
    def ingest(self, batch: Mapping[str, pa.Table | pd.DataFrame | TableStream], *, source: str,
               sha256: str, format: str, progress: bool | None = None) -> IngestResult:
        """Append one source's traces atomically; a source already ingested is skipped.

        Args:
            batch: trace kind -> rows in that kind's schema (see :func:`conform`), or a
                :class:`TableStream` of such rows.
            source: where the rows came from (a path), recorded in the manifest.
            sha256: content hash of the source; the deduplication key.
            format: the adapter that read it.
            progress: show a progress bar (``None``: only on a terminal, after a second).
        """
        tables = {kind: rows if isinstance(rows, TableStream) else _as_table(rows, kind, source)
                  for kind, rows in batch.items()
                  if rows is not None and (isinstance(rows, TableStream) or len(rows))}
        result = IngestResult(source=str(source), sha256=sha256, format=format, skipped=True)
        with self._locked():
            manifest = self.manifest()
            self._recover(manifest)
            if any(entry["sha256"] == sha256 for entry in manifest["ingests"]):
                log.info("%s already ingested (sha256 %s); nothing to do", source, sha256[:12])
                return result
            ingest_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
            written: list[tuple[Path, Path]] = []
            created_dirs: list[Path] = []
            try:
                files = self._write_pending(tables, str(source), ingest_id, written,
                                           created_dirs, progress)
                entry = {
                    "id": ingest_id, "sha256": sha256, "source": str(source), "format": format,
                    "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "rows": {kind: sum(f["rows"] for f in files if f["kind"] == kind)
                             for kind in tables},
                    "files": files,
                }
                manifest["ingests"].append(entry)
                atomic_write_text(self.root / _MANIFEST, json.dumps(manifest, indent=1))
            except BaseException:
                for pending, _ in written:
                    pending.unlink(missing_ok=True)
                for directory in reversed(created_dirs):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                raise
            for pending, final in written:
                os.replace(pending, final)
        result.skipped = False
        result.ingest_id = ingest_id
        result.rows = entry["rows"]
        result.runs = sorted({run for f in files for run in f["runs"]})
        return result

    def _write_pending(self, tables: dict[str, pa.Table | TableStream], source: str,
                       ingest_id: str,
                       written: list[tuple[Path, Path]], created_dirs: list[Path],
                       progress: bool | None) -> list[dict]:
        total: int | None = 0
        for rows in tables.values():  # Table and TableStream both have num_rows
            total = None if rows.num_rows is None or total is None else total + rows.num_rows
        bar = tqdm(total=total, unit="row", desc="writing traces", delay=1.0,
                   disable=None if progress is None else not progress)
        writers: dict[tuple[str, tuple[str, ...]], dict] = {}
        try:
            with bar:
                for kind, rows in tables.items():
                    if isinstance(rows, TableStream):
                        chunks = (_as_table(chunk, kind, source) for chunk in rows.chunks)
                    else:
                        chunks = iter([rows])
                    for chunk in chunks:
                        for key, part in _split_partitions(chunk):
                            state = writers.get((kind, key))
                            if state is None:
                                state = self._open_pending(kind, key, len(writers), ingest_id,
                                                           written, created_dirs)
                                writers[(kind, key)] = state
                            body = part.drop_columns(list(PARTITION_COLUMNS)).cast(
                                file_schema_for(kind))
                            state["writer"].write_table(body, row_group_size=_ROW_GROUP)
                            state["rows"] += part.num_rows
                            state["runs"].update(part.column("run_id").unique().to_pylist())
                            bar.update(part.num_rows)
        finally:
            for state in writers.values():
                state["writer"].close()
        files: list[dict] = []
        for (kind, key), state in writers.items():
            fsync_file(state["pending"])
            files.append({"kind": kind, "path": str(state["final"].relative_to(self.root)),
                          "rows": state["rows"], "runs": sorted(state["runs"]),
                          **dict(zip(PARTITION_COLUMNS, key))})
        return files

    def _open_pending(self, kind: str, key: tuple[str, ...], n: int, ingest_id: str,
                      written: list[tuple[Path, Path]], created_dirs: list[Path]) -> dict:
        directory = self.root / kind
        for name, value in zip(PARTITION_COLUMNS, key):
            directory = directory / f"{name}={partition_dir(value)}"
        _make_dirs(directory, created_dirs)
        pending = directory / f"{_PENDING}{ingest_id}-{n}.parquet"
        final = directory / f"part-{ingest_id}-{n}.parquet"
        written.append((pending, final))
        schema = file_schema_for(kind)
        # Dictionary pages pay off for repeated strings, not for measured floats.
        strings = [f.name for f in schema if pa.types.is_string(f.type)]
        writer = pq.ParquetWriter(pending, schema, compression="zstd", use_dictionary=strings)
        return {"writer": writer, "pending": pending, "final": final, "rows": 0, "runs": set()}

    def recover(self) -> None:
        """Under the lock, finish what an interrupted writer left (see :meth:`_recover`).

        A source whose commit was interrupted after the manifest write counts as ingested; a
        repeated ingest of it calls this, so its files become visible to every Parquet reader.
        """
        if not self.root.exists():
            return
        with self._locked():
            self._recover(self.manifest())

    def _recover(self, manifest: dict) -> None:
        """Finish or undo what a killed writer left: roll committed files forward, drop the rest."""
        if not self.root.exists():
            return
        committed = {entry["id"] for entry in manifest["ingests"]}
        for pending in self.root.glob(f"*/**/{_PENDING}*.parquet"):
            ingest_id = pending.name[len(_PENDING):].rsplit("-", 1)[0]
            if ingest_id in committed:
                final = pending.with_name("part-" + pending.name[len(_PENDING):])
                log.warning("completing interrupted ingest %s: %s", ingest_id, final)
                os.replace(pending, final)
            else:
                log.warning("removing uncommitted file of an interrupted ingest: %s", pending)
                pending.unlink()
        for stale in self.root.glob(f"{_MANIFEST}.tmp-*"):
            stale.unlink()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / _LOCK, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ----------------------------------------------------------------------------- reading
    def files(self, kind: str, **partition: str | None) -> list[tuple[dict, Path]]:
        """Committed files of ``kind`` matching the partition filters, with their manifest rows."""
        schema_for(kind)
        selected = []
        for entry in self.manifest()["ingests"]:
            for item in entry["files"]:
                if item["kind"] != kind:
                    continue
                if any(value is not None and item[name] != value
                       for name, value in partition.items()):
                    continue
                path = self.root / item["path"]
                if not path.exists():  # committed but not yet renamed by a killed writer
                    pending = path.with_name(_PENDING + path.name[len("part-"):])
                    path = pending if pending.exists() else path
                selected.append((item, path))
        return selected

    def query(self, kind: str, *, engine: str | None = None, model: str | None = None,
              hardware: str | None = None, run_id: str | list[str] | None = None,
              columns: list[str] | None = None, where: Mapping[str, object] | None = None,
              ) -> pd.DataFrame:
        """Rows of ``kind`` as a DataFrame, filtered by partition, run id and column equality.

        Example:
            >>> TraceStore(Path("/nonexistent")).query("steps").empty
            True
        """
        table = self.query_table(kind, engine=engine, model=model, hardware=hardware,
                                 run_id=run_id, columns=columns, where=where)
        return table.to_pandas()

    def query_table(self, kind: str, *, engine: str | None = None, model: str | None = None,
                    hardware: str | None = None, run_id: str | list[str] | None = None,
                    columns: list[str] | None = None, where: Mapping[str, object] | None = None,
                    ) -> pa.Table:
        """Like :meth:`query`, as a pyarrow Table in the kind's schema."""
        schema = schema_for(kind)
        run_ids = [run_id] if isinstance(run_id, str) else run_id
        wanted = list(schema.names) if columns is None else list(columns)
        unknown = [c for c in wanted + list(where or {}) if c not in schema.names]
        if unknown:
            raise StoreError(f"unknown column(s) {', '.join(unknown)} for {kind}; expected some "
                             f"of {', '.join(schema.names)}")
        file_columns = [c for c in dict.fromkeys(wanted + list(where or {}) + ["run_id"])
                        if c not in PARTITION_COLUMNS]
        parts = []
        for item, path in self.files(kind, engine=engine, model=model, hardware=hardware):
            if run_ids is not None and not set(item["runs"]) & set(run_ids):
                continue
            try:
                table = pq.read_table(path, columns=file_columns)
            except (OSError, pa.ArrowInvalid) as exc:
                raise StoreError(f"{path}: unreadable trace file ({exc})") from None
            for name in PARTITION_COLUMNS:
                table = table.append_column(name, pa.array([item[name]] * table.num_rows,
                                                           pa.string()))
            mask = None
            if run_ids is not None:
                mask = pc.is_in(table.column("run_id"), pa.array(run_ids, pa.string()))
            for name, value in (where or {}).items():
                cond = (pc.is_in(table.column(name), pa.array(list(value)))
                        if isinstance(value, (list, tuple)) else
                        pc.equal(table.column(name), pa.scalar(value)))
                mask = cond if mask is None else pc.and_(mask, cond)
            if mask is not None:
                table = table.filter(mask)
            parts.append(table.select(wanted))
        if not parts:
            return pa.Table.from_batches([], schema=pa.schema([schema.field(c) for c in wanted]))
        return pa.concat_tables(parts, promote_options="default").cast(
            pa.schema([schema.field(c) for c in wanted]))

    def summary(self) -> dict[str, dict]:
        """Per kind: row count and the distinct runs, engines, models and hardware."""
        out = {}
        for kind in KINDS:
            items = [item for item, _ in self.files(kind)]
            out[kind] = {
                "rows": sum(item["rows"] for item in items),
                "runs": sorted({run for item in items for run in item["runs"]}),
                "engines": sorted({item["engine"] for item in items}),
                "models": sorted({item["model"] for item in items}),
                "hardware": sorted({item["hardware"] for item in items}),
                "files": len(items),
            }
        return out


def _as_table(rows: pa.Table | pd.DataFrame, kind: str, source: str) -> pa.Table:
    if isinstance(rows, pa.Table) and rows.schema.equals(schema_for(kind), check_metadata=False):
        return rows
    return conform(rows, kind, path=str(source))


def _split_partitions(table: pa.Table) -> Iterator[tuple[tuple[str, ...], pa.Table]]:
    keys = table.select(list(PARTITION_COLUMNS)).group_by(list(PARTITION_COLUMNS)).aggregate([])
    if keys.num_rows == 1:  # the common case: no filtering, no copy
        key = keys.to_pylist()[0]
        yield tuple(key[name] for name in PARTITION_COLUMNS), table
        return
    for key in keys.to_pylist():
        mask = None
        for name in PARTITION_COLUMNS:
            cond = pc.equal(table.column(name), pa.scalar(key[name]))
            mask = cond if mask is None else pc.and_(mask, cond)
        yield tuple(key[name] for name in PARTITION_COLUMNS), table.filter(mask)


def _make_dirs(directory: Path, created: list[Path]) -> None:
    missing = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)
