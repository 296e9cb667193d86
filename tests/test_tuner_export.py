"""Launch arguments and candidate files: vLLM flags, transformers CB config and serve flags."""

from __future__ import annotations

import pytest

from servetune.tuner import SearchSpace, launch_args


def test_vllm_flags_with_booleans_and_parallelism():
    space = SearchSpace.builtin("vllm")
    config = space.resolve(space.default_tunables() | {"tp": 2,
                                                       "enable_chunked_prefill": False}).config
    launch = launch_args("vllm", config)
    cli = launch["cli"]
    assert cli[cli.index("--tensor-parallel-size") + 1] == "2"
    assert cli[cli.index("--data-parallel-size") + 1] == "4"
    assert "--no-enable-chunked-prefill" in cli
    assert cli[cli.index("--gpu-memory-utilization") + 1] == "0.9"
    assert launch["unused"] == ["gpus"]
    assert launch["command"].startswith("vllm serve MODEL --max-num-batched-tokens 8192")


def test_transformers_kwargs_build_a_real_continuous_batching_config():
    transformers = pytest.importorskip("transformers")
    space = SearchSpace.builtin("transformers-cb")
    config = space.resolve(space.default_tunables()).config
    launch = launch_args("transformers-cb", config)
    cb = transformers.ContinuousBatchingConfig(**launch["kwargs"])
    assert cb.scheduler_type == config["scheduler"]
    assert cb.max_batch_tokens == config["max_batch_tokens"]
    assert cb.use_async_batching == config["async_batching"]
    assert launch["serve_flags_cover_all"] is False  # scheduler/async are config-only knobs
    assert "--continuous-batching" not in launch["cli"]  # a fixed argument, not a knob flag
    assert launch["command"].startswith("transformers serve MODEL --continuous-batching")


def test_targets_of_imported_spaces_route_to_flags_env_and_config_file():
    launch = launch_args("mindie", {"max_batch_size": 64, "LOG": "WARN", "fast": True, "x": 1},
                         targets={"max_batch_size": "BackendConfig.ScheduleConfig.maxBatchSize",
                                  "LOG": "env", "fast": "--fast"})
    assert launch["config_file"] == {"BackendConfig": {"ScheduleConfig": {"maxBatchSize": 64}}}
    assert launch["env"] == {"LOG": "WARN"} and launch["cli"] == ["--fast"]
    assert launch["unused"] == ["x"]
