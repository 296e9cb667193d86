"""vLLM's own output as training data: iteration-log lines and ``vllm bench sweep serve`` trees.

Line formats: ``vllm/v1/engine/core.py:452`` at vLLM v0.25.0 (commit dd10e03f9, engine-core
variant) and ``vllm/v1/metrics/loggers.py:199`` at v0.34.0 (commit 62d4bc3c7, frontend variant);
the fixtures are written by ``tests/fixtures/data/vllm_logs/make_logs.py`` in those formats.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers_data import FIXTURES, tree_digest

from servetune import InputError
from servetune.data import TraceStore, Workspace
from servetune.data._ingest import ingest_paths
from servetune.data.adapters import default_registry
from servetune.data.adapters._vllm_log_lines import parse_iteration, split_line
from servetune.data.engines import VLLM

LOGS = FIXTURES / "vllm_logs"
CORE = LOGS / "server_v0.25_core.log"
FRONTEND = LOGS / "server_v0.34_frontend.log"
SWEEP = LOGS / "sweep" / "exp" / "summary.csv"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, LOGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_logs = _load("make_logs")


def _ws(tmp_path) -> Workspace:
    return Workspace.resolve(tmp_path / "ws")


def _cli(ws: Workspace, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "servetune.cli._main", "--workspace",
                           str(ws.root), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _iteration_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if "Iteration(" in line]


# ------------------------------------------------------------------------------ line grammar
def test_upstream_lines_parse_field_by_field():
    core = ("(EngineCore_DP1 pid=4300) INFO 11-03 14:15:10 [core.py:452] Iteration(7): 2 "
            "context requests, 700 context tokens, 5 generation requests, 9 generation tokens, "
            "iteration elapsed time: 18.42 ms")
    line = split_line(core)
    assert line.process == "EngineCore_DP1" and line.time.strftime("%m-%d %H:%M:%S") == \
        "11-03 14:15:10"
    it = parse_iteration(line.message)
    assert (it.index, it.ctx_requests, it.ctx_tokens, it.gen_requests, it.gen_tokens) == \
        (7, 2, 700, 5, 9)
    assert it.elapsed_ms == 18.42 and not it.dummy and it.kv_usage_pct is None
    # DEBUG level logs a relative path; colour codes wrap the level
    debug = ("\x1b[32mINFO\x1b[0m 11-03 14:15:10 [v1/engine/core.py:452] Iteration(0): 0 "
             "context requests, 0 context tokens, 0 generation requests, 0 generation tokens, "
             "iteration elapsed time: 0.05 ms (dummy)")
    it = parse_iteration(split_line(debug).message)
    assert it.dummy and it.index == 0
    front = ("(APIServer pid=1) INFO 01-02 03:04:05 [loggers.py:199] Engine 002: Iteration(3): "
             "1 context requests, 16 context tokens, 0 generation requests, 0 generation "
             "tokens, iteration elapsed time: 4.00 ms, GPU KV cache usage: 12.5%, encoder "
             "inputs: 2, encoder output embeddings: 576")
    it = parse_iteration(split_line(front).message)
    assert (it.engine, it.kv_device, it.kv_usage_pct, it.encoder_inputs, it.encoder_tokens) == \
        (2, "GPU", 12.5, 2, 576)
    assert parse_iteration("Avg prompt throughput: 1.0 tokens/s") is None


def test_fixture_generator_matches_the_source_format_string():
    # the format string of vllm/v1/metrics/loggers.py:199-202 at v0.34.0, applied verbatim
    text = make_logs._frontend(5, 1, 2, 3, 4, 1.234, 7.25)
    assert text == ("Engine 000: Iteration(5): 1 context requests, 2 context tokens, 3 generation "
                    "requests, 4 generation tokens, iteration elapsed time: 1.23 ms, GPU KV "
                    "cache usage: 7.2%")
    assert make_logs._iteration(5, 1, 2, 3, 4, 1.235, dummy=True).endswith(" ms (dummy)")


# ------------------------------------------------------------------------------ ingest
def test_core_log_through_the_cli_gives_one_step_per_iteration_line(tmp_path):
    ws = _ws(tmp_path)
    done = _cli(ws, "ingest", "--set", "hardware=H200", str(CORE))
    assert done.returncode == 0, done.stderr
    assert "as vllm-iteration-log" in done.stdout
    store = TraceStore.for_workspace(ws)
    steps = store.query("steps").sort_values("step_index").reset_index(drop=True)
    lines = _iteration_lines(CORE)
    assert len(steps) == len(lines) == steps.step_index.max() + 1
    for row, text in ((steps.iloc[0], lines[0]), (steps.iloc[40], lines[40])):
        it = parse_iteration(split_line(text).message)
        assert row.duration_ms == it.elapsed_ms
        assert (row.num_prefill_seqs, row.prefill_tokens) == (it.ctx_requests, it.ctx_tokens)
        assert (row.num_decode_seqs, row.decode_tokens) == (it.gen_requests, it.gen_tokens)
        assert row.num_seqs == it.ctx_requests + it.gen_requests
    assert set(steps.engine) == {VLLM.name} and set(steps.hardware) == {"H200"}
    assert steps.kv_tokens_sum.isna().all() and (steps.block_size == 16).all()
    # start times: back to back, each step ending inside its log line's second
    starts, ends = steps.start_s.to_numpy(), (steps.start_s + steps.duration_ms / 1e3).to_numpy()
    assert starts[0] == 0.0 and (starts[1:] >= ends[:-1] - 1e-9).all()
    first = split_line(lines[0]).time
    for i in (0, 80, len(lines) - 1):
        second = (split_line(lines[i]).time - first).total_seconds()
        assert second - 1.0 - 1e-9 <= ends[i] - ends[0] <= second + 1.0 + 1e-9
    [run] = store.query("runs").to_dict("records")
    assert run["engine_version"] == "0.25.0" and run["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert (run["max_batch_tokens"], run["max_num_seqs"], run["block_size"]) == (2048, 64, 16)
    assert run["chunked_prefill"] and run["cuda_graph"] and run["tp_size"] == 1
    assert run["num_blocks"] == make_logs.KV_TOKENS // 16
    assert json.loads(run["config"])["max_model_len"] == 8192


def test_frontend_log_skips_dummy_steps_and_derives_kv_tokens(tmp_path):
    store = TraceStore.for_workspace(_ws(tmp_path))
    [result] = ingest_paths(store, [FRONTEND], default_registry())
    assert result.format == "vllm-iteration-log"
    lines = _iteration_lines(FRONTEND)
    assert lines[-1].endswith("(dummy), GPU KV cache usage: 0.0%")
    steps = store.query("steps").sort_values("step_index").reset_index(drop=True)
    assert len(steps) == len(lines) - 1
    usage = parse_iteration(split_line(lines[10]).message).kv_usage_pct
    assert steps.kv_tokens_sum[10] == round(usage / 100 * make_logs.KV_TOKENS)
    [run] = store.query("runs").to_dict("records")
    assert run["engine_version"] == "0.34.0"
    assert json.loads(run["extra"])["dummy_iterations"] == 1


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("old,new,field", [
    (" context tokens, ", " ctx tokens, ", "context_tokens"),
    ("iteration elapsed time: ", "iteration elapsed time: n/a", "elapsed_ms"),
    (" generation requests, ", " generation requests; ", "generation_requests"),
])
def test_malformed_iteration_line_is_exit_2_naming_file_line_and_field(tmp_path, old, new,
                                                                       field):
    ws = _ws(tmp_path)
    assert _cli(ws, "ingest", str(FRONTEND)).returncode == 0
    before = tree_digest(TraceStore.for_workspace(ws).root)
    text = CORE.read_text().splitlines()
    number = next(i for i, line in enumerate(text, 1) if "Iteration(30)" in line)
    text[number - 1] = text[number - 1].replace(old, new, 1)
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join(text) + "\n")
    done = _cli(ws, "ingest", str(bad))
    assert done.returncode == 2, done.stderr
    assert str(bad) in done.stderr and f"row {number}" in done.stderr
    assert f"field '{field}'" in done.stderr and "Traceback" not in done.stderr
    assert tree_digest(TraceStore.for_workspace(ws).root) == before


def test_two_server_runs_in_one_file_and_a_log_without_iterations_are_refused(tmp_path):
    store = TraceStore.for_workspace(_ws(tmp_path))
    twice = tmp_path / "twice.log"
    twice.write_text(CORE.read_text() * 2)
    with pytest.raises(InputError, match="more than one server run") as caught:
        ingest_paths(store, [twice], default_registry())
    assert caught.value.row == len(CORE.read_text().splitlines()) + 8
    quiet = tmp_path / "quiet.log"
    quiet.write_text("".join(l + "\n" for l in CORE.read_text().splitlines()
                             if "Iteration(" not in l))
    with pytest.raises(InputError, match="--enable-logging-iteration-details"):
        ingest_paths(store, [quiet], default_registry())
    assert tree_digest(store.root) == {}


# ------------------------------------------------------------------------------ sweep
def test_sweep_experiment_gives_one_run_per_result_with_serve_params_as_config(tmp_path):
    store = TraceStore.for_workspace(_ws(tmp_path))
    [result] = ingest_paths(store, [SWEEP], default_registry({"hardware": "H200"}))
    assert result.format == "vllm-sweep"
    assert result.rows == {"runs": 4, "requests": 16}  # 2 combinations x 2 runs x 4 requests
    runs = store.query("runs").sort_values("run_id").reset_index(drop=True)
    expected = {0: (128, 8192), 1: (32, 2048)}  # combinations in directory-name order
    for run in runs.to_dict("records"):
        sweep = json.loads(run["extra"])["sweep"]
        seqs, tokens = expected[sweep["combination_index"]]
        assert (run["max_num_seqs"], run["max_batch_tokens"]) == (seqs, tokens)
        assert json.loads(run["config"]) == {"max_num_seqs": seqs,
                                             "max_num_batched_tokens": tokens}
        assert sweep["bench"]["request_rate"] == 4 and sweep["run_number"] in (0, 1)
        assert run["source_file"].endswith(f"run={sweep['run_number']}.json")
    assert runs.run_id.str.match(r"^vllm-sweep-[0-9a-f]{12}-[01]-r[01]$").all()
    assert set(store.query("requests").run_id) == set(runs.run_id)  # warmup.json not read


def test_sweep_with_a_broken_result_names_that_file_and_writes_nothing(tmp_path):
    import shutil

    tree = tmp_path / "exp"
    shutil.copytree(SWEEP.parent, tree)
    broken = sorted(tree.glob("SERVE--*/run=1.json"))[0]
    broken.write_text(broken.read_text().replace('"completed": ', '"completed": "x", "c": ', 1))
    store = TraceStore.for_workspace(_ws(tmp_path))
    with pytest.raises(InputError) as caught:
        ingest_paths(store, [tree / "summary.csv"], default_registry())
    assert caught.value.path == str(broken) and caught.value.field == "completed"
    assert tree_digest(store.root) == {}


# ------------------------------------------------------------------------------ training
def test_train_where_engine_vllm_learns_from_ingested_iteration_logs(tmp_path):
    ws = _ws(tmp_path)
    paths = []
    for seed, variant, budget in ((1, "core", 2048), (2, "frontend", 4096), (3, "core", 1024),
                                  (4, "frontend", 2048), (5, "core", 4096)):
        path = tmp_path / f"server-{seed}.log"
        make_logs.write_log(path, variant=variant, seed=seed, requests=30,
                            max_num_batched_tokens=budget)
        paths.append(str(path))
    done = _cli(ws, "ingest", "--set", "hardware=H200", *paths)
    assert done.returncode == 0, done.stderr
    done = _cli(ws, "train", "--where", "engine=vllm", "--trials", "1", "--json", timeout=600)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["registered_model"] == \
        f"step-time.{VLLM.name}.meta-llama-Llama-3.1-8B-Instruct.H200"
    assert out["lineage"]["engines"] == ["vllm"] and out["lineage"]["runs"] == 5
    dummies = 2  # one "(dummy)" line closes each frontend log
    assert out["lineage"]["rows"] == sum(len(_iteration_lines(Path(p))) for p in paths) - dummies
    assert out["metrics"]["mape"] < 10.0  # the fixture's step times are linear plus 0.15 ms noise


def test_data_parallel_ranks_keep_their_own_counters_and_bad_utf8_names_its_line(tmp_path):
    head = CORE.read_text().splitlines()[:7]
    lines = _iteration_lines(CORE)[:4]
    other = [l.replace("EngineCore_DP0", "EngineCore_DP1") for l in lines]
    mixed = tmp_path / "dp2.log"
    mixed.write_text("\n".join(head + [x for pair in zip(lines, other) for x in pair]) + "\n")
    store = TraceStore.for_workspace(_ws(tmp_path))
    ingest_paths(store, [mixed], default_registry())
    steps = store.query("steps")
    assert sorted(steps.dp_rank.value_counts().items()) == [(0, 4), (1, 4)]
    assert sorted(steps[steps.dp_rank == 1].step_index) == [0, 1, 2, 3]
    bad = tmp_path / "bad-utf8.log"
    bad.write_bytes("\n".join(head).encode() + b"\n" + lines[0].encode() + b"\xff\n")
    with pytest.raises(InputError, match=r"\(line 8\)") as caught:
        ingest_paths(store, [bad], default_registry())
    assert caught.value.row == 8


# Three lines of a real vLLM server's output, as posted by the author of the feature in
# vllm-project/vllm pull request #31193 ("[Feature] Add iteration level logging and enhance nvtx
# marker", 2025-12-23): the engine-core variant, from a real run, not built from the format.
REAL_LINES = """\
(EngineCore_DP0 pid=2010410) INFO 12-22 21:44:40 [core.py:349] Iteration(515): 0 context requests, 0 context tokens, 20 generation requests, 20 generation tokens, iteration elapsed time: 10.99 ms
(EngineCore_DP0 pid=2010410) INFO 12-22 21:44:40 [core.py:349] Iteration(516): 0 context requests, 0 context tokens, 20 generation requests, 20 generation tokens, iteration elapsed time: 10.95 ms
(EngineCore_DP0 pid=2010410) INFO 12-22 21:44:40 [core.py:349] Iteration(517): 0 context requests, 0 context tokens, 20 generation requests, 20 generation tokens, iteration elapsed time: 10.79 ms
"""


def test_lines_of_a_real_vllm_server_parse():
    from servetune.data.adapters._vllm_log_lines import parse_iteration, split_line

    parsed = []
    for text in REAL_LINES.splitlines():
        line = split_line(text)
        assert line.process == "EngineCore_DP0"
        assert (line.time.month, line.time.day, line.time.hour) == (12, 22, 21)
        parsed.append(parse_iteration(line.message))
    assert [p.index for p in parsed] == [515, 516, 517]
    assert [p.elapsed_ms for p in parsed] == [10.99, 10.95, 10.79]
    assert all(p.ctx_requests == 0 and p.ctx_tokens == 0 and p.gen_requests == 20
               and p.gen_tokens == 20 and not p.dummy for p in parsed)
