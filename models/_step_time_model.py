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
from servetune.models._compiled import CompiledForest, CompiledStepTime
from servetune.models._registry import client_for, parse_model_uri

__all__ = ["StepTimeModel", "MODEL_ARTIFACT", "model_metadata"]

MODEL_ARTIFACT = "model"  # artifact path of the logged model inside its MLflow run


def model_metadata(feature_set: FeatureSet, log_target: bool) -> dict:
    """What a loader needs beyond the booster: how to build features and undo the target."""
    return {"servetune_step_time": json.dumps({
        "feature_set": feature_set.name, "feature_set_version": feature_set.version,
        "log_target": bool(log_target), "target": "duration_ms",
        "feature_names": list(feature_set.feature_names)})}


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
            model = cls.from_directory(Path(url2pathname(urlparse(artifact_uri).path))
                                       / MODEL_ARTIFACT)
        else:
            with tempfile.TemporaryDirectory(prefix="servetune-model-") as tmp:
                model = cls.from_directory(client.download_artifacts(mv.run_id, MODEL_ARTIFACT,
                                                                     tmp))
        return cls(booster=model.booster, feature_set=model.feature_set,
                   log_target=model.log_target, uri=model_uri, name=ref.name,
                   version=str(mv.version), run_id=mv.run_id)

    @classmethod
    def from_directory(cls, path: str | Path) -> "StepTimeModel":
        """Load a saved MLflow xgboost model directory (``MLmodel`` + ``model.ubj``)."""
        import xgboost as xgb
        from mlflow.models import Model

        path = Path(path)
        try:
            meta = json.loads((Model.load(str(path / "MLmodel")).metadata or {})
                              ["servetune_step_time"])
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
        return cls(booster=booster, feature_set=feature_set, log_target=bool(meta["log_target"]))

    def predict_margin(self, steps: pd.DataFrame) -> np.ndarray:
        """The booster's raw output for ``steps`` (RAW_COLUMNS + KNOB_COLUMNS), float32."""
        import xgboost as xgb

        features = self.feature_set.frame(steps)
        return self.booster.predict(xgb.DMatrix(features,
                                                feature_names=list(self.feature_set.feature_names)))

    def predict(self, steps: pd.DataFrame) -> np.ndarray:
        """Predicted durations in ms of every step (batch prediction through XGBoost)."""
        margin = self.predict_margin(steps).astype(np.float64)
        return np.exp(margin) if self.log_target else margin

    def compile(self) -> CompiledStepTime:
        """Flat tree arrays + the feature kernel, evaluated by numba (see ``CompiledStepTime``)."""
        forest = CompiledForest.from_booster(self.booster, log_target=self.log_target,
                                             feature_set=self.feature_set.name,
                                             feature_set_version=self.feature_set.version)
        return CompiledStepTime(forest, self.feature_set)
