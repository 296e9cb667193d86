"""Step features: ONE definition per feature set, used by training and by the simulator.

Example:
    >>> import numpy as np
    >>> from servetune.features import get_feature_set, RAW_COLUMNS, KNOB_COLUMNS
    >>> fs = get_feature_set()
    >>> raw = np.array([4, 1, 3, 512, 3, 2048, 900, 131072,    # this step (RAW_COLUMNS)
    ...                 3, 0, 3, 0, 3, 1400, 890, 0, 0], dtype=np.float64)  # the previous one
    >>> knobs = np.array([32, 1, 0, 1, 512, 262144], dtype=np.float64)
    >>> out = np.empty(fs.n_features, dtype=np.float32)
    >>> fs.kernel(raw, knobs, out)
    >>> bool((out == fs.matrix(raw[None, :], knobs)[0]).all())
    True
"""

from servetune.features._columns import (
    KNOB_COLUMNS,
    PREV_COLUMNS,
    RAW_COLUMNS,
    RUN_KNOB_COLUMNS,
    STEP_INPUT_COLUMNS,
    add_previous_step,
    graph_captured,
    join_knobs,
    knob_vector,
    knobs_from_runs,
)
from servetune.features._definitions import (
    DEFAULT_FEATURE_SET,
    RAW_V1,
    RAW_V2,
    STEP_V1,
    STEP_V2,
    STEP_V3,
    STEP_V4,
    STEP_V5,
    STEP_V6,
    default_feature_registry,
    get_feature_set,
)
from servetune.features._feature_set import (
    FeatureSet,
    FeatureSetRegistry,
    make_feature_set,
    select_features,
)

__all__ = [
    "RAW_COLUMNS",
    "PREV_COLUMNS",
    "STEP_INPUT_COLUMNS",
    "KNOB_COLUMNS",
    "RUN_KNOB_COLUMNS",
    "DEFAULT_FEATURE_SET",
    "FeatureSet",
    "FeatureSetRegistry",
    "RAW_V1",
    "RAW_V2",
    "STEP_V1",
    "STEP_V2",
    "STEP_V3",
    "STEP_V4",
    "STEP_V5",
    "STEP_V6",
    "add_previous_step",
    "graph_captured",
    "default_feature_registry",
    "get_feature_set",
    "join_knobs",
    "knob_vector",
    "knobs_from_runs",
    "make_feature_set",
    "select_features",
]
