"""The feature sets servetune ships. Each is ONE ``formulas(r, k)`` function (see _feature_set).

Only arithmetic and ``np.maximum`` may appear in formulas (no log/exp/sqrt: numpy and LLVM may
round transcendental functions differently, and the two forms must agree bit for bit).
"""

from __future__ import annotations

import numpy as np

from servetune.features._feature_set import (
    FeatureSet,
    FeatureSetRegistry,
    make_feature_set,
    select_features,
)

__all__ = ["RAW_V1", "RAW_V2", "STEP_V1", "STEP_V2", "STEP_V3", "STEP_V4", "STEP_V5", "STEP_V6",
           "DEFAULT_FEATURE_SET",
           "default_feature_registry", "get_feature_set"]

# Indices into the raw vector (RAW_COLUMNS order) and the knob vector (KNOB_COLUMNS order).
NUM_SEQS, NUM_PREFILL_SEQS, NUM_DECODE_SEQS, PREFILL_TOKENS, DECODE_TOKENS = 0, 1, 2, 3, 4
KV_TOKENS_SUM, KV_TOKENS_MAX, PREFILL_ATTN_WORK = 5, 6, 7
BLOCK_SIZE, ASYNC_BATCHING, CUDA_GRAPH, TP_SIZE, MAX_BATCH_TOKENS, CACHE_TOKENS = 0, 1, 2, 3, 4, 5
PREV = 8  # r[PREV + i]: the previous step's value of raw column i (zeros for a run's first step)
PREV_CAPTURED = 16  # r[16]: 1 when the previous step captured a CUDA graph


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



# Padding granularities of transformers' continuous batching with CUDA graphs (its defaults:
# queries padded to a multiple of 64 tokens, KV reads to a multiple of 16384 tokens). For other
# engines these are simply coarse versions of the token and KV counts.
Q_PAD, KV_PAD = 64.0, 16384.0


def _step_v2(r, k):
    num_seqs = r[NUM_SEQS] * 1.0
    tokens = r[PREFILL_TOKENS] + r[DECODE_TOKENS]
    kv_sum = r[KV_TOKENS_SUM] * 1.0
    decode_only = 1.0 - np.minimum(r[NUM_PREFILL_SEQS], 1.0)     # 1 when no prefill chunk
    tokens_padded = np.ceil(tokens / Q_PAD) * Q_PAD
    kv_padded = np.ceil(kv_sum / KV_PAD) * KV_PAD
    return (
        num_seqs,
        r[NUM_PREFILL_SEQS] * 1.0,
        r[NUM_DECODE_SEQS] * 1.0,
        r[PREFILL_TOKENS] * 1.0,
        r[DECODE_TOKENS] * 1.0,
        tokens,
        kv_sum,
        r[KV_TOKENS_MAX] * 1.0,
        r[PREFILL_ATTN_WORK] * 1.0,
        tokens * kv_sum,                                 # dense (masked) attention: q x kv
        tokens_padded,
        kv_padded,
        tokens_padded * (kv_padded + tokens_padded),     # the same, at padded (graph) shapes
        num_seqs * r[KV_TOKENS_MAX],                     # padded per-sequence attention
        kv_sum / np.maximum(num_seqs, 1.0),              # mean context length
        r[PREFILL_TOKENS] / np.maximum(tokens, 1.0),     # prefill share of the batch
        decode_only,
        kv_sum * decode_only,                            # KV read on the decode-only path
        kv_sum / np.maximum(k[BLOCK_SIZE], 1.0),         # KV blocks gathered
        k[BLOCK_SIZE] * 1.0,
        k[ASYNC_BATCHING] * 1.0,
        k[CUDA_GRAPH] * 1.0,
        k[TP_SIZE] * 1.0,
    )


STEP_V2 = make_feature_set("step_v2", 1, {
    "num_seqs": 1, "num_prefill_seqs": 0, "num_decode_seqs": 0, "prefill_tokens": 1,
    "decode_tokens": 1, "tokens": 1, "kv_tokens_sum": 1, "kv_tokens_max": 0,
    "prefill_attn_work": 1, "dense_attn": 1, "tokens_padded": 1, "kv_padded": 1,
    "dense_attn_padded": 1, "padded_kv": 0, "kv_mean": 0, "prefill_share": 0, "decode_only": 0,
    "decode_kv": 0, "kv_blocks": 1, "block_size": 0, "async_batching": 0, "cuda_graph": 0,
    "tp_size": 0,
}, _step_v2)



# step_v2 without the block-size features. On the shipped H200 sample, steps of the same
# composition take about the same time at block sizes 16..128, while the few configurations with
# an unusual block size also differ in other ways (eager mode, scheduler): a tree that may split
# on block size can learn configuration identity instead of cost. `servetune train` still
# compares feature sets by grouped CV on the training runs and keeps the best (BENCHMARKS.md).
STEP_V3 = select_features(STEP_V2, "step_v3", 1, drop=("kv_blocks", "block_size"))


_PREV_NAMES = {"prev_num_seqs": 0, "prev_num_prefill_seqs": 0, "prev_num_decode_seqs": 0,
               "prev_prefill_tokens": 0, "prev_decode_tokens": 0, "prev_kv_tokens_sum": 0,
               "prev_kv_tokens_max": 0, "prev_prefill_attn_work": 0, "prev_graph_captured": 0}


def _raw_v2(r, k):
    return (r[NUM_SEQS] * 1.0, r[NUM_PREFILL_SEQS] * 1.0, r[NUM_DECODE_SEQS] * 1.0,
            r[PREFILL_TOKENS] * 1.0, r[DECODE_TOKENS] * 1.0, r[KV_TOKENS_SUM] * 1.0,
            r[KV_TOKENS_MAX] * 1.0, r[PREFILL_ATTN_WORK] * 1.0,
            k[BLOCK_SIZE] * 1.0, k[ASYNC_BATCHING] * 1.0, k[CUDA_GRAPH] * 1.0, k[TP_SIZE] * 1.0,
            k[MAX_BATCH_TOKENS] * 1.0,
            r[PREV + NUM_SEQS] * 1.0, r[PREV + NUM_PREFILL_SEQS] * 1.0,
            r[PREV + NUM_DECODE_SEQS] * 1.0, r[PREV + PREFILL_TOKENS] * 1.0,
            r[PREV + DECODE_TOKENS] * 1.0, r[PREV + KV_TOKENS_SUM] * 1.0,
            r[PREV + KV_TOKENS_MAX] * 1.0, r[PREV + PREFILL_ATTN_WORK] * 1.0,
            r[PREV_CAPTURED] * 1.0)


# raw_v1 plus the token budget (it sets the CUDA-graph padded shapes) and the previous step's
# composition (with async batching a recorded duration is launch to launch, so it covers the
# previous batch's GPU work; after a CUDA-graph capture it ran inside the capture step).
RAW_V2 = make_feature_set("raw_v2", 2, {
    "num_seqs": 0, "num_prefill_seqs": 0, "num_decode_seqs": 0, "prefill_tokens": 0,
    "decode_tokens": 0, "kv_tokens_sum": 0, "kv_tokens_max": 0, "prefill_attn_work": 0,
    "block_size": 0, "async_batching": 0, "cuda_graph": 0, "tp_size": 0,
    "max_batch_tokens": 0, **_PREV_NAMES,
}, _raw_v2)


def _step_v4(r, k):
    num_seqs = r[NUM_SEQS] * 1.0
    tokens = r[PREFILL_TOKENS] + r[DECODE_TOKENS]
    kv_sum = r[KV_TOKENS_SUM] * 1.0
    decode_only = 1.0 - np.minimum(r[NUM_PREFILL_SEQS], 1.0)
    tokens_padded = np.ceil(tokens / Q_PAD) * Q_PAD
    kv_padded = np.ceil(kv_sum / KV_PAD) * KV_PAD
    prev_tokens = r[PREV + PREFILL_TOKENS] + r[PREV + DECODE_TOKENS]
    return (
        num_seqs, r[NUM_PREFILL_SEQS] * 1.0, r[NUM_DECODE_SEQS] * 1.0, r[PREFILL_TOKENS] * 1.0,
        r[DECODE_TOKENS] * 1.0, tokens, kv_sum, r[KV_TOKENS_MAX] * 1.0,
        r[PREFILL_ATTN_WORK] * 1.0, tokens * kv_sum, tokens_padded, kv_padded,
        tokens_padded * (kv_padded + tokens_padded), num_seqs * r[KV_TOKENS_MAX],
        kv_sum / np.maximum(num_seqs, 1.0), r[PREFILL_TOKENS] / np.maximum(tokens, 1.0),
        decode_only, kv_sum * decode_only,
        k[ASYNC_BATCHING] * 1.0, k[CUDA_GRAPH] * 1.0, k[TP_SIZE] * 1.0,
        k[MAX_BATCH_TOKENS] * 1.0,
        r[PREV + NUM_SEQS] * 1.0, r[PREV + NUM_PREFILL_SEQS] * 1.0,
        r[PREV + NUM_DECODE_SEQS] * 1.0, r[PREV + PREFILL_TOKENS] * 1.0,
        r[PREV + DECODE_TOKENS] * 1.0, r[PREV + KV_TOKENS_SUM] * 1.0,
        r[PREV + KV_TOKENS_MAX] * 1.0, r[PREV + PREFILL_ATTN_WORK] * 1.0,
        r[PREV_CAPTURED] * 1.0, prev_tokens, np.ceil(prev_tokens / Q_PAD) * Q_PAD,
        np.ceil(r[PREV + KV_TOKENS_SUM] / KV_PAD) * KV_PAD,
    )


# step_v3 plus the token budget, the previous step's composition and its padded shapes.
STEP_V4 = make_feature_set("step_v4", 2, {
    **{name: sign for name, sign in zip(STEP_V2.feature_names, STEP_V2.monotone)
       if name not in ("kv_blocks", "block_size")},
    "max_batch_tokens": 0, **_PREV_NAMES, "prev_tokens": 0, "prev_tokens_padded": 0,
    "prev_kv_padded": 0,
}, _step_v4)


def _step_v5(r, k):
    num_seqs = r[NUM_SEQS] * 1.0
    tokens = r[PREFILL_TOKENS] + r[DECODE_TOKENS]
    kv_sum = r[KV_TOKENS_SUM] * 1.0
    decode_only = 1.0 - np.minimum(r[NUM_PREFILL_SEQS], 1.0)
    tokens_padded = np.ceil(tokens / Q_PAD) * Q_PAD
    kv_padded = np.ceil(kv_sum / KV_PAD) * KV_PAD
    dense_padded = tokens_padded * (kv_padded + tokens_padded)
    overlap = k[ASYNC_BATCHING] * 1.0   # 1: the previous batch's GPU work overlaps this step
    graphs = k[CUDA_GRAPH] * 1.0
    eager = 1.0 - graphs
    prev_tokens = r[PREV + PREFILL_TOKENS] + r[PREV + DECODE_TOKENS]
    return (
        num_seqs, r[NUM_PREFILL_SEQS] * 1.0, r[NUM_DECODE_SEQS] * 1.0, r[PREFILL_TOKENS] * 1.0,
        r[DECODE_TOKENS] * 1.0, tokens, kv_sum, r[KV_TOKENS_MAX] * 1.0,
        r[PREFILL_ATTN_WORK] * 1.0, tokens * kv_sum, tokens_padded, kv_padded, dense_padded,
        num_seqs * r[KV_TOKENS_MAX], kv_sum / np.maximum(num_seqs, 1.0),
        r[PREFILL_TOKENS] / np.maximum(tokens, 1.0), decode_only, kv_sum * decode_only,
        overlap, graphs, k[TP_SIZE] * 1.0, k[MAX_BATCH_TOKENS] * overlap,
        r[PREV + NUM_SEQS] * overlap, r[PREV + NUM_PREFILL_SEQS] * overlap,
        r[PREV + NUM_DECODE_SEQS] * overlap, r[PREV + PREFILL_TOKENS] * overlap,
        r[PREV + DECODE_TOKENS] * overlap, r[PREV + KV_TOKENS_SUM] * overlap,
        r[PREV + KV_TOKENS_MAX] * overlap, r[PREV + PREFILL_ATTN_WORK] * overlap,
        r[PREV_CAPTURED] * overlap, prev_tokens * overlap,
        np.ceil(prev_tokens / Q_PAD) * Q_PAD * overlap,
        np.ceil(r[PREV + KV_TOKENS_SUM] / KV_PAD) * KV_PAD * overlap,
        kv_padded * graphs, tokens_padded * graphs, dense_padded * graphs,
        eager, tokens * eager, kv_sum * eager, num_seqs * eager,
    )


# step_v4 where only async batching sees the previous step and the token budget (a sync step runs
# alone: on the H200 sample, trees that could split on the previous step of sync runs learned
# configuration identity), plus the terms of a linear base step time the trees correct: with CUDA
# graphs the padded shapes (a replayed graph costs its padded size), without them the raw counts
# (eager steps are CPU-bound launch sequences). The base extrapolates where trees cannot, e.g. to
# KV reads beyond the largest one trained on.
STEP_V5 = make_feature_set("step_v5", 1, {
    **{name: sign for name, sign in zip(STEP_V4.feature_names, STEP_V4.monotone)},
    "kv_padded_graphs": 0, "tokens_padded_graphs": 0, "dense_attn_padded_graphs": 0,
    "eager": 0, "tokens_eager": 0, "kv_tokens_eager": 0, "num_seqs_eager": 0,
}, _step_v5, base_terms=("kv_padded_graphs", "tokens_padded_graphs", "dense_attn_padded_graphs",
                         "num_seqs", "eager", "tokens_eager", "kv_tokens_eager", "num_seqs_eager"))

# Bytes of one bf16 mask element, in GB.
MASK_GB = 2.0e-9


def _step_v6(r, k):
    num_seqs = r[NUM_SEQS] * 1.0
    tokens = r[PREFILL_TOKENS] + r[DECODE_TOKENS]
    kv_sum = r[KV_TOKENS_SUM] * 1.0
    decode_only = 1.0 - np.minimum(r[NUM_PREFILL_SEQS], 1.0)
    tokens_padded = np.ceil(tokens / Q_PAD) * Q_PAD
    kv_padded = np.ceil(kv_sum / KV_PAD) * KV_PAD
    dense_padded = tokens_padded * (kv_padded + tokens_padded)
    overlap = k[ASYNC_BATCHING] * 1.0
    graphs = k[CUDA_GRAPH] * 1.0
    eager = 1.0 - graphs
    prev_tokens = r[PREV + PREFILL_TOKENS] + r[PREV + DECODE_TOKENS]
    # GB copied host-to-device per async step: the bf16 mask [M, N + M] (NaN: cache unknown)
    budget = k[MAX_BATCH_TOKENS] * 1.0
    mask_copy_gb = overlap * budget * (k[CACHE_TOKENS] + budget) * MASK_GB
    return (
        num_seqs, r[NUM_PREFILL_SEQS] * 1.0, r[NUM_DECODE_SEQS] * 1.0, r[PREFILL_TOKENS] * 1.0,
        r[DECODE_TOKENS] * 1.0, tokens, kv_sum, r[KV_TOKENS_MAX] * 1.0,
        r[PREFILL_ATTN_WORK] * 1.0, tokens * kv_sum, tokens_padded, kv_padded, dense_padded,
        num_seqs * r[KV_TOKENS_MAX], kv_sum / np.maximum(num_seqs, 1.0),
        r[PREFILL_TOKENS] / np.maximum(tokens, 1.0), decode_only, kv_sum * decode_only,
        overlap, graphs, k[TP_SIZE] * 1.0, k[MAX_BATCH_TOKENS] * overlap,
        r[PREV + NUM_SEQS] * overlap, r[PREV + NUM_PREFILL_SEQS] * overlap,
        r[PREV + NUM_DECODE_SEQS] * overlap, r[PREV + PREFILL_TOKENS] * overlap,
        r[PREV + DECODE_TOKENS] * overlap, r[PREV + KV_TOKENS_SUM] * overlap,
        r[PREV + KV_TOKENS_MAX] * overlap, r[PREV + PREFILL_ATTN_WORK] * overlap,
        r[PREV_CAPTURED] * overlap, prev_tokens * overlap,
        np.ceil(prev_tokens / Q_PAD) * Q_PAD * overlap,
        np.ceil(r[PREV + KV_TOKENS_SUM] / KV_PAD) * KV_PAD * overlap,
        kv_padded * graphs, tokens_padded * graphs, dense_padded * graphs,
        eager, tokens * eager, kv_sum * eager, num_seqs * eager,
        mask_copy_gb,
    )

# step_v5 plus the async mask copy: with async batching and a paged|sdpa (or paged|eager) mask,
# transformers 5.17 copies the whole [max_batch_tokens, cache_tokens + max_batch_tokens] bf16
# mask host-to-device every step, so the async step floor grows linearly with the KV cache
# (BENCHMARKS.md, "Async mask copy vs KV cache size"). As a base term its time (ms per GB, i.e.
# the inverse bandwidth) is learned per model and extrapolates linearly to caches larger than
# any trained on, where trees would stay flat.
STEP_V6 = make_feature_set("step_v6", 1, {
    **{name: sign for name, sign in zip(STEP_V5.feature_names, STEP_V5.monotone)},
    "mask_copy_gb": 1,
}, _step_v6, base_terms=(*STEP_V5.base_terms, "mask_copy_gb"))


# Chosen by grouped CV on the training runs of the shipped H200 sample (68 runs): step_v5 6.84 %
# MAPE, raw_v2 9.55 %, step_v4 9.94 % (BENCHMARKS.md, "Step-time model").
DEFAULT_FEATURE_SET = STEP_V5.name


def default_feature_registry() -> FeatureSetRegistry:
    """A registry of the shipped feature sets."""
    return FeatureSetRegistry((RAW_V1, RAW_V2, STEP_V1, STEP_V2, STEP_V3, STEP_V4, STEP_V5,
                               STEP_V6))


_REGISTRY = default_feature_registry()  # immutable (a read-only mapping inside)


def get_feature_set(name: str = DEFAULT_FEATURE_SET) -> FeatureSet:
    """The shipped feature set called ``name`` (raises ConfigError listing the valid names)."""
    return _REGISTRY.get(name)
