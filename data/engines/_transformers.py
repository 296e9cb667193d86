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
    Knob("compile", bool, False, "torch.compile the model", flag="--compile",
         flag_off="--no-compile", simulated=False),
)

# What transformers 5.17 resolves at start-up for ``paged|sdpa`` attention when a field is left
# unset (``continuous_batching/initialization.py``, ``continuous_api.py``): no CUDA graphs and no
# async batching, 90 % of free memory, 1024 requests per batch, the CUDA-graph padding presets
# (64 query tokens, 16,384 KV tokens) and the fast-path block-table width. ``max_batch_tokens``
# and ``num_blocks`` are solved from free memory by the engine; the simulator solves them from its
# hardware keys (``gpu_memory_gib``, ``model_weights_gib``, ``kv_bytes_per_token``).
_RESOLVED = {"use_cuda_graph": False, "use_async_batching": False, "max_memory_percent": 0.9,
             "max_requests_per_batch": 1024, "max_blocks_per_request": 32,
             "max_batch_tokens": 8192}
_PADDING_PRESETS = {"q_padding_interval_size": 64, "kv_padding_interval_size": 16384}


def _resolve(config: dict, hardware: Mapping[str, object]) -> dict:
    out = dict(config)
    for key, value in _RESOLVED.items():
        if out.get(key) is None:
            out[key] = value
    for key, value in _PADDING_PRESETS.items():
        if not out.get(key):
            out[key] = value
    return out


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
