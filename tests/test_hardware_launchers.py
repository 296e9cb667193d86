"""Engine launchers: candidate knobs -> per-node commands, and refusal of what cannot apply."""

from __future__ import annotations

import json

import pytest

from servetune import ConfigError
from servetune.tuner.hardware import (
    NodeSpec,
    ServiceGroupSpec,
    launcher_for,
)


def group(n_nodes=1, **kw):
    nodes = tuple(NodeSpec(f"n{i}", gpus=(0, 1)) for i in range(n_nodes))
    return ServiceGroupSpec("g0", nodes, service_port=8100, **kw)


def test_vllm_single_node_flags_and_env():
    (spec,) = launcher_for("vllm").render(
        {"max_num_seqs": 64, "max_batch_tokens": 4096, "tp": 2, "cuda_graph": False,
         "chunked_prefill": True, "gpu_memory_utilization": 0.9, "env.VLLM_USE_V1": 1},
        group(), model="/m")
    assert spec.argv[:7] == ("vllm", "serve", "/m", "--host", "0.0.0.0", "--port", "8100")
    flags = spec.argv[7:]
    assert ("--max-num-seqs", "64") == flags[0:2]
    assert "--max-num-batched-tokens" in flags and "--tensor-parallel-size" in flags
    assert "--enforce-eager" in flags and "--enable-chunked-prefill" in flags
    assert spec.env == {"VLLM_USE_V1": "1", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert spec.role == "head"


def test_vllm_multi_node_data_parallel_roles():
    specs = launcher_for("vllm").render({"dp": 4, "tp": 2}, group(2), model="/m")
    head, worker = specs
    assert head.role == "head" and worker.role == "worker" and worker.rank == 1
    for spec in specs:
        argv = list(spec.argv)
        assert argv[argv.index("--data-parallel-size") + 1] == "4"
        assert argv[argv.index("--data-parallel-size-local") + 1] == "2"
        assert argv[argv.index("--data-parallel-address") + 1] == "n0"
    assert "--headless" not in head.argv
    assert worker.argv[-3:] == ("--headless", "--data-parallel-start-rank", "2")
    with pytest.raises(ConfigError, match="does not split"):
        launcher_for("vllm").render({"dp": 3}, group(2), model="/m")


def test_sglang_multi_node_ranks():
    specs = launcher_for("sglang").render({"tp": 16, "max_num_seqs": 256}, group(2), model="/m")
    assert [s.argv[-1] for s in specs] == ["0", "1"]
    assert all("--dist-init-addr" in s.argv and "n0:5000" in s.argv for s in specs)
    assert "--max-running-requests" in specs[0].argv and "--tp-size" in specs[0].argv


def test_transformers_flags_and_unsupported_knobs():
    launcher = launcher_for("transformers-cb")
    (spec,) = launcher.render({"max_batch_tokens": 512, "block_size": 32, "num_blocks": 100,
                               "max_memory_percent": 0.8, "cuda_graph": False},
                              group(start_command=("/venv/bin/transformers", "serve")),
                              model="/m")
    assert spec.argv[:4] == ("/venv/bin/transformers", "serve", "/m", "--continuous-batching")
    assert "--no-cb-use-cuda-graph" in spec.argv
    assert list(spec.argv[spec.argv.index("--cb-max-batch-tokens"):][:2]) == [
        "--cb-max-batch-tokens", "512"]
    with pytest.raises(ConfigError, match="cannot take scheduler_type; it can take: block_size"):
        launcher.render({"scheduler": "fifo"}, group(), model="/m")
    with pytest.raises(ConfigError, match="async_batching"):
        launcher.render({"async_batching": True}, group(), model="/m")
    recording = launcher_for("transformers", unsupported="record")
    (spec,) = recording.render({"scheduler": "fifo", "max_requests_per_batch": 32,
                                "async_batching": False}, group(), model="/m")
    assert "scheduler" not in " ".join(spec.argv)
    assert launcher.unapplied({"scheduler": "fifo", "max_batch_tokens": 1,
                               "max_requests_per_batch": 8}) == ["scheduler_type",
                                                                 "max_requests_per_batch"]
    with pytest.raises(ConfigError, match="one node"):
        launcher.render({}, group(2), model="/m")


def test_script_launcher_passes_knobs_as_args_and_env():
    g = group(2, start_script="/opt/start.sh")
    specs = launcher_for("script").render({"batch": 8, "mode": "$(id)"}, g, model="/m")
    assert specs[0].argv == ("/opt/start.sh", "--batch", "8", "--mode", "$(id)")
    assert specs[1].env["SERVETUNE_NODE_RANK"] == "1"
    assert specs[0].env["SERVETUNE_MODE"] == "$(id)"
    assert json.loads(specs[0].env["SERVETUNE_CONFIG"]) == {"batch": 8, "mode": "$(id)"}
    with pytest.raises(ConfigError, match="no start_script"):
        launcher_for("script").render({}, group(), model="/m")


def test_unknown_engine_lists_the_known_ones():
    with pytest.raises(ConfigError, match="expected one of sglang, static, transformers-cb, vllm"):
        launcher_for("tgi")


def test_loopback_services_bind_loopback():
    g = ServiceGroupSpec("g", (NodeSpec("local"),), service_port=9)
    (spec,) = launcher_for("vllm").render({}, g, model="m")
    assert spec.argv[spec.argv.index("--host") + 1] == "127.0.0.1"
