"""Step-time models: XGBoost training with honest evaluation, MLflow registry, compiled form.

``import servetune.models`` stays light: MLflow is imported only inside the functions that
train, log or load.

Example:
    >>> from servetune.data import Workspace
    >>> from servetune.models import StepTimeModel, ensure_champion
    >>> ws = Workspace.resolve("/tmp/ws")
    >>> uri = ensure_champion(ws)                       # trains once if needed  # doctest: +SKIP
    >>> model = StepTimeModel.load(uri, tracking_uri=ws.tracking_uri)          # doctest: +SKIP
    >>> compiled = model.compile()     # numba-evaluable tree arrays + feature kernel  # doctest: +SKIP
"""

from servetune.models._compiled import (
    CompiledForest,
    CompiledStepTime,
    forest_predict_matrix,
    forest_predict_row,
    linear_base_margin,
    linear_base_matrix,
    step_time_batch,
)
from servetune.models._domain import (
    DOMAIN_COLUMNS,
    TrainingDomain,
    domain_report,
    format_domain_warning,
)
from servetune.models._engine_constants import CaptureCost, EngineConstants
from servetune.models._estimator import StepTimeRegressor
from servetune.models._evaluation import (
    extrapolation_split,
    grouped_oof_predict,
    held_out_runs,
    per_run_errors,
    regression_metrics,
)
from servetune.models._registry import (
    CHAMPION,
    EXPERIMENT_NAME,
    list_registered,
    registered_model_name,
)
from servetune.models._search import SEARCH_SPACE, search_hyperparameters
from servetune.models._step_time_model import StepTimeModel
from servetune.models._training import (
    TrainConfig,
    TrainResult,
    champion_for_engine,
    ensure_champion,
    step_model_for_engine,
    load_training_frame,
    parse_where,
    train_step_time_model,
)

__all__ = [
    "CHAMPION",
    "EXPERIMENT_NAME",
    "DOMAIN_COLUMNS",
    "SEARCH_SPACE",
    "CaptureCost",
    "CompiledForest",
    "CompiledStepTime",
    "EngineConstants",
    "StepTimeModel",
    "StepTimeRegressor",
    "TrainConfig",
    "TrainResult",
    "TrainingDomain",
    "domain_report",
    "champion_for_engine",
    "ensure_champion",
    "step_model_for_engine",
    "extrapolation_split",
    "format_domain_warning",
    "forest_predict_matrix",
    "forest_predict_row",
    "grouped_oof_predict",
    "held_out_runs",
    "linear_base_margin",
    "linear_base_matrix",
    "list_registered",
    "load_training_frame",
    "parse_where",
    "per_run_errors",
    "registered_model_name",
    "regression_metrics",
    "search_hyperparameters",
    "step_time_batch",
    "train_step_time_model",
]
