"""Workloads: request arrival times with input and output lengths, for simulation and replay.

A :class:`Workload` is what the simulator replays and the hardware benchmark client sends:
arrival times in seconds from the start, and per-request input and output token counts.

Example:
    >>> w = Workload.from_arrays([0.0, 0.5], [128, 64], [16, 32], name="tiny")
    >>> len(w), w.duration_s
    (2, 0.5)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from servetune import InputError

__all__ = ["Workload", "MAX_REQUESTS", "MAX_TOKENS"]

#: the most requests a workload may hold (the simulator keeps per-request arrays in memory)
MAX_REQUESTS = 10_000_000
#: the longest input or output a request may have, in tokens
MAX_TOKENS = 10_000_000


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests sorted by arrival: ``arrival_s`` (float64), ``input_tokens``/``output_tokens``."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = "workload"
    descriptor: dict = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, arrival_s, input_tokens, output_tokens, *, name: str = "workload",
                    descriptor: dict | None = None) -> "Workload":
        """Build a workload, checking lengths and values; arrivals are sorted and rebased to 0."""
        arrival = np.asarray(arrival_s, dtype=np.float64)
        inputs = _tokens(input_tokens, "input", name)
        outputs = _tokens(output_tokens, "output", name)
        if not (arrival.shape == inputs.shape == outputs.shape) or arrival.ndim != 1:
            raise InputError("arrival times, input and output lengths must be 1-D and the same "
                             f"length; got {arrival.shape}, {inputs.shape}, {outputs.shape}")
        if len(arrival) == 0:
            raise InputError(f"workload {name!r} has no requests")
        if len(arrival) > MAX_REQUESTS:
            raise InputError(f"workload {name!r} has {len(arrival):,d} requests; expected at most "
                             f"{MAX_REQUESTS:,d} (use a shorter trace or --limit)")
        if not np.isfinite(arrival).all():
            raise InputError(f"workload {name!r} has non-finite arrival times")
        if (inputs < 1).any() or (outputs < 1).any():
            raise InputError(f"workload {name!r} has requests with fewer than 1 input or output "
                             "token")
        order = np.argsort(arrival, kind="stable")
        arrival = arrival[order] - arrival[order][0]
        return cls(arrival, inputs[order], outputs[order], name=name,
                   descriptor=dict(descriptor or {"name": name}))

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival."""
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate (requests per second)."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else float("inf")

    def head(self, n: int) -> "Workload":
        """The first ``n`` requests."""
        return Workload.from_arrays(self.arrival_s[:n], self.input_tokens[:n],
                                    self.output_tokens[:n], name=self.name,
                                    descriptor={**self.descriptor, "head": n})

    def scaled_to_rate(self, rate_rps: float) -> "Workload":
        """The same requests with arrival gaps stretched or squeezed to a mean of ``rate_rps``."""
        if not rate_rps > 0:
            raise InputError(f"a workload rate must be > 0 requests/s; got {rate_rps}")
        factor = self.rate_rps / rate_rps
        return Workload.from_arrays(self.arrival_s * factor, self.input_tokens,
                                    self.output_tokens, name=self.name,
                                    descriptor={**self.descriptor, "rate_rps": rate_rps})

    def to_json(self) -> str:
        """The descriptor as JSON (what ``runs.workload`` records)."""
        return json.dumps({**self.descriptor, "requests": len(self)}, sort_keys=True)


def _tokens(values, what: str, name: str) -> np.ndarray:
    """Token counts as int64, refusing values that are not whole numbers in 1..MAX_TOKENS."""
    array = np.asarray(values)
    if array.dtype.kind not in "iuf" or array.dtype == np.bool_:
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"workload {name!r} has {what} lengths that are not numbers") from None
    if array.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            index = int(np.argmax(bad))
            raise InputError(f"workload {name!r}: request {index + 1} has {what} length "
                             f"{array[index]}; expected a whole number of tokens")
    big = array > MAX_TOKENS
    if big.any():
        index = int(np.argmax(big))
        raise InputError(f"workload {name!r}: request {index + 1} has {what} length "
                         f"{array[index]:.0f}; expected at most {MAX_TOKENS:,d} tokens")
    return array.astype(np.int64)
