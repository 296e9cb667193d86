"""A vLLM server log with ``--enable-logging-iteration-details`` into ``steps`` and one run.

The line formats (engine-core variant of v0.15-v0.25, frontend variant of v0.34) and their
sources are in :mod:`._vllm_log_lines`. Other lines are skipped; a line whose message starts
like an iteration line (``Iteration(`` or ``Engine NNN: Iteration(``) but breaks the format is an
:class:`~servetune.InputError` naming the line and the field.

``steps`` mapping (one row per iteration line; ``(dummy)`` iterations of idle DP ranks, which
run no request, are skipped and counted in the run's ``extra``):

====================  =======================================================================
servetune             vLLM
====================  =======================================================================
step_index            ``Iteration(N)`` (the engine's own counter)
dp_rank               ``Engine NNN`` (frontend), ``EngineCore_DPk`` process name, else 0
duration_ms           ``iteration elapsed time`` (the engine's wall time around the model)
num_prefill_seqs,     context requests, context tokens (requests with no output token yet,
prefill_tokens        chunked-prefill continuations included)
num_decode_seqs,      generation requests, generation tokens (more tokens than requests with
decode_tokens         speculative decoding)
num_seqs              context + generation requests
start_s               derived: steps placed back to back, each ending inside the second of its
                      log timestamp (the log has whole seconds and no year), from the first
                      step's start; without timestamps, back to back
kv_tokens_sum         derived, frontend variant only: KV cache usage x the ``KV cache size: N
                      tokens`` start-up line (blocks in use after the step, so block-rounded
                      and approximate; ``extra.kv_tokens_sum_source`` says so); else null
kv_tokens_max,        null (the log does not give context lengths)
prefill_attn_work
block_size            the run's ``block_size`` if the start-up lines give it, else null
====================  =======================================================================

The ``runs`` row: engine ``vllm``; ``engine_version`` from ``Initializing a V1 LLM engine
(vX)``; ``model`` from its ``model=`` (or the ``non-default args`` ``model``/``model_tag``; a
local path keeps its last component); ``config`` = the vLLM knobs found in the start-up lines
(``non-default args`` over the engine config line; ``max_num_batched_tokens`` from the
chunked-prefill line, which holds the resolved value), flattened into the knob columns by the
engine spec; ``num_blocks`` = KV cache tokens / block size when both are logged; unknown -> null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

from servetune import InputError
from servetune.data._schemas import conform
from servetune.data.adapters._base import Adapter
from servetune.data.adapters._common import check_overrides, json_text
from servetune.data.adapters._vllm_log_lines import (
    MalformedIteration,
    parse_config_line,
    parse_iteration,
    parse_kv_tokens,
    split_line,
)
from servetune.data.engines import VLLM

__all__ = ["VllmIterationLogAdapter"]

_SNIFF = (b"context requests, ", b"Initializing a V1 LLM engine", b"non-default args: {")
_ROLLOVER = timedelta(days=1)  # a timestamp this much earlier than the last: a new year


class VllmIterationLogAdapter(Adapter):
    """vLLM server log lines (``--enable-logging-iteration-details``) into steps and a run.

    Args:
        overrides: identity values that replace what the log says (``hardware``, ``model``,
            ``engine_version``, ``run_id``, ``source``).

    Example:
        >>> VllmIterationLogAdapter({"hardware": "H200"}).name
        'vllm-iteration-log'
    """

    name = "vllm-iteration-log"
    description = "vLLM server log with --enable-logging-iteration-details (per-step rows)"

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        self.overrides = dict(overrides or {})

    def sniff(self, path: Path, head: bytes) -> bool:
        return not head.lstrip().startswith((b"{", b"[")) and any(s in head for s in _SNIFF)

    def read(self, path: Path, *, sha256: str) -> dict:
        overrides = check_overrides(self.overrides)
        where = str(path)
        parsed = _read_lines(path)
        if not parsed["steps"]:
            raise InputError("found no per-iteration lines (`Iteration(N): ... context requests, "
                             "...`); start the vLLM server with "
                             "--enable-logging-iteration-details", path=where)
        config = VLLM.canonical(parsed["settings"], strict=False)
        knobs = {k: v for k, v in config.items()
                 if k in VLLM.knob_names and isinstance(v, (int, float, str, bool, type(None)))}
        model = overrides.get("model") or _model_name(parsed["settings"])
        if not model:
            raise InputError("the log names no model (no `Initializing a V1 LLM engine` or "
                             "`non-default args` line); name it with --set model=NAME",
                             path=where, field="model")
        run_id = overrides.get("run_id", f"vllm-log-{sha256[:16]}")
        identity = {"run_id": run_id, "engine": overrides.get("engine", VLLM.name),
                    "model": model, "hardware": overrides.get("hardware", "unknown"),
                    "engine_version": overrides.get("engine_version", parsed["version"]),
                    "source": overrides.get("source", "measured")}
        block_size = _int_or_none(knobs.get("block_size"))
        steps = _step_rows(parsed["steps"], identity, block_size, parsed["kv_tokens"])
        columns = VLLM.runs_columns(knobs)
        if parsed["kv_tokens"] and block_size:
            columns.setdefault("num_blocks", parsed["kv_tokens"] // block_size)
        run = {**identity, **columns,
               "config": json_text(knobs),
               "workload": json_text({"generator": "vllm server log"}),
               "duration_s": _duration_s(steps),
               "provenance": json_text({"adapter": self.name,
                                        "start_s": "derived from whole-second log times"}),
               "source_file": where, "source_sha256": sha256,
               "extra": json_text({"dummy_iterations": parsed["dummies"],
                                   "kv_cache_tokens": parsed["kv_tokens"],
                                   "settings": {k: v for k, v in parsed["settings"].items()
                                                if isinstance(v, (int, float, str, bool))}})}
        return {"steps": conform(_columns(steps), "steps", path=where),
                "runs": conform(_columns([run]), "runs", path=where)}


def _read_lines(path: Path) -> dict:
    """Iterations (with line number, rank and time), start-up settings, version, KV tokens."""
    where = str(path)
    settings: dict = {}
    chunked: dict = {}
    out: dict = {"steps": [], "version": None, "kv_tokens": None, "dummies": 0}
    last: dict[int, tuple[int, int]] = {}  # dp rank -> (iteration index, line)
    try:
        handle = open(path, "rb")  # decoded line by line, so an error names its line
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", path=where) from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = split_line(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InputError(f"expected UTF-8 text, found byte {raw[exc.start]:#04x} "
                                 f"(line {number})", path=where, row=number) from None
            try:
                iteration = parse_iteration(line.message)
            except MalformedIteration as exc:
                raise InputError(f"malformed iteration line {number}: {exc}", path=where,
                                 row=number, field=exc.field) from None
            if iteration is None:
                _startup(line.message, settings, chunked, out)
                continue
            if iteration.dummy:
                out["dummies"] += 1
                continue
            rank = iteration.engine if iteration.engine is not None else _rank(line.process)
            previous = last.get(rank)
            if previous is not None and iteration.index <= previous[0]:
                raise InputError(
                    f"iteration {iteration.index} on line {number} does not follow iteration "
                    f"{previous[0]} (line {previous[1]}) of the same engine: the log holds "
                    "more than one server run; split it into one file per run",
                    path=where, row=number, field="iteration")
            last[rank] = (iteration.index, number)
            out["steps"].append((number, rank, line.time, iteration))
    out["settings"] = {**settings, **chunked}
    return out


def _startup(message: str, settings: dict, chunked: dict, out: dict) -> None:
    parsed = parse_config_line(message)
    if parsed is not None:
        values, version = parsed
        if version is not None:  # the engine config line: fill what non-default args lack
            out["version"] = out["version"] or version
            values = {("max_model_len" if k == "max_seq_len" else k): v
                      for k, v in values.items()}
            for key, value in values.items():
                settings.setdefault(key, value)
        elif set(values) == {"max_num_batched_tokens"}:
            chunked.update(values)  # the value the engine resolved
        else:
            settings.update(values)
        return
    tokens = parse_kv_tokens(message)
    if tokens is not None and out["kv_tokens"] is None:
        out["kv_tokens"] = tokens


def _step_rows(items: list, identity: dict, block_size: int | None,
               kv_tokens: int | None) -> list[dict]:
    ends: dict[int, float] = {}
    rows = []
    origin = next((t for _, _, t, _ in items if t is not None), None)
    offset = timedelta(0)
    previous_time: datetime | None = None
    for number, rank, time, it in items:
        duration_s = it.elapsed_ms / 1000.0
        if time is not None and previous_time is not None and time + offset < previous_time - \
                _ROLLOVER:
            offset += timedelta(days=366)
        stamp = None if time is None else (time + offset - origin).total_seconds()
        if time is not None:
            previous_time = time + offset
        previous_end = ends.get(rank, stamp if stamp is not None else 0.0)
        end = previous_end + duration_s
        if stamp is not None:
            end = min(max(end, stamp), stamp + 1.0)
        ends[rank] = end
        extra = {"log_line": number}
        kv_sum = None
        if it.kv_usage_pct is not None:
            extra["kv_cache_usage_pct"] = it.kv_usage_pct
            if kv_tokens:
                kv_sum = int(round(it.kv_usage_pct / 100.0 * kv_tokens))
                extra["kv_tokens_sum_source"] = "kv cache usage x kv cache size (approximate)"
        if it.encoder_inputs is not None:
            extra["encoder_inputs"] = it.encoder_inputs
            extra["encoder_output_tokens"] = it.encoder_tokens
        rows.append({**identity, "dp_rank": rank, "step_index": it.index,
                     "start_s": end - duration_s, "duration_ms": it.elapsed_ms,
                     "num_seqs": it.ctx_requests + it.gen_requests,
                     "num_prefill_seqs": it.ctx_requests, "num_decode_seqs": it.gen_requests,
                     "prefill_tokens": it.ctx_tokens, "decode_tokens": it.gen_tokens,
                     "kv_tokens_sum": kv_sum, "block_size": block_size,
                     "extra": json_text(extra)})
    first = min(row["start_s"] for row in rows)
    for row in rows:
        row["start_s"] = max(row["start_s"] - first, 0.0)
    return rows


def _columns(rows: list[dict]) -> dict[str, list]:
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: [row.get(name) for row in rows] for name in names}


def _duration_s(steps: list[dict]) -> float:
    return max(row["start_s"] + row["duration_ms"] / 1000.0 for row in steps)


def _rank(process: str | None) -> int:
    """``EngineCore_DP3`` -> 3; anything else -> 0."""
    if process and "_DP" in process:
        tail = process.rsplit("_DP", 1)[1]
        if tail.isdigit():
            return int(tail)
    return 0


def _int_or_none(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if math.isfinite(value) else None


def _model_name(settings: dict) -> str | None:
    for key in ("model", "model_tag", "served_model_name"):
        value = settings.get(key)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, str) and value.strip() and value != "None":
            value = value.strip().rstrip("/")
            if value.startswith((".", "/", "~")) or value.count("/") > 1:
                return value.rsplit("/", 1)[-1]
            return value
    return None
