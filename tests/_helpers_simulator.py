"""Step-time models for the simulator tests: an exact constant one and a small trained forest.

Both are real :class:`servetune.models.CompiledStepTime` objects evaluated by the same numba
path as a registry champion; only the trees differ. Neither was trained on engine runs, so
their engine constants (GPU memory, model weights, KV bytes per token, CUDA-graph capture cost)
are given: :data:`SAMPLE_CONSTANTS` by default, those a model trained on the shipped H200
llama-1b-like sample records (rounded); ``constants=None`` gives a model without any, as one
registered before engine constants were recorded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import servetune
from servetune.data import Workload
from servetune.features import get_feature_set
from servetune.models import CaptureCost, CompiledForest, CompiledStepTime, EngineConstants

SPLITWISE = Path(servetune.__file__).resolve().parent.parent / "shared/workloads/splitwise_conv.csv"

#: what a model trained on all runs of the shipped sample records, rounded: the H200's memory,
#: the llama-1b-like preset in bf16 (16 layers x 2 x 8 KV heads x 64 x 2 bytes), and the capture
#: cost fitted on the sample's graph-capture steps
#: (``python benchmarks/sim_fidelity.py --in-sample``)
SAMPLE_CONSTANTS = EngineConstants(
    capture_sync=CaptureCost(59.8, 0.0060, 0.000079, 0.00074, 0.32),
    capture_async=CaptureCost(66.2, 0.0195, 0.00041, 0.0, 0.57),
    gpu_name="NVIDIA H200", gpu_memory_gib=140.0, model_weights_gib=2.3,
    kv_bytes_per_token=32768, activation_gib=2.0)


def with_constants(model: CompiledStepTime, constants: EngineConstants | None
                   ) -> CompiledStepTime:
    """``model`` carrying ``constants`` as its ``engine_constants`` (as ``StepTimeModel.compile``
    attaches a registered model's)."""
    object.__setattr__(model, "engine_constants", constants)
    return model


def constant_step_model(ms: float, constants: EngineConstants | None = SAMPLE_CONSTANTS
                        ) -> CompiledStepTime:
    """Every step takes exactly ``ms`` (one tree that is a single leaf of value 0)."""
    forest = CompiledForest(
        feature=np.array([-1], dtype=np.int32), threshold=np.zeros(1, dtype=np.float32),
        left=np.array([-1], dtype=np.int32), right=np.array([-1], dtype=np.int32),
        default_left=np.zeros(1, dtype=np.uint8), value=np.zeros(1, dtype=np.float32),
        roots=np.zeros(1, dtype=np.int32), base_margin=float(ms), log_target=False)
    return with_constants(CompiledStepTime(forest, get_feature_set()), constants)


def synthetic_steps(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Random step compositions with a plausible duration law (ms)."""
    rng = np.random.default_rng(seed)
    decode = rng.integers(0, 64, n)
    prefill_seqs = rng.integers(0, 3, n)
    prefill_tokens = np.where(prefill_seqs > 0, rng.integers(1, 4096, n), 0)
    kv = decode * rng.integers(100, 3000, n) + prefill_tokens
    frame = pd.DataFrame({
        "num_seqs": decode + prefill_seqs, "num_prefill_seqs": prefill_seqs,
        "num_decode_seqs": decode, "prefill_tokens": prefill_tokens, "decode_tokens": decode,
        "kv_tokens_sum": kv, "kv_tokens_max": np.maximum(prefill_tokens, 3000),
        "prefill_attn_work": prefill_tokens * prefill_tokens,
        "block_size": rng.choice([16, 32, 256], n), "async_batching": rng.integers(0, 2, n),
        "cuda_graph": 0, "tp_size": 1, "max_batch_tokens": rng.choice([512, 2048, 8192], n)})
    frame["duration_ms"] = (4.0 + 0.05 * frame.num_seqs + 0.003 * (prefill_tokens + decode)
                            + 1e-5 * kv + 2e-9 * frame.prefill_attn_work)
    return frame


def trained_step_model(n_trees: int = 50, seed: int = 0, depth: int = 6,
                       feature_set: str | None = None,
                       constants: EngineConstants | None = SAMPLE_CONSTANTS):
    """``(CompiledStepTime, booster)`` of a log-target XGBoost model of :func:`synthetic_steps`
    (trees only: a feature set's linear base terms are plain features here)."""
    import xgboost as xgb

    fs = get_feature_set() if feature_set is None else get_feature_set(feature_set)
    steps = synthetic_steps(seed=seed)
    X = fs.frame(steps)
    booster = xgb.train({"max_depth": depth, "eta": 0.1, "nthread": 1, "seed": seed},
                        xgb.DMatrix(X, label=np.log(steps.duration_ms.to_numpy()),
                                    feature_names=list(fs.feature_names)),
                        num_boost_round=n_trees)
    forest = CompiledForest.from_booster(booster, log_target=True, feature_set=fs.name,
                                         feature_set_version=fs.version)
    return with_constants(CompiledStepTime(forest, fs), constants), booster


def splitwise_workload() -> Workload:
    """The real Splitwise conversation trace (19,366 requests)."""
    d = pd.read_csv(SPLITWISE)
    return Workload.from_arrays(d.arrived_at, d.num_prefill_tokens, d.num_decode_tokens,
                                name="splitwise_conv", descriptor={"name": "splitwise_conv"})


