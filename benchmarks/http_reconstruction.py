"""Steps rebuilt from what an HTTP client sees, against the engine's own steps (issue 15).

Phase ``gpu`` (on a GPU host; needs torch, transformers, httpx, pandas, pyarrow): builds the
``llama-1b-like`` model with a word-level tokenizer whose vocabulary holds the benchmark client's
prompt words (so a prompt of N words is N tokens, as the collector's token-id prompts are) and no
EOS (every request generates exactly its output length), saves it, then

1. serves it with ``transformers serve --continuous-batching`` and replays the workload through
   servetune's streaming client (``tuner.hardware._client.replay``): per-request token arrival
   times as the client sees them over HTTP;
2. runs the collector in-process on the same model directory, configuration and workload: the
   engine's recorded steps.

Phase ``compare`` (here): rebuilds steps from the HTTP requests (``data.reconstruct_steps``)
and compares them with the collector's recorded steps of the same configuration and workload
(two runs, so distributions, not step by step), and the collector's own requests rebuilt the
same way as the in-process reference.

    # GPU host, repository at /tmp/p/servetune:
    PYTHONPATH=/tmp/p python3 benchmarks/http_reconstruction.py gpu --out $OUT/http
    # here:
    python benchmarks/http_reconstruction.py compare --gpu-dir DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# the collector's sample configuration g-fifo-512-bs64-sync (fifo, sync, CUDA graphs), which
# `transformers serve` can express with its --cb-* flags (rendered by the engine spec)
CONFIG = {"max_batch_tokens": 512, "block_size": 64, "num_blocks": 4096, "use_cuda_graph": True}
WORKLOAD = os.environ.get("HTTP_RECON_WORKLOAD", "poisson:rate=12,n=100,input=lognormal:384:0.8:3072,output=uniform:32:256")
SEED = 11
VOCAB = 32000
PORT = 8321


def served_config(device: str) -> dict:
    """:data:`CONFIG`, without CUDA graphs on a CPU (the smoke run)."""
    return CONFIG if device != "cpu" else {**CONFIG, "use_cuda_graph": False}


def serve_and_replay(model_dir: Path, out: Path, device: str) -> dict:
    """`transformers serve` in its own session, the client's replay, the server stopped."""
    import asyncio

    import pandas as pd

    from servetune.data import synthetic_workload
    from servetune.data.collect import ServedCollector, ServedOptions
    from servetune.data.collect._served_runner import wait_healthy
    from servetune.data.engines import TRANSFORMERS_CB
    from servetune.tuner.hardware._client import ClientOptions, replay

    # the same `transformers serve` command line the served collector runs: the launcher that
    # records the engine's steps in the server process (servetune.data.collect serve-recorded),
    # the configuration's flags and the model-level ones from the engine spec
    served = ServedCollector(ServedOptions(model=str(model_dir), work_dir=str(out), device=device,
                                           port=PORT))
    argv = served.serve_argv(served_config(device), out / "served_steps.parquet")
    log = open(out / "serve.log", "w")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        base = f"http://127.0.0.1:{PORT}"
        wait_healthy(base, server, 300.0, out / "serve.log")
        options = ClientOptions(model=str(model_dir), seed=SEED)
        warm = synthetic_workload("poisson:rate=20,n=8,input=const:32,output=const:8", 1)
        asyncio.run(replay(base, warm, options))
        workload = synthetic_workload(WORKLOAD, SEED)
        replay_start_unix, replay_start_monotonic = time.time(), time.perf_counter()
        result = asyncio.run(replay(base, workload, options))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=120)
        log.close()
    rows = [{"request_id": r.request_id, "arrival_s": r.arrival_s, "sent_s": r.sent_s,
             "input_tokens": r.input_tokens, "prompt_tokens": r.prompt_tokens,
             "output_tokens": r.output_tokens, "ttft_ms": r.ttft_ms, "itl_ms": r.itl_ms,
             "e2e_ms": r.e2e_ms, "status": r.status, "error": r.error}
            for r in result.requests]
    pd.DataFrame(rows).to_parquet(out / "http_requests.parquet")
    return {"requests": len(rows), "ok": sum(r.status == "ok" for r in result.requests),
            "duration_s": result.duration_s, "replay_start_unix": replay_start_unix,
            "replay_start_monotonic": replay_start_monotonic,
            "program": list(TRANSFORMERS_CB.program)}


def collect(model_dir: Path, out: Path, device: str) -> None:
    """The collector on the same model directory, configuration and workload."""
    sweep = model_dir / "sweep.toml"  # not in --out: the device returns only a few files
    knobs = "\n".join(f"{k} = {json.dumps(v)}" for k, v in served_config(device).items())
    sweep.write_text(f'[[config]]\nname = "served-config"\nscheduler_type = "fifo"\n'
                     f'use_async_batching = false\n{knobs}\n\n[[workload]]\nname = "poisson12"\n'
                     f'spec = "{WORKLOAD}"\nseed = {SEED}\n')
    subprocess.run([sys.executable, "-m", "servetune.data.collect", "transformers-cb", "--model",
                    str(model_dir), "--sweep", str(sweep), "--run-timeout", "150", "--label",
                    "http-ref-", "--device", device, "--out", str(out / "collector"), "--json"],
                   check=True)


def gpu(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from servetune.testing import word_level_model

    model_dir = word_level_model(args.model_dir, vocab_size=VOCAB, tiny=args.device == "cpu")
    try:
        gpu_name = subprocess.run(["nvidia-smi", "--query-gpu=name,uuid", "--format=csv,noheader"],
                                  capture_output=True, text=True).stdout.strip()
    except OSError:
        gpu_name = "cpu"
    info = {"gpu": gpu_name, "device": args.device}
    info["serve"] = serve_and_replay(model_dir, out, args.device)
    collect(model_dir, out, args.device)
    (out / "info.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


def compare(args) -> None:
    """Every ``--gpu-dir`` (one GPU host's run each) compared; one record for all of them."""
    from servetune.data._benchmark_record import write_record

    hosts, gpus = {}, []
    for directory in args.gpu_dir:
        figures = host_figures(Path(directory))
        hosts[Path(directory).name] = figures
        gpus.append(figures["gpu"])
    print(json.dumps(hosts, indent=1, default=str))
    write_record("http_reconstruction", {"hosts": hosts}, args=args, measured_on=gpus)


def host_figures(root: Path) -> dict:
    """One host's figures: the HTTP rebuild against the served run's recorded steps, the
    collector's run, and both rebuilds against the collector's recorded steps."""
    import numpy as np
    import pandas as pd

    from servetune.data import compare_reconstruction, reconstruct_steps

    info = json.loads((root / "info.json").read_text())
    runs = pd.read_parquet(root / "collector" / "runs.parquet")
    steps_path = root / "collector" / "steps.parquet"
    recorded = pd.read_parquet(steps_path) if steps_path.exists() else None
    in_process = pd.read_parquet(root / "collector" / "requests.parquet")
    http = pd.read_parquet(root / "http_requests.parquet")
    run = runs.iloc[0]
    frame = pd.DataFrame({
        "arrival_s": np.where(np.isnan(http.sent_s), http.arrival_s, http.sent_s),
        "input_tokens": http.prompt_tokens.fillna(http.input_tokens).astype(int),
        "output_tokens": http.output_tokens, "ttft_ms": http.ttft_ms,
        "itl_ms": [list(x) if s == "ok" else None for x, s in zip(http.itl_ms, http.status)],
        "status": http.status})
    from_http = reconstruct_steps(frame, run)
    from_process = reconstruct_steps(in_process, run)
    figures = {"gpu": info["gpu"], "serve": info["serve"],
               "prompt_tokens_equal_requested": bool((http.prompt_tokens == http.input_tokens)
                                                     .all()),
               "rebuilt_from_http": summary(from_http),
               "rebuilt_in_process": summary(from_process)}
    if recorded is not None:  # the collector's own steps (a separate run, same config/workload)
        figures["recorded"] = summary(recorded)
        for name in ("rebuilt_from_http", "rebuilt_in_process"):
            figures[f"{name}_vs_recorded"] = ratios(figures[name], figures["recorded"])
    served_path = root / "served_steps.parquet"
    if served_path.exists():  # the same server's own steps, recorded in its process
        served = served_window(pd.read_parquet(served_path), info["serve"])
        figures["served_recorded"] = summary(served)
        figures["rebuilt_from_http_vs_served"] = ratios(figures["rebuilt_from_http"],
                                                        figures["served_recorded"])
        # the served run against the collector's run of the same config and workload
        figures["collector_reference"] = ("recorded steps" if recorded is not None else
                                          "steps rebuilt from the collector's own requests "
                                          "(its steps file was not brought back)")
        figures["served_vs_collector"] = ratios(figures["served_recorded"],
                                                figures.get("recorded",
                                                            figures["rebuilt_in_process"]))
        figures["in_order"] = in_order(served, from_http)
        figures["step_by_step"] = {}
        for tol in (1.0, 3.0):
            shifted, lags = track_delivery_lag(served, from_http, tolerance_ms=tol)
            figures["step_by_step"][f"{tol:g}ms"] = {
                **compare_reconstruction(served, shifted, tolerance_ms=tol),
                "client_lag_ms": {q: float(np.percentile(lags, q)) for q in (10, 50, 90)}}
        collector = ("collector run, recorded in-process" if recorded is not None else
                     "collector run, rebuilt from its requests")
        figures["rows"] = {
            "recorded in the served process": table_row(figures["served_recorded"],
                                                        figures["served_recorded"]),
            "rebuilt from the HTTP client's per-token times": table_row(
                figures["rebuilt_from_http"], figures["served_recorded"]),
            collector: table_row(figures.get("recorded", figures["rebuilt_in_process"]),
                                 figures["served_recorded"])}
    figures["host"] = root.name
    return figures


def table_row(steps_summary: dict, served: dict) -> dict:
    """BENCHMARKS.md's row: a summary and its ratios to the served run's recorded steps."""
    return {**steps_summary, "median_ms": steps_summary["duration_ms"][0.5],
            "busy_s": steps_summary["total_ms"] / 1e3, "vs_served": ratios(steps_summary, served)}


def served_window(steps, serve: dict):
    """The served steps that started after the measured replay began, on its clock: the
    host's monotonic clock where both sides recorded it (runs from before it was recorded
    have the wall clock only)."""
    column, start = (("start_monotonic", serve["replay_start_monotonic"])
                     if "replay_start_monotonic" in serve and "start_monotonic" in steps
                     else ("start_unix", serve["replay_start_unix"]))
    window = steps[steps[column] >= start].copy()
    window["start_s"] = window[column] - start
    return window.reset_index(drop=True)


def track_delivery_lag(served, rebuilt, *, tolerance_ms: float = 1.0):
    """Each rebuilt step's end on the server's clock, following the client's lag as it drifts.

    The rebuilt clock is the client's: tokens seen over HTTP, counted from the replay's start.
    It lags the server's by the replay's start offset plus the delivery delay, which grows with
    load, so one offset does not fit a whole run. The first lag is the one that lines up the
    most of the first 50 step ends within ``tolerance_ms``; then, in time order, each rebuilt
    end is moved by the current lag, and a match within ``tolerance_ms`` updates the lag.
    Returns the shifted rebuilt steps and the lags at each match (ms)."""
    import numpy as np

    real_end = np.sort((served.start_s + served.duration_ms / 1e3).to_numpy())
    ends = (rebuilt.start_s + rebuilt.duration_ms / 1e3).to_numpy()
    order = np.argsort(ends, kind="stable")
    tol = tolerance_ms / 1e3

    def nearest(t):
        pos = int(np.clip(np.searchsorted(real_end, t), 1, len(real_end) - 1))
        return min(real_end[pos - 1], real_end[pos], key=lambda r: abs(r - t))

    head = ends[order[:50]]
    candidates = (head[:, None] - real_end[None, :50]).ravel()
    score = [np.sum(np.abs(np.array([nearest(t) for t in head - c]) - (head - c)) <= tol)
             for c in candidates]
    lag = float(candidates[int(np.argmax(score))])
    shifted, lags = ends.copy(), []
    for i in order:
        t = ends[i] - lag
        r = nearest(t)
        if abs(r - t) <= tol:
            lag = 0.8 * lag + 0.2 * (ends[i] - r)
            lags.append((ends[i] - r) * 1e3)
        shifted[i] = t
    moved = rebuilt.assign(start_s=shifted - rebuilt.duration_ms / 1e3)
    return moved, np.array(lags)


def in_order(served, rebuilt) -> dict | None:
    """Step i against step i (both in time order), when the two counts are equal: the share of
    steps with the same decode count and prefill tokens, the duration error, and the client's
    lag behind the server at each step end (the replay's start offset plus delivery delay)."""
    import numpy as np

    if len(served) != len(rebuilt):
        return None
    a = served.sort_values("start_s").reset_index(drop=True)
    b = rebuilt.sort_values("start_s").reset_index(drop=True)
    error = np.abs(b.duration_ms - a.duration_ms) / a.duration_ms
    lag = ((b.start_s + b.duration_ms / 1e3) - (a.start_s + a.duration_ms / 1e3)) * 1e3
    return {"steps": len(a),
            "decode_exact_share": float((a.num_decode_seqs == b.num_decode_seqs).mean()),
            "prefill_exact_share": float((a.prefill_tokens == b.prefill_tokens).mean()),
            "duration_error": {q: float(np.percentile(error, q)) for q in (50, 90, 99)},
            "client_lag_ms": {q: float(np.percentile(lag, q)) for q in (1, 10, 50, 90, 99)}}


def summary(steps) -> dict:
    """Step count, duration quantiles, decode-only steps' duration by batch size, sizes."""
    import numpy as np

    decode = steps[(steps.prefill_tokens == 0) & (steps.num_decode_seqs > 0)]
    by_size = decode.groupby(np.minimum(decode.num_decode_seqs // 8 * 8, 64)).duration_ms
    return {"steps": int(len(steps)),
            "duration_ms": {q: float(steps.duration_ms.quantile(q)) for q in (0.1, 0.5, 0.9)},
            "total_ms": float(steps.duration_ms.sum()),
            "decode_seqs_mean": float(steps.num_decode_seqs.mean()),
            "prefill_tokens": int(steps.prefill_tokens.sum()),
            "decode_step_median_ms_by_batch": {int(k): float(v) for k, v in by_size.median()
                                               .items()}}


def ratios(a: dict, b: dict) -> dict:
    return {"steps": a["steps"] / b["steps"],
            "median_duration": a["duration_ms"][0.5] / b["duration_ms"][0.5],
            "total_time": a["total_ms"] / b["total_ms"],
            "decode_seqs_mean": a["decode_seqs_mean"] / b["decode_seqs_mean"],
            "prefill_tokens": a["prefill_tokens"] / b["prefill_tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="phase", required=True)
    g = sub.add_parser("gpu")
    g.add_argument("--out", required=True)
    g.add_argument("--model-dir", default="/tmp/http-recon-model")
    g.add_argument("--device", default="cuda", help="cuda; cpu: a smoke run with a tiny model")
    c = sub.add_parser("compare")
    c.add_argument("--gpu-dir", required=True, nargs="+",
                   help="the gpu phase's --out of each host")
    args = parser.parse_args()
    (gpu if args.phase == "gpu" else compare)(args)


if __name__ == "__main__":
    main()
