"""Collector sweep plans (flags and TOML files) and output merging; no engine needed."""

from __future__ import annotations

import pandas as pd
import pytest

from servetune import ConfigError, InputError
from servetune.cli._collect import command  # noqa: F401  (the CLI module imports cleanly)
from servetune.data import conform
from servetune.data.collect import (
    EngineConfig,
    SweepPlan,
    TraceWriter,
    WorkloadSpec,
    load_sweep,
    merge_outputs,
    parse_assignments,
    read_output,
)
from servetune.data.collect._command import build_plan

KNOBS = ("max_batch_tokens", "num_blocks", "block_size", "scheduler_type", "use_async_batching")

SWEEP = """
[defaults]
num_blocks = 128

[[config]]
name = "a"
repeat = 3
max_batch_tokens = 64

[[config]]
name = "b"
scheduler_type = "prefill_first"
num_blocks = 256

[[workload]]
name = "w1"
spec = "poisson:rate=4,n=10"
seed = 5

[[workload]]
name = "w2"
spec = "gamma:rate=4,cv=2,n=10"
"""


def test_assignments_are_typed():
    assert parse_assignments(["a=1,b=0.5", "c=true", "d=fifo", "e=null", "f=[true,false]"]) == {
        "a": 1, "b": 0.5, "c": True, "d": "fifo", "e": None, "f": [True, False]}
    with pytest.raises(InputError, match="key=value"):
        parse_assignments(["oops"])


def test_sweep_file_merges_defaults_and_orders_runs_repeat_major(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    plan = load_sweep(path, base_knobs={"block_size": 32}).check(KNOBS)
    a, b = plan.configs
    assert a.knobs == {"block_size": 32, "num_blocks": 128, "max_batch_tokens": 64}
    assert b.knobs == {"block_size": 32, "num_blocks": 256, "scheduler_type": "prefill_first"}
    runs = [(r.config.name, r.workload.name, r.repeat) for r in plan.runs()]
    assert runs == [("a", "w1", 0), ("b", "w1", 0), ("a", "w2", 0), ("b", "w2", 0),
                    ("a", "w1", 1), ("a", "w2", 1), ("a", "w1", 2), ("a", "w2", 2)]
    only = plan.only_workloads(["w2"])
    assert [w.name for w in only.workloads] == ["w2"] and len(only.runs()) == 4
    with pytest.raises(InputError, match="no workload named w3"):
        plan.only_workloads(["w3"])


def test_bad_sweep_files_name_the_file_and_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[[config]\nname = 1")
    with pytest.raises(InputError, match="invalid TOML") as info:
        load_sweep(path)
    assert info.value.path == str(path)
    path.write_text('[[workload]]\nname = "x"\n')
    with pytest.raises(InputError, match="spec") as info:
        load_sweep(path)
    assert info.value.field == "workload[1].spec"
    path.write_text('[[config]]\nname = "x"\nmax_batch_tokenz = 3\n')
    with pytest.raises(ConfigError, match="max_batch_tokenz"):
        load_sweep(path).check(KNOBS)


def test_flags_build_a_plan():
    plan = build_plan(("num_blocks=64",), ("name=x,max_batch_tokens=32,repeat=2",
                                            "scheduler_type=prefill_first"),
                      None, ("poisson:rate=1,n=2",), 1, 7)
    assert [c.name for c in plan.configs] == ["x", "c2"]
    assert plan.configs[0].knobs == {"num_blocks": 64, "max_batch_tokens": 32}
    assert plan.configs[0].repeat == 2 and plan.configs[1].repeat == 1
    assert plan.workloads == (WorkloadSpec("w1", "poisson:rate=1,n=2", 7),)
    with pytest.raises(InputError, match="no workload"):
        build_plan((), (), None, (), 1, 0)
    with pytest.raises(ConfigError, match="two configurations"):
        SweepPlan((EngineConfig("x"), EngineConfig("x")), ()).check(KNOBS)


def _rows(run_id: str) -> dict:
    ident = {"run_id": [run_id], "engine": ["transformers-cb"], "model": ["m"],
             "hardware": ["cpu"], "source": ["measured"]}
    return {
        "steps": {**ident, "step_index": [0], "duration_ms": [1.0], "num_seqs": [1],
                  "num_prefill_seqs": [1], "num_decode_seqs": [0], "prefill_tokens": [8],
                  "decode_tokens": [0]},
        "requests": {**ident, "request_id": ["r0"], "status": ["ok"]},
        "runs": ident,
    }


def test_writer_and_merge_keep_every_run_and_refuse_duplicates(tmp_path):
    first, second = TraceWriter(tmp_path / "a"), TraceWriter(tmp_path / "b")
    first.add(_rows("r1"))
    first.add(_rows("r2"))
    second.add(_rows("r3"))
    assert read_output(tmp_path / "a")["steps"].num_rows == 2
    counts = merge_outputs([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert counts == {"steps": 3, "requests": 3, "runs": 3}
    merged = read_output(tmp_path / "m")
    assert sorted(merged["runs"].column("run_id").to_pylist()) == ["r1", "r2", "r3"]
    conform(pd.read_parquet(tmp_path / "m" / "steps.parquet"), "steps")
    with pytest.raises(InputError, match="'r1' is in both"):
        merge_outputs([tmp_path / "a", tmp_path / "m"], tmp_path / "n")
    with pytest.raises(InputError, match="no steps/requests/runs"):
        read_output(tmp_path)


def test_written_files_round_trip_exactly_with_float_columns_byte_stream_split(tmp_path):
    import pyarrow.parquet as pq

    rows = _rows("r1")
    rows["requests"]["itl_ms"] = [[12.345678901234, 9.87654321, 11.0]]
    rows["requests"]["ttft_ms"] = [123.456789012345]
    writer = TraceWriter(tmp_path / "a")
    writer.add(rows)
    path = tmp_path / "a" / "requests.parquet"
    table = pq.read_table(path)
    assert table.equals(conform(rows["requests"], "requests"))
    columns = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {columns.column(j).path_in_schema: columns.column(j).encodings
                 for j in range(columns.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["itl_ms.list.element"]
    assert "BYTE_STREAM_SPLIT" in encodings["ttft_ms"]
    assert "BYTE_STREAM_SPLIT" not in encodings["run_id"]
