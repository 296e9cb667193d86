"""vLLM V1 (``vllm serve``): ``EngineArgs`` knobs and their flags.

Flags and types from ``vllm/engine/arg_utils.py`` ``EngineArgs.add_cli_args`` at
vllm-project/vllm commit 99d7eb5d6a51 (the v0.11 line: bool fields are
``argparse.BooleanOptionalAction``, i.e. ``--x`` / ``--no-x``). Defaults the engine resolves at
start-up (``EngineArgs._set_default_args`` / ``get_batch_defaults``): for the OpenAI API server on
a GPU with >= 70 GiB that is not an A100, ``max_num_batched_tokens`` 8192 and ``max_num_seqs``
1024; otherwise 2048 and 256. ``max_num_partial_prefills`` has no effect in the V1 scheduler
(it must stay >= 1, its default).
"""

from __future__ import annotations

from collections.abc import Mapping

from servetune.data.engines._knob import Knob
from servetune.data.engines._spec import EngineSpec

__all__ = ["VLLM"]

_KNOBS = (
    Knob("max_num_batched_tokens", int, None, "token budget of one scheduler step (default: "
         "8192 on >= 70 GiB GPUs, else 2048)", minimum=1, nullable=True,
         flag="--max-num-batched-tokens", runs_column="max_batch_tokens",
         feature="max_batch_tokens", aliases=("max_batch_tokens",)),
    Knob("max_num_seqs", int, None, "most sequences in one step (default: 1024 on >= 70 GiB "
         "GPUs, else 256)", minimum=1, nullable=True, flag="--max-num-seqs",
         runs_column="max_num_seqs"),
    Knob("block_size", int, 16, "KV-cache block size in tokens", choices=(1, 8, 16, 32, 64, 128),
         flag="--block-size", runs_column="block_size", feature="block_size"),
    Knob("enable_chunked_prefill", bool, True, "split long prompts over steps",
         flag="--enable-chunked-prefill", flag_off="--no-enable-chunked-prefill",
         runs_column="chunked_prefill", aliases=("chunked_prefill",)),
    Knob("long_prefill_token_threshold", int, 0, "cap on one request's prefill chunk (0: none)",
         minimum=0, flag="--long-prefill-token-threshold"),
    Knob("max_num_partial_prefills", int, 1, "concurrent partial prefills (the V1 engine accepts "
         "only 1, its default, and then does not cap them)", minimum=1, maximum=1,
         flag="--max-num-partial-prefills", simulated=False),
    Knob("num_gpu_blocks_override", int, None, "explicit KV block count (default: from memory)",
         minimum=1, nullable=True, flag="--num-gpu-blocks-override", runs_column="num_blocks"),
    Knob("gpu_memory_utilization", float, 0.9, "fraction of GPU memory for weights, activations "
         "and KV cache", minimum=0.01, maximum=1.0, flag="--gpu-memory-utilization",
         runs_column="gpu_memory_utilization"),
    Knob("async_scheduling", bool, False, "schedule step N+1 while step N runs",
         flag="--async-scheduling", flag_off="--no-async-scheduling",
         runs_column="async_batching", feature="async_batching",
         aliases=("async_batching",)),
    Knob("enforce_eager", bool, False, "no CUDA graphs", flag="--enforce-eager",
         flag_off="--no-enforce-eager", runs_column="cuda_graph", feature="cuda_graph",
         invert=True, negated_aliases=("cuda_graph",)),
    Knob("enable_prefix_caching", bool, None, "automatic prefix caching", nullable=True,
         flag="--enable-prefix-caching", flag_off="--no-enable-prefix-caching",
         aliases=("prefix_caching",), simulated=False),
    Knob("tensor_parallel_size", int, 1, "tensor-parallel GPUs per replica", minimum=1,
         flag="--tensor-parallel-size", runs_column="tp_size", feature="tp_size",
         aliases=("tp", "tp_size")),
    Knob("pipeline_parallel_size", int, 1, "pipeline stages", minimum=1,
         flag="--pipeline-parallel-size", runs_column="pp_size", aliases=("pp", "pp_size"),
         simulated=False),
    Knob("data_parallel_size", int, 1, "data-parallel replicas", minimum=1,
         flag="--data-parallel-size", runs_column="dp_size", aliases=("dp", "dp_size")),
    Knob("kv_cache_dtype", str, "auto", "KV cache dtype",
         choices=("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc"),
         flag="--kv-cache-dtype", simulated=False),
    Knob("max_model_len", int, None, "context length (default: the model's)", minimum=1,
         nullable=True, flag="--max-model-len", simulated=False),
)


def _resolve(config: dict, hardware: Mapping[str, object]) -> dict:
    out = dict(config)
    memory = float(hardware.get("gpu_memory_gib") or 0.0)
    name = str(hardware.get("gpu_name") or "").lower()
    large = memory >= 70 and "a100" not in name
    if out.get("max_num_batched_tokens") is None:
        out["max_num_batched_tokens"] = 8192 if large else 2048
    if out.get("max_num_seqs") is None:
        out["max_num_seqs"] = 1024 if large else 256
    return out


VLLM = EngineSpec(
    name="vllm",
    description="vLLM V1: chunked prefill, FCFS, preemption by recompute",
    knobs=_KNOBS,
    aliases=("vllm-v1",),
    program=("vllm", "serve"),
    request_extras={"ignore_eos": True},
    policy="vllm",
    space="vllm",
    resolve_defaults=_resolve,
    source="vllm-project/vllm 99d7eb5d6a51 vllm/engine/arg_utils.py (v0.11 line)",
)
