"""Importers of LLMServingTuner TOML and auto-tuning-vllm YAML spaces (real-format fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from servetune import ConfigError
from servetune.data.engines import get_engine
from servetune.tuner import (import_auto_tuning_vllm, import_llmservingtuner, import_space,
                             launch_args)

DATA = Path(__file__).parent / "data" / "tuner"
SPACES = Path(__file__).parent / "fixtures" / "spaces"


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
    assert space.names == ("max_num_batched_tokens", "max_num_seqs")  # upper-case names mapped
    assert space.fixed == {"CONCURRENCY": 100}
    assert space.targets == {"max_num_batched_tokens": "--max-num-batched-tokens",
                             "max_num_seqs": "--max-num-seqs", "CONCURRENCY": "env"}


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


def _middle(space) -> dict:
    return space.resolve(space.decode(np.full(space.dim, 0.5))).config


def test_upstream_llmservingtuner_config_with_a_benchmark_list_needs_no_engine():
    # engine (vllm), benchmark (vllm_benchmark) and an unused mindie list, as upstream ships it
    space = import_space(SPACES / "llmservingtuner_vllm.toml")
    assert space.engine == "vllm"
    assert space.names == ("max_num_batched_tokens", "max_num_seqs", "CONCURRENCY",
                           "REQUESTRATE")
    params = {p.name: p for p in space.params}
    assert (params["max_num_seqs"].low, params["max_num_seqs"].high) == (32, 512)
    assert params["REQUESTRATE"].kind == "float"
    launch = launch_args(space.engine, _middle(space), space.targets)
    assert launch["command"].split()[2:5] == ["vllm", "serve", "MODEL"]
    assert launch["cli"][0::2] == ["--max-num-batched-tokens", "--max-num-seqs"]
    assert set(launch["env"]) == {"CONCURRENCY", "REQUESTRATE"}
    assert launch["unused"] == []


def test_llmservingtuner_benchmark_only_list_infers_vllm():
    space = import_llmservingtuner(SPACES / "llmservingtuner_benchmark_only.toml")
    assert (space.engine, space.names) == ("vllm", ("CONCURRENCY", "REQUESTRATE"))


def test_llmservingtuner_engine_still_chosen_explicitly_when_ambiguous(tmp_path):
    both = tmp_path / "both.toml"
    both.write_text('[[mindie.target_field]]\nname = "max_batch_size"\nmin = 1\nmax = 9\n'
                    'dtype = "int"\n[[vllm.target_field]]\nname = "MAX_NUM_SEQS"\nmin = 1\n'
                    'max = 9\ndtype = "int"\n')
    with pytest.raises(ConfigError, match=r"both\.toml: target_field lists for several engines"):
        import_llmservingtuner(both)
    assert import_llmservingtuner(both, engine="mindie").names == ("max_batch_size",)
    assert import_llmservingtuner(both, engine="vllm").names == ("max_num_seqs",)


def test_upstream_auto_tuning_vllm_study_launches_vllm_serve():
    space = import_space(SPACES / "auto_tuning_vllm_study.yaml")
    assert space.engine == "vllm" and get_engine(space.engine).program == ("vllm", "serve")
    params = {p.name: p for p in space.params}
    assert "max_num_seqs" not in params  # enabled: false
    assert space.fixed == {"kv_cache_dtype": "fp8", "max_model_len": 8192, "VLLM_USE_V1": "1"}
    assert params["gpu_memory_utilization"].kind == "float"
    assert (params["max_num_batched_tokens"].kind, params["max_num_batched_tokens"].step) == (
        "int", 2048)
    assert params["enable_prefix_caching"].kind == "bool"  # options: [true, false]
    assert params["block_size"].choices == (16, 32, 64)
    assert space.targets["VLLM_ATTENTION_BACKEND"] == "env"
    config = _middle(space)
    launch = launch_args(space.engine, config, space.targets, model="Qwen/Qwen3-8B")
    argv = launch["command"].split()
    start = argv.index("vllm")
    assert argv[start:start + 3] == ["vllm", "serve", "Qwen/Qwen3-8B"]
    assert {"VLLM_USE_V1=1", f"VLLM_ATTENTION_BACKEND={config['VLLM_ATTENTION_BACKEND']}"} == set(
        argv[:start])
    assert launch["cli"][launch["cli"].index("--kv-cache-dtype") + 1] == "fp8"
    assert launch["cli"][launch["cli"].index("--block-size") + 1] == str(config["block_size"])
    assert "--max-model-len" in launch["cli"] and launch["unused"] == []


def test_auto_tuning_vllm_bad_values_name_file_and_parameter(tmp_path):
    cases = {
        "options: []": r"parameters\.x: 'options' must be a non-empty list",
        "min: 1": r"parameters\.x: a range needs min and max",
        "min: a\n    max: 2": r"parameters\.x: min must be a number",
        "options: [1, 1]": r"parameters\.x: 'options' lists a value twice",
    }
    for body, message in cases.items():
        yml = tmp_path / "bad.yaml"
        yml.write_text(f"parameters:\n  x:\n    {body}\n")
        with pytest.raises(ConfigError, match=r"bad\.yaml: " + message):
            import_auto_tuning_vllm(yml)
    yml.write_text("parameters:\n  x:\n    options: [fp8]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: no enabled parameter with two or more"):
        import_auto_tuning_vllm(yml)
    yml.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: expected a mapping"):
        import_auto_tuning_vllm(yml)
