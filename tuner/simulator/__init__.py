"""Discrete-event simulation of LLM serving deployments with learned step times.

A deployment is DP replicas behind a router; each replica runs an engine's scheduler policy
(transformers continuous batching FIFO / prefill-first, vLLM V1 chunked prefill, static batching)
over a paged KV cache, and every step's duration comes from a compiled XGBoost step-time model
evaluated inside the numba event loop. Outputs are the store's ``requests``/``runs`` records
(``source="simulated"``), so simulated and measured runs compare row by row.

Example:
    >>> from servetune.tuner.simulator import default_config, config_keys
    >>> default_config("vllm")["max_num_seqs"]
    256
    >>> "max_batch_tokens" in config_keys("transformers")
    True
"""

from servetune.tuner.simulator._policies import (
    COMMON_KNOBS,
    EnginePolicy,
    Knob,
    PolicyRegistry,
    config_keys,
    default_config,
    default_registry,
    engines,
    get_policy,
    resolve_config,
)
from servetune.tuner.simulator._replay import REPLAY_METRICS, Replay, replay_run
from servetune.tuner.simulator._result import SLO, SimulationResult
from servetune.tuner.simulator._simulate import Simulator, model_knobs, simulate

__all__ = [
    "COMMON_KNOBS",
    "EnginePolicy",
    "Knob",
    "PolicyRegistry",
    "REPLAY_METRICS",
    "Replay",
    "SLO",
    "SimulationResult",
    "Simulator",
    "config_keys",
    "default_config",
    "default_registry",
    "engines",
    "get_policy",
    "model_knobs",
    "replay_run",
    "resolve_config",
    "simulate",
]
