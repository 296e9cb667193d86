"""The feature sets servetune ships. Each is ONE ``formulas(r, k)`` function (see _feature_set).

Only arithmetic and ``np.maximum`` may appear in formulas (no log/exp/sqrt: numpy and LLVM may
round transcendental functions differently, and the two forms must agree bit for bit).
"""

from __future__ import annotations

import numpy as np

from servetune.features._feature_set import FeatureSet, FeatureSetRegistry, make_feature_set

__all__ = ["RAW_V1", "STEP_V1", "DEFAULT_FEATURE_SET", "default_feature_registry",
           "get_feature_set"]

# Indices into the raw vector (RAW_COLUMNS order) and the knob vector (KNOB_COLUMNS order).
NUM_SEQS, NUM_PREFILL_SEQS, NUM_DECODE_SEQS, PREFILL_TOKENS, DECODE_TOKENS = 0, 1, 2, 3, 4
KV_TOKENS_SUM, KV_TOKENS_MAX, PREFILL_ATTN_WORK = 5, 6, 7
BLOCK_SIZE, ASYNC_BATCHING, CUDA_GRAPH, TP_SIZE = 0, 1, 2, 3


def _raw_v1(r, k):
    return (r[NUM_SEQS] * 1.0, r[NUM_PREFILL_SEQS] * 1.0, r[NUM_DECODE_SEQS] * 1.0,
            r[PREFILL_TOKENS] * 1.0, r[DECODE_TOKENS] * 1.0, r[KV_TOKENS_SUM] * 1.0,
            r[KV_TOKENS_MAX] * 1.0, r[PREFILL_ATTN_WORK] * 1.0,
            k[BLOCK_SIZE] * 1.0, k[ASYNC_BATCHING] * 1.0, k[CUDA_GRAPH] * 1.0, k[TP_SIZE] * 1.0)


RAW_V1 = make_feature_set("raw_v1", 1, {
    "num_seqs": 0, "num_prefill_seqs": 0, "num_decode_seqs": 0, "prefill_tokens": 0,
    "decode_tokens": 0, "kv_tokens_sum": 0, "kv_tokens_max": 0, "prefill_attn_work": 0,
    "block_size": 0, "async_batching": 0, "cuda_graph": 0, "tp_size": 0,
}, _raw_v1)


def _step_v1(r, k):
    num_seqs = r[NUM_SEQS] * 1.0
    tokens = r[PREFILL_TOKENS] + r[DECODE_TOKENS]
    kv_sum = r[KV_TOKENS_SUM] * 1.0
    return (
        num_seqs,
        r[NUM_PREFILL_SEQS] * 1.0,
        r[NUM_DECODE_SEQS] * 1.0,
        r[PREFILL_TOKENS] * 1.0,
        r[DECODE_TOKENS] * 1.0,
        tokens,                                          # rows through the dense layers
        kv_sum,                                          # attention reads
        r[KV_TOKENS_MAX] * 1.0,
        r[PREFILL_ATTN_WORK] * 1.0,                      # prefill attention FLOPs proxy
        kv_sum + tokens,                                 # KV positions touched (read + written)
        num_seqs * r[KV_TOKENS_MAX],                     # padded attention work
        kv_sum / np.maximum(num_seqs, 1.0),              # mean context length
        r[PREFILL_TOKENS] / np.maximum(tokens, 1.0),     # prefill share of the batch
        kv_sum / np.maximum(k[BLOCK_SIZE], 1.0),         # KV blocks gathered
        k[BLOCK_SIZE] * 1.0,
        k[ASYNC_BATCHING] * 1.0,
        k[CUDA_GRAPH] * 1.0,
        k[TP_SIZE] * 1.0,
    )


# +1: latency cannot fall when this grows with everything else fixed (more work, same engine).
STEP_V1 = make_feature_set("step_v1", 1, {
    "num_seqs": 1, "num_prefill_seqs": 0, "num_decode_seqs": 0, "prefill_tokens": 1,
    "decode_tokens": 1, "tokens": 1, "kv_tokens_sum": 1, "kv_tokens_max": 0,
    "prefill_attn_work": 1, "kv_positions": 1, "padded_kv": 0, "kv_mean": 0, "prefill_share": 0,
    "kv_blocks": 1, "block_size": 0, "async_batching": 0, "cuda_graph": 0, "tp_size": 0,
}, _step_v1)

DEFAULT_FEATURE_SET = STEP_V1.name


def default_feature_registry() -> FeatureSetRegistry:
    """A registry of the shipped feature sets."""
    return FeatureSetRegistry((RAW_V1, STEP_V1))


_REGISTRY = default_feature_registry()  # immutable (a read-only mapping inside)


def get_feature_set(name: str = DEFAULT_FEATURE_SET) -> FeatureSet:
    """The shipped feature set called ``name`` (raises ConfigError listing the valid names)."""
    return _REGISTRY.get(name)
