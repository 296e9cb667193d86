"""The vLLM ``bench serve --save-result`` adapter, on files in vLLM's own layout."""

from __future__ import annotations

import io
import json
import random
import shutil

import numpy as np
import pyarrow as pa
import pytest
from _helpers_data import FIXTURES, run_cli, tree_digest, write_vllm_result

from servetune import InputError
from servetune.data import TraceStore, Workspace
from servetune.data._ingest import ingest_paths
from servetune.data.adapters import VllmBenchAdapter, default_registry, file_sha256
from servetune.data.adapters._jsonscan import JsonScanner

DETAILED = FIXTURES / "vllm_serve_detailed_60.json"
SUMMARY = FIXTURES / "vllm_serve_summary.json"
LEGACY = FIXTURES / "vllm_legacy_detailed_24.json"


def _store(tmp_path) -> TraceStore:
    return TraceStore.for_workspace(Workspace.resolve(tmp_path / "ws"))


def test_detailed_result_gives_60_requests_and_1_run_and_reingest_is_a_noop(tmp_path):
    store = _store(tmp_path)
    [first] = ingest_paths(store, [DETAILED], default_registry())
    assert first.format == "vllm-bench" and not first.skipped
    assert first.rows == {"runs": 1, "requests": 60}
    before = tree_digest(store.root)
    [again] = ingest_paths(store, [DETAILED], default_registry())
    assert again.skipped
    assert tree_digest(store.root) == before
    assert len(store.query("requests")) == 60 and len(store.query("runs")) == 1


def test_request_rows_follow_vllm_definitions(tmp_path):
    store = _store(tmp_path)
    ingest_paths(store, [DETAILED], default_registry())
    raw = json.loads(DETAILED.read_text())
    rows = store.query("requests").sort_values("request_id", key=lambda s: s.astype(int))
    rows = rows.reset_index(drop=True)
    assert rows["input_tokens"].tolist() == raw["input_lens"]
    assert rows["output_tokens"].tolist() == raw["output_lens"]
    ok = np.array([not e for e in raw["errors"]])
    assert rows["status"].tolist() == ["ok" if o else "error" for o in ok]
    assert rows.loc[~ok, "error"].str.contains("ServerDisconnectedError").all()
    assert rows.loc[~ok, "ttft_ms"].isna().all() and rows.loc[~ok, "e2e_ms"].isna().all()
    ttft = np.array(raw["ttfts"])[ok] * 1000
    np.testing.assert_allclose(rows.loc[ok, "ttft_ms"], ttft, rtol=1e-12)
    e2e = np.array(raw["latencies"])[ok] * 1000
    np.testing.assert_allclose(rows.loc[ok, "e2e_ms"], e2e, rtol=1e-12)
    out = np.array(raw["output_lens"])[ok]
    np.testing.assert_allclose(rows.loc[ok, "tpot_ms"], (e2e - ttft) / (out - 1), rtol=1e-12)
    start = np.array(raw["start_times"])
    np.testing.assert_allclose(rows["arrival_s"], start - start.min(), rtol=0, atol=1e-9)
    for got, want in zip(rows["itl_ms"], raw["itls"]):
        np.testing.assert_allclose(got, np.array(want) * 1000, rtol=1e-12)
    # The run's mean TPOT is vLLM's own summary, and it matches our per-request TPOTs.
    run = store.query("runs").iloc[0]
    assert run["tpot_mean_ms"] == pytest.approx(rows["tpot_ms"].mean(), rel=1e-9)


def test_run_row_maps_summary_fields(tmp_path):
    store = _store(tmp_path)
    ingest_paths(store, [DETAILED], default_registry({"hardware": "NVIDIA H200",
                                                      "engine_version": "0.11.0"}))
    raw = json.loads(DETAILED.read_text())
    run = store.query("runs").iloc[0]
    sha = file_sha256(DETAILED)
    assert run["run_id"] == f"vllm-{sha[:16]}"
    assert (run["engine"], run["model"], run["hardware"]) == (
        "vllm", "meta-llama/Llama-3.1-8B-Instruct", "NVIDIA-H200")
    assert run["engine_version"] == "0.11.0" and run["source"] == "measured"
    assert run["num_requests"] == 60 and run["completed"] == 59 and run["failed"] == 1
    assert run["success_rate"] == pytest.approx(59 / 60)
    assert run["duration_s"] == raw["duration"]
    assert run["request_throughput_rps"] == raw["request_throughput"]
    assert run["output_throughput_tok_s"] == raw["output_throughput"]
    assert run["ttft_p50_ms"] == raw["median_ttft_ms"]
    assert run["itl_p99_ms"] == raw["p99_itl_ms"]
    assert run["e2e_mean_ms"] == raw["mean_e2el_ms"]
    assert np.isnan(run["ttft_p90_ms"])  # vLLM saved no p90: left empty, never invented
    assert run["source_sha256"] == sha
    config = json.loads(run["config"])
    assert config["request_rate"] == 4.0 and config["backend"] == "vllm"
    assert "mean_ttft_ms" not in config
    extra = json.loads(run["extra"])
    assert extra["max_concurrent_requests"] == raw["max_concurrent_requests"]
    assert str(run["started_at"]).startswith("2025-11-03 14:15:02")


def test_summary_only_result_is_one_run_without_requests(tmp_path):
    store = _store(tmp_path)
    [result] = ingest_paths(store, [SUMMARY], default_registry())
    assert result.rows == {"runs": 1}
    assert store.query("requests").empty


def test_legacy_benchmark_serving_layout(tmp_path):
    store = _store(tmp_path)
    [result] = ingest_paths(store, [LEGACY], default_registry())
    assert result.rows == {"runs": 1, "requests": 24}
    raw = json.loads(LEGACY.read_text())
    rows = store.query("requests").sort_values("request_id", key=lambda s: s.astype(int))
    assert rows["arrival_s"].isna().all()  # no start_times in that version
    expected = (np.array(raw["ttfts"]) + np.array([sum(x) for x in raw["itls"]])) * 1000
    np.testing.assert_allclose(rows["e2e_ms"], expected, rtol=1e-9)
    run = store.query("runs").iloc[0]
    assert run["model"] == "Qwen2.5-7B-Instruct"  # a local model path keeps its last part
    assert run["failed"] == 0 and json.loads(run["config"])["tp"] == "1"


def test_appended_results_become_one_run_each(tmp_path):
    one, two = tmp_path / "a.json", tmp_path / "b.json"
    write_vllm_result(one, 5, seed=1, texts=False)
    write_vllm_result(two, 7, seed=2, texts=False, request_rate=9.0)
    appended = tmp_path / "appended.json"
    appended.write_text(one.read_text() + "\n" + two.read_text())
    store = _store(tmp_path)
    [result] = ingest_paths(store, [appended], default_registry())
    assert result.rows == {"runs": 2, "requests": 12}
    counts = store.query("requests").groupby("run_id").size().to_dict()
    sha = file_sha256(appended)[:16]
    assert counts == {f"vllm-{sha}-0": 5, f"vllm-{sha}-1": 7}


@pytest.mark.parametrize("edit, field, message", [
    (lambda t: t.replace('"duration": ', '"duration": "x', 1).replace(', "completed"',
                                                                      '", "completed"', 1),
     "duration", "expected a number"),
    (lambda t: t.replace('"ttfts": [', '"ttfts": ["0.1", ', 1), "ttfts", "request 1"),
    (lambda t: t.replace('"input_lens": [', '"input_lens": [12.5, ', 1), "input_lens",
     "expected an integer"),
    (lambda t: t.replace('"latencies": [', '"latencies": [-0.5, ', 1), "latencies", ">= 0"),
    (lambda t: t.replace('"ttfts": [', '"ttfts": [NaN, ', 1), "ttfts", "finite"),
    (lambda t: t.replace('"itls": [[', '"itls": [[-0.01, ', 1), "itls", ">= 0"),
    (lambda t: t.replace('"output_lens": [', '"output_lens": [5, ', 1), "output_lens",
     "has 61 entries"),
])
def test_bad_values_are_refused_naming_file_and_field(tmp_path, edit, field, message):
    bad = tmp_path / "bad.json"
    bad.write_text(edit(DETAILED.read_text()))
    store = _store(tmp_path)
    with pytest.raises(InputError) as caught:
        ingest_paths(store, [bad], default_registry())
    assert caught.value.field == field and caught.value.path == str(bad)
    assert message in str(caught.value)
    assert not store.root.exists()  # refused by the validating pass: nothing was touched


def test_cli_refuses_truncated_and_wrongly_typed_files_leaving_store_unchanged(tmp_path):
    workspace = tmp_path / "ws"
    assert run_cli("ingest", str(SUMMARY), workspace=workspace).returncode == 0
    before = tree_digest(workspace / "traces")
    text = DETAILED.read_text()
    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])
    typed = tmp_path / "typed.json"
    typed.write_text(text.replace('"completed": 59', '"completed": "59"'))
    for path, words in ((truncated, ("truncated", "line 1")), (typed, ("completed", "number"))):
        proc = run_cli("ingest", str(path), workspace=workspace)
        assert proc.returncode == 2, proc.stderr
        assert str(path) in proc.stderr and all(w in proc.stderr for w in words), proc.stderr
        assert proc.stderr.count("\n") == 1  # one clear line, no traceback
        assert tree_digest(workspace / "traces") == before
    # A good file and a bad one together: nothing of either is written.
    proc = run_cli("ingest", str(DETAILED), str(typed), workspace=workspace)
    assert proc.returncode == 2 and tree_digest(workspace / "traces") == before


def test_error_in_the_streamed_pass_rolls_the_ingest_back(tmp_path):
    """A number the first pass cannot check (``1..2``) fails while writing: nothing stays."""
    store = _store(tmp_path)
    ingest_paths(store, [SUMMARY], default_registry())
    before = tree_digest(store.root)
    bad = tmp_path / "late.json"
    text = DETAILED.read_text()
    position = text.index('"itls": [[') + len('"itls": [[')
    bad.write_text(text[:position] + "0.0..1, " + text[position:])
    with pytest.raises(InputError, match="invalid JSON"):
        ingest_paths(store, [bad], default_registry())
    assert tree_digest(store.root) == before


def test_overrides_and_explicit_format(tmp_path):
    store = _store(tmp_path)
    registry = default_registry({"model": "llama-8b", "hardware": "A100", "run_id": "my-run"})
    [result] = ingest_paths(store, [DETAILED], registry, format="vllm-bench")
    assert result.runs == ["my-run"]
    assert store.summary()["requests"]["models"] == ["llama-8b"]
    with pytest.raises(InputError, match="cannot set"):
        VllmBenchAdapter({"colour": "red"}).read(DETAILED, sha256="0" * 64)


def test_sniff_recognises_both_layouts_and_rejects_other_json(tmp_path):
    adapter = VllmBenchAdapter()
    for path in (DETAILED, SUMMARY, LEGACY):
        assert adapter.sniff(path, path.read_bytes()[:65536])
    other = b'{"model": "x", "metrics": {}}'
    assert not adapter.sniff(tmp_path / "x.json", other)


def test_scanner_matches_json_loads_at_every_window_size():
    rng = random.Random(3)
    for trial in range(200):
        n = rng.randint(0, 5)
        doc = {"s": 'q"]}[{\\', "x": rng.random(), "ints": [rng.randint(0, 9) for _ in range(n)],
               "itls": [[rng.random() for _ in range(rng.randint(0, 4))] for _ in range(n)],
               "texts": ["a]\"[b" * rng.randint(0, 3) for _ in range(n)],
               "nested": {"a": [1, {"b": "]"}]}, "none": None}
        text = json.dumps(doc, indent=rng.choice([None, 2]))
        scanner = JsonScanner(io.StringIO(text), "f", chunk_chars=rng.randint(1, 50))
        assert scanner.begin_document()
        got = {}
        for key in scanner.iter_keys():
            if key == "itls":
                got[key] = [x for block in scanner.iter_number_lists() for x in block]
            elif key == "texts":
                scanner.skip_value()
                got[key] = doc[key]
            else:
                got[key] = scanner.read_value()
        assert got == doc, (trial, text)
        assert not scanner.begin_document()


def test_scanner_reports_truncation_anywhere():
    text = json.dumps({"a": 1, "itls": [[0.5, 0.25], [0.125]], "b": ["x", "y"]})
    for cut in range(1, len(text)):
        scanner = JsonScanner(io.StringIO(text[:cut]), "cut.json", chunk_chars=4)
        with pytest.raises(InputError) as caught:
            scanner.begin_document()
            for key in scanner.iter_keys():
                if key == "itls":
                    list(scanner.iter_number_lists())
                else:
                    scanner.read_value()
        assert "cut.json" in str(caught.value) and "line 1" in str(caught.value)


def test_large_stream_is_written_in_several_chunks(tmp_path):
    """More requests than one chunk: the stream yields several, in request order."""
    big = tmp_path / "big.json"
    write_vllm_result(big, 3000, seed=5, texts=False)
    batch = VllmBenchAdapter(rows_per_chunk=1000).read(big, sha256=file_sha256(big))
    chunks = list(batch["requests"].chunks)
    assert [c.num_rows for c in chunks][:2] == [1000, 1000]
    assert sum(c.num_rows for c in chunks) == 3000
    assert all(isinstance(c, pa.Table) for c in chunks)
    ids = [int(i) for c in chunks for i in c.column("request_id").to_pylist()]
    assert ids == list(range(3000))


def test_fixture_files_are_unchanged_by_ingest(tmp_path):
    copy = tmp_path / DETAILED.name
    shutil.copy(DETAILED, copy)
    digest = file_sha256(copy)
    ingest_paths(_store(tmp_path), [copy], default_registry())
    assert file_sha256(copy) == digest
