"""SGLang (a launch spec; no simulator policy yet) and static batching (a simulator baseline).

SGLang flags from ``python/sglang/srt/server_args.py`` (``ServerArgs.add_cli_args``): its knob
names are the ``ServerArgs`` fields. Bool switches are ``store_true`` (``--disable-cuda-graph``).
"""

from __future__ import annotations

from servetune.data.engines._knob import Knob
from servetune.data.engines._spec import EngineSpec

__all__ = ["SGLANG", "STATIC"]

SGLANG = EngineSpec(
    name="sglang",
    description="SGLang runtime (launch only: no simulator policy yet)",
    knobs=(
        Knob("max_running_requests", int, None, "most running requests", minimum=1,
             nullable=True, flag="--max-running-requests", runs_column="max_num_seqs",
             aliases=("max_num_seqs",)),
        Knob("chunked_prefill_size", int, None, "prefill chunk size in tokens", minimum=-1,
             nullable=True, flag="--chunked-prefill-size", runs_column="max_batch_tokens",
             feature="max_batch_tokens", aliases=("max_batch_tokens",)),
        Knob("max_prefill_tokens", int, 16384, "most prefill tokens in one batch", minimum=1,
             flag="--max-prefill-tokens"),
        Knob("mem_fraction_static", float, None, "GPU memory fraction for weights and KV pool",
             minimum=0.01, maximum=1.0, nullable=True, flag="--mem-fraction-static",
             runs_column="gpu_memory_utilization", aliases=("gpu_memory_utilization",)),
        Knob("page_size", int, 1, "KV page size in tokens", minimum=1, flag="--page-size",
             runs_column="block_size", feature="block_size", aliases=("block_size",)),
        Knob("schedule_policy", str, "fcfs", "scheduling policy",
             choices=("lpm", "random", "fcfs", "dfs-weight", "lof", "priority"),
             flag="--schedule-policy", runs_column="scheduler"),
        Knob("schedule_conservativeness", float, 1.0, "how conservatively new requests are "
             "admitted", minimum=0.0, flag="--schedule-conservativeness"),
        Knob("disable_cuda_graph", bool, False, "no CUDA graphs", flag="--disable-cuda-graph",
             runs_column="cuda_graph", feature="cuda_graph", invert=True,
             negated_aliases=("cuda_graph",)),
        Knob("disable_radix_cache", bool, False, "no prefix (radix) cache",
             flag="--disable-radix-cache", negated_aliases=("prefix_caching",)),
        Knob("tp_size", int, 1, "tensor-parallel GPUs", minimum=1, flag="--tp-size",
             runs_column="tp_size", feature="tp_size", aliases=("tp",)),
        Knob("dp_size", int, 1, "data-parallel replicas", minimum=1, flag="--dp-size",
             runs_column="dp_size", aliases=("dp",)),
        Knob("pp_size", int, 1, "pipeline stages", minimum=1, flag="--pp-size",
             runs_column="pp_size", aliases=("pp",)),
    ),
    program=("python3", "-m", "sglang.launch_server"),
    model_flag="--model-path",
    request_extras={"ignore_eos": True},
    source="sgl-project/sglang python/sglang/srt/server_args.py",
)

STATIC = EngineSpec(
    name="static",
    description="static batching: whole requests in fixed batches, no joining mid-batch "
                "(a simulator baseline, not a launchable engine)",
    knobs=(
        Knob("max_batch_size", int, 32, "requests per batch", minimum=1,
             runs_column="max_num_seqs"),
        Knob("block_size", int, 16, "tokens per KV block", minimum=1, runs_column="block_size",
             feature="block_size"),
        Knob("num_blocks", int, 65536, "KV blocks (a request reserves input + output up front)",
             minimum=1, runs_column="num_blocks"),
    ),
    policy="static",
)
