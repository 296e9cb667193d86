"""``EngineSpec``: everything servetune knows about one serving engine, in one place.

The simulator, search spaces, the export of launch arguments, the hardware launchers, the
measured-run records, the collector and the CLI all read an engine's knobs from its spec;
nothing else names a knob, a flag or an engine alias.

Example:
    >>> from servetune.data.engines import get_engine
    >>> spec = get_engine("vllm")
    >>> spec.canonical({"tp": 2, "max_num_seqs": 64})
    {'tensor_parallel_size': 2, 'max_num_seqs': 64}
    >>> spec.launch_argv({"tp": 2}, model="m")
    ['vllm', 'serve', 'm', '--tensor-parallel-size', '2']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from servetune import ConfigError
from servetune.data.engines._knob import Knob

__all__ = ["EngineSpec", "KnobSplit", "check_env_name", "ENV_NAME", "redact_secrets",
           "is_secret_name"]

#: what an environment variable name may be: a leading letter or underscore, then letters,
#: digits and underscores (so no name can read as an option of ``env`` or a shell word)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
REDACTED = "***"


def is_secret_name(name: str) -> bool:
    """Whether an environment variable called ``name`` holds a secret (``*TOKEN*``, ``*KEY*``,
    ``*SECRET*``, ``*PASSWORD*``, ...)."""
    return bool(_SECRET_NAME.search(name))


def redact_secrets(config: Mapping[str, object]) -> dict:
    """``config`` with the values of secret ``env.NAME`` entries replaced by ``***``: what may be
    stored, logged or printed (the launch itself gets the real values)."""
    return {k: (REDACTED if k.startswith("env.") and is_secret_name(k[4:]) else v)
            for k, v in config.items()}


def redact_document(value):
    """A JSON-like document (dicts, lists, scalars) with every secret ``env.NAME`` entry's value
    replaced by ``***``, at any depth; also a space's ``[params."env.NAME"]`` choices, secret
    names in an ``env`` mapping and a ``NAME=value`` string whose NAME is secret. What goes to
    MLflow and ``--json`` output."""
    if isinstance(value, Mapping):
        return {k: _redact_item(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_document(v) for v in value]
    if isinstance(value, str) and "=" in value:
        name, _, _ = value.partition("=")
        if ENV_NAME.fullmatch(name) and is_secret_name(name):
            return f"{name}={REDACTED}"
    return value


def _redact_item(key, value):
    """One mapping entry of :func:`redact_document`: ``env.NAME`` keys, and an ``env`` mapping
    of variables (a launch's environment)."""
    if isinstance(key, str) and key.startswith("env.") and is_secret_name(key[4:]):
        return _redact_entry(value)
    if key == "env" and isinstance(value, Mapping):
        return {n: (REDACTED if isinstance(n, str) and is_secret_name(n) else redact_document(v))
                for n, v in value.items()}
    return redact_document(value)


def _redact_entry(value):
    """A secret entry: a value becomes ``***``; a space parameter keeps its shape (type,
    choices become ``***``)."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if k in ("choices", "default", "low", "high", "value") else v)
                for k, v in value.items()}
    return REDACTED


def check_env_name(name: str, where: str = "environment variable") -> str:
    """``name`` if it is a valid environment variable name, else ConfigError naming ``where``."""
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        raise ConfigError(f"{where}: {name!r} is not an environment variable name (expected "
                          "letters, digits and _, not starting with a digit)")
    return name


@dataclass(frozen=True)
class KnobSplit:
    """A configuration split by what the engine's command line can take.

    Attributes:
        flags: argv for the knobs that have a flag (in the configuration's order).
        env: ``env.NAME`` entries as environment variables.
        config_only: knobs the engine takes only through its config object (no CLI flag).
        unknown: keys that are no knob of the engine at all.
    """

    flags: list[str]
    env: dict[str, str]
    config_only: list[str]
    unknown: list[str]


@dataclass(frozen=True)
class EngineSpec:
    """One serving engine: knobs, names, defaults, launch command, simulator policy, space.

    Attributes:
        name: the engine's one name in every command and in the trace store (``engine``).
        description: one line.
        knobs: the engine's knobs (:class:`Knob`), canonical names = the engine's config keys.
        aliases: other spellings of the engine's name that are accepted.
        program: the launch program (``("vllm", "serve")``); empty: not launchable.
        model_flag: the flag before the model (``None``: the model is positional).
        fixed_args: arguments every launch carries (``--continuous-batching``).
        request_extras: extra JSON fields of every benchmark request (``ignore_eos``).
        policy: the simulator policy's name (``servetune.tuner.simulator``), ``None`` if none.
        space: the built-in search space's name (``tuner/spaces/NAME.toml``), ``None`` if none.
        resolve_defaults: ``(config, hardware) -> config`` filling the knobs the engine resolves
            itself at start-up (``None`` defaults) as the engine does, from ``hardware`` (a
            mapping with ``gpu_memory_gib``, ``gpu_name``, ... where known).
        source: where the knob table was taken from (engine version, file).
    """

    name: str
    description: str
    knobs: tuple[Knob, ...]
    aliases: tuple[str, ...] = ()
    program: tuple[str, ...] = ()
    model_flag: str | None = None
    fixed_args: tuple[str, ...] = ()
    request_extras: Mapping[str, object] = field(default_factory=dict)
    policy: str | None = None
    space: str | None = None
    resolve_defaults: Callable[[dict, Mapping[str, object]], dict] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        names: dict[str, str] = {}
        negated = set()
        for knob in self.knobs:
            negated.update(knob.negated_aliases)
            for spelling in (knob.name, *knob.aliases, *knob.negated_aliases):
                if spelling in names:
                    raise ConfigError(f"engine {self.name}: {spelling!r} names both "
                                      f"{names[spelling]!r} and {knob.name!r}")
                names[spelling] = knob.name
        object.__setattr__(self, "_names", MappingProxyType(names))
        object.__setattr__(self, "_negated", frozenset(negated))
        object.__setattr__(self, "_by_name", MappingProxyType({k.name: k for k in self.knobs}))

    # --- names ---------------------------------------------------------------------------

    @property
    def knob_names(self) -> tuple[str, ...]:
        """Canonical knob names, in declaration order."""
        return tuple(k.name for k in self.knobs)

    @property
    def spellings(self) -> Mapping[str, str]:
        """Every accepted spelling (name or alias) -> canonical name."""
        return self._names  # type: ignore[attr-defined]

    def knob(self, name: str) -> Knob:
        """The knob called ``name`` (or one of its aliases); ConfigError listing the valid ones."""
        canonical = self.spellings.get(name)
        if canonical is None:
            raise ConfigError(f"{self.name} has no knob {name!r}; its knobs: "
                              f"{self.describe_knobs()}")
        return self._by_name[canonical]  # type: ignore[attr-defined]

    def describe_knobs(self) -> str:
        """``name (alias, ...)`` for every knob, for error messages."""
        def spelled(k: Knob) -> str:
            others = [*k.aliases, *(f"not {a}" for a in k.negated_aliases)]
            return k.name + (f" ({', '.join(others)})" if others else "")

        return ", ".join(spelled(k) for k in self.knobs)

    def canonical(self, config: Mapping[str, object], *, strict: bool = True) -> dict:
        """``config`` with every alias replaced by its canonical name.

        Keys starting with ``env.`` pass through. Unknown keys raise ConfigError naming the
        engine's knobs (``strict``), or pass through unchanged.

        Raises:
            ConfigError: an unknown key (``strict``) or a knob given twice under two spellings.
        """
        out: dict = {}
        given: dict[str, str] = {}
        for key, value in config.items():
            canonical = self.spellings.get(key)
            if canonical is None:
                if strict and not key.startswith("env."):
                    raise ConfigError(f"{self.name} has no knob {key!r}; its knobs: "
                                      f"{self.describe_knobs()}")
                out[key] = value
                continue
            if canonical in given:
                raise ConfigError(f"{self.name} configuration gives {given[canonical]!r} and "
                                  f"{key!r}, which are the same knob {canonical!r}; keep one")
            given[canonical] = key
            if key in self._negated:  # type: ignore[attr-defined]
                value = self._by_name[canonical].negate(value)  # type: ignore[attr-defined]
            out[canonical] = value
        return out

    # --- values --------------------------------------------------------------------------

    def default_config(self) -> dict:
        """Every knob at the engine's default (``None``: resolved by the engine at start-up)."""
        return {k.name: k.default for k in self.knobs}

    def coerce(self, config: Mapping[str, object]) -> dict:
        """``config`` in canonical names, every value typed and range-checked."""
        canonical = self.canonical(config)
        return {key: (self._by_name[key].coerce(value, self.name)  # type: ignore[attr-defined]
                      if key in self._by_name else value)  # type: ignore[attr-defined]
                for key, value in canonical.items()}

    def resolve(self, config: Mapping[str, object] | None = None,
                hardware: Mapping[str, object] | None = None) -> dict:
        """The engine's defaults overlaid with ``config`` (canonical, typed), then the defaults
        the engine resolves itself at start-up filled in as it does (``resolve_defaults``)."""
        values = {**self.default_config(), **self.coerce(config or {})}
        if self.resolve_defaults is None:
            return values
        return dict(self.resolve_defaults(values, dict(hardware or {})))

    def runs_columns(self, config: Mapping[str, object]) -> dict:
        """The ``runs`` table's knob columns of ``config`` (any spelling; unknown keys and
        values of the wrong type are left out: the run's JSON config keeps them)."""
        out: dict = {}
        for key, value in self.canonical(config, strict=False).items():
            knob = self._by_name.get(key)  # type: ignore[attr-defined]
            if knob is None or knob.runs_column is None:
                continue
            try:
                typed = knob.coerce(value, self.name)
            except ConfigError:
                continue
            out[knob.runs_column] = knob.column_value(typed)
        return out

    def model_knobs(self, config: Mapping[str, object]) -> dict[str, float]:
        """The step-time model knobs (``features.KNOB_COLUMNS`` names) of a resolved config."""
        out: dict[str, float] = {}
        for key, value in self.canonical(config, strict=False).items():
            knob = self._by_name.get(key)  # type: ignore[attr-defined]
            if knob is not None and knob.feature is not None and value is not None:
                out[knob.feature] = float(knob.column_value(value))
        return out

    # --- launching -----------------------------------------------------------------------

    def split(self, config: Mapping[str, object]) -> KnobSplit:
        """Flags, environment, config-only knobs and unknown keys of ``config``."""
        flags: list[str] = []
        env: dict[str, str] = {}
        config_only: list[str] = []
        unknown: list[str] = []
        for key, value in self.canonical(config, strict=False).items():
            if key.startswith("env."):
                env[check_env_name(key[4:], f"{self.name} knob {key!r}")] = str(value)
                continue
            knob = self._by_name.get(key)  # type: ignore[attr-defined]
            if knob is None:
                unknown.append(key)
            elif value is None:
                continue
            elif not knob.has_flag:
                config_only.append(key)
            else:
                flags += knob.render(knob.coerce(value, self.name))
        return KnobSplit(flags, env, config_only, unknown)

    def launchable(self) -> tuple[str, ...]:
        """The knobs the engine's command line can take."""
        return tuple(k.name for k in self.knobs if k.has_flag)

    def check_launchable(self, config: Mapping[str, object], *, unapplied: str = "error"
                         ) -> KnobSplit:
        """:meth:`split`, refusing (``unapplied="error"``) any knob the command line cannot take.

        Raises:
            ConfigError: names the knobs that cannot be applied and lists those that can.
        """
        if unapplied not in ("error", "record"):
            raise ConfigError(f"unapplied= must be 'error' or 'record', got {unapplied!r}")
        parts = self.split(config)
        bad = parts.unknown + parts.config_only
        if bad and unapplied == "error":
            raise ConfigError(
                f"{self.name}: the engine's command line cannot take {', '.join(bad)}; it can "
                f"take: {', '.join(self.launchable()) or 'none'}. Drop them from the candidate, "
                "or record them as not applied (--unapplied record)")
        return parts

    def launch_argv(self, config: Mapping[str, object], *, model: str,
                    program: tuple[str, ...] = (), extra: tuple[str, ...] = (),
                    unapplied: str = "error") -> list[str]:
        """The engine's start command for ``config`` serving ``model``.

        Args:
            program: replaces :attr:`program` (a cluster's ``start_command``).
            extra: arguments placed after the fixed ones and before the knobs (host, port).
        """
        if not (program or self.program):
            raise ConfigError(f"{self.name} has no launch command")
        parts = self.check_launchable(config, unapplied=unapplied)
        head = [*(program or self.program)]
        head += [self.model_flag, model] if self.model_flag else [model]
        return [*head, *self.fixed_args, *extra, *parts.flags]

    def config_kwargs(self, config: Mapping[str, object]) -> dict:
        """The engine's config-object keyword arguments for ``config`` (known knobs only)."""
        return {key: value for key, value in self.coerce(
            {k: v for k, v in self.canonical(config, strict=False).items()
             if k in self._by_name}).items()  # type: ignore[attr-defined]
            if value is not None}
