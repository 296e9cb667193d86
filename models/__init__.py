"""Step-time models: XGBoost training with honest evaluation, MLflow registry, compiled form.

``import servetune.models`` stays light (no MLflow import); the training and registry functions
import MLflow when called.
"""

from servetune.models._compiled import (
    CompiledForest,
    CompiledStepTime,
    forest_predict_matrix,
    forest_predict_row,
    step_time_batch,
)

__all__ = [
    "CompiledForest",
    "CompiledStepTime",
    "forest_predict_matrix",
    "forest_predict_row",
    "step_time_batch",
]
