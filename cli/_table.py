"""Aligned plain-text tables for the terminal (the Markdown tables stay in the study files).

Numeric columns are right-aligned, text columns left-aligned; metric headers are shortened
to a name and a unit (``goodput_rps`` -> ``goodput req/s``) and a header longer than its
column is wrapped over several lines at ``_`` or spaces, so knob names stay exact.

Example:
    >>> print(format_table(["name", short_header("goodput_rps")], [["a", "1.5"], ["bb", "12"]]))
    name  goodput req/s
    ----  -------------
    a               1.5
    bb               12
"""

from __future__ import annotations

import re

__all__ = ["format_table", "short_header", "candidates_text"]

# metric keys whose generic shortening would not read well
_HEADERS = {
    "goodput_rps": "goodput req/s",
    "output_throughput_tok_s": "output tok/s",
    "request_throughput_rps": "req/s",
    "ttft_p90_ms": "TTFT p90 ms",
    "tpot_p90_ms": "TPOT p90 ms",
    "e2e_p90_ms": "E2E p90 ms",
    "success_rate": "success",
    "no modelled effect": "no modelled effect",
}
_UNITS = (("_tok_s", " tok/s"), ("_rps", " req/s"), ("_gib", " GiB"), ("_ms", " ms"),
          ("_s", " s"))
_NUMBER = re.compile(r"^[+-]?(\d[\d,]*\.?\d*|\.\d+)(e[+-]?\d+)?\s*%?x?$", re.IGNORECASE)


def short_header(name: str) -> str:
    """A metric key as a header: known names shortened, a unit suffix spelled as its unit."""
    if name in _HEADERS:
        return _HEADERS[name]
    for suffix, unit in _UNITS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + unit
    return name


def format_table(header: list[str], rows: list[list[str]], *, max_header: int = 13,
                 gap: int = 2) -> str:
    """Columns padded to a common width, a dashed rule under the header.

    Args:
        header: column titles (shown as given; use :func:`short_header` for metric keys).
        rows: cells as text, one list per row, as long as ``header``.
        max_header: headers longer than this and than their widest cell wrap onto more lines.
        gap: spaces between columns.
    """
    cells = [[str(c) for c in row] for row in rows]
    columns = list(zip(*cells)) if cells else [()] * len(header)
    widths, titles, numeric = [], [], []
    for title, column in zip(header, columns):
        widest = max((len(c) for c in column), default=0)
        lines = _wrap(title, max(widest, max_header))
        widths.append(max([widest, *map(len, lines)]))
        titles.append(lines)
        numeric.append(bool(column) and all(c == "-" or _NUMBER.match(c) for c in column)
                       and any(c != "-" for c in column))
    height = max((len(t) for t in titles), default=1)
    titles = [[""] * (height - len(t)) + t for t in titles]  # bottom-aligned

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if right else v.ljust(w)
                 for v, w, right in zip(values, widths, numeric)]
        return (" " * gap).join(parts).rstrip()

    out = [line([t[i] for t in titles]) for i in range(height)]
    out.append(line(["-" * w for w in widths]))
    out += [line(row) for row in cells]
    return "\n".join(out)


def _wrap(title: str, width: int) -> list[str]:
    """``title`` in lines of at most ``width`` characters, broken after ``_`` or at spaces
    (a single piece longer than ``width`` stays whole)."""
    if len(title) <= width:
        return [title]
    pieces = re.findall(r"[^_ ]+_*|[ ]+", title)
    lines, current = [], ""
    for piece in pieces:
        if current and len(current + piece.rstrip()) > width:
            lines.append(current.rstrip())
            current = piece.lstrip()
        else:
            current += piece
    if current.strip():
        lines.append(current.rstrip())
    return lines or [title]


def candidates_text(candidates: list[dict], keys: list[str] | tuple[str, ...] = ()) -> str:
    """The candidates table of ``tune`` and ``studies show``: the same cells as
    ``candidates.md`` (:func:`servetune.tuner._candidates.candidate_cells`), aligned."""
    from servetune.tuner._candidates import NO_EFFECT, TABLE_METRICS, candidate_cells

    keys = list(keys) or sorted({k for c in candidates for k in c["config"]})
    header = ["", "objective", "domain", *map(short_header, TABLE_METRICS), *keys, NO_EFFECT]
    return format_table(header, [candidate_cells(c, keys) for c in candidates])
