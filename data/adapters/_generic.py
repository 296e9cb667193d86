"""Generic CSV and JSON-lines traces of engine steps or requests.

Formats ``steps-csv``, ``steps-jsonl``, ``requests-csv``, ``requests-jsonl``: one row (CSV, with
a header line) or one JSON object per line (JSONL) per engine step or per request. Detection
needs a ``.csv`` or ``.jsonl``/``.ndjson`` file whose header (or first object) has a step-time
column (steps) or a request-id column (requests), after aliases.

Column mapping: a column named as the schema field (see ``servetune.data.schema_for``) is taken
as is; these aliases are renamed (units never change: ``*_ms`` is milliseconds, ``*_s`` seconds):

==================  =====================================================================
steps field         accepted aliases
==================  =====================================================================
duration_ms         latency_ms, step_time_ms, step_ms, time_ms, forward_ms
num_seqs            batch_size, num_reqs, num_requests, bs
num_prefill_seqs    num_prefills, prefill_seqs, num_prefill_reqs
num_decode_seqs     num_decodes, decode_seqs, num_decode_reqs
prefill_tokens      num_prefill_tokens, prefill_len
decode_tokens       num_decode_tokens
step_index          step, iteration, iter, step_id
start_s             timestamp_s, start_time_s, time_s
tp_size / pp_size   tp, tensor_parallel_size / pp, pipeline_parallel_size
kv_tokens_sum       kv_tokens, context_tokens
kv_tokens_max       max_context_len, max_seq_len
gpu_count           num_gpus
==================  =====================================================================

==================  =====================================================================
requests field      accepted aliases
==================  =====================================================================
request_id          id, req_id, rid
arrival_s           arrival_time_s, arrival_time, arrived_at
input_tokens        prompt_tokens, input_len, prompt_len, num_input_tokens
output_tokens       completion_tokens, output_len, num_output_tokens, generated_tokens
ttft_ms             time_to_first_token_ms
tpot_ms             time_per_output_token_ms
e2e_ms              latency_ms, e2el_ms, e2e_latency_ms, request_latency_ms
itl_ms              itls_ms, inter_token_latencies_ms (a JSON array; in CSV also ``1.2;3.4``)
queue_ms            queue_time_ms, queued_ms
==================  =====================================================================

Identity: ``engine`` and ``model`` come from columns or from ``servetune ingest --set
engine=vllm --set model=NAME`` (``--set`` wins over a column); ``hardware`` defaults to
``unknown``, ``source`` to ``measured``, ``run_id`` to ``<format>-<first 16 hex digits of the
file's SHA-256>``. Steps: ``step_index`` defaults to the row order; of ``num_seqs``,
``num_prefill_seqs`` and ``num_decode_seqs`` any two give the third. Requests: ``status``
defaults to ``error`` where an ``error`` column is non-empty, else ``ok``. Every other column is
kept per row in the JSON ``extra`` column. Empty CSV cells are missing values.

Errors name the file, the line, the column and what was expected.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import pyarrow as pa

from servetune import InputError
from servetune.data._schemas import PARTITION_COLUMNS, conform, schema_for
from servetune.data.adapters._base import Adapter
from servetune.data.adapters._common import check_overrides, json_lines, json_text, loads

__all__ = ["GenericTraceAdapter", "STEPS_ALIASES", "REQUESTS_ALIASES", "GENERIC_FORMATS",
           "MAX_COLUMNS"]

STEPS_ALIASES: dict[str, tuple[str, ...]] = {
    "duration_ms": ("latency_ms", "step_time_ms", "step_ms", "time_ms", "forward_ms"),
    "num_seqs": ("batch_size", "num_reqs", "num_requests", "bs"),
    "num_prefill_seqs": ("num_prefills", "prefill_seqs", "num_prefill_reqs"),
    "num_decode_seqs": ("num_decodes", "decode_seqs", "num_decode_reqs"),
    "prefill_tokens": ("num_prefill_tokens", "prefill_len"),
    "decode_tokens": ("num_decode_tokens",),
    "step_index": ("step", "iteration", "iter", "step_id"),
    "start_s": ("timestamp_s", "start_time_s", "time_s"),
    "tp_size": ("tp", "tensor_parallel_size"),
    "pp_size": ("pp", "pipeline_parallel_size"),
    "kv_tokens_sum": ("kv_tokens", "context_tokens"),
    "kv_tokens_max": ("max_context_len", "max_seq_len"),
    "gpu_count": ("num_gpus",),
}
REQUESTS_ALIASES: dict[str, tuple[str, ...]] = {
    "request_id": ("id", "req_id", "rid"),
    "arrival_s": ("arrival_time_s", "arrival_time", "arrived_at"),
    "input_tokens": ("prompt_tokens", "input_len", "prompt_len", "num_input_tokens"),
    "output_tokens": ("completion_tokens", "output_len", "num_output_tokens",
                      "generated_tokens"),
    "ttft_ms": ("time_to_first_token_ms",),
    "tpot_ms": ("time_per_output_token_ms",),
    "e2e_ms": ("latency_ms", "e2el_ms", "e2e_latency_ms", "request_latency_ms"),
    "itl_ms": ("itls_ms", "inter_token_latencies_ms"),
    "queue_ms": ("queue_time_ms", "queued_ms"),
}
_ALIASES = {"steps": STEPS_ALIASES, "requests": REQUESTS_ALIASES}
_MARKERS = {"steps": "duration_ms", "requests": "request_id"}  # what detection looks for
#: the most columns a CSV header may have (every column becomes a field or a key of ``extra``)
MAX_COLUMNS = 10_000
_SUFFIXES = {"csv": (".csv",), "jsonl": (".jsonl", ".ndjson")}
GENERIC_FORMATS: tuple[str, ...] = tuple(f"{kind}-{syntax}" for kind in ("steps", "requests")
                                         for syntax in ("csv", "jsonl"))


class GenericTraceAdapter(Adapter):
    """Steps or requests as CSV or JSON lines, with the column mapping of the module docstring.

    Args:
        kind: ``"steps"`` or ``"requests"``.
        syntax: ``"csv"`` or ``"jsonl"``.
        overrides: identity values set on every row (``engine``, ``model``, ``hardware``, ...).

    Example:
        >>> GenericTraceAdapter("steps", "csv").name
        'steps-csv'
    """

    def __init__(self, kind: str, syntax: str, overrides: Mapping[str, str] | None = None
                 ) -> None:
        if kind not in _ALIASES or syntax not in _SUFFIXES:
            raise ValueError(f"no generic adapter for {kind!r} in {syntax!r}")
        self.kind = kind
        self.syntax = syntax
        self.name = f"{kind}-{syntax}"
        unit = "CSV row" if syntax == "csv" else "JSON object per line"
        self.description = f"generic {kind} trace, one {unit} per {kind[:-1]} (column aliases)"
        self.overrides = dict(overrides or {})

    # ------------------------------------------------------------------ detection
    def sniff(self, path: Path, head: bytes) -> bool:
        if path.suffix.lower() not in _SUFFIXES[self.syntax]:
            return False
        text = head.decode("utf-8", errors="replace")
        first = text.splitlines()[0] if text.strip() else ""
        if self.syntax == "csv":
            names = [n.strip() for n in next(csv.reader([first]), [])]
        else:
            try:
                record = loads(first)
            except ValueError:
                return False
            names = list(record) if isinstance(record, dict) else []
        return _MARKERS[self.kind] in self._rename(names).values()

    def _rename(self, names: list[str]) -> dict[str, str]:
        """File column -> schema field, for the columns the mapping knows."""
        schema_names = set(schema_for(self.kind).names)
        lookup = {alias: field for field, aliases in _ALIASES[self.kind].items()
                  for alias in aliases}
        mapping = {}
        for name in names:
            if name in schema_names:
                mapping[name] = name
            elif name in lookup and lookup[name] not in names:
                mapping[name] = lookup[name]
        return mapping

    # ------------------------------------------------------------------ reading
    def read(self, path: Path, *, sha256: str) -> dict[str, pa.Table]:
        overrides = check_overrides(self.overrides)
        where = str(path)
        records = list(self._records(path))
        if not records:
            raise InputError(f"expected at least one {self.kind[:-1]} row, found none",
                             path=where)
        names = list(dict.fromkeys(name for _, record in records for name in record))
        mapping = self._rename(names)
        schema = schema_for(self.kind)
        lines = [line for line, _ in records]
        columns: dict[str, list] = {}
        for name, target in mapping.items():
            field = schema.field(target)
            columns[target] = [_convert(record.get(name), field, where, line, self.syntax)
                               for line, record in records]
        unknown = [name for name in names if name not in mapping]
        if unknown:
            columns["extra"] = [_extra(record, unknown, columns.get("extra"), i, where, line)
                                for i, (line, record) in enumerate(records)]
        self._fill_identity(columns, len(records), overrides, sha256, where)
        self._fill_defaults(columns, len(records))
        try:
            table = conform(columns, self.kind, path=where)
        except InputError as exc:
            raise _at_line(exc, lines) from None
        return {self.kind: table}

    def _records(self, path: Path) -> Iterator[tuple[int, dict]]:
        where = str(path)
        try:
            handle = open(path, encoding="utf-8", newline="")
        except OSError as exc:
            raise InputError(f"cannot read file ({exc.strerror})", path=where) from None
        with handle:
            try:
                if self.syntax == "csv":
                    yield from _csv_records(handle, where)
                else:
                    yield from _jsonl_records(handle, where)
            except UnicodeDecodeError:
                raise InputError("expected UTF-8 text", path=where) from None

    def _fill_identity(self, columns: dict, n: int, overrides: dict, sha256: str,
                       where: str) -> None:
        defaults = {"run_id": f"{self.name}-{sha256[:16]}", "hardware": "unknown",
                    "source": "measured"}
        for name in ("run_id", "engine", "model", "hardware", "engine_version", "source"):
            if name in overrides:
                columns[name] = [overrides[name]] * n
            elif name not in columns and name in defaults:
                columns[name] = [defaults[name]] * n
        for name in PARTITION_COLUMNS[:2]:
            if name not in columns:
                raise InputError(f"no '{name}' column; add one or name it for every row with "
                                 f"--set {name}=NAME", path=where, field=name)

    def _fill_defaults(self, columns: dict, n: int) -> None:
        if self.kind == "steps":
            columns.setdefault("step_index", list(range(n)))
            seqs = ("num_seqs", "num_prefill_seqs", "num_decode_seqs")
            present = [name for name in seqs if name in columns]
            if len(present) == 2:
                total, prefill, decode = (columns.get(name) for name in seqs)
                if total is None:
                    columns["num_seqs"] = [_add(p, d) for p, d in zip(prefill, decode)]
                elif prefill is None:
                    columns["num_prefill_seqs"] = [_sub(t, d) for t, d in zip(total, decode)]
                else:
                    columns["num_decode_seqs"] = [_sub(t, p) for t, p in zip(total, prefill)]
        elif "status" not in columns:
            errors = columns.get("error", [None] * n)
            columns["status"] = ["error" if e else "ok" for e in errors]


def _csv_records(handle, where: str) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        return
    if len(header) > MAX_COLUMNS:
        raise InputError(f"expected at most {MAX_COLUMNS:,d} columns in the header, found "
                         f"{len(header):,d}", path=where, row=1)
    header = [name.strip() for name in header]
    counts = Counter(header)
    duplicates = sorted(name for name, count in counts.items() if count > 1 and name)
    if duplicates or "" in header:
        raise InputError(f"expected distinct, non-empty column names in the header, found "
                         f"{duplicates or ['(empty)']}", path=where, row=1)
    try:
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise InputError(f"expected {len(header)} fields as in the header, found "
                                 f"{len(cells)} (line {reader.line_num})", path=where,
                                 row=reader.line_num)
            yield reader.line_num, {name: cell.strip() for name, cell in zip(header, cells)
                                    if cell.strip() != ""}
    except csv.Error as exc:
        raise InputError(f"invalid CSV: {exc} (line {reader.line_num})", path=where,
                         row=reader.line_num) from None


def _jsonl_records(handle, where: str) -> Iterator[tuple[int, dict]]:
    for number, record in json_lines(handle, where):
        yield number, {k: v for k, v in record.items() if v is not None}


def _convert(value, field: pa.Field, where: str, line: int, syntax: str):
    """One cell as the Python value the field's type needs, or an InputError at its line."""
    if value is None:
        return None
    dtype = field.type
    try:
        if pa.types.is_list(dtype):
            return _number_list(value, syntax)
        if pa.types.is_string(dtype):
            if isinstance(value, (dict, list, bool, float)):
                raise ValueError
            return str(value)
        if pa.types.is_boolean(dtype):
            return _boolean(value)
        if isinstance(value, bool):
            raise ValueError
        if syntax == "jsonl" and not isinstance(value, (int, float)):
            raise ValueError
        number = float(value) if isinstance(value, str) else value
        if pa.types.is_integer(dtype):
            if isinstance(number, float):
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return int(number)
        return float(number)
    except (ValueError, TypeError, OverflowError):
        expected = {"list": "a list of numbers", "string": "a string", "bool": "true or false",
                    "int": "an integer", "double": "a number"}
        kind = next((v for k, v in expected.items() if str(dtype).startswith(k)), str(dtype))
        raise InputError(f"expected {kind}, got {value!r} (line {line})", path=where, row=line,
                         field=field.name) from None


def _number_list(value, syntax: str) -> list[float]:
    if isinstance(value, str):
        text = value.strip()
        value = loads(text) if text.startswith("[") else \
            [float(v) for v in text.split(";") if v.strip()]
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                          for v in value):
        raise ValueError
    return [float(v) for v in value]


def _boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError


def _extra(record: dict, unknown: list[str], given: list | None, index: int, where: str,
           line: int) -> str | None:
    extra = {}
    if given is not None and given[index]:
        try:
            extra = loads(given[index])
        except ValueError:
            extra = None
        if not isinstance(extra, dict):
            raise InputError(f"expected a JSON object in 'extra', got {given[index]!r:.60} "
                             f"(line {line})", path=where, row=line, field="extra")
    extra.update({name: record[name] for name in unknown if name in record})
    return json_text(extra) if extra else None


def _add(a, b):
    return None if a is None or b is None else a + b


def _sub(a, b):
    return None if a is None or b is None else a - b


def _at_line(exc: InputError, lines: list[int]) -> InputError:
    """Re-point a conform() error from a data row to the file line it came from."""
    if exc.row is None or not 1 <= exc.row <= len(lines):
        return exc
    line = lines[exc.row - 1]
    return InputError(f"{exc.detail} (line {line})", path=exc.path, row=line, field=exc.field)

