"""servetune: a surrogate-model workbench for tuning LLM serving engines.

Real benchmark traces go into a Parquet store (:mod:`servetune.data`), XGBoost step-time
models are trained from them (:mod:`servetune.models`), a discrete-event simulator driven by
those models is searched with PSO (:mod:`servetune.tuner`), and the best candidates are
verified on real hardware (:mod:`servetune.tuner.hardware`).

The Python API (``load_workload``, ``train``, ``simulate``, ``tune``) and its result types are
imported on first use, so ``import servetune`` stays fast; see ``docs/python_api.md``.

Example:
    >>> import servetune
    >>> issubclass(servetune.InputError, servetune.ServetuneError)
    True
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "load_workload",
    "train",
    "simulate",
    "tune",
    "Workspace",
    "Workload",
    "TrainResult",
    "SimulationReport",
    "Candidate",
    "TuneResult",
    "ServetuneError",
    "InputError",
    "StoreError",
    "ConfigError",
    "ModelError",
    "RemoteError",
    "__version__",
]


class ServetuneError(Exception):
    """Base class of every error servetune raises on purpose.

    The CLI turns these into exit code 2 (bad input) or 1 (anything else) with the message on
    stderr; messages say what was wrong, where, and what to do.
    """

    exit_code = 1


class InputError(ServetuneError):
    """Bad user input: a file, a row, a field or a flag that is not what was expected.

    Args:
        message: what was expected and what was found.
        path: the offending file, if any.
        row: 1-based row or line number in that file, if known.
        field: the column or key at fault, if known.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 field: str | None = None) -> None:
        self.path = path
        self.row = row
        self.field = field
        self.detail = message
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ": ".join([", ".join(where)]) + ": " if where else ""
        super().__init__(prefix + message)


class StoreError(ServetuneError):
    """The trace store is unusable (corrupt manifest, unreadable files)."""


class ConfigError(ServetuneError):
    """An invalid configuration, search space or cluster specification."""

    exit_code = 2


class ModelError(ServetuneError):
    """Training, loading or evaluating a step-time model failed."""


class RemoteError(ServetuneError):
    """A remote host, transport or launched service failed."""


#: lazily imported public names -> their private module
_LAZY = {
    "load_workload": "servetune._api",
    "train": "servetune._api",
    "simulate": "servetune._api",
    "tune": "servetune._api",
    "SimulationReport": "servetune._results",
    "Candidate": "servetune._results",
    "TuneResult": "servetune._results",
    "Workspace": "servetune.data",
    "Workload": "servetune.data",
    "TrainResult": "servetune.models",
}


def __getattr__(name: str):
    """Import the API's names on first use (``import servetune`` stays light)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'servetune' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
