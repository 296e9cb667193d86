"""The streaming benchmark client against the scripted server (real HTTP, real timing)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers_hardware import free_port, wait_port  # noqa: E402

from servetune.data import Workload  # noqa: E402
from servetune.tuner.hardware import ClientOptions, aggregate_metrics, replay  # noqa: E402

HELPER = str(Path(__file__).parent / "_helpers_hardware.py")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, HELPER, "--port", str(port), "--ttft-ms", "100",
                             "--token-ms", "50"], start_new_session=True)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_latencies_and_pacing(server, api):
    workload = Workload.from_arrays([0.0, 0.3, 0.6], [5, 6, 7], [5, 5, 1], name="t")
    result = asyncio.run(replay(server, workload, ClientOptions(model="m", api=api)))
    ok = [r for r in result.requests if r.status == "ok"]
    assert len(ok) == 3
    for r in ok:
        assert abs(r.sent_s - r.arrival_s) < 0.1  # sent at its arrival time
        assert 90 <= r.ttft_ms <= 400
        assert r.e2e_ms == pytest.approx(r.ttft_ms + sum(r.itl_ms), abs=5)
    multi = ok[:2]
    for r in multi:
        assert len(r.itl_ms) == 4 and r.output_tokens == 5
        assert 40 <= float(np.median(r.itl_ms)) <= 200
        assert r.tpot_ms == pytest.approx((r.e2e_ms - r.ttft_ms) / 4)
    assert ok[2].tpot_ms is None and ok[2].itl_ms == []  # one token: no TPOT
    metrics = aggregate_metrics(result.requests, {"ttft_ms": 50, "tpot_ms": 1000})
    assert metrics["completed"] == 3 and metrics["success_rate"] == 1.0
    assert metrics["goodput_rps"] == 0.0  # every TTFT is above the 50 ms SLO
    last_finish = max(r.sent_s + r.e2e_ms / 1e3 for r in ok)  # from the replay's start
    assert metrics["duration_s"] == pytest.approx(last_finish)
    assert last_finish <= result.duration_s
    assert metrics["output_throughput_tok_s"] == pytest.approx(11 / last_finish)
    assert metrics["itl_mean_ms"] == pytest.approx(np.mean(ok[0].itl_ms + ok[1].itl_ms))


def test_refused_connection_is_a_failed_request_not_a_crash():
    workload = Workload.from_arrays([0.0], [5], [5], name="t")
    result = asyncio.run(replay(f"http://127.0.0.1:{free_port()}", workload,
                                ClientOptions(model="m")))
    (request,) = result.requests
    assert request.status == "error" and "ConnectError" in request.error
    metrics = aggregate_metrics(result.requests, {"ttft_ms": 500})
    assert metrics["success_rate"] == 0.0 and metrics["duration_s"] is None
    assert metrics["goodput_rps"] is None and metrics["good_requests"] == 0
