"""Progress that reads well on a terminal and in a log: a tqdm bar when stderr is a terminal,
else one line when a phase starts, one per named stage and one when it ends.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> bar = progress(total=2, desc="train", unit="stage", stream=out, clock=lambda: 0.0)
    >>> bar.set_postfix_str("fitting"); bar.update(2); bar.close()
    >>> print(out.getvalue(), end="")
    train: started (2 stages)
    train: fitting
    train: done, 2 stages in 0.0 s
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["progress", "PhaseLines", "Silent"]


class Silent:
    """Progress that says nothing (``progress(enabled=False)``)."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "Silent":
        return self

    def __exit__(self, *exc) -> None:
        pass


class PhaseLines:
    """The tqdm calls servetune uses (``update``, ``set_postfix_str``, ``set_postfix``,
    ``close``, context manager), written as whole lines."""

    def __init__(self, *, total: int | None, desc: str, unit: str, initial: int = 0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.desc, self.unit, self.total = desc, unit, total
        self.n = initial
        self._stream, self._clock = stream, clock
        self._started = clock()
        self._stage: str | None = None
        self._postfix = ""
        self._closed = False
        size = "" if total is None else f" ({total} {unit}s" + (
            f", {initial} done before" if initial else "") + ")"
        self._line(f"started{size}")

    def _line(self, text: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(f"{self.desc}: {text}\n")
        stream.flush()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        if text and text != self._stage:
            self._stage = text
            self._line(text)

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tail = f" ({self._postfix})" if self._postfix else ""
        self._line(f"done, {self.n} {self.unit}s in {self._clock() - self._started:.1f} s{tail}")

    def __enter__(self) -> "PhaseLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(*, total: int | None, desc: str, unit: str, initial: int = 0,
             enabled: bool = True, stream: TextIO | None = None, **tqdm_options):
    """A tqdm bar on a terminal, :class:`PhaseLines` otherwise (``stream`` forces lines);
    :class:`Silent` when not ``enabled``."""
    if not enabled:
        return Silent()
    target = stream or sys.stderr
    if stream is None and target.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, **tqdm_options)
    return PhaseLines(total=total, desc=desc, unit=unit, initial=initial, stream=stream,
                      **({"clock": tqdm_options["clock"]} if "clock" in tqdm_options else {}))
