"""One engine knob: its type and range, and every name it goes by.

A :class:`Knob` is the single declaration of a configuration key of an engine: its canonical
name (the engine's own config key), its type, range and default, the engine's real CLI flag, the
``runs`` table column it fills, the step-time model knob it feeds, and its aliases.

Example:
    >>> k = Knob("max_num_seqs", int, 256, "running sequences", minimum=1,
    ...          flag="--max-num-seqs", runs_column="max_num_seqs")
    >>> k.coerce("128", "vllm")
    128
    >>> k.render(128)
    ['--max-num-seqs', '128']
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from servetune import ConfigError

__all__ = ["Knob"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Knob:
    """One configuration key of an engine.

    Attributes:
        name: the canonical name: the engine's own config key (``ContinuousBatchingConfig`` field,
            vLLM ``EngineArgs`` field, SGLang ``ServerArgs`` field).
        kind: ``int``, ``float``, ``bool`` or ``str``.
        default: the engine's default; ``None`` means the engine resolves it at start-up (from
            memory, the attention implementation, ...), see the spec's ``resolve_defaults``.
        help: one line for ``--help`` and error messages.
        choices, minimum, maximum: the accepted values.
        nullable: ``None`` is a valid value (the engine decides).
        flag: the engine's CLI flag (for a bool: the flag that sets it true); ``None``: none.
        flag_off: for a bool, the flag that sets it false (``None``: nothing to add, false is
            the engine's default).
        runs_column: the ``runs`` table column this knob fills (``None``: none).
        feature: the step-time model knob (``servetune.features.KNOB_COLUMNS``) it feeds.
        invert: the column/feature holds ``not value`` (vLLM ``enforce_eager`` -> ``cuda_graph``).
        aliases: other spellings accepted in configurations, spaces and study files.
        negated_aliases: spellings of a bool knob that mean its negation (vLLM ``cuda_graph``
            = ``not enforce_eager``).
        simulated: the simulator models its effect (else it is carried but changes nothing).
    """

    name: str
    kind: type
    default: object
    help: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    flag: str | None = None
    flag_off: str | None = None
    runs_column: str | None = None
    feature: str | None = None
    invert: bool = False
    aliases: tuple[str, ...] = ()
    negated_aliases: tuple[str, ...] = ()
    simulated: bool = True

    @property
    def has_flag(self) -> bool:
        """Whether the engine's command line can express this knob."""
        return self.flag is not None or self.flag_off is not None

    def coerce(self, value: object, engine: str) -> object:
        """``value`` as this knob's type (strings from ``--set`` are parsed), or ConfigError."""
        where = f"{engine} config key {self.name!r}"
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{where} cannot be empty; {self.help}")
        try:
            out = _as_kind(value, self.kind)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be {_describe(self.kind)}; got {value!r}") from None
        if self.choices and out not in self.choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, self.choices))}; "
                              f"got {out!r}")
        if self.minimum is not None and out < self.minimum:
            raise ConfigError(f"{where} must be >= {self.minimum}; got {out!r}")
        if self.maximum is not None and out > self.maximum:
            raise ConfigError(f"{where} must be <= {self.maximum}; got {out!r}")
        return out

    def negate(self, value: object) -> object:
        """The knob's value for a negated alias's ``value`` (``None`` stays ``None``)."""
        if value is None:
            return None
        try:
            return not _as_kind(value, bool)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.name}: a negated alias expects true or false, got "
                              f"{value!r}") from None

    def render(self, value: object) -> list[str]:
        """The engine's argv for ``value`` (empty for ``None`` or a bool with nothing to add)."""
        if value is None:
            return []
        if self.kind is bool:
            chosen = self.flag if value else self.flag_off
            return [chosen] if chosen else []
        if isinstance(value, (list, dict)):
            return [self.flag, json.dumps(value)]
        return [self.flag, str(value)]

    def column_value(self, value: object) -> object:
        """The value stored in ``runs_column`` / fed to ``feature``."""
        if value is None:
            return None
        return (not value) if self.invert else value


def _as_kind(value: object, kind: type) -> object:
    if kind is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in _TRUE | _FALSE:
                raise ValueError(value)
            return low in _TRUE
        if isinstance(value, (bool, np.bool_, int, np.integer)) and value in (0, 1):
            return bool(value)
        raise ValueError(value)
    if kind is int:
        if isinstance(value, (bool, np.bool_)):
            raise ValueError(value)
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    if kind is float:
        if isinstance(value, (bool, np.bool_)):
            raise ValueError(value)
        out = float(value)
        if not np.isfinite(out):
            raise ValueError(value)
        return out
    return str(value)


def _describe(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
