"""The grammar of vLLM server log lines: the logging prefix, iteration lines, start-up lines.

Sources (vllm-project/vllm release wheels; ``vllm/_version.py`` gives the commit):

* prefix -- ``vllm/logger.py:22`` at v0.25.0 (commit dd10e03f9): ``"%(levelname)s %(asctime)s
  [%(fileinfo)s:%(lineno)d] %(message)s"`` with ``datefmt "%m-%d %H:%M:%S"`` (no year, whole
  seconds), after ``VLLM_LOGGING_PREFIX``; sub-processes write ``"(EngineCore_DP0 pid=N) "``
  first (``vllm/utils/system_utils.py:209``). v0.34.0 (commit 62d4bc3c7) puts
  ``"(%(vllm_process_name)s pid=%(process)d) "`` into the format itself (``logger.py:28``).
  Colour codes (``VLLM_LOGGING_COLOR``) are stripped.
* engine-core iteration line -- ``vllm/v1/engine/core.py:452`` at v0.25.0 (``:348`` at v0.15.0,
  commit f17644344, the same text without ``" (dummy)"``)::

      Iteration(7): 1 context requests, 512 context tokens, 3 generation requests, 3 generation
      tokens, iteration elapsed time: 18.42 ms[ (dummy)]

* frontend iteration line -- ``vllm/v1/metrics/loggers.py:199`` at v0.34.0::

      Engine 000: Iteration(7): ... iteration elapsed time: 18.42 ms[ (dummy)], GPU KV cache
      usage: 12.5%[, encoder inputs: N, encoder output embeddings: M]

* start-up lines -- ``"non-default args: %s"`` (a Python dict repr;
  ``vllm/entrypoints/serve/utils/api_utils.py:273`` at v0.25.0), ``"Initializing a V1 LLM
  engine (v%s) with config: %s"`` (``VllmConfig.__str__``, ``key=value, ...``;
  ``v1/engine/core.py:115``), ``"Chunked prefill is enabled with max_num_batched_tokens=%d."``
  (``config/scheduler.py:253``) and ``"[GPU ]KV cache size: %s tokens"``
  (``v1/core/kv_cache_utils.py:2146``; ``:1169`` at v0.34.0).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from datetime import datetime

__all__ = ["LogLine", "Iteration", "MalformedIteration", "split_line", "parse_iteration",
           "parse_config_line", "parse_kv_tokens"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PREFIX = re.compile(
    r"(?:\((?P<proc>[^()\s]+) pid=\d+\)\s+)?"
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(?P<month>\d\d)-(?P<day>\d\d) (?P<clock>\d\d:\d\d:\d\d) "
    r"\[(?P<file>[^\]\s]+):(?P<lineno>\d+)\] ")
_STARTS = re.compile(r"(?:Engine \d+: )?Iteration\(")
_INT = r"(\d{1,18})"  # fits int64; longer digit runs fail the piece that holds them
_MS = r"(\d{1,15}(?:\.\d{1,15})?)"
# (field, pattern, what the text should look like): matched in order, so an error names the field
_PIECES = (
    ("engine", r"(?:Engine (\d+): )?", "Engine NNN: "),
    ("iteration", r"Iteration\(" + _INT + r"\): ", "Iteration(N): "),
    ("context_requests", _INT + r" context requests, ", "N context requests, "),
    ("context_tokens", _INT + r" context tokens, ", "N context tokens, "),
    ("generation_requests", _INT + r" generation requests, ", "N generation requests, "),
    ("generation_tokens", _INT + r" generation tokens, ", "N generation tokens, "),
    ("elapsed_ms", r"iteration elapsed time: " + _MS + r" ms", "iteration elapsed time: X.XX ms"),
    ("dummy", r"( \(dummy\))?", " (dummy)"),
)
_FRONTEND_TAIL = re.compile(
    r", (\S+) KV cache usage: (\d{1,15}(?:\.\d{1,15})?)%"
    r"(?:, encoder inputs: (\d{1,18}), encoder output embeddings: (\d{1,18}))?$")
_ENGINE_CONFIG = re.compile(r"Initializing a V1 LLM engine \(v(?P<version>[^)\s]+)\) with "
                            r"config: (?P<config>.*)$")
_NON_DEFAULT = re.compile(r"non-default args: (?P<args>\{.*\})\s*$")
_CHUNKED = re.compile(r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)\.")
_KV_SIZE = re.compile(r"KV cache size: ([\d,]+) tokens")


@dataclass(frozen=True)
class LogLine:
    """One log line: its message and what the logging prefix says (``None`` if absent)."""

    message: str
    process: str | None = None
    time: datetime | None = None  # month, day and clock; the year is not logged (2000 here)


@dataclass(frozen=True)
class Iteration:
    """What one iteration line says."""

    index: int
    ctx_requests: int
    ctx_tokens: int
    gen_requests: int
    gen_tokens: int
    elapsed_ms: float
    dummy: bool
    engine: int | None = None  # the frontend variant's ``Engine NNN``
    kv_usage_pct: float | None = None  # frontend only
    kv_device: str | None = None
    encoder_inputs: int | None = None
    encoder_tokens: int | None = None


class MalformedIteration(ValueError):
    """An iteration line that does not follow the format: ``field`` and ``expected`` say where."""

    def __init__(self, field: str, expected: str, found: str) -> None:
        super().__init__(f"expected {expected!r} at {found[:40]!r}")
        self.field, self.expected, self.found = field, expected, found


def split_line(text: str) -> LogLine:
    """``text`` without colour codes, split into the vLLM logging prefix and the message."""
    text = _ANSI.sub("", text.rstrip("\r\n"))
    match = _PREFIX.search(text)
    if match is None:
        return LogLine(text.strip())
    try:
        time = datetime.strptime(f"2000-{match['month']}-{match['day']} {match['clock']}",
                                 "%Y-%m-%d %H:%M:%S")
    except ValueError:
        time = None
    return LogLine(text[match.end():], match["proc"], time)


def parse_iteration(message: str) -> Iteration | None:
    """The iteration a message reports; ``None`` for other messages; MalformedIteration if the
    message starts like an iteration line but breaks the format."""
    if not _STARTS.match(message):
        return None
    values = []
    pos = 0
    for field, pattern, expected in _PIECES:
        match = re.compile(pattern).match(message, pos)
        if match is None:
            raise MalformedIteration(field, expected, message[pos:])
        values.append(match.group(1))
        pos = match.end()
    rest = message[pos:]
    frontend = _FRONTEND_TAIL.match(rest) if rest else None
    if rest and frontend is None:
        raise MalformedIteration("kv_cache_usage", ", GPU KV cache usage: X.X%", rest)
    engine, index, cr, ct, gr, gt, ms, dummy = values
    extra = {}
    if frontend is not None:
        device, usage, enc, emb = frontend.groups()
        extra = {"kv_device": device, "kv_usage_pct": float(usage),
                 "encoder_inputs": None if enc is None else int(enc),
                 "encoder_tokens": None if emb is None else int(emb)}
    return Iteration(int(index), int(cr), int(ct), int(gr), int(gt), float(ms), dummy is not None,
                     None if engine is None else int(engine), **extra)


def parse_config_line(message: str) -> tuple[dict, str | None] | None:
    """``(settings, vllm version)`` from a start-up line, or ``None`` for other messages.

    Settings use vLLM's own names (``max_seq_len``, ``model_tag``, ...); values that are not
    Python literals stay text.
    """
    match = _ENGINE_CONFIG.search(message)
    if match is not None:
        return _key_values(match["config"]), match["version"]
    match = _NON_DEFAULT.search(message)
    if match is not None:
        try:
            args = ast.literal_eval(match["args"])
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            args = _key_values(match["args"].strip("{}").replace("': ", "'="))
            args = {k.strip("'\""): v for k, v in args.items()}
        return (args if isinstance(args, dict) else {}), None
    match = _CHUNKED.search(message)
    if match is not None:
        return {"max_num_batched_tokens": int(match[1])}, None
    return None


def parse_kv_tokens(message: str) -> int | None:
    """The KV cache size in tokens from a ``KV cache size: 1,234 tokens`` line, else ``None``."""
    match = _KV_SIZE.search(message)
    return int(match[1].replace(",", "")) if match else None


def _key_values(text: str) -> dict:
    """``a=1, b='x', c={...}`` at bracket depth 0 into a dict of literal values."""
    out: dict = {}
    depth, quote, start = 0, "", 0
    parts = []
    for i, char in enumerate(text):
        if quote:
            if char == quote and text[i - 1] != "\\":
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    for part in parts:
        key, sep, value = part.strip().partition("=")
        if sep and key.isidentifier():
            out[key] = _literal(value.strip())
    return out


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
