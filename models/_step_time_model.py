"""``StepTimeModel``: a registered step-time model loaded back for prediction and compilation.

Example:
    >>> model = StepTimeModel.load("models:/step-time.transformers-cb.llama-1b-like.NVIDIA-H200"
    ...                            "@champion", tracking_uri=workspace.tracking_uri)  # doctest: +SKIP
    >>> ms = model.predict(steps_df)                                             # doctest: +SKIP
    >>> compiled = model.compile()   # flat arrays + numba kernel for the simulator  # doctest: +SKIP
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from servetune import ModelError
from servetune.features import FeatureSet, get_feature_set
from servetune.models import _pyfunc_loader
from servetune.models._compiled import (
    BASE_FLOOR_MS,
    NO_BASE,
    CompiledForest,
    CompiledStepTime,
    linear_base_matrix,
)
from servetune.models._domain import DOMAIN_ARTIFACT, TrainingDomain
from servetune.models._engine_constants import ENGINE_CONSTANTS_ARTIFACT, EngineConstants
from servetune.models._interval import INTERVAL_ARTIFACT, StepTimeInterval
from servetune.models._registry import client_for, parse_model_uri

__all__ = ["StepTimeModel", "MODEL_ARTIFACT", "model_metadata", "use_step_time_pyfunc"]

MODEL_ARTIFACT = "model"  # artifact path of the logged model inside its MLflow run


def model_metadata(feature_set: FeatureSet, log_target: bool, base_coef: np.ndarray = NO_BASE,
                   base_intercept: float = 0.0) -> dict:
    """What a loader needs beyond the booster: how to build features, the linear base the trees
    correct (coefficients by feature name) and how to undo the target."""
    base = None
    if np.asarray(base_coef).size:
        base = {"intercept": float(base_intercept), "floor_ms": BASE_FLOOR_MS,
                "coef": {name: float(base_coef[i]) for i, name in
                         enumerate(feature_set.feature_names) if name in feature_set.base_terms}}
    return {_pyfunc_loader.METADATA_KEY: json.dumps({
        "feature_set": feature_set.name, "feature_set_version": feature_set.version,
        "log_target": bool(log_target), "target": "duration_ms",
        "feature_names": list(feature_set.feature_names), "linear_base": base})}


def use_step_time_pyfunc(path: Path) -> None:
    """Point a saved model's ``python_function`` flavor at ``_pyfunc_loader`` (copied into the
    model's ``code/`` by ``code_paths``), which adds the linear base that MLflow's xgboost
    loader would leave out."""
    from mlflow.models import Model

    mlmodel = Path(path) / "MLmodel"
    model = Model.load(str(mlmodel))
    model.flavors["python_function"]["loader_module"] = _pyfunc_loader.__name__.rsplit(".", 1)[-1]
    model.save(str(mlmodel))


def _base_from_metadata(meta: dict, feature_set: FeatureSet, path: Path
                        ) -> tuple[np.ndarray, float]:
    base = meta.get("linear_base")
    if not base:
        return NO_BASE, 0.0
    coef = np.zeros(feature_set.n_features, dtype=np.float64)
    for name, value in base["coef"].items():
        if name not in feature_set.feature_names:
            raise ModelError(f"{path}: linear base term {name!r} is not a feature of "
                             f"{feature_set.name}")
        coef[feature_set.feature_names.index(name)] = float(value)
    return coef, float(base["intercept"])


@dataclass(frozen=True)
class StepTimeModel:
    """An XGBoost step-time booster with its feature set, as registered in MLflow."""

    booster: object = field(repr=False)
    feature_set: FeatureSet
    log_target: bool
    uri: str = ""
    name: str = ""
    version: str = ""
    run_id: str = ""
    base_coef: np.ndarray = field(default_factory=lambda: NO_BASE, repr=False)
    base_intercept: float = 0.0
    domain: TrainingDomain | None = field(default=None, repr=False)
    engine_constants: EngineConstants | None = field(default=None, repr=False)
    interval: StepTimeInterval | None = field(default=None, repr=False)

    @classmethod
    def load(cls, model_uri: str, *, tracking_uri: str) -> "StepTimeModel":
        """Load ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` from the given MLflow store.

        Raises:
            ModelError: no such model/alias/version, or it was trained on another feature-set
                version than this servetune defines.
        """
        from mlflow.exceptions import MlflowException

        ref = parse_model_uri(model_uri)
        client = client_for(tracking_uri)
        try:
            mv = (client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias
                  else client.get_model_version(ref.name, ref.version))
        except MlflowException as exc:
            raise ModelError(f"no model {model_uri} in {tracking_uri} ({exc.message}); train "
                             "one with `servetune train` or list them with `servetune models "
                             "ls`") from None
        artifact_uri = client.get_run(mv.run_id).info.artifact_uri
        if artifact_uri.startswith("file:"):  # the workspace's own artifact root: read in place
            root = Path(url2pathname(urlparse(artifact_uri).path))
            model = cls.from_directory(root / MODEL_ARTIFACT)
            domain = _read_domain(root / DOMAIN_ARTIFACT)
            constants = _read_constants(root / ENGINE_CONSTANTS_ARTIFACT)
            interval = _read_interval(root / INTERVAL_ARTIFACT)
        else:
            with tempfile.TemporaryDirectory(prefix="servetune-model-") as tmp:
                model = cls.from_directory(client.download_artifacts(mv.run_id, MODEL_ARTIFACT,
                                                                     tmp))
                try:
                    domain = _read_domain(Path(client.download_artifacts(
                        mv.run_id, DOMAIN_ARTIFACT, tmp)))
                except (MlflowException, OSError):
                    domain = None
                try:
                    constants = _read_constants(Path(client.download_artifacts(
                        mv.run_id, ENGINE_CONSTANTS_ARTIFACT, tmp)))
                except (MlflowException, OSError):
                    constants = None
                try:
                    interval = _read_interval(Path(client.download_artifacts(
                        mv.run_id, INTERVAL_ARTIFACT, tmp)))
                except (MlflowException, OSError):
                    interval = None
        return cls(booster=model.booster, feature_set=model.feature_set,
                   log_target=model.log_target, uri=model_uri, name=ref.name,
                   version=str(mv.version), run_id=mv.run_id, base_coef=model.base_coef,
                   base_intercept=model.base_intercept, domain=domain,
                   engine_constants=constants, interval=interval)

    @classmethod
    def from_directory(cls, path: str | Path) -> "StepTimeModel":
        """Load a saved MLflow xgboost model directory (``MLmodel`` + ``model.ubj``)."""
        import xgboost as xgb
        from mlflow.models import Model

        path = Path(path)
        try:
            meta = json.loads((Model.load(str(path / "MLmodel")).metadata or {})
                              [_pyfunc_loader.METADATA_KEY])
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ModelError(f"{path}: not a servetune step-time model ({exc})") from None
        feature_set = get_feature_set(meta["feature_set"])
        if int(meta["feature_set_version"]) != feature_set.version:
            raise ModelError(
                f"{path}: trained on {meta['feature_set']} version {meta['feature_set_version']}"
                f" but this servetune defines version {feature_set.version}; retrain it")
        files = sorted(path.glob("model.*"))
        if not files:
            raise ModelError(f"{path}: no model.ubj/model.json in the model directory")
        booster = xgb.Booster(model_file=str(files[0]))
        booster.set_param({"nthread": 1})
        coef, intercept = _base_from_metadata(meta, feature_set, path)
        return cls(booster=booster, feature_set=feature_set, log_target=bool(meta["log_target"]),
                   base_coef=coef, base_intercept=intercept)

    def predict_margin(self, steps: pd.DataFrame) -> np.ndarray:
        """The raw output for ``steps`` (RAW_COLUMNS + KNOB_COLUMNS): trees plus linear base,
        float32 as XGBoost returns it."""
        import xgboost as xgb

        features = self.feature_set.frame(steps)
        base = (linear_base_matrix(self.base_coef, self.base_intercept, self.log_target, features)
                if self.base_coef.size else None)
        return self.booster.predict(xgb.DMatrix(
            features, feature_names=list(self.feature_set.feature_names), base_margin=base))

    def predict(self, steps: pd.DataFrame) -> np.ndarray:
        """Predicted durations in ms of every step (batch prediction through XGBoost)."""
        margin = self.predict_margin(steps).astype(np.float64)
        return np.exp(margin) if self.log_target else margin

    def compile(self) -> CompiledStepTime:
        """Flat tree arrays + the feature kernel, evaluated by numba (see ``CompiledStepTime``);
        the training domain, the engine constants and the prediction interval ride along as
        its ``domain``, ``engine_constants`` and ``interval`` attributes (None when unknown)."""
        forest = CompiledForest.from_booster(self.booster, log_target=self.log_target,
                                             feature_set=self.feature_set.name,
                                             feature_set_version=self.feature_set.version,
                                             base_coef=self.base_coef,
                                             base_intercept=self.base_intercept)
        compiled = CompiledStepTime(forest, self.feature_set)
        object.__setattr__(compiled, "domain", self.domain)  # frozen dataclass, no slots
        object.__setattr__(compiled, "engine_constants", self.engine_constants)
        object.__setattr__(compiled, "interval", self.interval)
        return compiled


def _read_domain(path: Path) -> TrainingDomain | None:
    """The ``domain.json`` at ``path``; None when absent (a model registered before domains
    were recorded)."""
    if not path.is_file():
        return None
    try:
        return TrainingDomain.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable training domain ({exc})") from None


def _read_interval(path: Path) -> StepTimeInterval | None:
    """The ``interval.json`` at ``path``; None when absent (a model registered before
    prediction intervals were learned)."""
    if not path.is_file():
        return None
    try:
        return StepTimeInterval.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable prediction interval ({exc})") from None


def _read_constants(path: Path) -> EngineConstants | None:
    """The ``engine_constants.json`` at ``path``; None when absent (a model registered before
    engine constants were recorded)."""
    if not path.is_file():
        return None
    try:
        return EngineConstants.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable engine constants ({exc})") from None
