"""Request-arrival traces (Splitwise, Azure, Mooncake, BurstGPT) loaded as workloads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers_data import FIXTURES, run_cli

import servetune
from servetune import InputError
from servetune.data import WORKLOAD_FORMATS, detect_workload_format, load_workload

SPLITWISE_REAL = (Path(servetune.__file__).resolve().parent.parent
                  / "shared/workloads/splitwise_conv.csv")


def test_real_splitwise_trace():
    workload = load_workload(SPLITWISE_REAL)
    raw = pd.read_csv(SPLITWISE_REAL)
    assert len(workload) == len(raw) == 19366
    assert workload.descriptor["format"] == "splitwise"
    order = np.argsort(raw["arrived_at"].to_numpy(), kind="stable")
    np.testing.assert_allclose(workload.arrival_s,
                               raw["arrived_at"].to_numpy()[order] - raw["arrived_at"].min())
    for ours, theirs in (("input_tokens", "num_prefill_tokens"),
                         ("output_tokens", "num_decode_tokens")):
        np.testing.assert_array_equal(getattr(workload, ours), raw[theirs].to_numpy()[order])
    assert 5.0 < workload.rate_rps < 6.0  # the README's "about 5.5 requests/s"


def test_the_four_fixture_formats_describe_the_same_requests():
    """The fixtures hold the same 48 requests in four formats; each loader recovers them."""
    splitwise = load_workload(FIXTURES / "workload_splitwise.csv")
    azure = load_workload(FIXTURES / "workload_azure_conv.csv")
    mooncake = load_workload(FIXTURES / "workload_mooncake.jsonl")
    assert [w.descriptor["format"] for w in (splitwise, azure, mooncake)] == [
        "splitwise", "azure", "mooncake"]
    for other in (azure, mooncake):
        np.testing.assert_array_equal(other.input_tokens, splitwise.input_tokens)
        np.testing.assert_array_equal(other.output_tokens, splitwise.output_tokens)
    np.testing.assert_allclose(azure.arrival_s, splitwise.arrival_s, atol=1e-6)
    np.testing.assert_allclose(mooncake.arrival_s, splitwise.arrival_s, atol=1e-3)  # ms in file
    assert azure.descriptor["first_timestamp"].startswith("2023-11-16 18:15:46.68059")
    assert mooncake.descriptor["hash_blocks"] == sum(
        len(json.loads(line)["hash_ids"])
        for line in (FIXTURES / "workload_mooncake.jsonl").read_text().splitlines())


def test_burstgpt_drops_failed_rows_with_a_logged_count(caplog):
    path = FIXTURES / "workload_burstgpt.csv"
    raw = pd.read_csv(path)
    with caplog.at_level(logging.WARNING, logger="servetune.data._workload_formats"):
        workload = load_workload(path)
    failed = int((raw["Response tokens"] == 0).sum())
    assert failed == 3 and len(workload) == len(raw) - failed
    assert workload.descriptor["dropped_failed"] == failed
    assert "dropped 3 failed request(s)" in caplog.text
    kept = raw[raw["Response tokens"] > 0]
    np.testing.assert_array_equal(np.sort(workload.output_tokens),
                                  np.sort(kept["Response tokens"].to_numpy()))


def test_detection_and_explicit_format(tmp_path):
    assert {detect_workload_format(FIXTURES / f"workload_{name}") for name in (
        "splitwise.csv", "azure_conv.csv", "mooncake.jsonl", "burstgpt.csv")} == set(
        WORKLOAD_FORMATS)
    assert detect_workload_format(FIXTURES / "steps_profile.csv") is None
    with pytest.raises(InputError, match="unknown workload format 'nope'"):
        load_workload(FIXTURES / "workload_splitwise.csv", format="nope")
    with pytest.raises(InputError, match="missing column"):
        load_workload(FIXTURES / "workload_splitwise.csv", format="azure")
    with pytest.raises(InputError, match="matches none of"):
        load_workload(FIXTURES / "steps_profile.csv")


@pytest.mark.parametrize("name, text, line, field", [
    ("a.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n0.5,ten,5\n", 3,
     "num_prefill_tokens"),
    ("b.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n-1,10,5\n", 3,
     "arrived_at"),
    ("c.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,0\n", 2,
     "num_decode_tokens"),
    ("d.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,10,5\n"
     "yesterday,10,5\n", 3, "TIMESTAMP"),
    ("e.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 5}\n'
     '{"timestamp": 5, "input_length": 10.5, "output_length": 5}\n', 2, "input_length"),
    ("f.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 5}\n{"timestamp": 5,\n',
     2, None),
])
def test_bad_values_name_line_and_column(tmp_path, name, text, line, field):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        load_workload(path)
    assert (caught.value.path, caught.value.row, caught.value.field) == (str(path), line, field)
    assert f"line {line}" in str(caught.value)


def test_ingest_refuses_a_workload_and_points_to_workload_option(tmp_path):
    workspace = tmp_path / "ws"
    for name in ("workload_splitwise.csv", "workload_mooncake.jsonl", "workload_burstgpt.csv"):
        proc = run_cli("ingest", str(FIXTURES / name), workspace=workspace)
        assert proc.returncode == 2
        assert "request-arrival workload" in proc.stderr and "--workload" in proc.stderr
        assert str(FIXTURES / name) in proc.stderr
    assert not (workspace / "traces").exists()
