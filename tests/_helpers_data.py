"""Test helpers for servetune.data: vLLM benchmark results in vLLM's own layout, store hashing.

:func:`write_vllm_result` (from :mod:`servetune.testing`, shared with the benchmarks) writes
what ``vllm bench serve --save-result [--save-detailed]`` writes: the same keys in the same order, the same units (seconds in the per-request lists,
milliseconds in the summary), failed requests the way vLLM records them (``ttft`` 0, no ITLs,
output length 0, the exception text in ``errors``) and summary metrics computed from the
per-request data exactly as ``vllm/benchmarks/serve.py:calculate_metrics`` computes them. The
request lengths are sampled from the real Splitwise conversation trace when it is available.
Rows are streamed to the file, so a million requests need little memory beyond the ITLs.

The fixtures in ``tests/fixtures/data/`` were made with ``python tests/_helpers_data.py``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np

from servetune.testing._cli import servetune_command
from servetune.testing._vllm_results import SPLITWISE, sample_lengths, write_vllm_result

__all__ = ["FIXTURES", "ROOT", "SPLITWISE", "run_cli", "sample_lengths", "servetune_command",
           "tree_digest", "write_vllm_result"]

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (the store, byte for byte)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(*args: str, workspace: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real ``servetune`` command (the installed console script) in a subprocess."""
    return subprocess.run([*servetune_command(), "--workspace", str(workspace), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def _make_fixtures() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    write_vllm_result(FIXTURES / "vllm_serve_detailed_60.json", 60, seed=7, failed=(17,))
    write_vllm_result(FIXTURES / "vllm_serve_summary.json", 60, seed=8, detailed=False,
                      request_rate=8.0)
    write_vllm_result(FIXTURES / "vllm_legacy_detailed_24.json", 24, seed=9, layout="legacy",
                      model_id="/models/Qwen/Qwen2.5-7B-Instruct", metadata={"tp": "1"})


def _make_generic_fixtures() -> None:
    """Step and request traces as a profiler or a custom client would log them (aliases used)."""
    rng = np.random.default_rng(11)
    lines = ["step,latency_ms,batch_size,num_prefills,num_prefill_tokens,num_decode_tokens,"
             "kv_tokens,max_context_len,cuda_graph"]
    records = []
    running: list[int] = []
    for step in range(240):
        prefills = int(rng.random() < 0.2) * int(rng.integers(1, 3))
        chunks = [int(rng.integers(128, 2049)) for _ in range(prefills)]
        decodes = len(running)
        prefill_tokens = sum(chunks)
        kv = sum(running) + prefill_tokens
        longest = max(running + chunks + [0])
        duration = (5.8 + 0.021 * prefill_tokens + 0.0011 * kv + 0.035 * decodes) * \
            rng.normal(1.0, 0.02)
        graph = "true" if prefills == 0 and decodes <= 256 else "false"
        lines.append(f"{step},{duration:.4f},{prefills + decodes},{prefills},{prefill_tokens},"
                     f"{decodes},{kv},{longest},{graph}")
        records.append({"iteration": step, "step_time_ms": round(duration, 4),
                        "num_prefill_seqs": prefills, "num_decode_seqs": decodes,
                        "prefill_tokens": prefill_tokens, "decode_tokens": decodes,
                        "kv_tokens_sum": kv, "kv_tokens_max": longest, "tp_size": 1,
                        "engine": "sglang", "model": "Qwen/Qwen2.5-7B-Instruct",
                        "hardware": "NVIDIA H100 80GB HBM3", "scheduler": "fcfs"})
        running = [c + 1 for c in running if rng.random() > 0.01] + chunks
    (FIXTURES / "steps_profile.csv").write_text("\n".join(lines) + "\n")
    (FIXTURES / "steps_sglang.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records))
    inputs, outputs = sample_lengths(rng, 40)
    arrival = np.cumsum(rng.exponential(0.25, 40))
    rows = ["req_id,arrival_time,prompt_tokens,completion_tokens,ttft_ms,e2e_ms,itl_ms,error"]
    objects = []
    for i in range(40):
        ttft = 25 + inputs[i] * 0.045 * rng.gamma(4, 0.25)
        itl = np.round(rng.gamma(16, 12.5 / 16, int(outputs[i]) - 1), 3)
        e2e = ttft + itl.sum()
        error = "" if i != 9 else "HTTP 503: Service Unavailable"
        if error:
            rows.append(f"r{i:04d},{arrival[i]:.6f},{inputs[i]},0,,,,{error}")
        else:
            rows.append(f"r{i:04d},{arrival[i]:.6f},{inputs[i]},{outputs[i]},{ttft:.3f},"
                        f"{e2e:.3f},{';'.join(f'{v:g}' for v in itl)},")
        objects.append({"request_id": f"r{i:04d}", "arrival_s": round(float(arrival[i]), 6),
                        "input_tokens": int(inputs[i]), "output_tokens": int(outputs[i]),
                        "ttft_ms": round(float(ttft), 3), "e2e_ms": round(float(e2e), 3),
                        "itl_ms": itl.tolist(), "status": "ok", "client": "locust"})
    (FIXTURES / "requests_client.csv").write_text("\n".join(rows) + "\n")
    (FIXTURES / "requests_client.jsonl").write_text(
        "".join(json.dumps(o) + "\n" for o in objects))


def _make_workload_fixtures() -> None:
    """Small request-arrival traces in the four public formats, with realistic values."""
    rng = np.random.default_rng(21)
    n = 48
    gaps = rng.exponential(0.18, n)
    gaps[0] = 0.0
    seconds = np.cumsum(gaps)
    inputs, outputs = sample_lengths(rng, n)
    (FIXTURES / "workload_splitwise.csv").write_text(
        "arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(
            f"{t:.6f},{i},{o}\n" for t, i, o in zip(seconds, inputs, outputs)))
    origin = np.datetime64("2023-11-16T18:15:46.680590", "us")
    stamps = origin + (seconds * 1e6).astype("timedelta64[us]")
    (FIXTURES / "workload_azure_conv.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
            f"{str(t).replace('T', ' ')}0,{i},{o}\n" for t, i, o in zip(stamps, inputs, outputs)))
    lines = []
    next_block = 0
    shared = list(range(12))  # a system prompt shared by many requests (prefix-cache hits)
    for t, i, o in zip(seconds, inputs, outputs):
        blocks = -(-int(i) // 512)
        prefix = shared[:min(blocks, 12)] if rng.random() < 0.5 else []
        own = list(range(100 + next_block, 100 + next_block + blocks - len(prefix)))
        next_block += len(own)
        lines.append(json.dumps({"timestamp": int(t * 1000), "input_length": int(i),
                                 "output_length": int(o), "hash_ids": prefix + own}))
    (FIXTURES / "workload_mooncake.jsonl").write_text("\n".join(lines) + "\n")
    rows = ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"]
    for k, (t, i, o) in enumerate(zip(seconds * 40, inputs, outputs)):
        model = "ChatGPT" if rng.random() < 0.8 else "GPT-4"
        response = 0 if k in (5, 31, 32) else int(o)
        log_type = "Conversation log" if rng.random() < 0.7 else "API log"
        rows.append(f"{int(t)},{model},{int(i)},{response},{int(i) + response},{log_type}")
    (FIXTURES / "workload_burstgpt.csv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    _make_fixtures()
    _make_generic_fixtures()
    _make_workload_fixtures()
