"""Importers of LLMServingTuner TOML and auto-tuning-vllm YAML spaces (real-format fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from servetune import ConfigError
from servetune.tuner import import_auto_tuning_vllm, import_llmservingtuner, import_space

DATA = Path(__file__).parent / "data" / "tuner"


def test_llmservingtuner_field_kinds_map_onto_the_space():
    space = import_llmservingtuner(DATA / "llmservingtuner_config.toml")
    params = {p.name: p for p in space.params}
    assert space.engine == "mindie"
    assert params["max_batch_size"].kind == "int"
    assert (params["prefill_time_ms_per_req"].kind, params["prefill_time_ms_per_req"].step) == (
        "int", 10)  # dtype "range" with dtype_param = step
    assert params["support_select_batch"].kind == "bool"
    assert params["prefill_policy_type"].choices == (0, 1, 3)
    assert params["max_prefill_batch_size_ratio"].kind == "float"  # dtype "ratio"
    assert space.fixed == {"max_seq_len": 8192, "MINDIE_LOG_LEVEL": "WARN"}  # min == max, env
    assert space.targets["max_batch_size"] == "BackendConfig.ScheduleConfig.maxBatchSize"
    assert space.targets["MINDIE_LOG_LEVEL"] == "env"
    config = space.resolve(space.decode(np.full(space.dim, 0.9))).config
    assert config["dp"] == 16 // config["tp"]  # dtype "factories"
    assert config["max_prefill_batch_size"] == int(
        config["max_prefill_batch_size_ratio"] * config["max_batch_size"])


def test_llmservingtuner_engine_target_field_lists():
    space = import_llmservingtuner(DATA / "llmservingtuner_vllm.toml")
    assert space.engine == "vllm"
    assert space.names == ("MAX_NUM_BATCHED_TOKENS", "MAX_NUM_SEQS")
    assert space.fixed == {"CONCURRENCY": 100}
    assert set(space.targets.values()) == {"env"}


def test_auto_tuning_vllm_parameters_map_onto_the_space():
    space = import_auto_tuning_vllm(DATA / "auto_tuning_vllm_study.yaml")
    params = {p.name: p for p in space.params}
    assert "preemption_mode" not in params  # enabled: false
    assert params["max_num_seqs"].kind == "int" and params["max_num_seqs"].step == 8
    assert params["gpu_memory_utilization"].kind == "float"
    assert params["kv_cache_dtype"].width == 4  # unordered enum, one-hot
    assert params["enable_prefix_caching"].kind == "bool"
    assert space.targets["block_size"] == "--block-size"
    values = space.grid()
    assert {v["gpu_memory_utilization"] for v in values} == {0.9, 0.91, 0.92, 0.93, 0.94, 0.95}


def test_import_space_guesses_the_format(tmp_path):
    assert import_space(DATA / "auto_tuning_vllm_study.yaml").engine == "vllm"
    assert import_space(DATA / "llmservingtuner_config.toml").engine == "mindie"
    other = tmp_path / "x.toml"
    other.write_text("a = 1\n")
    with pytest.raises(ConfigError, match="not a servetune space"):
        import_space(other)


def test_import_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[optimizer_config_field]]\nname = "x"\ndtype = "ratio"\nmin = 0.1\n'
                   'max = 0.5\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: optimizer_config_field\[1\] \(x\): a ratio"):
        import_llmservingtuner(bad)
    yml = tmp_path / "bad.yaml"
    yml.write_text("parameters:\n  max_num_seqs:\n    enabled: true\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: parameters\.max_num_seqs: no 'options'"):
        import_auto_tuning_vllm(yml)
