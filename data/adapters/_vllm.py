"""``vllm bench serve --save-result`` JSON, with or without ``--save-detailed``.

One result object becomes one ``runs`` row; a ``--save-detailed`` result also becomes one
``requests`` row per request. A file written with ``--append-result`` (several objects, one per
line) becomes one run per object.

``runs`` mapping (every scalar field of the file is also kept verbatim in ``extra``; the setup
fields -- ``backend``, ``label``, ``tokenizer_id``, ``request_rate``, ``burstiness``,
``max_concurrency``, ``ramp_up_*`` and any ``--metadata KEY=VALUE`` -- in ``config``):

===============================  ==========================================================
servetune                        vLLM result field
===============================  ==========================================================
run_id                           ``vllm-`` + first 16 hex digits of the file's SHA-256
                                 (``-N`` appended for the N-th object of an appended file)
engine / model / hardware        ``vllm`` / ``model_id`` / ``unknown`` unless overridden
                                 (``servetune ingest --set hardware=H200``); a local model
                                 path keeps only its last component
engine_version                   ``--set engine_version=`` or a ``vllm_version`` metadata key
num_requests, duration_s         ``num_prompts``, ``duration``
completed, failed                ``completed``, ``failed`` (older files: from ``errors`` or
                                 ``num_prompts - completed``)
request_throughput_rps, ...      ``request_throughput``, ``output_throughput``,
                                 ``total_token_throughput``, ``request_goodput``
{ttft,tpot,itl,e2e}_{mean,p50,    ``mean_X_ms``, ``median_X_ms`` (or ``p50_X_ms``),
p90,p99}_ms                      ``p90_X_ms``, ``p99_X_ms`` with X in ttft, tpot, itl, e2el
started_at                       ``date`` (``YYYYmmdd-HHMMSS``, the client's local time,
                                 stored as if UTC)
===============================  ==========================================================

``requests`` mapping (lists indexed by request; times in the file are seconds):
``request_id`` = the index; ``input_tokens``/``output_tokens`` = ``input_lens``/``output_lens``;
``arrival_s`` = ``start_times`` minus the earliest (null if the file has no ``start_times``);
``ttft_ms`` = ``ttfts`` x 1000; ``itl_ms`` = ``itls`` x 1000; ``e2e_ms`` = ``latencies`` x 1000,
or TTFT plus the ITLs in files without ``latencies``; ``tpot_ms`` = (e2e - ttft) / (output - 1)
for outputs of more than one token, as vLLM defines it; ``status`` = ``error`` with the message
in ``error`` when ``errors`` holds a non-empty string, else ``ok``. Failed requests keep their
lengths but no latencies. ``generated_texts`` are not stored.

The file is read twice with bounded memory: a first pass validates everything and keeps the
small per-request lists as arrays, a second pass streams ``itls`` block by block into the store.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from servetune import InputError
from servetune.data._schemas import conform
from servetune.data._store import TableStream
from servetune.data.adapters._base import Adapter
from servetune.data.adapters._common import check_overrides, json_text, numbers
from servetune.data.adapters._jsonscan import JsonScanner

__all__ = ["VllmBenchAdapter"]

log = logging.getLogger(__name__)

_PER_REQUEST = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times",
                "queue_times", "generated_texts", "errors")
_METRIC = re.compile(r"^(mean|median|std|p\d+(?:\.\d+)?)_[a-z0-9_]+_ms$")
_NUMERIC = {"duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
            "request_throughput", "request_goodput", "output_throughput",
            "total_token_throughput", "num_prompts", "burstiness", "max_concurrency",
            "max_output_tokens_per_s", "max_concurrent_requests", "rtfx", "ramp_up_start_rps",
            "ramp_up_end_rps"}
# measured outcomes; every other scalar field (backend, request_rate, metadata, ...) is setup
_MEASURED = _NUMERIC - {"num_prompts", "burstiness", "max_concurrency", "ramp_up_start_rps",
                        "ramp_up_end_rps"} | {"has_generated_texts"}
_METRIC_NAMES = {"ttft": "ttft", "tpot": "tpot", "itl": "itl", "e2el": "e2e"}
_ROWS_PER_CHUNK = 65536  # requests per table handed to the store (one Parquet row group)
_ITLS_PER_CHUNK = 4 << 20  # ... or fewer, so that a chunk's ITLs stay near 32 MiB


@dataclass
class _Result:
    """What the first pass keeps of one result object."""

    index: int
    summary: dict = field(default_factory=dict)
    lists: dict = field(default_factory=dict)  # per-request arrays (itls: only its length)
    first_start: float = 0.0  # the earliest start_times entry: arrivals count from it

    @property
    def detailed(self) -> bool:
        return "input_lens" in self.lists and "output_lens" in self.lists

    @property
    def num_requests(self) -> int:
        return len(self.lists["input_lens"]) if self.detailed else 0


class VllmBenchAdapter(Adapter):
    """``vllm bench serve --save-result [--save-detailed]`` JSON into runs and requests.

    Args:
        overrides: identity values that replace what the file says (``hardware``, ``model``,
            ``engine``, ``engine_version``, ``run_id``, ``source``).
        rows_per_chunk: at most this many requests per table streamed to the store.
        itls_per_chunk: a table is also cut once it holds this many ITLs (bounds memory).

    Example:
        >>> VllmBenchAdapter({"hardware": "H200"}).name
        'vllm-bench'
    """

    name = "vllm-bench"
    description = "vllm bench serve --save-result JSON (per-request rows with --save-detailed)"

    def __init__(self, overrides: Mapping[str, str] | None = None, *,
                 rows_per_chunk: int = _ROWS_PER_CHUNK, itls_per_chunk: int = _ITLS_PER_CHUNK
                 ) -> None:
        self.overrides = dict(overrides or {})
        self.rows_per_chunk = rows_per_chunk
        self.itls_per_chunk = itls_per_chunk

    def sniff(self, path: Path, head: bytes) -> bool:
        text = head.decode("utf-8", errors="replace").lstrip()
        return (text.startswith("{") and '"model_id"' in text
                and any(f'"{key}"' in text for key in ("request_throughput", "duration")))

    def read(self, path: Path, *, sha256: str) -> dict:
        overrides = check_overrides(self.overrides)
        results = self._first_pass(path)
        if not results:
            raise InputError("expected a vLLM benchmark result object, found an empty file",
                             path=str(path))
        multiple = len(results) > 1
        run_ids = [self._run_id(sha256, r.index, multiple, overrides) for r in results]
        runs = [self._run_row(path, sha256, r, run_id, overrides)
                for r, run_id in zip(results, run_ids)]
        columns = {name: [row.get(name) for row in runs] for name in runs[0]}
        batch: dict = {"runs": conform(columns, "runs", path=str(path))}
        detailed = [(r, row) for r, row in zip(results, runs) if r.detailed]
        if detailed:
            batch["requests"] = TableStream(self._request_chunks(path, detailed),
                                            num_rows=sum(r.num_requests for r, _ in detailed))
        return batch

    # ------------------------------------------------------------------ first pass
    def _first_pass(self, path: Path) -> list[_Result]:
        results = []
        with _open_text(path) as handle, _progress(path, "checking") as bar, _utf8(path):
            scanner = JsonScanner(handle, str(path), on_read=bar.update)
            while scanner.begin_document():
                result = _Result(index=len(results))
                for key in scanner.iter_keys():
                    if key == "itls":
                        result.lists["itls"] = sum(
                            len(block) for block in scanner.iter_number_lists(parse=False))
                    elif key == "generated_texts":
                        scanner.skip_value()
                        result.summary["has_generated_texts"] = True
                    elif key in _PER_REQUEST:
                        result.lists[key] = scanner.read_value()
                    else:
                        result.summary[key] = scanner.read_value()
                self._check(path, result)
                results.append(result)
        return results

    def _check(self, path: Path, result: _Result) -> None:
        where = str(path)
        summary = result.summary
        for key in ("duration", "completed"):
            if key not in summary:
                raise InputError(f"missing the '{key}' field of a vLLM benchmark result"
                                 + _nth(result), path=where, field=key)
        for key, value in summary.items():
            if (key in _NUMERIC or _METRIC.match(key)) and value is not None and (
                    type(value) not in (int, float)):
                raise InputError(f"expected a number, got {value!r}" + _nth(result), path=where,
                                 field=key)
        rate = summary.get("request_rate")
        if rate is not None and type(rate) not in (int, float) and rate not in ("inf", "Infinity"):
            raise InputError(f"expected a number or \"inf\", got {rate!r}" + _nth(result),
                             path=where, field="request_rate")
        lists = result.lists
        if not result.detailed:
            return
        n = len(lists["input_lens"]) if isinstance(lists["input_lens"], list) else -1
        specs = {"input_lens": (True, 0), "output_lens": (True, 0), "ttfts": (False, 0),
                 "latencies": (False, 0), "start_times": (False, None),
                 "queue_times": (False, None)}
        for key, (integer, minimum) in specs.items():
            if key in lists:
                lists[key] = numbers(lists[key], path=where, field=key, integer=integer,
                                     minimum=minimum, what="request")
        for key, value in lists.items():
            size = value if key == "itls" else len(value)
            if size != n:
                raise InputError(f"has {size} entries but input_lens has {n}; the per-request "
                                 "lists must have one entry per request" + _nth(result),
                                 path=where, field=key)
        if "ttfts" in lists and "latencies" in lists:
            late = lists["ttfts"] > lists["latencies"] * (1 + 1e-9) + 1e-9
            if late.any():
                row = int(np.argmax(late)) + 1
                raise InputError(f"expected a TTFT within the request's latency, got "
                                 f"{lists['ttfts'][row - 1]} s > {lists['latencies'][row - 1]} s"
                                 + _nth(result), path=where, row=row, field="ttfts")
        if "start_times" in lists and n:
            result.first_start = float(lists["start_times"].min())
        errors = lists.get("errors")
        if errors is not None:
            bad = next((i for i, e in enumerate(errors, 1)
                        if e is not None and not isinstance(e, str)), None)
            if bad is not None:
                raise InputError(f"expected a string or null as request {bad}, got "
                                 f"{errors[bad - 1]!r}", path=where, row=bad, field="errors")

    # ------------------------------------------------------------------ runs row
    def _run_id(self, sha256: str, index: int, multiple: bool, overrides: dict) -> str:
        base = overrides.get("run_id", f"vllm-{sha256[:16]}")
        return f"{base}-{index}" if multiple else base

    def _run_row(self, path: Path, sha256: str, result: _Result, run_id: str,
                 overrides: dict) -> dict:
        s = result.summary
        model = overrides.get("model") or _model_name(s.get("model_id"))
        if not model:
            raise InputError("missing 'model_id'; name the model with --set model=NAME",
                             path=str(path), field="model_id")
        num_requests = s.get("num_prompts", result.num_requests or None)
        failed = s.get("failed")
        if failed is None and "errors" in result.lists:
            failed = sum(1 for e in result.lists["errors"] if e)
        if failed is None and num_requests is not None:
            failed = max(int(num_requests) - int(s["completed"]), 0)
        attempted = (s["completed"] + failed) if failed is not None else None
        setup = {k: v for k, v in s.items()
                 if k not in _MEASURED and not _METRIC.match(k) and not isinstance(v, (list, dict))}
        workload = {"generator": "vllm bench serve",
                    **{k: s[k] for k in ("num_prompts", "request_rate", "burstiness",
                                         "max_concurrency", "ramp_up_strategy",
                                         "ramp_up_start_rps", "ramp_up_end_rps") if k in s}}
        row = {
            "run_id": run_id,
            "engine": overrides.get("engine", "vllm"),
            "model": model,
            "hardware": overrides.get("hardware", "unknown"),
            "engine_version": overrides.get("engine_version", s.get("vllm_version")),
            "source": overrides.get("source", "measured"),
            "config": json_text(setup),
            "workload": json_text(workload),
            "num_requests": num_requests,
            "duration_s": s["duration"],
            "completed": s["completed"],
            "failed": failed,
            "success_rate": s["completed"] / attempted if attempted else None,
            "request_throughput_rps": s.get("request_throughput"),
            "output_throughput_tok_s": s.get("output_throughput"),
            "total_token_throughput_tok_s": s.get("total_token_throughput"),
            "goodput_rps": s.get("request_goodput"),
            "started_at": _started_at(s.get("date")),
            "provenance": json_text({"adapter": self.name, "result_index": result.index,
                                     "started_at": "client local time, stored as UTC"}),
            "source_file": str(path),
            "source_sha256": sha256,
            "extra": json_text({k: v for k, v in s.items() if not isinstance(v, (list, dict))}),
        }
        for theirs, ours in _METRIC_NAMES.items():
            row[f"{ours}_mean_ms"] = s.get(f"mean_{theirs}_ms")
            row[f"{ours}_p50_ms"] = s.get(f"median_{theirs}_ms", s.get(f"p50_{theirs}_ms"))
            row[f"{ours}_p90_ms"] = s.get(f"p90_{theirs}_ms")
            row[f"{ours}_p99_ms"] = s.get(f"p99_{theirs}_ms")
        return row

    # ------------------------------------------------------------------ second pass
    def _request_chunks(self, path: Path, detailed: list[tuple[_Result, dict]]
                        ) -> Iterator[pa.Table]:
        by_index = {r.index: (r, row) for r, row in detailed}
        with _open_text(path) as handle, _progress(path, "reading") as bar, _utf8(path):
            scanner = JsonScanner(handle, str(path), on_read=bar.update)
            index = 0
            while scanner.begin_document():
                result, run = by_index.get(index, (None, None))
                done = 0
                for key in scanner.iter_keys():
                    if result is None or key != "itls":
                        scanner.skip_value()
                        continue
                    lengths = np.zeros(0, np.int64)  # ITLs read but not yet handed on
                    values = np.zeros(0, np.float64)
                    for block in scanner.iter_number_lists():
                        lengths = np.concatenate([lengths, np.fromiter(
                            map(len, block), np.int64, count=len(block))])
                        values = np.concatenate([values, np.fromiter(
                            itertools.chain.from_iterable(block), np.float64,
                            count=sum(map(len, block)))])
                        del block
                        while (len(lengths) >= self.rows_per_chunk
                               or (len(values) >= self.itls_per_chunk and len(lengths))):
                            rows = min(len(lengths), self.rows_per_chunk)
                            cut = int(lengths[:rows].sum())
                            yield _requests_table(result, run, done, lengths[:rows],
                                                  values[:cut])
                            done += rows
                            lengths, values = lengths[rows:], values[cut:]
                    if len(lengths):
                        yield _requests_table(result, run, done, lengths, values)
                if result is not None and "itls" not in result.lists:
                    for start in range(0, result.num_requests, self.rows_per_chunk):
                        stop = min(start + self.rows_per_chunk, result.num_requests)
                        yield _requests_table(result, run, start, None, None,
                                              count=stop - start)
                index += 1


def _requests_table(result: _Result, run: dict, start: int, itl_lengths: np.ndarray | None,
                    itl_values: np.ndarray | None, *, count: int | None = None) -> pa.Table:
    """Requests from ``start`` on of one result as a table in the requests schema.

    ``itl_lengths``/``itl_values`` are the requests' ITLs (seconds), flattened; without them
    ``count`` requests get no ITLs.
    """
    lists = result.lists
    n = len(itl_lengths) if itl_lengths is not None else count
    stop = start + n
    window = slice(start, stop)
    errors = lists.get("errors")
    if errors is not None:
        error_text = [e if e else None for e in errors[window]]
        failed = np.fromiter((bool(e) for e in error_text), dtype=bool, count=n)
    else:
        error_text = [None] * n
        failed = np.zeros(n, dtype=bool)
    if itl_lengths is not None:
        lengths = itl_lengths
        flat = itl_values * 1000.0
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        itl_ms = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        itl_sum = np.bincount(np.repeat(np.arange(n), lengths), weights=flat, minlength=n)
    else:
        itl_ms = pa.nulls(n, pa.list_(pa.float64()))
        itl_sum = None
    ttft = lists["ttfts"][window] * 1000.0 if "ttfts" in lists else np.full(n, np.nan)
    if "latencies" in lists:
        e2e = lists["latencies"][window] * 1000.0
    elif itl_sum is not None:
        e2e = ttft + itl_sum
    else:
        e2e = np.full(n, np.nan)
    output = lists["output_lens"][window]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(output > 1, (e2e - ttft) / (output - 1), np.nan)
    arrival = lists["start_times"][window] - result.first_start if "start_times" in lists else None

    def latency(values: np.ndarray) -> pa.Array:
        return pa.array(values, mask=failed | np.isnan(values), type=pa.float64())

    columns = {
        **{name: pa.array([run[name]] * n, pa.string())
           for name in ("run_id", "engine", "model", "hardware", "engine_version", "source")},
        "request_id": pa.array(np.arange(start, stop).astype(str), pa.string()),
        "arrival_s": pa.nulls(n, pa.float64()) if arrival is None else pa.array(arrival),
        "input_tokens": pa.array(lists["input_lens"][window]),
        "output_tokens": pa.array(output),
        "ttft_ms": latency(ttft),
        "tpot_ms": latency(tpot),
        "e2e_ms": latency(e2e),
        "itl_ms": itl_ms,
        "status": pa.array(np.where(failed, "error", "ok"), pa.string()),
        "error": pa.array(error_text, pa.string()),
    }
    return pa.table(columns)


def _nth(result: _Result) -> str:
    return f" (in result object {result.index + 1})" if result.index else ""


def _model_name(model_id) -> str | None:
    """``meta-llama/Llama-3.1-8B`` stays; a local path like ``/models/llama/8b`` becomes ``8b``."""
    if not isinstance(model_id, str) or not model_id.strip():
        return None
    model_id = model_id.strip().rstrip("/")
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        return model_id.rsplit("/", 1)[-1]
    return model_id


def _started_at(date) -> datetime | None:
    if not isinstance(date, str):
        return None
    try:
        return datetime.strptime(date, "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        log.warning("cannot read the result date %r; leaving started_at empty", date)
        return None


@contextlib.contextmanager
def _utf8(path: Path) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError as exc:
        raise InputError(f"expected UTF-8 JSON text, found byte {exc.object[exc.start]:#04x}",
                         path=str(path)) from None


def _open_text(path: Path):
    try:
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", path=str(path)) from None


def _progress(path: Path, verb: str) -> tqdm:
    return tqdm(total=path.stat().st_size, unit="B", unit_scale=True, delay=1.0,
                desc=f"{verb} {path.name}", disable=None, leave=False)
