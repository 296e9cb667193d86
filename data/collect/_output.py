"""Collector output: one Parquet file per trace kind (``steps``/``requests``/``runs``.parquet).

Each file holds the full logical schema of its kind (partition columns included) and carries
``servetune.kind`` in its schema metadata, so ``servetune ingest`` recognises it
(:class:`~servetune.data.adapters.ServetuneParquetAdapter`). Files are zstd-compressed and written
atomically, so a crash mid-write leaves the previous complete file.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from servetune import InputError
from servetune.data._atomic import atomic_write_bytes
from servetune.data._schemas import KINDS, conform

__all__ = ["TraceWriter", "write_kind", "read_output", "merge_outputs"]


def _float_columns(schema: pa.Schema) -> list[str]:
    """Parquet paths of the floating-point columns (list elements included)."""
    paths = []
    for field in schema:
        if pa.types.is_floating(field.type):
            paths.append(field.name)
        elif pa.types.is_list(field.type) and pa.types.is_floating(field.type.value_type):
            paths.append(f"{field.name}.list.element")
    return paths


def write_kind(table: pa.Table, path: Path) -> None:
    """Write one conformed table as zstd Parquet, atomically. Floating-point columns use the
    byte-stream-split encoding instead of a dictionary (lossless; a third smaller for measured
    latencies, whose values rarely repeat)."""
    floats = _float_columns(table.schema)
    dictionary = [f.name for f in table.schema if f.name not in floats
                  and f"{f.name}.list.element" not in floats]
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", compression_level=9,
                   use_byte_stream_split=floats or False, use_dictionary=dictionary or False)
    atomic_write_bytes(path, buffer.getvalue())


class TraceWriter:
    """Accumulates runs and rewrites ``DIR/<kind>.parquet`` after each one (crash-safe)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self._tables: dict[str, list[pa.Table]] = {kind: [] for kind in KINDS}

    def add(self, rows: Mapping[str, Mapping[str, list]]) -> None:
        """Conform ``{kind: columns}`` and write every kind's file anew."""
        for kind, columns in rows.items():
            self._tables[kind].append(conform(columns, kind))
        self.flush()

    def flush(self) -> None:
        """Write the accumulated tables."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for kind, tables in self._tables.items():
            if tables:
                write_kind(pa.concat_tables(tables), self.paths()[kind])

    def paths(self) -> dict[str, Path]:
        """Where each kind's file goes."""
        return {kind: self.out_dir / f"{kind}.parquet" for kind in KINDS}


def read_output(directory: str | Path) -> dict[str, pa.Table]:
    """The conformed tables of a collector output directory (kinds that have a file)."""
    directory = Path(directory)
    tables = {}
    for kind in KINDS:
        path = directory / f"{kind}.parquet"
        if path.is_file():
            try:
                table = pq.read_table(path)
            except (OSError, pa.ArrowInvalid) as exc:
                raise InputError(f"unreadable Parquet file ({exc})", path=str(path)) from None
            tables[kind] = conform(table, kind, path=str(path))
    if not tables:
        raise InputError("no steps/requests/runs.parquet here", path=str(directory))
    return tables


def merge_outputs(directories: Iterable[str | Path], out_dir: str | Path) -> dict[str, int]:
    """Concatenate several collector outputs into one; run ids must not repeat across them."""
    merged: dict[str, list[pa.Table]] = {kind: [] for kind in KINDS}
    owner: dict[str, str] = {}
    for directory in directories:
        tables = read_output(directory)
        for run_id in sorted(set(tables.get("runs", pa.table({"run_id": []})).column("run_id")
                                 .to_pylist())):
            if run_id in owner:
                raise InputError(f"run {run_id!r} is in both {owner[run_id]} and {directory}",
                                 path=str(directory), field="run_id")
            owner[run_id] = str(directory)
        for kind, table in tables.items():
            merged[kind].append(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for kind, tables in merged.items():
        if tables:
            table = pa.concat_tables(tables)
            write_kind(table, out / f"{kind}.parquet")
            counts[kind] = table.num_rows
    return counts
