"""``python -m servetune.data.collect serve-recorded``: a real ``transformers serve`` (tiny random
Llama on this CPU) with its engine steps recorded in the server process, stopped by SIGTERM.

Requests go through servetune's streaming client over HTTP. The recorded steps must account for
every generated token and (block sharing aside) every prompt token the server reports, lie
inside the wall-clock window of the replay, and the server must leave no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers_hardware import free_port, make_tiny_model, session_alive  # noqa: E402

from servetune.data import synthetic_workload  # noqa: E402
from servetune.data.collect._served_runner import wait_healthy  # noqa: E402
from servetune.tuner.hardware._client import ClientOptions, replay  # noqa: E402

pytest.importorskip("uvicorn")
WORKLOAD = "poisson:rate=20,n=10,input=const:24,output=const:8"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    model = make_tiny_model(root / "tiny")
    port = free_port()
    steps_out = root / "steps.parquet"
    log = open(root / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "servetune.data.collect", "serve-recorded", "--steps-out",
         str(steps_out), "--", str(model), "--continuous-batching", "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu", "--dtype", "float32",
         "--attn-implementation", "sdpa", "--cb-block-size", "16", "--cb-num-blocks", "256",
         "--no-cb-use-cuda-graph"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, server, 180.0)
        began = time.perf_counter()  # the host's monotonic clock, as start_monotonic
        result = asyncio.run(replay(base, synthetic_workload(WORKLOAD, 3),
                                    ClientOptions(model=str(model), seed=3)))
        ended = time.perf_counter()
        os.killpg(server.pid, signal.SIGTERM)
        code = server.wait(timeout=120)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    return {"result": result, "steps_out": steps_out, "began": began, "ended": ended,
            "code": code, "pid": server.pid, "log": (root / "serve.log").read_text()}


def test_sigterm_writes_the_steps_and_exits_cleanly(served):
    assert served["code"] == 0, served["log"][-2000:]
    assert served["steps_out"].exists()
    assert session_alive(served["pid"]) == []


def test_recorded_steps_account_for_every_prompt_token(served):
    ok = [r for r in served["result"].requests if r.status == "ok"]
    assert len(ok) == 10
    steps = pd.read_parquet(served["steps_out"])
    # the engine is created lazily by the first request, so every recorded step is a request's:
    # every output token after the first comes from a recorded decode step, and every prompt
    # token is prefilled unless block sharing found its block already computed
    assert steps.decode_tokens.sum() == sum(r.output_tokens - 1 for r in ok)
    assert 0 < steps.prefill_tokens.sum() <= sum(r.prompt_tokens for r in ok)
    assert steps.prefill_tokens.sum() > sum(r.prompt_tokens for r in ok) - 16 * len(ok)
    assert (steps.num_prefill_seqs + steps.num_decode_seqs == steps.num_seqs).all()
    assert steps.start_monotonic.min() >= served["began"] - 1.0
    assert steps.start_monotonic.max() <= served["ended"]
    assert (steps.duration_ms > 0).all()
    assert steps.start_s.is_monotonic_increasing
