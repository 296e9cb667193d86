"""Hostile identity values, cross-field checks and the half-committed ingest, on a real store."""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from _helpers_data import tree_digest

from servetune import InputError
from servetune.cli import main
from servetune.data import TraceStore, conform, partition_value
from servetune.data._schemas import partition_dir
from servetune.data._store import _MANIFEST


def _requests(n: int = 2, **columns) -> dict:
    base = {"run_id": ["r"] * n, "engine": ["vllm"] * n, "model": ["m"] * n,
            "hardware": ["h"] * n, "source": ["measured"] * n,
            "request_id": [str(i) for i in range(n)], "ttft_ms": [1.0] * n,
            "e2e_ms": [2.0] * n, "status": ["ok"] * n}
    base.update(columns)
    return base


def test_slash_and_space_values_get_distinct_partitions(tmp_path):
    store = TraceStore(tmp_path / "traces")
    for i, model in enumerate(("A/B", "A B", "A%2FB")):
        store.ingest({"requests": pd.DataFrame(_requests(model=[model] * 2))}, source=f"{i}",
                     sha256=str(i) * 64, format="test")
    models = sorted(store.query("requests").model.unique())
    assert models == ["A%2FB", "A-B", "A/B"]
    dirs = sorted(p.name for p in (store.root / "requests" / "engine=vllm").iterdir())
    assert dirs == ["model=A%252FB", "model=A%2FB", "model=A-B"]
    assert len(store.query("requests", model="A/B")) == 2
    # any hive reader decodes the directory names back to the values
    dataset = ds.dataset(store.root / "requests", format="parquet", partitioning="hive")
    assert sorted(set(dataset.to_table().column("model").to_pylist())) == models


def test_partition_values_keep_old_tokens_and_refuse_unusable_ones():
    for token in ("NVIDIA-H200", "meta-llama-Llama-3.1-8B-Instruct", "cpu", "sim-gpu"):
        assert partition_value(token) == token and partition_dir(token) == token
    assert partition_value(" NVIDIA  H200 ") == "NVIDIA-H200"
    with pytest.raises(InputError, match="row 2, field 'model'.*printable"):
        conform(_requests(model=["ok", "a\x00b"]), "requests", path="f")
    with pytest.raises(InputError, match="at most 200"):
        partition_value("x" * 201)


@pytest.mark.parametrize("columns, message", [
    ({"request_id": ["a", "a"]}, "row 2, field 'request_id': expected unique request ids"),
    ({"ttft_ms": [1.0, 9.0]}, "row 2, field 'ttft_ms': expected ttft_ms <= e2e_ms"),
    ({"status": ["ok", "lost"]}, "row 2, field 'status': expected one of ok, error"),
    ({"extra": ["{}", "nope"]}, "row 2, field 'extra': expected a JSON object"),
    ({"extra": [None, "[1]"]}, "row 2, field 'extra': expected a JSON object"),
])
def test_requests_cross_field_checks(columns, message):
    with pytest.raises(InputError, match=message):
        conform(_requests(**columns), "requests", path="f.csv")


@pytest.mark.parametrize("columns, message", [
    ({"completed": [-1]}, "field 'completed': expected a number >= 0"),
    ({"completed": [4]}, r"field 'completed': expected completed <= num_requests \(3\)"),
    ({"failed": [4]}, r"field 'failed': expected failed <= num_requests"),
    ({"completed": [2], "failed": [2]}, "expected completed \\+ failed <= num_requests"),
    ({"config": ["{oops"]}, "field 'config': expected a JSON object"),
])
def test_runs_cross_field_checks(columns, message):
    runs = {"run_id": ["r"], "engine": ["e"], "model": ["m"], "hardware": ["h"],
            "source": ["measured"], "num_requests": [3], "completed": [3], "failed": [0]}
    with pytest.raises(InputError, match=message):
        conform({**runs, **columns}, "runs", path="f")


def test_boolean_column_is_not_a_duration(tmp_path):
    import pyarrow as pa

    table = pa.table({"run_id": ["r"], "engine": ["e"], "model": ["m"], "hardware": ["h"],
                      "source": ["measured"], "step_index": [0], "duration_ms": [True],
                      "num_seqs": [1], "num_prefill_seqs": [1], "num_decode_seqs": [0],
                      "prefill_tokens": [1], "decode_tokens": [0]})
    with pytest.raises(InputError, match="field 'duration_ms': expected a number, got a bool"):
        conform(table, "steps", path="f.parquet")


def test_repeated_ingest_completes_a_half_committed_one(tmp_path, capsys):
    source = tmp_path / "steps.csv"
    source.write_text("step,latency_ms,batch_size,num_prefills,prefill_tokens,decode_tokens\n"
                      "0,5.0,1,1,8,0\n1,6.0,1,0,0,1\n")
    workspace = tmp_path / "ws"
    argv = ["--workspace", str(workspace), "ingest", "--set", "engine=vllm", "--set", "model=m",
            str(source)]
    assert main(argv) == 0
    traces = workspace / "traces"
    # simulate a writer killed after the manifest write, before its renames
    manifest = json.loads((traces / _MANIFEST).read_text())
    final = traces / manifest["ingests"][0]["files"][0]["path"]
    pending = final.with_name(".pending-" + final.name[len("part-"):])
    os.replace(final, pending)
    assert not list(traces.rglob("part-*.parquet"))
    assert main(argv) == 0  # skipped as already ingested, but the commit is finished
    assert final.exists() and not pending.exists()
    assert pq.read_table(final).num_rows == 2
    digest = tree_digest(traces)
    assert main(argv) == 0 and tree_digest(traces) == digest
