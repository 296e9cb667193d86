"""XGBoost trees flattened into numpy arrays, evaluated by numba without Python in between.

The simulator's hot loop calls, per simulated step::

    feature_set.kernel(raw, knobs, buf)
    margin = forest_predict_row(feature, threshold, left, right, default_left, value, roots,
                                base_margin, buf)
    margin += linear_base_margin(base_coef, base_intercept, log_target, buf)
    ms = exp(margin) if log_target else margin

A model trained on a feature set with ``base_terms`` has a linear base step time (non-negative
coefficients over those features); its trees learned the correction on top of it, which lets the
prediction extrapolate along the base where trees are flat. Without one, ``base_coef`` is empty
and the base margin is 0.

Example:
    >>> import numpy as np, xgboost as xgb
    >>> X = np.arange(40, dtype=np.float32).reshape(20, 2); y = X[:, 0] * 2.0
    >>> booster = xgb.train({"max_depth": 2}, xgb.DMatrix(X, label=y), num_boost_round=3)
    >>> forest = CompiledForest.from_booster(booster)
    >>> bool(np.allclose(forest.predict_margin(X), booster.predict(xgb.DMatrix(X)), rtol=1e-6))
    True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import numba
import numpy as np

from servetune import ModelError
from servetune.features import KNOB_COLUMNS, RAW_COLUMNS, STEP_INPUT_COLUMNS, FeatureSet
from servetune.features._columns import previous_step_matrix
from servetune.models._jit_cache import bind_cached, cached_entry

__all__ = ["CompiledForest", "CompiledStepTime", "forest_predict_row", "forest_predict_matrix",
           "linear_base_margin", "linear_base_matrix", "step_time_batch", "BASE_FLOOR_MS",
           "NO_BASE"]

BASE_FLOOR_MS = 1e-3  # the linear base is clipped here before its log (all terms are >= 0)
NO_BASE = np.zeros(0, dtype=np.float64)  # base_coef of a model without a linear base

# Objectives whose prediction is the raw margin (identity link).
_IDENTITY_OBJECTIVES = ("reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror",
                        "reg:quantileerror")


@numba.njit(nogil=True, cache=True)
def forest_predict_row(feature, threshold, left, right, default_left, value, roots, base_margin,
                       x):
    """Raw margin of one feature row ``x`` (float32): base margin plus one leaf per tree.

    XGBoost's rule: ``x[f] < threshold`` goes left; NaN follows the node's default direction.
    """
    total = base_margin
    for t in range(roots.shape[0]):
        node = roots[t]
        while feature[node] >= 0:
            v = x[feature[node]]
            if np.isnan(v):
                node = left[node] if default_left[node] else right[node]
            elif v < threshold[node]:
                node = left[node]
            else:
                node = right[node]
        total += value[node]
    return total


@numba.njit(nogil=True, cache=True)
def forest_predict_matrix(feature, threshold, left, right, default_left, value, roots,
                          base_margin, x):
    """Raw margins of every row of a float32 feature matrix ``x`` (n, F)."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        out[i] = forest_predict_row(feature, threshold, left, right, default_left, value, roots,
                                    base_margin, x[i])
    return out


@numba.njit(nogil=True, cache=True)
def linear_base_margin(base_coef, base_intercept, log_target, x):
    """The linear base's margin for feature row ``x``: ``intercept + coef . x`` (NaN features
    count as 0), its log (clipped at ``BASE_FLOOR_MS``) for a log target; 0 without a base."""
    if base_coef.shape[0] == 0:
        return 0.0
    total = base_intercept
    for j in range(base_coef.shape[0]):
        c = base_coef[j]
        if c != 0.0:
            v = x[j]
            if not np.isnan(v):
                total += c * v
    if log_target:
        return np.log(max(total, BASE_FLOOR_MS))
    return total


@numba.njit(nogil=True, cache=True)
def linear_base_matrix(base_coef, base_intercept, log_target, x):
    """:func:`linear_base_margin` of every row of a float32 feature matrix ``x`` (n, F)."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        out[i] = linear_base_margin(base_coef, base_intercept, log_target, x[i])
    return out


# The kernel argument is a dispatcher, which numba's cache cannot key on: ``step_time_batch``
# binds it (models._jit_cache) so that each feature set's batch loop is cached on disk.
@numba.njit(nogil=True)
def _step_time_batch(kernel, n_features, feature, threshold, left, right, default_left, value,
                     roots, base_margin, base_coef, base_intercept, log_target, raw, knobs):
    """Step times (ms) of ``raw`` (n, 17) steps (composition, then the previous step's) under one
    ``knobs`` vector: kernel, forest plus linear base, exp."""
    buf = np.empty(n_features, dtype=np.float32)
    out = np.empty(raw.shape[0], dtype=np.float64)
    for i in range(raw.shape[0]):
        kernel(raw[i], knobs, buf)
        margin = forest_predict_row(feature, threshold, left, right, default_left, value, roots,
                                    base_margin, buf)
        margin += linear_base_margin(base_coef, base_intercept, log_target, buf)
        out[i] = np.exp(margin) if log_target else margin
    return out


step_time_batch = bind_cached(_step_time_batch, ("kernel",))


@numba.njit
def _apply_kernel(kernel, raw, knobs, out):
    """``kernel(raw, knobs, out)``; bound to a feature set's kernel, a form cached on disk."""
    kernel(raw, knobs, out)


@dataclass(frozen=True)
class CompiledForest:
    """An XGBoost tree ensemble as flat arrays (one entry per node, all trees concatenated).

    Attributes:
        feature: split feature index, -1 for a leaf (int32).
        threshold: split value; ``x < threshold`` goes left (float32).
        left, right: child node indices (int32; -1 for a leaf).
        default_left: 1 when a missing value goes left (uint8).
        value: leaf value (float32; 0 for inner nodes).
        roots: node index of each tree's root (int32).
        base_margin: the model's base score (float64; 0 with a linear base).
        log_target: the margin is log(duration_ms).
        base_coef, base_intercept: the linear base (float64 coefficient per feature, empty for
            none; see :func:`linear_base_margin`).
        feature_set, feature_set_version: the features the forest was trained on.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    default_left: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    base_margin: float
    log_target: bool = False
    feature_set: str = ""
    feature_set_version: int = 0
    feature_names: tuple[str, ...] = field(default=(), repr=False)
    base_coef: np.ndarray = field(default_factory=lambda: NO_BASE, repr=False)
    base_intercept: float = 0.0

    @classmethod
    def from_booster(cls, booster, *, log_target: bool = False, feature_set: str = "",
                     feature_set_version: int = 0, base_coef: np.ndarray | None = None,
                     base_intercept: float = 0.0) -> "CompiledForest":
        """Flatten an ``xgboost.Booster`` (gbtree, one output, identity-link objective).

        ``base_coef``/``base_intercept``: the linear base the booster was trained on top of (as
        its ``base_margin``; XGBoost then ignores the booster's base score, so it is 0 here).

        Raises:
            ModelError: the booster is not a single-output tree model with an identity link.
        """
        model = json.loads(bytes(booster.save_raw("json")))
        learner = model["learner"]
        objective = learner["objective"]["name"]
        if objective not in _IDENTITY_OBJECTIVES:
            raise ModelError(f"cannot compile a booster with objective {objective!r}; expected "
                             f"one of {', '.join(_IDENTITY_OBJECTIVES)}")
        booster_kind = learner["gradient_booster"]["name"]
        if booster_kind != "gbtree":
            raise ModelError(f"cannot compile a {booster_kind!r} booster; expected gbtree")
        params = learner["learner_model_param"]
        if int(params.get("num_target", "1")) != 1 or int(params.get("num_class", "0")) > 1:
            raise ModelError("cannot compile a multi-output booster; expected one target")
        trees = learner["gradient_booster"]["model"]["trees"]
        feature, threshold, left, right, default_left, value, roots = [], [], [], [], [], [], []
        offset = 0
        for tree in trees:
            if any(int(s) != 0 for s in tree.get("split_type", [])):
                raise ModelError("cannot compile categorical splits; use numeric features")
            lefts = np.asarray(tree["left_children"], dtype=np.int64)
            rights = np.asarray(tree["right_children"], dtype=np.int64)
            is_leaf = lefts < 0
            conditions = np.asarray(tree["split_conditions"], dtype=np.float32)
            roots.append(offset)
            feature.append(np.where(is_leaf, -1, np.asarray(tree["split_indices"], np.int64)))
            threshold.append(np.where(is_leaf, np.float32(0), conditions))
            value.append(np.where(is_leaf, conditions, np.float32(0)))
            left.append(np.where(is_leaf, -1, lefts + offset))
            right.append(np.where(is_leaf, -1, rights + offset))
            default_left.append(np.asarray(tree["default_left"], dtype=np.uint8))
            offset += len(lefts)
        if not trees:
            raise ModelError("the booster has no trees; train it first")
        coef = NO_BASE if base_coef is None else np.ascontiguousarray(base_coef, np.float64)
        return cls(
            feature=np.concatenate(feature).astype(np.int32),
            threshold=np.concatenate(threshold).astype(np.float32),
            left=np.concatenate(left).astype(np.int32),
            right=np.concatenate(right).astype(np.int32),
            default_left=np.concatenate(default_left).astype(np.uint8),
            value=np.concatenate(value).astype(np.float32),
            roots=np.asarray(roots, dtype=np.int32),
            base_margin=0.0 if coef.size else _parse_base_score(params["base_score"]),
            log_target=log_target,
            feature_set=feature_set,
            feature_set_version=feature_set_version,
            feature_names=tuple(booster.feature_names or ()),
            base_coef=coef,
            base_intercept=float(base_intercept),
        )

    @property
    def arrays(self) -> tuple:
        """``(feature, threshold, left, right, default_left, value, roots, base_margin)``, the
        leading arguments of :func:`forest_predict_row`."""
        return (self.feature, self.threshold, self.left, self.right, self.default_left,
                self.value, self.roots, self.base_margin)

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.roots.shape[0])

    @property
    def base_arrays(self) -> tuple:
        """``(base_coef, base_intercept)``, the leading arguments of :func:`linear_base_margin`."""
        return self.base_coef, self.base_intercept

    def scaled(self, factor: float) -> "CompiledForest":
        """The same forest with every prediction multiplied by ``factor`` (> 0): log(factor)
        added to the base margin of a log target, else leaves and linear base scaled."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ModelError(f"a step-time scale must be a finite number > 0; got {factor}")
        if self.log_target:
            return replace(self, base_margin=self.base_margin + math.log(factor))
        return replace(self, value=(self.value * np.float32(factor)).astype(np.float32),
                       base_margin=self.base_margin * factor,
                       base_coef=self.base_coef * factor,
                       base_intercept=self.base_intercept * factor)

    def predict_margin(self, x: np.ndarray) -> np.ndarray:
        """Raw margins of a feature matrix (n, F), float64: trees plus the linear base."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return (forest_predict_matrix(*self.arrays, x)
                + linear_base_matrix(*self.base_arrays, self.log_target, x))


def _parse_base_score(text: str | float) -> float:
    """XGBoost stores the base score as ``"5E-1"`` (2.x) or ``"[5E-1]"`` (3.x)."""
    raw = str(text).strip().strip("[]").split(",")[0]
    value = float(raw)
    if not math.isfinite(value):
        raise ModelError(f"the booster's base score is not finite: {text!r}")
    return float(np.float32(value))


@dataclass(frozen=True)
class CompiledStepTime:
    """A compiled forest bundled with the feature set it was trained on.

    Example (inside a numba-jitted simulator loop, ``c`` a CompiledStepTime)::

        kernel, (f, t, l, r, d, v, roots, base) = c.kernel, c.arrays
        coef, intercept = c.base_arrays
        kernel(raw_step, knobs, buf)
        ms = np.exp(forest_predict_row(f, t, l, r, d, v, roots, base, buf)
                    + linear_base_margin(coef, intercept, True, buf))
    """

    forest: CompiledForest
    feature_set: FeatureSet

    def __post_init__(self) -> None:
        if self.forest.feature_set and self.forest.feature_set != self.feature_set.name:
            raise ModelError(f"forest was trained on feature set {self.forest.feature_set!r}, "
                             f"not {self.feature_set.name!r}")
        if self.forest.feature_set_version not in (0, self.feature_set.version):
            raise ModelError(
                f"forest was trained on {self.forest.feature_set} version "
                f"{self.forest.feature_set_version}, but this is version "
                f"{self.feature_set.version}; retrain the model")
        n_coef = self.forest.base_coef.shape[0]
        if n_coef not in (0, self.feature_set.n_features):
            raise ModelError(f"the linear base has {n_coef} coefficients, expected one per "
                             f"feature of {self.feature_set.name} ({self.feature_set.n_features})")
        used = self.forest.feature[self.forest.feature >= 0]
        if used.size and int(used.max()) >= self.feature_set.n_features:
            raise ModelError("forest splits on a feature the feature set does not have")

    def scaled(self, factor: float) -> "CompiledStepTime":
        """This model with every step time multiplied by ``factor`` (the prediction interval's
        low or high ratio); its domain, engine constants and interval ride along."""
        out = CompiledStepTime(self.forest.scaled(factor), self.feature_set)
        for name in ("domain", "engine_constants", "interval"):
            object.__setattr__(out, name, getattr(self, name, None))
        return out

    @property
    def kernel(self):
        """The feature set's numba kernel ``kernel(raw, knobs, out)``, in a form numba caches on
        disk (a process calling it from Python loads it instead of compiling it)."""
        kernel = self.feature_set.kernel
        return cached_entry(_apply_kernel, kernel=kernel) or kernel

    @property
    def n_features(self) -> int:
        """Length of the feature buffer the kernel fills."""
        return self.feature_set.n_features

    @property
    def arrays(self) -> tuple:
        """The leading arguments of :func:`forest_predict_row`."""
        return self.forest.arrays

    @property
    def base_arrays(self) -> tuple:
        """The leading arguments of :func:`linear_base_margin`."""
        return self.forest.base_arrays

    @property
    def log_target(self) -> bool:
        """Whether the margin is log(ms)."""
        return self.forest.log_target

    def predict_ms(self, raw: np.ndarray, knobs: np.ndarray) -> np.ndarray:
        """Step durations in ms of ``raw`` steps under ``knobs`` (K,).

        ``raw`` is (n, 17) (``STEP_INPUT_COLUMNS``: composition, then the previous step's) or
        (n, 8) (``RAW_COLUMNS``: consecutive steps of one run; each row's previous step is the
        row before it, zeros for the first, no graph captures).
        """
        raw = np.ascontiguousarray(raw, dtype=np.float64)
        knobs = np.ascontiguousarray(knobs, dtype=np.float64)
        if raw.ndim == 1:
            raw = raw[None, :]
        if raw.ndim == 2 and raw.shape[1] == len(RAW_COLUMNS):
            raw = previous_step_matrix(raw)
        if raw.ndim != 2 or raw.shape[1] != len(STEP_INPUT_COLUMNS):
            raise ModelError(f"expected raw steps of shape (n, {len(STEP_INPUT_COLUMNS)}) or "
                             f"(n, {len(RAW_COLUMNS)}), got {raw.shape}")
        if knobs.shape != (len(KNOB_COLUMNS),):
            raise ModelError(f"expected a knob vector of length {len(KNOB_COLUMNS)} "
                             f"({', '.join(KNOB_COLUMNS)}), got shape {knobs.shape}")
        return step_time_batch(self.kernel, self.n_features, *self.arrays, *self.base_arrays,
                               self.forest.log_target, raw, knobs)
