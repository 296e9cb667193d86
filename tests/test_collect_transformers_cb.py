"""The transformers continuous-batching collector, end to end on the CPU with a tiny random llama.

Everything here is real: the engine (transformers' ContinuousBatchingManager on torch CPU), the
online submission, the step recorder, the Parquet files and the trace store. The engine sizes its
KV cache from system memory on a CPU, so every configuration gives num_blocks and
max_batch_tokens explicitly.
"""

from __future__ import annotations

import json
import shlex
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from servetune import ConfigError  # noqa: E402
from servetune.cli import main  # noqa: E402
from servetune.data import TraceStore, Workload, Workspace, conform  # noqa: E402
from servetune.data._synthetic import synthetic_workload  # noqa: E402
from servetune.data.collect import (  # noqa: E402
    CollectorOptions,
    EngineConfig,
    StepRecorder,
    TransformersCBCollector,
    build_model,
)

SPEC = "poisson:rate=50,n=16,input=uniform:8:90,output=uniform:2:10"
SMALL = {"num_blocks": 64, "max_batch_tokens": 48, "block_size": 16}


@pytest.fixture(scope="module")
def cli_output(tmp_path_factory):
    """Two configurations (both schedulers) on one workload, through the real CLI."""
    out = tmp_path_factory.mktemp("collect")
    code = main(["collect", "transformers-cb", "--model", "tiny-llama", "--device", "cpu",
                 "--dtype", "float32", "--set", "num_blocks=64", "--set", "max_batch_tokens=48",
                 "--set", "block_size=16", "--config", "name=fifo,scheduler_type=fifo",
                 "--config", "name=pf,scheduler_type=prefill_first,max_requests_per_batch=4",
                 "--workload", SPEC, "--seed", "3", "--warmup-requests", "2",
                 "--out", str(out)])
    assert code == 0
    return out, {kind: pd.read_parquet(out / f"{kind}.parquet")
                 for kind in ("steps", "requests", "runs")}


@pytest.fixture(scope="module")
def collector():
    return TransformersCBCollector(CollectorOptions(model="tiny-llama", device="cpu",
                                                    dtype="float32", warmup_requests=1))


def test_written_files_carry_their_kind_conform_and_ingest(cli_output, tmp_path):
    out, frames = cli_output
    for kind in ("steps", "requests", "runs"):
        path = out / f"{kind}.parquet"
        assert pq.read_schema(path).metadata[b"servetune.kind"] == kind.encode()
        conform(pq.read_table(path), kind, path=str(path))
    store = TraceStore.for_workspace(Workspace.resolve(str(tmp_path / "ws")))
    code = main(["--workspace", str(tmp_path / "ws"), "ingest", *map(str, sorted(out.glob("*")))])
    assert code == 0
    summary = store.summary()
    assert summary["steps"]["rows"] == len(frames["steps"]) > 0
    assert summary["requests"]["rows"] == 32
    assert summary["runs"]["rows"] == 2
    assert summary["steps"]["hardware"] == ["cpu"]
    assert summary["steps"]["engines"] == ["transformers-cb"]


def test_tokens_in_equal_tokens_scheduled(cli_output):
    _, f = cli_output
    assert (f["requests"].status == "ok").all()
    expected = f["requests"].extra.map(lambda e: json.loads(e)["expected_output_tokens"])
    assert (f["requests"].output_tokens == expected).all()
    steps = f["steps"].groupby("run_id")[["prefill_tokens", "decode_tokens"]].sum()
    reqs = f["requests"].groupby("run_id").agg(inputs=("input_tokens", "sum"),
                                               outputs=("output_tokens", "sum"),
                                               n=("request_id", "size"))
    joined = steps.join(reqs)
    # every prompt token is prefilled once; the last prefill chunk yields the first output token,
    # each further output token is one decode token (synchronous batching)
    assert (joined.prefill_tokens == joined.inputs).all()
    assert (joined.decode_tokens == joined.outputs - joined.n).all()


def test_steps_respect_budgets_and_are_ordered_in_time(cli_output):
    _, f = cli_output
    runs = f["runs"].set_index("run_id")
    for run_id, s in f["steps"].groupby("run_id"):
        s = s.sort_values("step_index")
        assert list(s.step_index) == list(range(len(s)))
        assert (np.diff(s.start_s) > 0).all()
        # synchronous steps do not overlap: each starts after the previous one ended
        ends = s.start_s + s.duration_ms / 1e3
        assert (s.start_s.to_numpy()[1:] >= ends.to_numpy()[:-1] - 1e-9).all()
        assert (s.num_seqs == s.num_prefill_seqs + s.num_decode_seqs).all()
        assert (s.decode_tokens == s.num_decode_seqs).all()
        assert (s.prefill_tokens + s.decode_tokens <= runs.loc[run_id, "max_batch_tokens"]).all()
        assert (s.num_seqs <= runs.loc[run_id, "max_num_seqs"]).all()
        assert (s.kv_tokens_max <= s.kv_tokens_sum).all()
        assert (s.kv_tokens_sum >= s.prefill_tokens + s.decode_tokens).all()
        assert ((s.prefill_attn_work > 0) == (s.num_prefill_seqs > 0)).all()
        assert (s.block_size == 16).all()
    pf = f["steps"][f["steps"].run_id.str.startswith("pf-")]
    assert pf.num_seqs.max() <= 4


def test_requests_arrive_on_schedule_and_timings_are_consistent(cli_output):
    _, f = cli_output
    planned = synthetic_workload(SPEC, seed=3).arrival_s
    for _, r in f["requests"].groupby("run_id"):
        r = r.assign(i=r.request_id.str[1:].astype(int)).sort_values("i")
        lag = r.arrival_s.to_numpy() - planned
        assert (lag >= -1e-3).all() and (lag < 0.5).all()
        assert (r.ttft_ms > 0).all() and (r.ttft_ms <= r.e2e_ms).all()
        assert all(len(itl) == n - 1 for itl, n in zip(r.itl_ms, r.output_tokens))
        multi = r[r.output_tokens > 1]
        assert np.allclose(multi.tpot_ms, [np.mean(v) for v in multi.itl_ms])
        assert (r.preemptions == 0).all()


def test_runs_row_holds_resolved_config_and_provenance(cli_output):
    _, f = cli_output
    runs = f["runs"].set_index(f["runs"].run_id.str.split("-").str[0])
    assert runs.loc["fifo", "scheduler"] == "fifo"
    assert runs.loc["pf", "scheduler"] == "prefill_first"
    assert runs.loc["pf", "max_num_seqs"] == 4
    for _, run in runs.iterrows():
        config = json.loads(run.config)
        assert config["num_blocks"] == run.num_blocks == 64
        assert config["max_batch_tokens"] == run.max_batch_tokens == 48
        assert config["block_size"] == run.block_size == 16
        assert run.async_batching is False or run.async_batching == 0
        assert run.completed == 16 and run.failed == 0 and run.success_rate == 1.0
        assert run.output_throughput_tok_s > 0 and run.duration_s > 0
        provenance = json.loads(run.provenance)
        for key in ("hostname", "cpu_model", "torch", "transformers", "preset"):
            assert provenance[key]
        assert provenance["preset"] == "tiny-llama"
        assert json.loads(run.workload)["spec"].startswith("poisson:rate=50")
        # collected through the Python API, so the default records this process's own argv
        assert run.command == shlex.join(sys.argv)


def test_chunked_prefill_composition_is_exact(collector):
    """One 80-token prompt under a 32-token budget: chunks 32, 32, 16, then 3 decode steps."""
    workload = Workload.from_arrays([0.0], [80], [4], name="one")
    result = collector.run(EngineConfig("chunk", {"num_blocks": 32, "max_batch_tokens": 32,
                                                  "block_size": 16}), workload)
    s = pd.DataFrame(result.steps)
    assert list(s.prefill_tokens) == [32, 32, 16, 0, 0, 0]
    assert list(s.decode_tokens) == [0, 0, 0, 1, 1, 1]
    assert list(s.kv_tokens_max) == [32, 64, 80, 81, 82, 83]
    assert list(s.prefill_attn_work) == [32 * 32, 32 * 64, 16 * 80, 0, 0, 0]
    assert result.engine_steps == 6
    r = pd.DataFrame(result.requests)
    assert r.output_tokens.tolist() == [4] and r.status.tolist() == ["ok"]


def test_recorder_patches_only_the_instance_and_uninstalls(collector):
    import torch  # noqa: F401
    from transformers import ContinuousBatchingConfig, GenerationConfig
    from transformers.generation.continuous_batching.continuous_api import (
        ContinuousBatchingManager,
    )

    collector.load()
    model = collector._model
    original = ContinuousBatchingManager.__dict__["_generation_loop_body"]
    manager = model.init_continuous_batching(
        generation_config=GenerationConfig(do_sample=False, eos_token_id=-1, max_new_tokens=4),
        continuous_batching_config=ContinuousBatchingConfig(**SMALL))
    recorder = StepRecorder()
    recorder.install(manager)
    try:
        assert "_generation_loop_body" in vars(manager)
        assert ContinuousBatchingManager.__dict__["_generation_loop_body"] is original
        manager.start()
        recorder.begin()
        manager.add_request([1, 2, 3, 4, 5], request_id="a", max_new_tokens=3, eos_token_id=-1)
        assert manager.get_result(timeout=60).request_id == "a"
        assert "schedule_batch" in vars(manager.batch_processor.scheduler)
        assert [r.prefill_tokens for r in recorder.steps] == [5, 0, 0]
    finally:
        recorder.end()
        scheduler = manager.batch_processor.scheduler
        recorder.uninstall()
        manager.stop(block=True, timeout=60)
        manager.destroy()
    assert "_generation_loop_body" not in vars(manager)
    assert "schedule_batch" not in vars(scheduler)


def test_uninstrumented_run_counts_engine_steps_without_rows(collector):
    workload = synthetic_workload("poisson:rate=100,n=4,input=const:20,output=const:5", seed=1)
    result = collector.run(EngineConfig("plain", SMALL), workload, instrument=False)
    assert result.num_steps == 0
    assert result.engine_steps >= 5
    assert result.runs["completed"] == [4]


def test_bad_knob_and_unknown_model_are_config_errors(collector):
    workload = Workload.from_arrays([0.0], [8], [2])
    with pytest.raises(ConfigError, match="max_batch_tokenz"):
        collector.run(EngineConfig("typo", {"max_batch_tokenz": 8}), workload)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("no-such-preset", device="cpu", dtype="float32")


def test_trace_file_workload_replays_its_arrivals_and_lengths(tmp_path):
    """A Splitwise-format trace file as --workload: each request keeps its own lengths."""
    trace = tmp_path / "trace.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                     "10.0,40,3\n10.05,12,6\n10.1,70,2\n10.3,25,4\n")
    out = tmp_path / "out"
    code = main(["collect", "transformers-cb", "--model", "tiny-llama", "--device", "cpu",
                 "--dtype", "float32", "--set", "num_blocks=64,max_batch_tokens=48,block_size=16",
                 "--workload", str(trace), "--warmup-requests", "0", "--out", str(out)])
    assert code == 0
    requests = pd.read_parquet(out / "requests.parquet").sort_values("request_id")
    assert requests.input_tokens.tolist() == [40, 12, 70, 25]
    assert requests.output_tokens.tolist() == [3, 6, 2, 4]
    lag = requests.arrival_s.to_numpy() - np.array([0.0, 0.05, 0.1, 0.3])
    assert (lag >= -1e-3).all() and (lag < 0.5).all()
    steps = pd.read_parquet(out / "steps.parquet")
    assert steps.prefill_tokens.sum() == 147
    assert steps.decode_tokens.sum() == (3 - 1) + (6 - 1) + (2 - 1) + (4 - 1)


def test_every_preset_is_a_valid_transformers_config():
    import transformers

    from servetune.data.collect import PRESETS

    assert {"llama-1b-like", "llama-8b-like", "qwen2-1.5b-like", "mistral-7b-like"} <= set(PRESETS)
    for name, preset in PRESETS.items():
        config = getattr(transformers, preset.config_class)(**preset.kwargs)
        assert config.num_hidden_layers == preset.kwargs["num_hidden_layers"], name
        assert config.vocab_size == preset.kwargs["vocab_size"], name
