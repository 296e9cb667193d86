"""transformers continuous batching (transformers 5.17): ``ContinuousBatchingConfig`` knobs and
``transformers serve --continuous-batching --cb-*``.

Knob names are ``ContinuousBatchingConfig`` fields (``transformers/generation/
configuration_utils.py``). ``transformers serve`` (``transformers/cli/serve.py``) exposes only
``--cb-block-size``, ``--cb-num-blocks``, ``--cb-max-batch-tokens``, ``--cb-max-memory-percent``
and ``--cb-use-cuda-graph/--no-cb-use-cuda-graph`` (plus model-level ``--attn-implementation``,
``--dtype``, ``--compile``); the other fields are reachable only through the config object, so a
launch refuses them unless they are recorded as not applied.
"""

from __future__ import annotations

from collections.abc import Mapping

from servetune.data.engines._knob import Knob
from servetune.data.engines._spec import EngineSpec
from servetune.data.engines._transformers_resolve import (
    CB_CONFIG_FIELDS,
    resolve_transformers_config,
)

__all__ = ["TRANSFORMERS_CB"]

_KNOBS = (
    Knob("scheduler_type", str, "fifo", "FIFOScheduler (decodes first) or PrefillFirstScheduler",
         choices=("fifo", "prefill_first"), runs_column="scheduler", aliases=("scheduler",)),
    Knob("block_size", int, 256, "tokens per KV block", minimum=4, flag="--cb-block-size",
         runs_column="block_size", feature="block_size"),
    Knob("num_blocks", int, None, "KV blocks (default: inferred by the engine from free GPU "
         "memory x max_memory_percent)", minimum=1, nullable=True, flag="--cb-num-blocks",
         runs_column="num_blocks"),
    Knob("max_memory_percent", float, None, "fraction of free GPU memory (after the weights) for "
         "the KV cache and activations (default: 0.9, 0.8 with logit processors)",
         minimum=0.01, maximum=1.0, nullable=True, flag="--cb-max-memory-percent",
         runs_column="gpu_memory_utilization"),
    Knob("max_batch_tokens", int, None, "query tokens per forward pass (default: inferred from "
         "memory)", minimum=1, nullable=True, flag="--cb-max-batch-tokens",
         runs_column="max_batch_tokens", feature="max_batch_tokens"),
    Knob("max_requests_per_batch", int, None, "sequences per forward pass (default 1024)",
         minimum=1, nullable=True, runs_column="max_num_seqs"),
    Knob("max_blocks_per_request", int, None, "block-table width of the flash decode fast path "
         "(0 disables it; default: inferred)", minimum=0, nullable=True),
    Knob("safety_margin", float, None, "free-block fraction below which new prefills stop "
         "(default: the scheduler's, 0.15 for fifo, 0.0 for prefill_first)", minimum=0.0,
         maximum=1.0, nullable=True),
    Knob("use_async_batching", bool, None, "double-buffered batches: CPU prepares batch N+1 "
         "while the GPU runs batch N (default: resolved by the engine)", nullable=True,
         runs_column="async_batching", feature="async_batching", aliases=("async_batching",)),
    Knob("use_cuda_graph", bool, None, "CUDA graphs for the varlen and decode paths (default: "
         "resolved by the engine for the attention implementation)", nullable=True,
         flag="--cb-use-cuda-graph", flag_off="--no-cb-use-cuda-graph", runs_column="cuda_graph",
         feature="cuda_graph", aliases=("cuda_graph",)),
    Knob("q_padding_interval_size", int, 0, "query padding interval of CUDA-graph shapes in "
         "tokens (0: the engine's preset)", minimum=0),
    Knob("kv_padding_interval_size", int, 0, "KV padding interval of CUDA-graph shapes in tokens "
         "(0: the engine's preset)", minimum=0),
    Knob("allow_block_sharing", bool, True, "prefix block sharing", simulated=False),
    Knob("attn_implementation", str, None, "attention implementation of the model (serve's "
         "--attn-implementation; CB switches to a paged one)", nullable=True,
         flag="--attn-implementation", simulated=False),
    Knob("dtype", str, "auto", "model dtype", flag="--dtype", simulated=False),
    Knob("device", str, "auto", "device for inference (auto, cuda:0, cpu)", flag="--device",
         simulated=False),
    Knob("compile", bool, False, "torch.compile the model", flag="--compile",
         flag_off="--no-compile", simulated=False),
)

# The fields resolve_transformers_config needs from a configuration (its own field names).
_CB_FIELDS = frozenset(CB_CONFIG_FIELDS)
# The simulator's token budget when the engine would size it from memory: transformers takes
# min(8192, the budget of a batch filling 10 % of the cache) (cb/cache.py:652-681), which is 8192
# for every cache above ~82 k tokens.
_MEMORY_SIZED_BATCH_TOKENS = 8192


def _resolve(config: dict, hardware: Mapping[str, object]) -> dict:
    """Fill the knobs transformers 5.17 resolves at start-up, as it does for the attention
    implementation in use (:func:`resolve_transformers_config`)."""
    given = {k: v for k, v in config.items() if k in _CB_FIELDS and v is not None
             and v != TRANSFORMERS_CB_DEFAULTS.get(k)}
    resolved = resolve_transformers_config(
        given, attn_implementation=config.get("attn_implementation") or "paged|sdpa")
    out = dict(config)
    for key in _CB_FIELDS & set(out):
        if out[key] is None or key in ("q_padding_interval_size", "kv_padding_interval_size"):
            out[key] = resolved[key]
    graphs = out["use_cuda_graph"]
    out["use_cuda_graph"] = bool(any(graphs)) if isinstance(graphs, (tuple, list)) else graphs
    if out["max_batch_tokens"] is None:
        out["max_batch_tokens"] = _MEMORY_SIZED_BATCH_TOKENS
    return out


TRANSFORMERS_CB_DEFAULTS = {k.name: k.default for k in _KNOBS}

TRANSFORMERS_CB = EngineSpec(
    name="transformers-cb",
    description="transformers continuous batching (FIFO / prefill-first), transformers 5.17",
    knobs=_KNOBS,
    aliases=("transformers",),
    program=("transformers", "serve"),
    fixed_args=("--continuous-batching",),
    policy="transformers",
    space="transformers-cb",
    resolve_defaults=_resolve,
    source="transformers 5.17.0: generation/configuration_utils.py ContinuousBatchingConfig, "
           "cli/serve.py",
)
