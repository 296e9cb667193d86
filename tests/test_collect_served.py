"""``servetune collect transformers-serve``: traces of the served engine, its steps recorded in the
server process. A real ``transformers serve`` with a tiny random Llama on this CPU, real Parquet;
the output is ingested into a real store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers_hardware import free_port  # noqa: E402

from servetune.cli import main  # noqa: E402
from servetune.data import TraceStore, Workspace  # noqa: E402
from servetune.data.collect import word_level_model  # noqa: E402

pytest.importorskip("uvicorn")
WORKLOAD = "poisson:rate=20,n=12,input=const:24,output=const:8"
CPU = ["--device", "cpu", "--dtype", "float32", "--set", "block_size=16", "--set",
       "num_blocks=256", "--set", "use_cuda_graph=false"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect-served")
    model = word_level_model(root / "model", tiny=True)
    out = root / "out"
    code = main(["collect", "transformers-serve", "--model", str(model), *CPU, "--workload",
                 WORKLOAD, "--port", str(free_port()), "--label", "srv-", "--out", str(out),
                 "--json"])
    return root, out, code


def test_a_served_run_has_its_recorded_steps_requests_and_run(served, capsys):
    _, out, code = served
    assert code == 0
    steps, requests, runs = (pd.read_parquet(out / f"{k}.parquet")
                             for k in ("steps", "requests", "runs"))
    (run,) = runs.itertuples()
    assert run.run_id.startswith("srv-default-w1-r0-") and run.completed == 12
    assert (run.engine, run.hardware, run.source) == ("transformers-cb", "cpu", "measured")
    assert (run.block_size, run.num_blocks, bool(run.cuda_graph)) == (16, 256, False)
    assert "serve-recorded" in run.command and "--cb-block-size 16" in run.command
    assert json.loads(run.extra)["served"] is True
    assert set(steps.source) == {"measured"} and (steps.run_id == run.run_id).all()
    # every generated token after the first comes from a recorded decode step
    assert steps.decode_tokens.sum() == (requests.output_tokens - 1).sum() == 12 * 7
    assert steps.num_prefill_seqs.sum() >= 12  # each prompt prefilled at least once
    # prefix caching can skip a shared block of a prompt, never add tokens
    assert 0 < steps.prefill_tokens.sum() <= requests.input_tokens.sum()
    assert steps.start_s.min() >= 0 and steps.start_s.is_monotonic_increasing


def test_the_output_ingests_into_a_store(served):
    root, out, _ = served
    ws = Workspace.resolve(root / "ws")
    assert main(["--workspace", str(ws.root), "ingest", *(str(out / f"{k}.parquet")
                                                          for k in ("steps", "requests",
                                                                    "runs"))]) == 0
    store = TraceStore.for_workspace(ws)
    assert len(store.query("runs")) == 1 and len(store.query("steps")) > 12


def test_a_knob_the_serve_command_line_cannot_take_is_refused_before_any_server(tmp_path,
                                                                                capsys):
    code = main(["collect", "transformers-serve", "--model", str(tmp_path), *CPU, "--config",
                 "name=capped,max_requests_per_batch=8", "--workload", WORKLOAD, "--out",
                 str(tmp_path / "out")])
    assert code == 2
    assert "cannot take max_requests_per_batch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
