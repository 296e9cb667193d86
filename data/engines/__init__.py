"""One definition per serving engine: knobs, flags, defaults, launch command, policy, space.

Example:
    >>> from servetune.data.engines import get_engine, engine_names
    >>> engine_names()
    ('sglang', 'static', 'transformers-cb', 'vllm')
    >>> get_engine("transformers").name
    'transformers-cb'
    >>> get_engine("transformers-cb").launch_argv({"cuda_graph": True}, model="m")[:4]
    ['transformers', 'serve', 'm', '--continuous-batching']
"""

from __future__ import annotations

from types import MappingProxyType

from servetune import ConfigError
from servetune.data.engines._knob import Knob
from servetune.data.engines._others import SGLANG, STATIC
from servetune.data.engines._spec import (
    ENV_NAME,
    REDACTED,
    EngineSpec,
    KnobSplit,
    check_env_name,
    is_secret_name,
    redact_document,
    redact_secrets,
)
from servetune.data.engines._transformers import TRANSFORMERS_CB
from servetune.data.engines._vllm import VLLM

__all__ = ["Knob", "EngineSpec", "KnobSplit", "ENV_NAME", "REDACTED", "check_env_name",
           "is_secret_name", "redact_document", "redact_secrets", "ENGINES", "get_engine", "engine_names",
           "canonical_engine_name", "TRANSFORMERS_CB", "VLLM", "SGLANG", "STATIC"]


def _registry(*specs: EngineSpec) -> MappingProxyType:
    names: dict[str, EngineSpec] = {}
    for spec in specs:
        for spelling in (spec.name, *spec.aliases):
            if spelling in names:
                raise ConfigError(f"engine name {spelling!r} is declared twice")
            names[spelling] = spec
    return MappingProxyType(names)


#: every accepted engine name (canonical names and aliases) -> its spec
ENGINES = _registry(TRANSFORMERS_CB, VLLM, SGLANG, STATIC)


def engine_names() -> tuple[str, ...]:
    """The canonical engine names, sorted."""
    return tuple(sorted({spec.name for spec in ENGINES.values()}))


def get_engine(name: str) -> EngineSpec:
    """The spec of engine ``name`` (canonical or alias); ConfigError listing the valid names."""
    try:
        return ENGINES[name]
    except KeyError:
        aliases = sorted(n for n, s in ENGINES.items() if n != s.name)
        raise ConfigError(f"unknown engine {name!r}; expected one of "
                          f"{', '.join(engine_names())} (aliases: {', '.join(aliases)})"
                          ) from None


def canonical_engine_name(name: str) -> str:
    """``name``'s canonical spelling (``transformers`` -> ``transformers-cb``)."""
    return get_engine(name).name
