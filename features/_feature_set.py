"""Named, versioned feature sets: one definition, a vectorised form and a numba per-step kernel.

A feature set is defined ONCE, as a plain function ``formulas(r, k)`` that returns a tuple of
float64 expressions built from ``r[i]`` (batch composition: ``RAW_COLUMNS`` at 0..7, the previous
step's ``PREV_COLUMNS`` at 8..16) and ``k[KNOB_INDEX]`` (engine knobs) with arithmetic and
``np.maximum``/``np.minimum`` only. The same function serves both forms:

* ``FeatureSet.frame(df)`` calls it with ``r`` = the (17, n) step matrix and ``k`` = the (K, n) knob
  matrix, so every expression is a numpy column operation over all steps at once;
* ``FeatureSet.kernel(raw, knobs, out)`` is ``numba.njit`` of it called with one step's vectors,
  so each expression is the same IEEE arithmetic on scalars.

Both round the float64 result to float32 at the end (XGBoost's input precision), so they agree
bit for bit; ``tests/test_features_feature_set.py`` proves it.
"""

from __future__ import annotations

import hashlib
import pickle
import types

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numba
import numpy as np
import pandas as pd

from servetune import ConfigError, InputError
from servetune.features._columns import (
    KNOB_COLUMNS,
    PREV_COLUMNS,
    RAW_COLUMNS,
    STEP_INPUT_COLUMNS,
    add_previous_step,
    column_matrix,
    previous_step_matrix,
)

__all__ = ["FeatureSet", "make_feature_set", "select_features", "FeatureSetRegistry"]


@dataclass(frozen=True)
class FeatureSet:
    """A named, versioned step feature definition.

    Attributes:
        name: registry name, logged with every model (e.g. ``"step_v1"``).
        version: bumped whenever a formula changes; a model records the version it was trained on.
        feature_names: one name per output column.
        monotone: XGBoost monotone constraint per feature (+1: latency cannot fall as it grows).
        formulas: the single definition (see the module docstring).
        kernel: ``numba.njit`` per-step form ``kernel(raw f8[17], knobs f8[K], out f4[F]) -> None``;
            ``raw`` is the step's composition then its previous step's (``STEP_INPUT_COLUMNS``).
        base_terms: features whose non-negative linear combination (fitted per model, see
            ``models.StepTimeRegressor``) is the base step time the trees correct; empty for
            none. Every term must be >= 0 (or NaN, which counts as 0).
    """

    name: str
    version: int
    feature_names: tuple[str, ...]
    monotone: tuple[int, ...]
    formulas: Callable = field(repr=False, compare=False)
    kernel: Callable = field(repr=False, compare=False)
    base_terms: tuple[str, ...] = ()

    def __reduce__(self):
        """Pickle by registry name: the formulas and numba kernel are rebuilt on load.

        A process pool or Dask worker receives the shipped feature set of the same name; a set
        that is not the registered one of its name (or of another version) cannot be sent.
        """
        from servetune.features._definitions import get_feature_set

        registered = get_feature_set(self.name)
        if registered.version != self.version or registered.feature_names != self.feature_names:
            raise pickle.PicklingError(
                f"feature set {self.qualified_name} is not the registered {self.name!r} "
                f"({registered.qualified_name}); only registered feature sets can be pickled")
        return (get_feature_set, (self.name,))

    @property
    def n_features(self) -> int:
        """Number of features ``F``."""
        return len(self.feature_names)

    @property
    def base_indices(self) -> np.ndarray:
        """Column indices of ``base_terms`` (int64)."""
        return np.asarray([self.feature_names.index(t) for t in self.base_terms], dtype=np.int64)

    @property
    def qualified_name(self) -> str:
        """``name@vN``, e.g. ``step_v1@v1``."""
        return f"{self.name}@v{self.version}"

    def matrix(self, raw: np.ndarray, knobs: np.ndarray) -> np.ndarray:
        """Features of ``raw`` steps with ``knobs`` (n, K) or one (K,) vector, float32 (n, F).

        ``raw`` is (n, 17) (``STEP_INPUT_COLUMNS``: composition, then the previous step's) or
        (n, 8) (``RAW_COLUMNS``: consecutive steps of one run, each row's previous step being the
        row before it, zeros for the first, no graph captures).
        """
        raw = np.asarray(raw, dtype=np.float64)
        knobs = np.asarray(knobs, dtype=np.float64)
        if raw.ndim == 2 and raw.shape[1] == len(RAW_COLUMNS):
            raw = previous_step_matrix(raw)
        if raw.ndim != 2 or raw.shape[1] != len(STEP_INPUT_COLUMNS):
            raise InputError(f"expected raw steps of shape (n, {len(STEP_INPUT_COLUMNS)}) or "
                             f"(n, {len(RAW_COLUMNS)}), got {raw.shape}")
        if knobs.ndim == 1:
            knobs = np.broadcast_to(knobs, (raw.shape[0], knobs.shape[0]))
        if knobs.shape != (raw.shape[0], len(KNOB_COLUMNS)):
            raise InputError(f"expected knobs of shape ({raw.shape[0]}, {len(KNOB_COLUMNS)}) "
                             f"or ({len(KNOB_COLUMNS)},), got {knobs.shape}")
        columns = self.formulas(raw.T, knobs.T)
        out = np.empty((raw.shape[0], self.n_features), dtype=np.float32)
        for j, column in enumerate(columns):
            out[:, j] = column  # float64 -> float32, round to nearest, as the kernel does
        return out

    def frame(self, df: pd.DataFrame) -> np.ndarray:
        """Vectorised features of every row of ``df`` (RAW_COLUMNS + KNOB_COLUMNS), float32 (n, F).

        Knob columns ``df`` lacks are unknown (NaN).

        The previous step's composition is taken from ``PREV_COLUMNS`` when ``df`` has them all
        (``add_previous_step`` on the complete runs), else derived from ``df`` itself: the
        preceding step of the same ``run_id`` by ``step_index`` (row order without them).

        Raises:
            InputError: a required column is missing or not numeric.
        """
        if not all(name in df.columns for name in PREV_COLUMNS):
            df = add_previous_step(df)
        raw = column_matrix(df, STEP_INPUT_COLUMNS, what="step composition")
        # a knob column the frame lacks is an unknown knob (NaN, XGBoost's missing value), as
        # for an engine that does not report it; frames built before a knob was added still work
        missing = {name: np.nan for name in KNOB_COLUMNS if name not in df.columns}
        knobs = column_matrix(df.assign(**missing) if missing else df, KNOB_COLUMNS,
                              what="engine knob")
        return self.matrix(raw, knobs)

    def dataframe(self, df: pd.DataFrame) -> pd.DataFrame:
        """:meth:`frame` as a DataFrame with ``feature_names`` columns (for model signatures)."""
        return pd.DataFrame(self.frame(df), columns=list(self.feature_names), index=df.index)


def make_feature_set(name: str, version: int, features: Mapping[str, int],
                     formulas: Callable, base_terms: tuple[str, ...] = ()) -> FeatureSet:
    """Build a :class:`FeatureSet` from its formulas; ``features`` maps name -> monotone sign.

    ``base_terms`` names the features of the linear base step time (see ``FeatureSet``).
    """
    unknown = [t for t in base_terms if t not in features]
    if unknown:
        raise ConfigError(f"base terms {', '.join(unknown)} are not features of {name}")
    jitted = numba.njit(error_model="numpy", cache=False)(_named_by_content(formulas))
    n_features = len(features)

    def kernel(raw, knobs, out):
        values = jitted(raw, knobs)
        for j in range(n_features):
            out[j] = np.float32(values[j])

    return FeatureSet(name=name, version=version, feature_names=tuple(features),
                      monotone=tuple(int(v) for v in features.values()), formulas=formulas,
                      kernel=numba.njit(error_model="numpy")(_named_by_content(kernel)),
                      base_terms=tuple(base_terms))


def select_features(base: FeatureSet, name: str, version: int,
                    drop: tuple[str, ...]) -> FeatureSet:
    """A feature set made of ``base`` without the features named in ``drop`` (same formulas)."""
    unknown = [d for d in drop if d not in base.feature_names]
    if unknown:
        raise ConfigError(f"cannot drop {', '.join(unknown)}: not features of {base.name}")
    keep = tuple(i for i, n in enumerate(base.feature_names) if n not in drop)
    keep_array = np.asarray(keep, dtype=np.int64)
    base_formulas = base.formulas
    jitted = numba.njit(error_model="numpy")(_named_by_content(base_formulas))

    def formulas(r, k):
        values = base_formulas(r, k)
        return tuple(values[i] for i in keep)

    def kernel(raw, knobs, out):
        values = jitted(raw, knobs)
        for j in range(keep_array.shape[0]):
            out[j] = np.float32(values[keep_array[j]])

    return FeatureSet(name=name, version=version,
                      feature_names=tuple(base.feature_names[i] for i in keep),
                      monotone=tuple(base.monotone[i] for i in keep), formulas=formulas,
                      kernel=numba.njit(error_model="numpy")(_named_by_content(kernel)),
                      base_terms=tuple(t for t in base.base_terms if t not in drop))


def _named_by_content(func: Callable) -> Callable:
    """A copy of ``func`` whose qualified name ends in a digest of its code and closure.

    numba names machine code by module, qualified name and a per-process counter. Code that
    several processes compiled and cached on disk (the simulation loop, ``models._jit_cache``)
    can then hold two different functions under one name (every feature set's kernel is a
    ``make_feature_set.<locals>.kernel``), and loaded together the linker keeps only one of them.
    """
    cells = tuple(_value_key(cell.cell_contents) for cell in func.__closure__ or ())
    digest = hashlib.sha256(repr((_code_key(func.__code__), cells)).encode()).hexdigest()[:16]
    copy = types.FunctionType(func.__code__, func.__globals__, func.__name__, func.__defaults__,
                              func.__closure__)
    copy.__qualname__ = f"{func.__qualname__}_{digest}"
    return copy


def _code_key(code: types.CodeType) -> tuple:
    consts = tuple(_code_key(c) if isinstance(c, types.CodeType) else repr(c)
                   for c in code.co_consts)
    return code.co_qualname, code.co_code, code.co_names, consts


def _value_key(value: object) -> str:
    func = getattr(value, "py_func", value)  # a numba dispatcher: its Python function
    if callable(func) and hasattr(func, "__qualname__"):
        return f"{getattr(func, '__module__', '')}.{func.__qualname__}"
    if isinstance(value, np.ndarray):
        return repr((value.dtype.str, value.shape, value.tobytes()))
    return repr(value)


class FeatureSetRegistry:
    """Feature sets by name; duplicate names are refused, unknown ones list the valid names."""

    def __init__(self, feature_sets: tuple[FeatureSet, ...] = ()) -> None:
        entries: dict[str, FeatureSet] = {}
        for feature_set in feature_sets:
            if feature_set.name in entries:
                raise ConfigError(f"feature set {feature_set.name!r} is defined twice")
            entries[feature_set.name] = feature_set
        self._entries = MappingProxyType(entries)

    @property
    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def get(self, name: str) -> FeatureSet:
        """The feature set called ``name``.

        Raises:
            ConfigError: no such feature set (the message lists the valid names).
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown feature set {name!r}; expected one of "
                              f"{', '.join(self.names)}") from None
