"""The three trace kinds (``steps``, ``requests``, ``runs``) as pyarrow schemas.

Every adapter, collector and simulator emits exactly these columns; anything engine-specific goes
into the JSON ``extra`` column. ``engine``, ``model`` and ``hardware`` are the hive partition keys
of the store: they live in the directory names (``engine=…/model=…/hardware=…``), not inside the
Parquet files. Their values are canonicalised by :func:`partition_value` (whitespace runs become
``-``, so ``"NVIDIA H200"`` is ``"NVIDIA-H200"``; every other character is kept) and written into
directory names percent-encoded by :func:`partition_dir`, so distinct values never share a
directory (``A/B`` is ``A%2FB``, ``A B`` is ``A-B``) and hive readers decode them back.

Example:
    >>> from servetune.data import schema_for
    >>> "duration_ms" in schema_for("steps").names
    True
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from servetune import InputError

__all__ = [
    "KINDS",
    "PARTITION_COLUMNS",
    "STEPS_SCHEMA",
    "REQUESTS_SCHEMA",
    "RUNS_SCHEMA",
    "SOURCES",
    "schema_for",
    "file_schema_for",
    "partition_value",
    "partition_dir",
    "REQUEST_STATUSES",
    "JSON_COLUMNS",
    "conform",
]

PARTITION_COLUMNS: tuple[str, ...] = ("engine", "model", "hardware")
SOURCES: tuple[str, ...] = ("measured", "simulated", "reconstructed")
REQUEST_STATUSES: tuple[str, ...] = ("ok", "error")
#: text columns that hold one JSON object per row (or null)
JSON_COLUMNS: dict[str, tuple[str, ...]] = {
    "steps": ("extra",), "requests": ("extra",),
    "runs": ("config", "workload", "provenance", "extra")}
MAX_PARTITION_CHARS = 200

_IDENTITY = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("engine", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("hardware", pa.string(), nullable=False),
    pa.field("engine_version", pa.string()),
    pa.field("source", pa.string(), nullable=False),  # "measured" | "simulated"
]

STEPS_SCHEMA = pa.schema(
    _IDENTITY
    + [
        pa.field("gpu_count", pa.int32()),
        pa.field("tp_size", pa.int32()),
        pa.field("pp_size", pa.int32()),
        pa.field("dp_rank", pa.int32()),
        pa.field("step_index", pa.int64(), nullable=False),
        pa.field("start_s", pa.float64()),  # seconds since the run started
        pa.field("duration_ms", pa.float64(), nullable=False),  # the prediction target
        pa.field("num_seqs", pa.int32(), nullable=False),
        pa.field("num_prefill_seqs", pa.int32(), nullable=False),
        pa.field("num_decode_seqs", pa.int32(), nullable=False),
        pa.field("prefill_tokens", pa.int64(), nullable=False),
        pa.field("decode_tokens", pa.int64(), nullable=False),
        pa.field("kv_tokens_sum", pa.int64()),  # KV tokens read by attention, all sequences
        pa.field("kv_tokens_max", pa.int64()),  # longest context in the batch
        pa.field("prefill_attn_work", pa.int64()),  # sum over prefill chunks of chunk * context
        pa.field("block_size", pa.int32()),
        pa.field("extra", pa.string()),  # JSON object
    ],
    metadata={"servetune.kind": "steps", "servetune.schema_version": "1"},
)

REQUESTS_SCHEMA = pa.schema(
    _IDENTITY
    + [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("arrival_s", pa.float64()),  # seconds since the run started
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("queue_ms", pa.float64()),
        pa.field("ttft_ms", pa.float64()),
        pa.field("tpot_ms", pa.float64()),
        pa.field("e2e_ms", pa.float64()),
        pa.field("itl_ms", pa.list_(pa.float64())),
        pa.field("preemptions", pa.int32()),
        pa.field("status", pa.string(), nullable=False),  # "ok" | "error"
        pa.field("error", pa.string()),
        pa.field("extra", pa.string()),
    ],
    metadata={"servetune.kind": "requests", "servetune.schema_version": "1"},
)

_PERCENTILE_METRICS = [
    pa.field(f"{metric}_{stat}_ms", pa.float64())
    for metric in ("ttft", "tpot", "itl", "e2e")
    for stat in ("mean", "p50", "p90", "p99")
]

RUNS_SCHEMA = pa.schema(
    _IDENTITY
    + [
        # hardware and topology
        pa.field("gpu_name", pa.string()),
        pa.field("gpu_count", pa.int32()),
        pa.field("tp_size", pa.int32()),
        pa.field("pp_size", pa.int32()),
        pa.field("dp_size", pa.int32()),
        # configuration: the full JSON plus the knobs every engine has in some form
        pa.field("config", pa.string()),
        pa.field("scheduler", pa.string()),
        pa.field("max_batch_tokens", pa.int64()),
        pa.field("max_num_seqs", pa.int64()),
        pa.field("block_size", pa.int32()),
        pa.field("num_blocks", pa.int64()),
        pa.field("chunked_prefill", pa.bool_()),
        pa.field("async_batching", pa.bool_()),
        pa.field("cuda_graph", pa.bool_()),
        pa.field("gpu_memory_utilization", pa.float64()),
        # workload
        pa.field("workload", pa.string()),  # JSON descriptor
        pa.field("num_requests", pa.int64()),
        pa.field("duration_s", pa.float64()),
        # aggregate metrics
        pa.field("completed", pa.int64()),
        pa.field("failed", pa.int64()),
        pa.field("success_rate", pa.float64()),
        pa.field("request_throughput_rps", pa.float64()),
        pa.field("output_throughput_tok_s", pa.float64()),
        pa.field("total_token_throughput_tok_s", pa.float64()),
        pa.field("goodput_rps", pa.float64()),
        pa.field("preemptions", pa.int64()),
    ]
    + _PERCENTILE_METRICS
    + [
        # provenance
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("host", pa.string()),
        pa.field("command", pa.string()),
        pa.field("provenance", pa.string()),  # JSON: versions, driver, GPU UUID, CPU model, ...
        pa.field("source_file", pa.string()),
        pa.field("source_sha256", pa.string()),
        pa.field("extra", pa.string()),
    ],
    metadata={"servetune.kind": "runs", "servetune.schema_version": "1"},
)

_SCHEMAS = {"steps": STEPS_SCHEMA, "requests": REQUESTS_SCHEMA, "runs": RUNS_SCHEMA}
KINDS: tuple[str, ...] = tuple(_SCHEMAS)

# Latency-like columns that must be finite and >= 0 wherever they are present.
_NON_NEGATIVE = {
    "steps": ("duration_ms", "num_seqs", "num_prefill_seqs", "num_decode_seqs", "prefill_tokens",
              "decode_tokens", "kv_tokens_sum", "kv_tokens_max", "prefill_attn_work", "start_s"),
    "requests": ("arrival_s", "input_tokens", "output_tokens", "queue_ms", "ttft_ms", "tpot_ms",
                 "e2e_ms", "itl_ms"),
    "runs": ("duration_s", "request_throughput_rps", "output_throughput_tok_s", "num_requests",
             "completed", "failed", "preemptions", *(f.name for f in _PERCENTILE_METRICS)),
}

_SPACES = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIR_SAFE = "._+-"  # kept as is in directory names, with ASCII letters and digits


def schema_for(kind: str) -> pa.Schema:
    """The full logical schema of a trace kind, partition columns included."""
    try:
        return _SCHEMAS[kind]
    except KeyError:
        raise InputError(f"unknown trace kind {kind!r}; expected one of {', '.join(KINDS)}") from None


def file_schema_for(kind: str) -> pa.Schema:
    """The schema of the Parquet files in the store: the logical one without partition keys."""
    schema = schema_for(kind)
    for name in PARTITION_COLUMNS:
        schema = schema.remove(schema.get_field_index(name))
    return schema


def partition_value(value: str) -> str:
    """The canonical identity value of a partition key: ``"NVIDIA H200"`` is ``"NVIDIA-H200"``.

    Surrounding whitespace is dropped and inner whitespace runs become ``-``; every other
    character is kept, so ``"org/model"`` stays ``"org/model"`` (see :func:`partition_dir`).
    Empty values, control characters and values over 200 characters are refused.
    """
    if value is None:
        raise InputError("expected a value, found an empty one")
    token = _SPACES.sub("-", str(value).strip())
    if not token:
        raise InputError(f"cannot use {value!r} as a partition value; expected a non-empty name")
    if len(token) > MAX_PARTITION_CHARS or _CONTROL.search(token):
        raise InputError(f"cannot use {str(value)[:60]!r} as a partition value; expected at most "
                         f"{MAX_PARTITION_CHARS} printable characters")
    return token


def partition_dir(value: str) -> str:
    """The directory-name form of a canonical partition value: percent-encoded, injective.

    Example:
        >>> partition_dir("A/B"), partition_dir("NVIDIA-H200")
        ('A%2FB', 'NVIDIA-H200')
    """
    return urllib.parse.quote(value, safe=_DIR_SAFE)


def conform(columns: pd.DataFrame | pa.Table | Mapping[str, Sequence], kind: str, *,
            path: str | None = None) -> pa.Table:
    """Cast columns to ``kind``'s schema and check them, or raise :class:`InputError`.

    ``columns`` is a DataFrame (where NaN means missing), a pyarrow Table, or a mapping of column
    name to a list of values (where only ``None`` means missing, so a NaN latency read from a file
    is refused rather than silently dropped). Missing nullable columns are filled with nulls;
    missing required columns, values of the wrong type, and negative or non-finite latencies are
    refused with the file, the 1-based row and the field named. Partition columns are normalised
    with :func:`partition_value`.
    """
    schema = schema_for(kind)
    if isinstance(columns, pa.Table):
        return _conform_arrow(columns, kind, schema, path)
    nan_is_null = isinstance(columns, pd.DataFrame)
    if isinstance(columns, pd.DataFrame):
        names = list(columns.column_names if isinstance(columns, pa.Table) else columns.columns)
        data = {name: _column_values(columns, name) for name in names}
    else:
        data = {name: list(values) for name, values in columns.items()}
    missing = [f.name for f in schema if not f.nullable and f.name not in data]
    if missing:
        raise InputError(f"missing required column(s) {', '.join(missing)} for {kind} traces",
                         path=path, field=missing[0])
    num_rows = len(data[schema[0].name])
    for name in PARTITION_COLUMNS:
        data[name] = _partition_values(data[name], name, path)
    arrays = []
    for field in schema:
        if field.name not in data:
            arrays.append(pa.nulls(num_rows, field.type))
            continue
        arrays.append(_cast_column(data[field.name], field, path, nan_is_null))
    table = pa.Table.from_arrays(arrays, schema=schema)
    _check_values(table, kind, path)
    return table


def _conform_arrow(table: pa.Table, kind: str, schema: pa.Schema, path: str | None) -> pa.Table:
    """:func:`conform` for a pyarrow Table: vectorised casts, Python lists only to locate errors."""
    missing = [f.name for f in schema if not f.nullable and f.name not in table.column_names]
    if missing:
        raise InputError(f"missing required column(s) {', '.join(missing)} for {kind} traces",
                         path=path, field=missing[0])
    arrays = []
    for field in schema:
        if field.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if field.name in PARTITION_COLUMNS:
            column = _partition_column(column, field.name, path)
        if (pa.types.is_boolean(column.type) != pa.types.is_boolean(field.type)
                and column.null_count < len(column) and not pa.types.is_null(column.type)):
            row = _first_valid_row(column)
            raise InputError(f"expected {_describe(field.type)}, got a {column.type} column "
                             f"(row {row}: {column[row - 1].as_py()!r})", path=path, row=row,
                             field=field.name)
        try:
            if _is_text(column.type) != _is_text(field.type) and column.null_count < len(column):
                raise pa.ArrowTypeError("no implicit conversion between text and numbers")
            column = column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            column = _cast_column(column.to_pylist(), field, path, nan_is_null=False)
        if not field.nullable and column.null_count:
            row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False))) + 1
            raise InputError("expected a value, found an empty one", path=path, row=row,
                             field=field.name)
        arrays.append(column)
    result = pa.Table.from_arrays(arrays, schema=schema)
    _check_values(result, kind, path)
    return result


def _first_valid_row(column: pa.ChunkedArray) -> int:
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return int(np.argmax(valid)) + 1


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _partition_values(values: list, name: str, path: str | None) -> list[str]:
    """Canonical partition values; an error names the first bad row."""
    canonical: dict = {}
    out = []
    for row, value in enumerate(values, start=1):
        try:
            token = canonical[value]
        except KeyError:
            try:
                token = canonical[value] = partition_value(value)
            except InputError as exc:
                raise InputError(exc.detail, path=path, row=row, field=name) from None
        except TypeError:  # unhashable: a list or a dict
            raise InputError(f"expected a string, got {value!r:.60}", path=path, row=row,
                             field=name) from None
        out.append(token)
    return out


def _partition_column(column: pa.ChunkedArray, name: str, path: str | None) -> pa.ChunkedArray:
    values = pc.unique(column.cast(pa.string())).to_pylist()
    safe = []
    for value in values:
        try:
            safe.append(None if value is None else partition_value(value))
        except InputError as exc:
            row = column.cast(pa.string()).to_pylist().index(value) + 1
            raise InputError(exc.detail, path=path, row=row, field=name) from None
    if safe == values:
        return column
    return pc.take(pa.array(safe, pa.string()), pc.index_in(column.cast(pa.string()),
                                                             pa.array(values, pa.string())))


def _column_values(columns: pd.DataFrame | pa.Table, name: str) -> list:
    if isinstance(columns, pa.Table):
        return columns.column(name).to_pylist()
    return columns[name].tolist()


def _cast_column(values: list, field: pa.Field, path: str | None, nan_is_null: bool) -> pa.Array:
    if pa.types.is_integer(field.type):  # pyarrow would silently truncate 2.5 to 2
        for row, value in enumerate(values, start=1):
            if isinstance(value, float) and not (value.is_integer() or (
                    nan_is_null and math.isnan(value))):
                raise InputError(f"expected an integer, got {value!r}", path=path, row=row,
                                 field=field.name)
    try:
        array = pa.array(values, type=field.type, from_pandas=nan_is_null)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        row = _first_bad_row(values, field.type)
        raise InputError(
            f"expected {_describe(field.type)}, got {values[row - 1]!r}", path=path, row=row,
            field=field.name) from None
    if not field.nullable and array.null_count:
        row = next(i for i, v in enumerate(array.is_null().to_pylist(), start=1) if v)
        raise InputError("expected a value, found an empty one", path=path, row=row,
                         field=field.name)
    return array


def _first_bad_row(values: list, dtype: pa.DataType) -> int:
    for i, value in enumerate(values, start=1):
        if isinstance(value, bool) and not pa.types.is_boolean(dtype):
            return i
        try:
            pa.array([value], type=dtype, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return i
    return 1


def _describe(dtype: pa.DataType) -> str:
    if pa.types.is_integer(dtype):
        return "an integer"
    if pa.types.is_floating(dtype):
        return "a number"
    if pa.types.is_boolean(dtype):
        return "true or false"
    if pa.types.is_list(dtype):
        return "a list of numbers"
    if pa.types.is_timestamp(dtype):
        return "a timestamp"
    return "a string"


def _check_values(table: pa.Table, kind: str, path: str | None) -> None:
    for name in _NON_NEGATIVE[kind]:
        column = table.column(name)
        if column.null_count == len(column):
            continue
        if pa.types.is_list(column.type):  # check every element; report the row holding it
            column = column.combine_chunks()
            parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
            column = pc.list_flatten(column)
        else:
            parents = None
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values < 0)
        bad &= ~column.is_null().to_numpy(zero_copy_only=False)
        if bad.any():
            row = int(np.argmax(bad)) + 1
            value = values[row - 1]
            if parents is not None:
                row = int(parents[row - 1]) + 1
            what = "a finite number" if not math.isfinite(value) else "a number >= 0"
            raise InputError(f"expected {what}, got {float(value)}", path=path, row=row, field=name)
    _check_choices(table, "source", SOURCES, path)
    if kind == "requests":
        _check_choices(table, "status", REQUEST_STATUSES, path)
        _check_requests(table, path)
    elif kind == "runs":
        _check_runs(table, path)
    for name in JSON_COLUMNS[kind]:
        _check_json_objects(table.column(name), name, path)


def _check_choices(table: pa.Table, name: str, allowed: tuple[str, ...], path: str | None
                   ) -> None:
    column = table.column(name)
    bad = pc.invert(pc.is_in(column, pa.array(allowed, pa.string())))
    bad = pc.and_(bad, column.is_valid()).to_numpy(zero_copy_only=False)
    if bad.any():
        row = int(np.argmax(bad)) + 1
        raise InputError(f"expected one of {', '.join(allowed)}, got {column[row - 1].as_py()!r}",
                         path=path, row=row, field=name)


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int | None:
    values = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    return int(np.argmax(values)) + 1 if values.any() else None


def _check_requests(table: pa.Table, path: str | None) -> None:
    """TTFT within the end-to-end latency, and one row per (run, request id)."""
    ttft, e2e = table.column("ttft_ms"), table.column("e2e_ms")
    # a little slack for rounding: TTFT and E2E are often printed separately
    late = pc.greater(ttft, pc.add(pc.multiply(e2e, 1 + 1e-9), 1e-6))
    row = _first_true(late)
    if row is not None:
        raise InputError(f"expected ttft_ms <= e2e_ms, got TTFT {ttft[row - 1].as_py()} > E2E "
                         f"{e2e[row - 1].as_py()}", path=path, row=row, field="ttft_ms")
    keys = table.select(["run_id", "request_id"])
    if keys.group_by(["run_id", "request_id"]).aggregate([]).num_rows != keys.num_rows:
        frame = keys.to_pandas()
        row = int(np.argmax(frame.duplicated().to_numpy())) + 1
        raise InputError(f"expected unique request ids per run, got {frame.request_id.iloc[row - 1]!r} "
                         "again", path=path, row=row, field="request_id")


def _check_runs(table: pa.Table, path: str | None) -> None:
    """``completed`` and ``failed`` each, and together, at most ``num_requests``."""
    total = table.column("num_requests")
    completed, failed = table.column("completed"), table.column("failed")
    for name, count in (("completed", completed), ("failed", failed),
                        ("failed", pc.add(completed, failed))):
        row = _first_true(pc.greater(count, total))
        if row is not None:
            what = "completed + failed" if name == "failed" and count is not failed else name
            raise InputError(f"expected {what} <= num_requests ({total[row - 1].as_py()}), got "
                             f"{count[row - 1].as_py()}", path=path, row=row, field=name)


def _check_json_objects(column: pa.ChunkedArray, name: str, path: str | None) -> None:
    from servetune.data.adapters._common import loads

    for value in pc.unique(column).to_pylist():
        if value is None:
            continue
        try:
            ok = isinstance(loads(value), dict)
        except ValueError:
            ok = False
        if not ok:
            row = column.to_pylist().index(value) + 1
            raise InputError(f"expected a JSON object, got {value!r:.60}", path=path, row=row,
                             field=name)
