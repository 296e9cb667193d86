"""Trace schemas, conform() and the Parquet store (real files, real subprocesses)."""

from __future__ import annotations

import json
import math
import subprocess
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _helpers_data import FIXTURES, run_cli, servetune_command, tree_digest, write_vllm_result

from servetune import InputError
from servetune.data import TableStream, TraceStore, conform, file_schema_for, schema_for


def _requests(n: int, run_id: str = "run-a", **columns) -> dict:
    base = {"run_id": [run_id] * n, "engine": ["vllm"] * n, "model": ["org/model"] * n,
            "hardware": ["NVIDIA H200"] * n, "source": ["measured"] * n,
            "request_id": [str(i) for i in range(n)], "ttft_ms": [10.0 + i for i in range(n)],
            "itl_ms": [[1.0, 2.0]] * n, "status": ["ok"] * n}
    base.update(columns)
    return base


# ------------------------------------------------------------------------------- conform
def test_conform_fills_nullable_columns_and_normalises_partitions():
    table = conform(_requests(3), "requests", path="x.json")
    assert table.schema.equals(schema_for("requests"), check_metadata=False)
    assert table.column("model").to_pylist() == ["org/model"] * 3  # kept: directories encode it
    assert table.column("hardware").to_pylist() == ["NVIDIA-H200"] * 3
    assert table.column("e2e_ms").null_count == 3


@pytest.mark.parametrize("columns, row, field, message", [
    ({"ttft_ms": [1.0, "fast", 3.0]}, 2, "ttft_ms", "expected a number, got 'fast'"),
    ({"ttft_ms": [1.0, 2.0, -3.0]}, 3, "ttft_ms", "expected a number >= 0"),
    ({"ttft_ms": [math.nan, 2.0, 3.0]}, 1, "ttft_ms", "expected a finite number"),
    ({"itl_ms": [[1.0], [2.0, -1.0], []]}, 2, "itl_ms", "expected a number >= 0"),
    ({"status": ["ok", None, "ok"]}, 2, "status", "expected a value"),
    ({"source": ["measured", "guessed", "measured"]}, 2, "source", "expected one of"),
    ({"input_tokens": [1, 2.5, 3]}, 2, "input_tokens", "expected an integer"),
])
def test_conform_refuses_bad_values_naming_row_and_field(columns, row, field, message):
    for form in ("mapping", "arrow"):
        data = _requests(3, **columns)
        if form == "arrow":
            try:
                data = pa.table(data)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                continue  # pyarrow itself cannot hold this mix of types
        with pytest.raises(InputError) as caught:
            conform(data, "requests", path="trace.csv")
        error = caught.value
        assert (error.path, error.row, error.field) == ("trace.csv", row, field), form
        assert message in str(error) and str(error).startswith("trace.csv, row")


def test_conform_refuses_missing_required_columns_and_text_numbers():
    data = _requests(2)
    del data["request_id"]
    with pytest.raises(InputError, match="missing required column.*request_id"):
        conform(data, "requests")
    table = pa.table(_requests(2, ttft_ms=["1.5", "2.5"]))
    with pytest.raises(InputError, match="expected a number, got '1.5'"):
        conform(table, "requests")  # text is never silently parsed as a number


def test_conform_dataframe_treats_nan_as_missing_only_where_allowed():
    frame = pd.DataFrame(_requests(2, e2e_ms=[np.nan, 50.0]))
    table = conform(frame, "requests")
    assert table.column("e2e_ms").to_pylist() == [None, 50.0]


# ------------------------------------------------------------------------------- store
def test_store_ingest_query_and_dedup(tmp_path):
    store = TraceStore(tmp_path / "traces")
    first = store.ingest({"requests": pd.DataFrame(_requests(4))}, source="a.csv",
                         sha256="a" * 64, format="test")
    assert first.rows == {"requests": 4} and not first.skipped
    digest = tree_digest(store.root)
    again = store.ingest({"requests": pd.DataFrame(_requests(4, run_id="other"))},
                         source="copy.csv", sha256="a" * 64, format="test")
    assert again.skipped and tree_digest(store.root) == digest
    store.ingest({"requests": pa.table(_requests(2, run_id="run-b", engine=["sglang"] * 2))},
                 source="b.csv", sha256="b" * 64, format="test")
    assert len(store.query("requests")) == 6
    assert len(store.query("requests", engine="sglang")) == 2
    assert store.query("requests", run_id="run-a")["request_id"].tolist() == list("0123")
    # Any Parquet reader sees the same rows through the hive layout.
    files = sorted(store.root.glob("requests/engine=*/model=*/hardware=*/part-*.parquet"))
    assert len(files) == 2
    assert pq.read_table(files[0]).schema.equals(file_schema_for("requests"),
                                                 check_metadata=False)


def test_stream_ingest_writes_chunks_into_one_file_per_partition(tmp_path):
    store = TraceStore(tmp_path / "traces")
    chunks = [pa.table(_requests(3, run_id="r1")), pa.table(_requests(2, run_id="r2")),
              pa.table(_requests(1, run_id="r3", hardware=["A100"]))]
    result = store.ingest({"requests": TableStream(iter(chunks), num_rows=6)}, source="s",
                          sha256="c" * 64, format="test")
    assert result.rows == {"requests": 6} and result.runs == ["r1", "r2", "r3"]
    [entry] = store.manifest()["ingests"]
    assert sorted((f["hardware"], f["rows"]) for f in entry["files"]) == [("A100", 1),
                                                                         ("NVIDIA-H200", 5)]


def test_failed_stream_leaves_store_byte_for_byte_unchanged(tmp_path):
    store = TraceStore(tmp_path / "traces")
    store.ingest({"requests": pa.table(_requests(2))}, source="ok", sha256="d" * 64,
                 format="test")
    before = tree_digest(store.root)

    def chunks():
        yield pa.table(_requests(3, run_id="x", hardware=["B200"] * 3))  # new directories
        raise InputError("bad value in the middle", path="late.json", row=7)

    with pytest.raises(InputError, match="bad value"):
        store.ingest({"requests": TableStream(chunks())}, source="late", sha256="e" * 64,
                     format="test")
    assert tree_digest(store.root) == before
    assert not any(p.name.startswith(".pending") for p in store.root.rglob("*"))
    assert not (store.root / "requests" / "engine=vllm" / "model=org-model"
                / "hardware=B200").exists()


# ------------------------------------------------------------------------------- CLI
def test_data_ls_json_keys_and_values(tmp_path):
    workspace = tmp_path / "ws"
    proc = run_cli("ingest", str(FIXTURES / "vllm_serve_detailed_60.json"),
                   str(FIXTURES / "steps_sglang.jsonl"), "--set", "hardware=H200",
                   workspace=workspace)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("data", "ls", "--json", workspace=workspace)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert set(listing) == {"steps", "requests", "runs"}
    for kind in listing:
        assert {"rows", "runs", "engines", "models", "hardware"} <= set(listing[kind])
    assert listing["requests"]["rows"] == 60 and listing["runs"]["rows"] == 1
    assert listing["steps"]["rows"] == 240
    assert listing["requests"]["engines"] == ["vllm"]
    assert listing["requests"]["models"] == ["meta-llama/Llama-3.1-8B-Instruct"]
    assert listing["requests"]["hardware"] == ["H200"]
    # --set applies to foreign formats; the steps file named its own hardware column,
    # but --set wins over a column.
    assert listing["steps"]["hardware"] == ["H200"] and listing["steps"]["engines"] == ["sglang"]
    assert listing["runs"]["runs"] == listing["requests"]["runs"]


def test_samples_flag_ingests_the_bundled_traces(tmp_path):
    from servetune.data._ingest import sample_paths

    if not sample_paths():
        pytest.skip("this checkout bundles no data/samples/*.parquet")
    proc = run_cli("ingest", "--samples", "--json", workspace=tmp_path / "ws")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["ingested"]
    assert {r["format"] for r in report} == {"servetune-parquet"}
    assert len(report) == len(sample_paths())


def test_samples_flag_without_samples_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """An installation without bundled samples, simulated by an empty samples directory."""
    import servetune.cli._ingest as cli_ingest
    import servetune.data._ingest as data_ingest
    from servetune.cli import main

    empty = tmp_path / "samples"
    empty.mkdir()
    monkeypatch.setattr(data_ingest, "SAMPLES_DIR", empty)
    monkeypatch.setattr(cli_ingest, "SAMPLES_DIR", empty)
    code = main(["--workspace", str(tmp_path / "ws"), "ingest", "--samples"])
    stderr = capsys.readouterr().err
    assert code == 2
    assert "no bundled sample traces" in stderr and str(empty) in stderr
    assert "servetune ingest PATH" in stderr
    assert not (tmp_path / "ws" / "traces").exists()


def test_no_paths_and_unknown_format_exit_2(tmp_path):
    proc = run_cli("ingest", workspace=tmp_path / "ws")
    assert proc.returncode == 2 and "nothing to ingest" in proc.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("just some text\n")
    proc = run_cli("ingest", str(notes), workspace=tmp_path / "ws")
    assert proc.returncode == 2 and "unknown format" in proc.stderr and str(notes) in proc.stderr
    proc = run_cli("ingest", str(notes), "--format", "nope", workspace=tmp_path / "ws")
    assert proc.returncode == 2 and "unknown format 'nope'" in proc.stderr


def test_sigkill_mid_ingest_never_shows_partial_rows_and_next_ingest_recovers(tmp_path):
    """Kill -9 a real ``servetune ingest`` at random moments while it writes Parquet files.

    Each round starts a fresh ingest, waits until its first hidden pending file exists (it is
    writing), sleeps a random 0-300 ms more and kills it. Whatever the moment, a reader sees
    all of the source or none of it, and the next ingest finishes the job.
    """
    big = tmp_path / "big.json"
    write_vllm_result(big, 6000, seed=3, texts=False)
    rng = np.random.default_rng(20251122)

    def command(workspace):
        return [*servetune_command(), "--workspace", str(workspace), "ingest", str(big)]

    killed_while_pending = 0
    for round_ in range(3):
        workspace = tmp_path / f"ws{round_}"
        proc = subprocess.Popen(command(workspace), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not any((workspace / "traces").glob("*/**/.pending-*")):
            assert proc.poll() is None, "the ingest ended before it started writing"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait(timeout=30)
        store = TraceStore(workspace / "traces")
        pending = list(store.root.glob("*/**/.pending-*"))
        killed_while_pending += bool(pending)
        rows = len(store.query("requests", columns=["request_id"]))
        runs = len(store.query("runs", columns=["run_id"]))
        assert (rows, runs) in ((0, 0), (6000, 1)), (round_, rows, runs)
        final = subprocess.run(command(workspace), capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr
        assert len(store.query("requests", columns=["request_id"])) == 6000
        assert len(store.query("runs", columns=["run_id"])) == 1
        assert not any(store.root.glob("*/**/.pending-*"))
        [entry] = store.manifest()["ingests"]
        assert all((store.root / f["path"]).exists() for f in entry["files"])
    assert killed_while_pending, "no kill landed while files were half-written"


def test_help_lists_formats_as_json(tmp_path):
    proc = run_cli("ingest", "--formats", "--json", workspace=tmp_path)
    names = [f["name"] for f in json.loads(proc.stdout)["formats"]]
    assert names == ["servetune-parquet", "vllm-bench", "vllm-iteration-log", "vllm-sweep",
                     "steps-csv", "steps-jsonl", "requests-csv", "requests-jsonl"]
