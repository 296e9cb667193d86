"""Search spaces: typed engine knobs, fixed values, derived fields and constraints, from TOML.

A space maps a point of the unit hypercube (what an optimiser moves in) to an engine
configuration and back. Each tunable parameter takes one dimension, except an unordered enum
with more than two choices, which takes one dimension per choice (one-hot, decoded by argmax).

TOML layout::

    name = "vllm"
    engine = "vllm"
    [fixed]
    gpus = 8
    [params.tp]
    type = "enum"            # int | float | bool | enum
    choices = [1, 2, 4, 8]
    default = 1
    [params.gpu_memory_utilization]
    type = "float"
    low = 0.7
    high = 0.95
    step = 0.05              # optional: snap to this grid
    log = false              # optional: log-scaled (int/float)
    [derived]
    dp = "gpus // tp"
    [[constraints]]
    expr = "max_num_seqs <= max_num_batched_tokens"
    on_violation = "repair"  # repair (clip the left-hand parameter) | penalise
    [targets]                # optional: where a field goes ("env", a dotted path, a CLI flag)
    tp = "--tensor-parallel-size"

A point that violates a constraint is repaired when the constraint allows it and the repair
succeeds; otherwise :meth:`SearchSpace.resolve` marks it infeasible with the reasons, and the
study records it with a penalty instead of evaluating it.

Example:
    >>> space = SearchSpace.builtin("transformers-cb")
    >>> point = space.resolve(space.decode(np.full(space.dim, 0.5)))
    >>> point.feasible
    True
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from servetune import ConfigError
from servetune.tuner._expr import Expression
from servetune.tuner._limits import check_grid_size

__all__ = ["Param", "Constraint", "Point", "SearchSpace", "PARAM_KINDS", "builtin_spaces",
           "FIELD_NAME", "read_toml"]

PARAM_KINDS = ("int", "float", "bool", "enum")
_GRID_LIMIT = 2_000_000
_MAX_CHOICES = 10_000
_MAX_FIELDS = 1_000
_FEASIBILITY_SAMPLES = 512
#: what a field name may look like (a knob, ``env.NAME``, a dotted config key)
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")



def read_toml(path: Path, what: str = "file") -> dict:
    """The TOML document at ``path``; ConfigError naming the file for a missing, unreadable,
    malformed or too deeply nested one (``what`` names the file's role)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None

@dataclass(frozen=True)
class Param:
    """One tunable knob.

    Attributes:
        name: the configuration key.
        kind: ``int``, ``float``, ``bool`` or ``enum``.
        low, high: inclusive bounds (int/float).
        step: grid spacing from ``low`` (int default 1; float default: continuous).
        log: sample and move in log space (int/float, ``low > 0``).
        choices: the options of an enum, in order.
        default: the engine's own default, if known.
        help: one line for humans.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()
    default: object = None
    help: str = ""

    @property
    def ordered(self) -> bool:
        """Whether an enum's choices are numbers (ordered) rather than labels."""
        return all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.choices)

    @property
    def width(self) -> int:
        """How many encoded dimensions this parameter takes."""
        if self.kind == "enum" and not self.ordered and len(self.choices) > 2:
            return len(self.choices)
        return 1

    def check(self, where: str) -> None:
        """Raise :class:`ConfigError` when the declaration is inconsistent."""
        if self.kind not in PARAM_KINDS:
            raise ConfigError(f"{where}: type must be one of {', '.join(PARAM_KINDS)}; "
                              f"got {self.kind!r}")
        if not isinstance(self.help, str):
            raise ConfigError(f"{where}: 'help' must be a string; got {self.help!r:.60}")
        if self.kind in ("int", "float"):
            if self.low is None or self.high is None:
                raise ConfigError(f"{where}: {self.kind} needs 'low' and 'high'")
            for key in ("low", "high", "step", "default"):
                value = getattr(self, key)
                if value is not None and (isinstance(value, bool) or not isinstance(
                        value, (int, float)) or not math.isfinite(value)
                        or abs(value) > 2.0**53):
                    raise ConfigError(f"{where}: '{key}' must be a finite number (at most "
                                      f"2**53 in size); got {value!r:.60}")
            if not self.low < self.high:
                raise ConfigError(f"{where}: 'low' must be < 'high'; got {self.low} and "
                                  f"{self.high} (use [fixed] for a constant)")
            if self.log and self.low <= 0:
                raise ConfigError(f"{where}: a log-scaled range needs low > 0; got {self.low}")
            if self.step is not None and not self.step > 0:
                raise ConfigError(f"{where}: 'step' must be > 0; got {self.step}")
            if self.step is not None and (self.high - self.low) / self.step >= _GRID_LIMIT:
                raise ConfigError(f"{where}: 'step' {self.step:g} gives "
                                  f"{(self.high - self.low) / self.step:,.0f} values (limit "
                                  f"{_GRID_LIMIT:,d}); use a coarser step, or none for a "
                                  "continuous range")
            if self.kind == "int" and any(float(v) != int(v) for v in
                                          (self.low, self.high, self.step or 1)):
                raise ConfigError(f"{where}: int bounds and step must be whole numbers")
        if self.kind == "enum":
            if not 2 <= len(self.choices) <= _MAX_CHOICES:
                raise ConfigError(f"{where}: an enum needs 2 to {_MAX_CHOICES:,d} 'choices'; "
                                  f"got {len(self.choices)}")
            if any(not isinstance(c, (str, int, float, bool)) for c in self.choices):
                raise ConfigError(f"{where}: enum choices must be strings, numbers or booleans; "
                                  f"got {list(self.choices)!r:.80}")
            if len(set(map(_key, self.choices))) != len(self.choices):
                raise ConfigError(f"{where}: enum choices must be distinct; got "
                                  f"{list(self.choices)}")
        if self.default is not None and self.kind != "float":
            if self.snap(self.default) != self.default and self.kind != "int":
                raise ConfigError(f"{where}: default {self.default!r} is not a valid value")

    # -- value grid -------------------------------------------------------------------------
    def snap(self, value):
        """The nearest valid value to ``value`` (clipped into range, on the step grid)."""
        if self.kind == "bool":
            return bool(value)
        if self.kind == "enum":
            if value in self.choices:
                return self.choices[self.choices.index(value)]
            if self.ordered and isinstance(value, (int, float)):
                return min(self.choices, key=lambda c: (abs(c - value), c))
            raise ConfigError(f"'{self.name}': {value!r} is not one of {list(self.choices)}")
        v = min(max(float(value), self.low), self.high)
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        if step is not None:
            top = self.low + math.floor((self.high - self.low) / step + 1e-9) * step
            v = self.low + round((v - self.low) / step) * step
            v = min(max(v, self.low), top)
            v = round(v, 12)
        return int(round(v)) if self.kind == "int" else float(v)

    def floor(self, value):
        """The largest valid value ``<= value`` (for repairs), or None when there is none."""
        if self.kind == "enum" and self.ordered:
            fits = [c for c in self.choices if c <= value]
            return max(fits) if fits else None
        if self.kind not in ("int", "float") or value < self.low:
            return None
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        v = min(float(value), self.high)
        if step is not None:
            v = self.low + math.floor((v - self.low) / step + 1e-9) * step
        return self.snap(v)

    def ceil(self, value):
        """The smallest valid value ``>= value`` (for repairs), or None when there is none."""
        if self.kind == "enum" and self.ordered:
            fits = [c for c in self.choices if c >= value]
            return min(fits) if fits else None
        if self.kind not in ("int", "float") or value > self.high:
            return None
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        v = max(float(value), self.low)
        if step is not None:
            v = self.low + math.ceil((v - self.low) / step - 1e-9) * step
            if v > self.high + 1e-9:
                return None
        return self.snap(v)

    def count(self, levels: int) -> int:
        """How many values :meth:`values` gives (computed without building them)."""
        if self.kind == "bool":
            return 2
        if self.kind == "enum":
            return len(self.choices)
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        if step is not None:
            count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
            if count <= max(levels, 2) or self.step is not None:
                return count
        return max(levels, 2)

    def values(self, levels: int) -> list:
        """The discretised values: every step/choice, or ``levels`` points of a continuum."""
        if self.kind == "bool":
            return [False, True]
        if self.kind == "enum":
            return list(self.choices)
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        if step is not None:
            count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
            if count <= max(levels, 2) or self.step is not None:
                if count > _GRID_LIMIT:
                    raise ConfigError(f"'{self.name}': {count:,d} grid values (limit "
                                      f"{_GRID_LIMIT:,d}); use a coarser 'step'")
                return [self.snap(self.low + i * step) for i in range(count)]
        unit = np.linspace(0.0, 1.0, max(levels, 2))
        return list(dict.fromkeys(self.decode(np.array([u])) for u in unit))

    # -- unit-cube encoding -----------------------------------------------------------------
    def decode(self, u: np.ndarray):
        """Value for the encoded slice ``u`` (length :attr:`width`, entries in [0, 1])."""
        if self.kind == "bool":
            return bool(u[0] >= 0.5)
        if self.kind == "enum":
            if self.width > 1:
                return self.choices[int(np.argmax(u))]
            index = min(int(float(u[0]) * len(self.choices)), len(self.choices) - 1)
            return self.choices[max(index, 0)]
        x = min(max(float(u[0]), 0.0), 1.0)
        if self.log:
            raw = math.exp(math.log(self.low) + x * (math.log(self.high) - math.log(self.low)))
        else:
            raw = self.low + x * (self.high - self.low)
        return self.snap(raw)

    def encode(self, value) -> np.ndarray:
        """The encoded slice at the centre of ``value``'s cell."""
        value = self.snap(value)
        if self.kind == "bool":
            return np.array([0.75 if value else 0.25])
        if self.kind == "enum":
            index = self.choices.index(value)
            if self.width > 1:
                out = np.zeros(self.width)
                out[index] = 1.0
                return out
            return np.array([(index + 0.5) / len(self.choices)])
        if self.log:
            x = (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        else:
            x = (value - self.low) / (self.high - self.low)
        return np.array([min(max(x, 0.0), 1.0)])

    def to_dict(self) -> dict:
        """Plain-data form (TOML/JSON)."""
        out: dict = {"type": self.kind}
        for key in ("low", "high", "step", "default"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.log:
            out["log"] = True
        if self.choices:
            out["choices"] = list(self.choices)
        if self.help:
            out["help"] = self.help
        return out


@dataclass(frozen=True)
class Constraint:
    """A boolean expression every evaluated point must satisfy."""

    expr: Expression
    repair: bool = True

    def repair_target(self, tunable: dict[str, Param]) -> tuple[str, str] | None:
        """``(param, op)`` when the constraint reads ``PARAM op EXPR`` with a numeric PARAM."""
        body = self.expr.tree.body
        if (isinstance(body, ast.Compare) and len(body.ops) == 1
                and type(body.ops[0]).__name__ in ("LtE", "Lt", "GtE", "Gt")
                and isinstance(body.left, ast.Name) and body.left.id in tunable):
            return body.left.id, type(body.ops[0]).__name__
        return None


@dataclass(frozen=True)
class Point:
    """A resolved configuration: the full config, and whether it may be evaluated."""

    config: dict
    feasible: bool
    repaired: bool = False
    violations: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchSpace:
    """An engine's configuration space. Build with :meth:`from_toml`, :meth:`builtin`."""

    name: str
    engine: str
    params: tuple[Param, ...]
    fixed: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    description: str = ""
    source: str = "<dict>"
    targets: dict = field(default_factory=dict)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, *, source: str = "<dict>") -> "SearchSpace":
        """Build and validate a space from parsed TOML/JSON data."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a search space must be a table")
        unknown = set(data) - {"name", "engine", "description", "params", "fixed", "derived",
                               "constraints", "targets"}
        if unknown:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}; expected "
                              "name, engine, description, params, fixed, derived, constraints, "
                              "targets")
        for key in ("name", "engine"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ConfigError(f"{source}: '{key}' must be a non-empty string")
        raw_params = data.get("params", {})
        if not isinstance(raw_params, dict) or not raw_params:
            raise ConfigError(f"{source}: [params] must declare at least one parameter")
        for key in ("fixed", "derived", "targets"):
            if not isinstance(data.get(key, {}), dict):
                raise ConfigError(f"{source}: [{key}] must be a table")
        if not isinstance(data.get("constraints", []), list):
            raise ConfigError(f"{source}: 'constraints' must be an array of tables")
        if not isinstance(data.get("description", ""), str):
            raise ConfigError(f"{source}: 'description' must be a string")
        declared = [*raw_params, *data.get("fixed", {}), *data.get("derived", {})]
        if len(declared) > _MAX_FIELDS:
            raise ConfigError(f"{source}: {len(declared):,d} fields; expected at most "
                              f"{_MAX_FIELDS:,d}")
        for name in declared:
            if not FIELD_NAME.fullmatch(name):
                raise ConfigError(f"{source}: field name {name!r:.80} is not allowed; expected "
                                  "letters, digits and '_' (dotted parts allowed, e.g. "
                                  "env.NCCL_DEBUG)")
        params = []
        for name, spec in raw_params.items():
            where = f"{source}: params.{name}"
            if not isinstance(spec, dict):
                raise ConfigError(f"{where}: expected a table")
            if not isinstance(spec.get("type", ""), str):
                raise ConfigError(f"{where}: type must be one of {', '.join(PARAM_KINDS)}")
            if not isinstance(spec.get("choices", []), list):
                raise ConfigError(f"{where}: 'choices' must be an array")
            extra = set(spec) - {"type", "low", "high", "step", "log", "choices", "default",
                                 "help"}
            if extra:
                raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
            param = Param(name=name, kind=spec.get("type", ""), low=spec.get("low"),
                          high=spec.get("high"), step=spec.get("step"),
                          log=bool(spec.get("log", False)),
                          choices=tuple(spec.get("choices", ())), default=spec.get("default"),
                          help=spec.get("help", ""))
            param.check(where)
            params.append(param)
        fixed = dict(data.get("fixed", {}))
        derived = {}
        for name, text in dict(data.get("derived", {})).items():
            derived[name] = Expression.parse(text, field=f"derived.{name}", path=source)
        names = [p.name for p in params] + list(fixed) + list(derived)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{source}: {dupes} declared more than once across params, fixed "
                              "and derived")
        constraints = []
        for i, item in enumerate(data.get("constraints", [])):
            where = f"constraints[{i}]"
            if isinstance(item, str):
                item = {"expr": item}
            if not isinstance(item, dict) or "expr" not in item:
                raise ConfigError(f"{source}: {where}: expected a table with 'expr'")
            mode = item.get("on_violation", "repair")
            if mode not in ("repair", "penalise", "penalize"):
                raise ConfigError(f"{source}: {where}: on_violation must be 'repair' or "
                                  f"'penalise'; got {mode!r}")
            constraints.append(Constraint(Expression.parse(item["expr"], field=where,
                                                           path=source), mode == "repair"))
        known = set(names)
        for expr in list(derived.values()) + [c.expr for c in constraints]:
            missing = expr.names - known
            if missing:
                raise ConfigError(f"{source}: expression {expr.text!r} reads unknown fields "
                                  f"{sorted(missing)}; fields are {sorted(known)}")
        targets = dict(data.get("targets", {}))
        if set(targets) - known:
            raise ConfigError(f"{source}: [targets] names unknown fields "
                              f"{sorted(set(targets) - known)}")
        return cls(name=data["name"], engine=data["engine"], params=tuple(params), fixed=fixed,
                   derived=derived, constraints=tuple(constraints),
                   description=data.get("description", ""), source=source, targets=targets)

    @classmethod
    def from_toml(cls, path: str | Path) -> "SearchSpace":
        """Read a space from a TOML file."""
        path = Path(path)
        return cls.from_dict(read_toml(path, "search space file"), source=str(path))

    @classmethod
    def builtin(cls, name: str) -> "SearchSpace":
        """A space shipped with servetune (see :func:`builtin_spaces`)."""
        names = builtin_spaces()
        if name not in names:
            raise ConfigError(f"no built-in search space {name!r}; built-in spaces: "
                              f"{', '.join(names)}")
        text = resources.files("servetune.tuner").joinpath("spaces", f"{name}.toml").read_text()
        return cls.from_dict(tomllib.loads(text), source=f"<builtin:{name}>")

    @classmethod
    def load(cls, name_or_path: str) -> "SearchSpace":
        """A built-in space by name, else a TOML file path."""
        if name_or_path in builtin_spaces():
            return cls.builtin(name_or_path)
        return cls.from_toml(name_or_path)

    # -- encoding ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Dimension of the encoded unit hypercube."""
        return sum(p.width for p in self.params)

    @property
    def names(self) -> tuple[str, ...]:
        """Tunable parameter names, in declaration order."""
        return tuple(p.name for p in self.params)

    def decode(self, u: np.ndarray) -> dict:
        """Tunable values for an encoded point (entries are clipped to [0, 1])."""
        u = np.asarray(u, dtype=np.float64)
        if u.shape != (self.dim,):
            raise ConfigError(f"encoded point must have shape ({self.dim},); got {u.shape}")
        out, offset = {}, 0
        for p in self.params:
            out[p.name] = p.decode(u[offset:offset + p.width])
            offset += p.width
        return out

    def encode(self, tunables: dict) -> np.ndarray:
        """The encoded point of a (partial) tunable assignment; missing keys use the centre."""
        parts = [p.encode(tunables[p.name]) if p.name in tunables else np.full(p.width, 0.5)
                 for p in self.params]
        return np.concatenate(parts)

    def sample(self, rng: np.random.Generator) -> dict:
        """Uniform random tunable values (in the encoded space)."""
        return self.decode(rng.random(self.dim))

    # -- resolution -------------------------------------------------------------------------
    def resolve(self, tunables: dict) -> Point:
        """Full config (tunables + fixed + derived), repaired where allowed, checked."""
        by_name = {p.name: p for p in self.params}
        missing = set(by_name) - set(tunables)
        if missing:
            raise ConfigError(f"space {self.name!r}: values missing for {sorted(missing)}")
        values = {name: by_name[name].snap(tunables[name]) for name in by_name}
        repaired = False
        for _ in range(3):  # repairs can interact; a few passes settle them
            config = self._complete(values)
            broken = [c for c in self.constraints if not c.expr.evaluate(config)]
            if not broken:
                return Point(config, True, repaired)
            changed = False
            for constraint in broken:
                target = constraint.repair_target(by_name) if constraint.repair else None
                if target is None:
                    continue
                name, op = target
                bound = _rhs_value(constraint, config)
                param = by_name[name]
                fixed = param.floor(bound) if op in ("LtE", "Lt") else param.ceil(bound)
                if fixed is not None and op in ("Lt", "Gt") and fixed == bound:
                    step = param.step or 1
                    fixed = (param.floor(bound - step) if op == "Lt"
                             else param.ceil(bound + step))
                if fixed is not None and fixed != values[name]:
                    values[name] = fixed
                    changed = repaired = True
            if not changed:
                break
        config = self._complete(values)
        broken = tuple(c.expr.text for c in self.constraints if not c.expr.evaluate(config))
        return Point(config, not broken, repaired, broken)

    def _complete(self, values: dict) -> dict:
        config = {**values, **self.fixed}
        for name, expr in self.derived.items():
            config[name] = expr.evaluate(config)
        return config

    def default_tunables(self, engine_defaults: dict | None = None) -> dict:
        """Tunable values of the engine default: declared defaults, else ``engine_defaults``."""
        out = {}
        for p in self.params:
            value = p.default
            if value is None and engine_defaults and p.name in engine_defaults:
                value = engine_defaults[p.name]
            if value is None:
                value = p.decode(np.full(p.width, 0.5))
            out[p.name] = p.snap(value)
        return out

    def baseline_config(self, engine_defaults: dict | None = None) -> dict:
        """The engine's default configuration over this space's keys, *not* snapped into the
        space (an engine default may lie outside the searched ranges): the engine's own
        defaults first, then each parameter's declared ``default``, else its centre value."""
        values = {}
        for p in self.params:
            value = (engine_defaults or {}).get(p.name)
            if value is None:
                value = p.default
            if value is None:
                value = p.decode(np.full(p.width, 0.5))
            values[p.name] = value
        return self._complete(values)

    def grid_size(self, levels: int = 5) -> int:
        """How many points :meth:`grid` gives, computed without building any."""
        return math.prod(p.count(levels) for p in self.params)

    def grid(self, levels: int = 5) -> list[dict]:
        """Every combination of the discretised parameter values (tunables only).

        Raises:
            ConfigError: the grid has more points than a study may evaluate
                (:func:`~servetune.tuner._limits.check_grid_size`); nothing is built.
        """
        check_grid_size(self.name, self.grid_size(levels), _GRID_LIMIT)
        axes = [p.values(levels) for p in self.params]
        return [dict(zip(self.names, combo)) for combo in itertools.product(*axes)]

    def check_feasible(self, samples: int = _FEASIBILITY_SAMPLES, seed: int = 0) -> None:
        """Raise :class:`ConfigError` when no point of the space can satisfy the constraints.

        Resolves the declared defaults and ``samples`` seeded random points; a space none of
        them satisfies (after repairs) would give a study with no result. Expressions that
        cannot be evaluated fail here too, before any model is trained.
        """
        if not self.constraints and not self.derived:
            return
        rng = np.random.default_rng(seed)
        points = [self.default_tunables()] + [self.sample(rng) for _ in range(samples)]
        broken: dict[str, int] = {}
        for tunables in points:
            try:
                point = self.resolve(tunables)
            except ConfigError as exc:
                if str(exc).startswith(self.source):
                    raise
                raise ConfigError(f"{self.source}: {exc}") from None
            if point.feasible:
                return
            for text in point.violations:
                broken[text] = broken.get(text, 0) + 1
        worst = ", ".join(f"{text!r}" for text in sorted(broken, key=broken.get, reverse=True))
        raise ConfigError(f"{self.source}: no feasible configuration: the defaults and "
                          f"{samples} random points all violate {worst}; relax the "
                          "constraints or the ranges")

    # -- identity ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-data form, loadable with :meth:`from_dict`."""
        out: dict = {"name": self.name, "engine": self.engine}
        if self.description:
            out["description"] = self.description
        out["params"] = {p.name: p.to_dict() for p in self.params}
        if self.fixed:
            out["fixed"] = dict(self.fixed)
        if self.derived:
            out["derived"] = {k: v.text for k, v in self.derived.items()}
        if self.constraints:
            out["constraints"] = [{"expr": c.expr.text,
                                   "on_violation": "repair" if c.repair else "penalise"}
                                  for c in self.constraints]
        if self.targets:
            out["targets"] = dict(self.targets)
        return out

    def fingerprint(self) -> str:
        """A short content hash (a study refuses to resume against a changed space)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _rhs_value(constraint: Constraint, config: dict):
    body = constraint.expr.tree.body
    rhs = Expression(ast.unparse(body.comparators[0]),
                     ast.Expression(body=body.comparators[0]), frozenset())
    return rhs.evaluate(config)


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def builtin_spaces() -> list[str]:
    """Names of the spaces shipped in ``tuner/spaces/``."""
    folder = resources.files("servetune.tuner").joinpath("spaces")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))
