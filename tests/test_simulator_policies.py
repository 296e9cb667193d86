"""Engine policies: keys, defaults, validation and the registry."""

from __future__ import annotations

import pytest

from servetune import ConfigError
from servetune.tuner.simulator import (
    PolicyRegistry,
    config_keys,
    default_config,
    default_registry,
    engines,
    get_policy,
    resolve_config,
)


def test_shipped_engines_and_defaults():
    assert engines() == ("static", "transformers-cb", "vllm")
    tf = default_config("transformers")
    assert tf["scheduler_type"] == "fifo" and tf["block_size"] == 256
    assert tf["max_batch_tokens"] == 8192 and tf["max_requests_per_batch"] == 1024
    # vLLM's API-server default on a >= 70 GiB GPU (the GPU comes from the config or the model)
    assert resolve_config("vllm", {"gpu_memory_gib": 140})["max_num_seqs"] == 1024
    assert resolve_config("vllm", {"gpu_memory_gib": 140})["max_num_batched_tokens"] == 8192
    assert resolve_config("vllm", {"gpu_memory_gib": 40})["max_num_seqs"] == 256
    assert set(config_keys("static")) >= {"max_batch_size", "dp_size", "router", "tp_size"}


def test_registry_refuses_duplicates_and_lists_valid_names():
    registry = default_registry()
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(get_policy("vllm"))
    with pytest.raises(ConfigError, match="static, transformers-cb, vllm"):
        registry.get("sglang")
    assert PolicyRegistry().names == ()
    with pytest.raises(ConfigError, match="engine 'sglang' has no simulator policy"):
        get_policy("sglang")
    with pytest.raises(ConfigError, match="unknown engine 'tgi'"):
        get_policy("tgi")


def test_unknown_key_is_refused_with_the_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown vllm config key\(s\) "
                                          r"'max_requests_per_batch'.*max_num_batched_tokens"):
        resolve_config("vllm", {"max_requests_per_batch": 512})


@pytest.mark.parametrize("key, value, message", [
    ("max_batch_tokens", "abc", "must be an integer"),
    ("max_batch_tokens", 0, "must be >= 1"),
    ("scheduler_type", "lifo", "must be one of fifo, prefill_first"),
    ("use_async_batching", "maybe", "must be true or false"),
    ("safety_margin", 1.5, "must be <= 1.0"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=f"transformers-cb config key '{key}' {message}"):
        resolve_config("transformers", {key: value})


def test_cli_strings_are_parsed_and_aliases_map_to_engine_names():
    c = resolve_config("transformers-cb", {"max_batch_tokens": "512", "async_batching": "true",
                                           "scheduler": "prefill_first", "tp": "2"})
    assert c["max_batch_tokens"] == 512 and c["use_async_batching"] is True
    assert c["scheduler_type"] == "prefill_first" and c["tp_size"] == 2
    with pytest.raises(ConfigError, match="both 'tp' and 'tp_size'"):
        resolve_config("vllm", {"tp": 2, "tp_size": 2})


def test_kernel_parameters_follow_the_engine_defaults():
    policy = get_policy("transformers")
    fifo = policy.params(policy.resolve({"num_blocks": 100}))
    first = policy.params(policy.resolve({"num_blocks": 100, "scheduler_type": "prefill_first"}))
    assert fifo[4] == pytest.approx(0.15) and first[4] == 0.0  # the class default safety margins
    assert fifo[1] == 100 and first[7] == 1.0


def test_vllm_blocks_from_memory_or_override():
    policy = get_policy("vllm")
    c = policy.resolve({"gpu_memory_gib": 80, "gpu_memory_utilization": 0.5,
                        "model_weights_gib": 10, "activation_gib": 2, "block_size": 16,
                        "kv_bytes_per_token": 131072})
    assert policy.params(c)[1] == (80 * 0.5 - 12) * 2**30 // (16 * 131072)
    assert policy.params(policy.resolve({"num_gpu_blocks_override": 77}))[1] == 77
    with pytest.raises(ConfigError, match="no memory left for the KV cache"):
        policy.params(policy.resolve({"gpu_memory_utilization": 0.01, "gpu_memory_gib": 140,
                                      "model_weights_gib": 2.5, "kv_bytes_per_token": 32768,
                                      "activation_gib": 2.0}))
    # no activation peak in the code: the configuration or the model's constants give it
    with pytest.raises(ConfigError, match="needs activation_gib"):
        policy.params(policy.resolve({"gpu_memory_gib": 140, "model_weights_gib": 2.5,
                                      "kv_bytes_per_token": 32768}))
