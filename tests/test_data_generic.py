"""Generic CSV/JSONL step and request traces: the documented column mapping and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers_data import FIXTURES, run_cli

from servetune import InputError
from servetune.data import TraceStore, Workspace
from servetune.data._ingest import ingest_paths
from servetune.data.adapters import GenericTraceAdapter, default_registry, file_sha256

STEPS_CSV = FIXTURES / "steps_profile.csv"
STEPS_JSONL = FIXTURES / "steps_sglang.jsonl"
REQUESTS_CSV = FIXTURES / "requests_client.csv"
REQUESTS_JSONL = FIXTURES / "requests_client.jsonl"
IDENTITY = {"engine": "vllm", "model": "meta-llama/Llama-3.1-8B-Instruct", "hardware": "H200"}


def _store(tmp_path) -> TraceStore:
    return TraceStore.for_workspace(Workspace.resolve(tmp_path / "ws"))


def test_formats_are_detected(tmp_path):
    registry = default_registry(IDENTITY)
    for path, name in ((STEPS_CSV, "steps-csv"), (STEPS_JSONL, "steps-jsonl"),
                       (REQUESTS_CSV, "requests-csv"), (REQUESTS_JSONL, "requests-jsonl")):
        assert registry.detect(path).name == name


def test_steps_csv_aliases_defaults_and_extra(tmp_path):
    store = _store(tmp_path)
    [result] = ingest_paths(store, [STEPS_CSV], default_registry(IDENTITY))
    assert result.rows == {"steps": 240}
    steps = store.query("steps").sort_values("step_index").reset_index(drop=True)
    lines = [line.split(",") for line in STEPS_CSV.read_text().splitlines()[1:]]
    assert steps["step_index"].tolist() == [int(r[0]) for r in lines]
    assert steps["duration_ms"].tolist() == [float(r[1]) for r in lines]  # latency_ms
    assert steps["num_seqs"].tolist() == [int(r[2]) for r in lines]  # batch_size
    assert steps["prefill_tokens"].tolist() == [int(r[4]) for r in lines]
    # num_decode_seqs was not in the file: derived as num_seqs - num_prefill_seqs
    assert (steps["num_decode_seqs"] == steps["num_seqs"] - steps["num_prefill_seqs"]).all()
    assert json.loads(steps["extra"][0]) == {"cuda_graph": lines[0][8]}
    assert set(steps["engine"]) == {"vllm"} and set(steps["hardware"]) == {"H200"}
    assert set(steps["run_id"]) == {f"steps-csv-{file_sha256(STEPS_CSV)[:16]}"}


def test_steps_jsonl_takes_identity_from_columns(tmp_path):
    store = _store(tmp_path)
    ingest_paths(store, [STEPS_JSONL], default_registry())
    summary = store.summary()["steps"]
    assert summary["rows"] == 240
    assert summary["engines"] == ["sglang"] and summary["hardware"] == ["NVIDIA-H100-80GB-HBM3"]
    steps = store.query("steps")
    assert (steps["num_seqs"] == steps["num_prefill_seqs"] + steps["num_decode_seqs"]).all()
    assert json.loads(steps["extra"].iloc[0]) == {"scheduler": "fcfs"}


def test_requests_csv_with_error_rows_and_itl_lists(tmp_path):
    store = _store(tmp_path)
    ingest_paths(store, [REQUESTS_CSV], default_registry(IDENTITY))
    rows = store.query("requests").set_index("request_id")
    assert len(rows) == 40
    assert rows.loc["r0009", "status"] == "error"
    assert rows.loc["r0009", "error"] == "HTTP 503: Service Unavailable"
    assert (rows.drop(index="r0009")["status"] == "ok").all()
    first = REQUESTS_CSV.read_text().splitlines()[1].split(",")
    itl = [float(v) for v in first[6].split(";")]
    np.testing.assert_allclose(rows.loc["r0000", "itl_ms"], itl)
    assert rows.loc["r0000", "input_tokens"] == int(first[2])  # prompt_tokens


def test_requests_jsonl(tmp_path):
    store = _store(tmp_path)
    ingest_paths(store, [REQUESTS_JSONL], default_registry(IDENTITY))
    rows = store.query("requests")
    records = [json.loads(line) for line in REQUESTS_JSONL.read_text().splitlines()]
    assert len(rows) == len(records)
    assert json.loads(rows["extra"].iloc[0]) == {"client": "locust"}


@pytest.mark.parametrize("name, text, line, field, message", [
    ("bad.csv", "step,latency_ms,batch_size,num_prefills,num_prefill_tokens,num_decode_tokens\n"
     "0,12.5,4,1,512,3\n1,abc,4,0,0,4\n", 3, "duration_ms", "expected a number, got 'abc'"),
    ("neg.csv", "step,latency_ms,batch_size,num_prefills,num_prefill_tokens,num_decode_tokens\n"
     "0,12.5,4,1,512,3\n\n1,-3,4,0,0,4\n", 4, "duration_ms", "expected a number >= 0"),
    ("nan.csv", "step,latency_ms,batch_size,num_prefills,num_prefill_tokens,num_decode_tokens\n"
     "0,nan,4,1,512,3\n", 2, "duration_ms", "finite"),
    ("short.csv", "step,latency_ms,batch_size,num_prefills,num_prefill_tokens,num_decode_tokens\n"
     "0,12.5,4,1,512\n", 2, None, "expected 6 fields"),
    ("frac.csv", "step,latency_ms,batch_size,num_prefills,num_prefill_tokens,num_decode_tokens\n"
     "0,12.5,4.5,1,512,3\n", 2, "num_seqs", "expected an integer"),
    ("bad.jsonl", '{"step": 0, "latency_ms": 1.0, "batch_size": 1, "num_prefills": 1, '
     '"num_prefill_tokens": 5, "num_decode_tokens": 0}\n{"step": 1, "latency_ms": 1.0,\n',
     2, None, "invalid JSON"),
    ("typed.jsonl", '{"step": 0, "latency_ms": "1.0", "batch_size": 1, "num_prefills": 1, '
     '"num_prefill_tokens": 5, "num_decode_tokens": 0}\n', 1, "duration_ms",
     "expected a number, got '1.0'"),
])
def test_bad_rows_are_refused_with_line_and_field(tmp_path, name, text, line, field, message):
    path = tmp_path / name
    path.write_text(text)
    store = _store(tmp_path)
    with pytest.raises(InputError) as caught:
        ingest_paths(store, [path], default_registry(IDENTITY))
    error = caught.value
    assert (error.path, error.row, error.field) == (str(path), line, field), str(error)
    assert message in str(error) and f"line {line}" in str(error)
    assert not store.root.exists()


def test_missing_required_columns_and_identity(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("step,latency_ms,batch_size\n0,10.0,3\n")
    with pytest.raises(InputError, match="no 'engine' column.*--set engine="):
        GenericTraceAdapter("steps", "csv").read(path, sha256="0" * 64)
    with pytest.raises(InputError) as caught:
        GenericTraceAdapter("steps", "csv", IDENTITY).read(path, sha256="0" * 64)
    assert caught.value.field == "num_prefill_seqs"


def test_cli_requests_csv_needs_identity_then_ingests(tmp_path):
    workspace = tmp_path / "ws"
    proc = run_cli("ingest", str(REQUESTS_CSV), workspace=workspace)
    assert proc.returncode == 2 and "--set engine=" in proc.stderr
    assert not (workspace / "traces").exists()
    proc = run_cli("ingest", str(REQUESTS_CSV), "--set", "engine=vllm", "--set",
                   "model=llama-8b", "--json", workspace=workspace)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ingested"][0]["rows"] == {"requests": 40}
    assert report["ingested"][0]["format"] == "requests-csv"
