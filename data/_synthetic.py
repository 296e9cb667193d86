"""Synthetic workloads from a one-line spec, and ``--workload FILE|SPEC`` resolution.

Spec grammar: ``PROCESS:key=value,key=value,...`` where PROCESS is ``poisson`` or ``gamma``.

=========  =====================================================================
key        meaning
=========  =====================================================================
rate       mean arrival rate in requests/s (required)
n          number of requests (default 200)
cv         coefficient of variation of inter-arrival gaps (gamma only, default 1)
input      input-length distribution (default ``lognormal:512:0.6:4096``)
output     output-length distribution (default ``lognormal:128:0.6:1024``)
=========  =====================================================================

Length distributions: ``const:N``, ``uniform:LO:HI`` (inclusive), ``lognormal:MEDIAN:SIGMA[:MAX]``,
``normal:MEAN:STD[:MAX]``; every length is clipped to at least 1 token.

Example:
    >>> w = synthetic_workload("poisson:rate=4,n=100,input=const:256,output=uniform:8:64", seed=1)
    >>> len(w), int(w.input_tokens[0])
    (100, 256)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from servetune import InputError
from servetune.data._workload import MAX_REQUESTS, MAX_TOKENS, Workload

__all__ = ["LengthDistribution", "SyntheticSpec", "parse_workload_spec", "synthetic_workload",
           "resolve_workload", "PROCESSES"]

PROCESSES = ("poisson", "gamma")
_DISTRIBUTIONS = {"const": (1, 1), "uniform": (2, 2), "lognormal": (2, 3), "normal": (2, 3)}
_KEYS = {"rate", "n", "cv", "input", "output"}
_MAX_SPREAD = {"lognormal": 10.0, "normal": float(MAX_TOKENS)}  # sigma, std
_MAX_CV = 100.0


@dataclass(frozen=True)
class LengthDistribution:
    """A token-length distribution: ``kind`` with its numeric ``params``."""

    kind: str
    params: tuple[float, ...]

    @classmethod
    def parse(cls, text: str, *, field: str) -> "LengthDistribution":
        """Parse ``kind:p1:p2[:p3]``; errors name the spec field."""
        kind, *raw = text.split(":")
        if kind not in _DISTRIBUTIONS:
            raise InputError(f"unknown length distribution {kind!r}; expected one of "
                             f"{', '.join(_DISTRIBUTIONS)}", field=field)
        low, high = _DISTRIBUTIONS[kind]
        if not low <= len(raw) <= high:
            raise InputError(f"{kind} takes {low}..{high} parameters, got {len(raw)} in {text!r}",
                             field=field)
        try:
            params = tuple(float(p) for p in raw)
        except ValueError:
            raise InputError(f"expected numbers in {text!r}", field=field) from None
        if any(not np.isfinite(p) or p < 0 for p in params):
            raise InputError(f"expected finite, non-negative parameters in {text!r}", field=field)
        sizes = params if kind in ("const", "uniform") else (params[0], *params[2:])
        if any(p > MAX_TOKENS for p in sizes):
            raise InputError(f"expected lengths of at most {MAX_TOKENS:,d} tokens in {text!r}",
                             field=field)
        if kind in ("lognormal", "normal") and params[1] > _MAX_SPREAD[kind]:
            raise InputError(f"expected a {kind} spread of at most {_MAX_SPREAD[kind]:g} in "
                             f"{text!r}", field=field)
        if kind == "uniform" and params[0] > params[1]:
            raise InputError(f"uniform needs LO <= HI, got {text!r}", field=field)
        return cls(kind, params)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` lengths as int64, each at least 1."""
        p = self.params
        if self.kind == "const":
            values = np.full(n, p[0])
        elif self.kind == "uniform":
            values = rng.integers(int(p[0]), int(p[1]) + 1, size=n)
        elif self.kind == "lognormal":
            values = rng.lognormal(np.log(max(p[0], 1.0)), p[1], size=n)
        else:
            values = rng.normal(p[0], p[1], size=n)
        if len(p) == 3 and self.kind in ("lognormal", "normal"):
            values = np.minimum(values, p[2])
        return np.maximum(np.rint(values), 1).astype(np.int64)

    def __str__(self) -> str:
        return ":".join([self.kind, *(f"{v:g}" for v in self.params)])


@dataclass(frozen=True)
class SyntheticSpec:
    """A parsed synthetic workload spec (see the module docstring)."""

    process: str
    rate: float
    n: int = 200
    cv: float = 1.0
    input: LengthDistribution = LengthDistribution("lognormal", (512, 0.6, 4096))
    output: LengthDistribution = LengthDistribution("lognormal", (128, 0.6, 1024))

    def __str__(self) -> str:
        cv = f",cv={self.cv:g}" if self.process == "gamma" else ""
        return (f"{self.process}:rate={self.rate:g},n={self.n}{cv},"
                f"input={self.input},output={self.output}")


def parse_workload_spec(text: str) -> SyntheticSpec:
    """Parse ``poisson:rate=4,n=200,...`` into a :class:`SyntheticSpec`."""
    process, sep, rest = text.partition(":")
    if process not in PROCESSES or not sep:
        raise InputError(f"cannot read workload spec {text!r}: expected a file or "
                         f"PROCESS:rate=R[,n=N,...] with PROCESS one of {', '.join(PROCESSES)}",
                         field="--workload")
    values: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in _KEYS:
            raise InputError(f"unknown item {item!r} in workload spec; expected key=value with "
                             f"key one of {', '.join(sorted(_KEYS))}", field="--workload")
        values[key] = value
    if "rate" not in values:
        raise InputError(f"workload spec {text!r} needs rate=REQUESTS_PER_S", field="--workload")
    try:
        rate = float(values["rate"])
        n = int(values.get("n", 200))
        cv = float(values.get("cv", 1.0))
    except ValueError as exc:
        raise InputError(f"expected numbers for rate, n and cv in {text!r} ({exc})",
                         field="--workload") from None
    if not (rate > 0 and np.isfinite(rate)) or n < 1 or not cv > 0:
        raise InputError(f"expected rate > 0, n >= 1 and cv > 0 in {text!r}", field="--workload")
    if n > MAX_REQUESTS or cv > _MAX_CV:
        raise InputError(f"expected n <= {MAX_REQUESTS:,d} and cv <= {_MAX_CV:g} in {text!r}",
                         field="--workload")
    if cv != 1.0 and process == "poisson":
        raise InputError("cv applies to gamma arrivals only; use gamma:rate=R,cv=C",
                         field="--workload")
    kwargs = {}
    for key in ("input", "output"):
        if key in values:
            kwargs[key] = LengthDistribution.parse(values[key], field=f"--workload {key}")
    return SyntheticSpec(process=process, rate=rate, n=n, cv=cv, **kwargs)


def synthetic_workload(spec: str | SyntheticSpec, seed: int) -> Workload:
    """Generate a workload from a spec with its own seeded generator (bit-reproducible)."""
    parsed = parse_workload_spec(spec) if isinstance(spec, str) else spec
    rng = np.random.default_rng(seed)
    if parsed.process == "poisson":
        gaps = rng.exponential(1.0 / parsed.rate, size=parsed.n)
    else:
        shape = 1.0 / parsed.cv**2
        gaps = rng.gamma(shape, 1.0 / (parsed.rate * shape), size=parsed.n)
    gaps[0] = 0.0
    arrival = np.cumsum(gaps)
    inputs = parsed.input.sample(rng, parsed.n)
    outputs = parsed.output.sample(rng, parsed.n)
    return Workload.from_arrays(arrival, inputs, outputs, name=str(parsed),
                                descriptor={"kind": "synthetic", "spec": str(parsed),
                                            "seed": seed})


def resolve_workload(text: str, *, seed: int = 0, qps: float | None = None,
                     limit: int | None = None) -> Workload:
    """A workload from ``--workload FILE|SPEC``, optionally truncated and rescaled to ``qps``."""
    path = Path(text).expanduser()
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # a spec too long to be a file name, or with a NUL
        is_file = False
    if is_file:
        from servetune.data._workload_formats import load_workload

        workload = load_workload(path)
    else:
        workload = synthetic_workload(text, seed)
    if limit is not None and limit < len(workload):
        workload = workload.head(limit)
    if qps is not None:
        workload = workload.scaled_to_rate(qps)
    return workload
