"""Helpers shared by the adapters: identity overrides, JSON-safe values, number checks."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from servetune import InputError

__all__ = ["OVERRIDABLE", "MAX_INT_DIGITS", "check_overrides", "json_lines", "json_text",
           "json_safe", "loads", "numbers"]

#: the longest integer literal a JSON input may hold (int64 needs 19 digits)
MAX_INT_DIGITS = 40

#: identity columns a user may set for every row of a source (``servetune ingest --set K=V``)
OVERRIDABLE: tuple[str, ...] = ("run_id", "engine", "engine_version", "model", "hardware",
                                "source")


def check_overrides(overrides: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of ``overrides`` with only known keys and non-empty values, or an InputError."""
    checked = {}
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise InputError(f"cannot set {key!r}; expected one of {', '.join(OVERRIDABLE)}",
                             field="--set")
        if not str(value).strip():
            raise InputError(f"--set {key}= needs a value", field="--set")
        checked[key] = str(value).strip()
    return checked


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _TooLarge(f"an integer of {len(text.lstrip('-'))} digits (at most "
                        f"{MAX_INT_DIGITS})")
    return int(text)


class _TooLarge(ValueError):
    pass


def loads(text: str):
    """:func:`json.loads` that fails only with :class:`json.JSONDecodeError`.

    Integers longer than :data:`MAX_INT_DIGITS` digits and nesting too deep for the parser are
    reported as decode errors (``msg`` says which) instead of ``ValueError``/``RecursionError``.
    """
    try:
        return json.loads(text, parse_int=_bounded_int)
    except _TooLarge as exc:
        raise json.JSONDecodeError(f"expected a number that fits 64 bits, found {exc}", text,
                                   0) from None
    except RecursionError:
        raise json.JSONDecodeError("nesting too deep (expected at most a few hundred levels)",
                                   text, 0) from None


def json_safe(value):
    """``value`` with non-finite floats replaced by strings, so that it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value) -> str:
    """Strict, key-sorted JSON text of ``value`` (see :func:`json_safe`)."""
    return json.dumps(json_safe(value), sort_keys=True, allow_nan=False)


def numbers(values: Sequence, *, path: str, field: str, integer: bool = False,
            minimum: float | None = None, what: str = "element") -> np.ndarray:
    """``values`` as a float64 (or int64) array, refusing anything that is not a JSON number.

    Errors name the 1-based position (``row``) of the first bad value. Booleans and strings are
    refused (``np.array`` would silently turn ``"1.5"`` or ``true`` into numbers).
    """
    if not isinstance(values, list):
        raise InputError(f"expected a list of numbers, got {type(values).__name__}", path=path,
                         field=field)
    allowed = (int,) if integer else (int, float)
    if not set(map(type, values)) <= set(allowed):
        row = next(i for i, v in enumerate(values, 1) if type(v) not in allowed)
        kind = "an integer" if integer else "a number"
        raise InputError(f"expected {kind} as {what} {row}, got {values[row - 1]!r}", path=path,
                         row=row, field=field)
    array = np.array(values, dtype=np.int64 if integer else np.float64)
    if not integer:
        bad = ~np.isfinite(array)
        if bad.any():
            row = int(np.argmax(bad)) + 1
            raise InputError(f"expected a finite number as {what} {row}, got {array[row - 1]}",
                             path=path, row=row, field=field)
    if minimum is not None:
        bad = array < minimum
        if bad.any():
            row = int(np.argmax(bad)) + 1
            raise InputError(f"expected a number >= {minimum:g} as {what} {row}, got "
                             f"{array[row - 1]}", path=path, row=row, field=field)
    return array


def json_lines(lines: Iterable[str], path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines text; errors name the line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON: {exc.msg} (line {number}, column {exc.colno})",
                             path=path, row=number) from None
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object per line, found {type(record).__name__} "
                             f"(line {number})", path=path, row=number)
        yield number, record
