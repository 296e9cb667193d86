"""What to collect: engine configurations x workloads x repeats, from flags or a TOML sweep file.

Sweep file (TOML)::

    [defaults]                 # ContinuousBatchingConfig knobs applied to every configuration
    num_blocks = 2048

    [[config]]                 # one configuration; `name` and `repeat` are not engine knobs
    name = "fifo-512"
    repeat = 3                 # measure it 3 times (on every workload)
    scheduler_type = "fifo"
    max_batch_tokens = 512

    [[workload]]
    name = "poisson-6"
    spec = "poisson:rate=6,n=100,input=lognormal:256:0.8:2048,output=uniform:16:192"
    seed = 1

Runs are ordered repeat-major: every configuration once on every workload, then the second
measurements, and so on, so that repeats of one configuration are spread over the session.

Example:
    >>> parse_assignments(["max_batch_tokens=512", "scheduler_type=fifo"])
    {'max_batch_tokens': 512, 'scheduler_type': 'fifo'}
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from servetune import ConfigError, InputError

__all__ = ["EngineConfig", "WorkloadSpec", "RunPlan", "SweepPlan", "parse_assignments",
           "parse_value", "knob_names", "load_sweep"]


def knob_names() -> tuple[str, ...]:
    """The fields of transformers' ``ContinuousBatchingConfig`` (the accepted ``--set`` keys)."""
    import dataclasses

    from transformers import ContinuousBatchingConfig

    return tuple(f.name for f in dataclasses.fields(ContinuousBatchingConfig))


def parse_value(text: str):
    """``"512"`` -> 512, ``"true"`` -> True, ``"0.5"`` -> 0.5, ``"null"`` -> None, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.strip().lower()
        if lowered in ("none", "true", "false"):
            return {"none": None, "true": True, "false": False}[lowered]
        return text


def parse_assignments(items, *, field_name: str = "--set") -> dict:
    """``["k=v", "k2=v2,k3=v3"]`` -> ``{"k": v, ...}`` with typed values; keys are not checked."""
    knobs: dict = {}
    for item in items:
        for part in filter(None, (p.strip() for p in _split_top_level(item))):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise InputError(f"expected key=value, got {part!r}", field=field_name)
            knobs[key.strip()] = parse_value(value.strip())
    return knobs


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: ``"a=[1,2],b=3"`` -> ``["a=[1,2]", "b=3"]``."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _check_knobs(knobs: dict, valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(knobs) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown ContinuousBatchingConfig knob(s) {', '.join(unknown)}; "
                          f"expected some of {', '.join(valid)}")


@dataclass(frozen=True)
class EngineConfig:
    """A named set of ContinuousBatchingConfig knobs, measured ``repeat`` times per workload."""

    name: str
    knobs: dict = field(default_factory=dict)
    repeat: int = 1


@dataclass(frozen=True)
class WorkloadSpec:
    """A workload as ``--workload`` text (a synthetic spec or a trace file) and its seed."""

    name: str
    text: str
    seed: int = 0
    limit: int | None = None
    qps: float | None = None


@dataclass(frozen=True)
class RunPlan:
    """One measured run: a configuration on a workload, the ``repeat``-th time (0-based)."""

    config: EngineConfig
    workload: WorkloadSpec
    repeat: int


@dataclass(frozen=True)
class SweepPlan:
    """Configurations x workloads x repeats."""

    configs: tuple[EngineConfig, ...]
    workloads: tuple[WorkloadSpec, ...]

    def runs(self) -> list[RunPlan]:
        """Every run, repeat-major (see the module docstring)."""
        if not self.configs or not self.workloads:
            return []
        most = max(c.repeat for c in self.configs)
        return [RunPlan(config, workload, rep)
                for rep in range(most)
                for workload in self.workloads
                for config in self.configs if rep < config.repeat]

    def only_workloads(self, names) -> "SweepPlan":
        """The same plan restricted to the named workloads (an unknown name is an error)."""
        known = {w.name for w in self.workloads}
        unknown = sorted(set(names) - known)
        if unknown:
            raise InputError(f"no workload named {', '.join(unknown)}; the plan has "
                             f"{', '.join(sorted(known))}", field="--only-workload")
        return SweepPlan(self.configs, tuple(w for w in self.workloads if w.name in set(names)))

    def check(self, valid_knobs: tuple[str, ...]) -> "SweepPlan":
        """Raise :class:`ConfigError` on unknown knobs or duplicate names; return ``self``."""
        seen: set[str] = set()
        for config in self.configs:
            _check_knobs(config.knobs, valid_knobs, f"configuration {config.name!r}")
            if config.name in seen:
                raise ConfigError(f"two configurations are named {config.name!r}")
            seen.add(config.name)
            if config.repeat < 1:
                raise ConfigError(f"configuration {config.name!r}: repeat must be >= 1")
        names = [w.name for w in self.workloads]
        if len(set(names)) != len(names):
            raise ConfigError(f"workload names must be unique; got {', '.join(names)}")
        return self


def load_sweep(path: str | Path, *, base_knobs: dict | None = None) -> SweepPlan:
    """Read a TOML sweep file (module docstring); ``base_knobs`` (from ``--set``) apply first."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read sweep file ({exc.strerror})", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"invalid TOML ({exc})", path=str(path)) from None
    unknown = sorted(set(document) - {"defaults", "config", "workload"})
    if unknown:
        raise InputError(f"unknown table(s) {', '.join(unknown)}; expected defaults, config, "
                         "workload", path=str(path))
    defaults = {**(base_knobs or {}), **document.get("defaults", {})}
    configs = []
    for i, entry in enumerate(document.get("config", []), start=1):
        entry = dict(entry)
        name = str(entry.pop("name", f"config{i}"))
        repeat = entry.pop("repeat", 1)
        if not isinstance(repeat, int):
            raise InputError(f"expected an integer repeat, got {repeat!r}", path=str(path),
                             field=f"config[{i}].repeat")
        configs.append(EngineConfig(name, {**defaults, **entry}, repeat))
    if not configs:
        configs.append(EngineConfig("default", dict(defaults), 1))
    workloads = []
    for i, entry in enumerate(document.get("workload", []), start=1):
        if "spec" not in entry:
            raise InputError("expected a spec (synthetic spec or trace file)", path=str(path),
                             field=f"workload[{i}].spec")
        unknown = sorted(set(entry) - {"name", "spec", "seed", "limit", "qps"})
        if unknown:
            raise InputError(f"unknown key(s) {', '.join(unknown)}", path=str(path),
                             field=f"workload[{i}]")
        workloads.append(WorkloadSpec(str(entry.get("name", f"workload{i}")), str(entry["spec"]),
                                      int(entry.get("seed", 0)), entry.get("limit"),
                                      entry.get("qps")))
    return SweepPlan(tuple(configs), tuple(workloads))
