"""A tuned configuration as the engine's own launch arguments.

- ``vllm``: ``vllm serve MODEL --max-num-batched-tokens ... --tensor-parallel-size ...``.
- ``transformers-cb``: keyword arguments of ``transformers.ContinuousBatchingConfig`` plus the
  ``transformers serve --continuous-batching --cb-*`` flags for the knobs the server exposes
  (block size, number of blocks, batch tokens, memory fraction, CUDA graphs); the others are
  only reachable through the config object, and ``serve_flags_cover_all`` says so.
- any space with ``targets`` (imported LLMServingTuner / auto-tuning-vllm spaces): ``--flags``,
  environment variables (``env``) and dotted config-file positions.

Example:
    >>> launch_args("vllm", {"max_num_seqs": 128, "tp": 2, "enable_chunked_prefill": False})["cli"]
    ['--max-num-seqs', '128', '--tensor-parallel-size', '2', '--no-enable-chunked-prefill']
"""

from __future__ import annotations

import shlex

__all__ = ["launch_args", "VLLM_FLAGS", "CB_CONFIG_KWARGS", "CB_SERVE_FLAGS"]

# servetune/simulator key -> vLLM engine argument flag (booleans take --no- for False).
VLLM_FLAGS = {
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "max_num_seqs": "--max-num-seqs",
    "block_size": "--block-size",
    "long_prefill_token_threshold": "--long-prefill-token-threshold",
    "max_num_partial_prefills": "--max-num-partial-prefills",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "enable_chunked_prefill": "--enable-chunked-prefill",
    "num_gpu_blocks_override": "--num-gpu-blocks-override",
    "async_scheduling": "--async-scheduling",
    "enforce_eager": "--enforce-eager",
    "tp": "--tensor-parallel-size",
    "tp_size": "--tensor-parallel-size",
    "dp": "--data-parallel-size",
    "dp_size": "--data-parallel-size",
}

# servetune/simulator key -> ContinuousBatchingConfig keyword (transformers 5.x).
CB_CONFIG_KWARGS = {
    "block_size": "block_size",
    "num_blocks": "num_blocks",
    "max_batch_tokens": "max_batch_tokens",
    "max_memory_percent": "max_memory_percent",
    "max_requests_per_batch": "max_requests_per_batch",
    "max_blocks_per_request": "max_blocks_per_request",
    "use_async_batching": "use_async_batching",
    "async_batching": "use_async_batching",
    "use_cuda_graph": "use_cuda_graph",
    "cuda_graph": "use_cuda_graph",
    "scheduler_type": "scheduler_type",
    "scheduler": "scheduler_type",
    "safety_margin": "safety_margin",
}

# ContinuousBatchingConfig keyword -> `transformers serve` flag.
CB_SERVE_FLAGS = {
    "block_size": "--cb-block-size",
    "num_blocks": "--cb-num-blocks",
    "max_batch_tokens": "--cb-max-batch-tokens",
    "max_memory_percent": "--cb-max-memory-percent",
    "use_cuda_graph": "--cb-use-cuda-graph",
}


def launch_args(engine: str, config: dict, targets: dict | None = None,
                model: str = "MODEL") -> dict:
    """How to launch ``engine`` with ``config``.

    Returns:
        ``{"engine", "cli": [args], "command": str, "env": {...}, "config_file": {...},
        "kwargs": {...}, "unused": [keys with no launch equivalent]}`` (``kwargs`` and
        ``serve_flags_cover_all`` for transformers).
    """
    if targets:
        return _from_targets(engine, config, targets, model)
    if engine in ("vllm", "vllm-v1"):
        return _vllm(config, model)
    if engine in ("transformers-cb", "transformers"):
        return _transformers(config, model)
    return {"engine": engine, "cli": [], "command": "", "env": {}, "config_file": {},
            "kwargs": dict(config), "unused": []}


def _flag(flag: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + flag[2:]]
    return [flag, str(value)]


def _vllm(config: dict, model: str) -> dict:
    cli: list[str] = []
    unused = []
    seen = set()
    for key, value in config.items():
        flag = VLLM_FLAGS.get(key)
        if flag is None or value is None:
            unused.append(key)
            continue
        if flag in seen:
            continue
        seen.add(flag)
        if key in ("dp", "dp_size") and value == 1:
            continue
        cli += _flag(flag, value)
    command = shlex.join(["vllm", "serve", model, *cli])
    return {"engine": "vllm", "cli": cli, "command": command, "env": {}, "config_file": {},
            "kwargs": {}, "unused": unused}


def _transformers(config: dict, model: str) -> dict:
    kwargs: dict = {}
    unused = []
    for key, value in config.items():
        name = CB_CONFIG_KWARGS.get(key)
        if name is None:
            unused.append(key)
        elif value is not None:
            kwargs[name] = value
    cli = ["--continuous-batching"]
    for name, value in kwargs.items():
        if name in CB_SERVE_FLAGS:
            cli += _flag(CB_SERVE_FLAGS[name], value)
    command = shlex.join(["transformers", "serve", model, *cli])
    return {"engine": "transformers-cb", "cli": cli, "command": command, "env": {},
            "config_file": {}, "kwargs": kwargs, "unused": unused,
            "serve_flags_cover_all": all(k in CB_SERVE_FLAGS for k in kwargs)}


def _from_targets(engine: str, config: dict, targets: dict, model: str) -> dict:
    cli: list[str] = []
    env: dict = {}
    tree: dict = {}
    unused = []
    for key, value in config.items():
        where = targets.get(key)
        if where is None:
            unused.append(key)
        elif where == "env":
            env[key] = str(value)
        elif where.startswith("--"):
            cli += _flag(where, value)
        else:
            node = tree
            *parents, leaf = where.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    prefix = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    command = " ".join(prefix + [shlex.join([engine, model, *cli])]) if cli or env else ""
    return {"engine": engine, "cli": cli, "command": command, "env": env, "config_file": tree,
            "kwargs": {}, "unused": unused}
