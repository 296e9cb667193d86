"""Test helpers for servetune.data: vLLM benchmark results in vLLM's own layout, store hashing.

:func:`write_vllm_result` writes what ``vllm bench serve --save-result [--save-detailed]``
writes: the same keys in the same order, the same units (seconds in the per-request lists,
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
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"
SPLITWISE = ROOT.parent / "shared" / "workloads" / "splitwise_conv.csv"

_ERROR_TEXT = ("Traceback (most recent call last):\n  File \"/usr/local/lib/python3.12/"
               "site-packages/vllm/benchmarks/lib/endpoint_request_func.py\", line 174, in "
               "async_request_openai_completions\n    async with session.post(url=api_url, "
               "json=payload, headers=headers) as response:\naiohttp.client_exceptions."
               "ServerDisconnectedError: Server disconnected\n")
_WORDS = ("the model serves requests with continuous batching and paged attention so that "
          "many sequences share one forward pass").split()


def sample_lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Input and output lengths drawn from the real Splitwise trace (lognormal fallback)."""
    if SPLITWISE.is_file():
        table = np.loadtxt(SPLITWISE, delimiter=",", skiprows=1)
        rows = rng.integers(0, len(table), size=n)
        return table[rows, 1].astype(np.int64), table[rows, 2].astype(np.int64)
    inputs = np.maximum(rng.lognormal(np.log(1020), 0.8, n), 2).astype(np.int64)
    outputs = np.clip(rng.lognormal(np.log(129), 0.7, n), 7, 1000).astype(np.int64)
    return inputs, outputs


def write_vllm_result(path: Path, n: int, *, seed: int = 0, detailed: bool = True,
                      layout: str = "serve", failed: tuple[int, ...] = (),
                      model_id: str = "meta-llama/Llama-3.1-8B-Instruct",
                      request_rate: float = 4.0, texts: bool = True,
                      metadata: dict | None = None) -> dict:
    """Write a vLLM benchmark result for ``n`` requests; return its summary fields.

    ``layout="serve"`` is ``vllm bench serve`` (vllm/benchmarks/serve.py, 2025: ``failed``,
    ``latencies``, ``start_times``, ``queue_times``); ``layout="legacy"`` is the older
    ``benchmarks/benchmark_serving.py`` (no ``failed``/``latencies``/``start_times``).
    """
    rng = np.random.default_rng(seed)
    input_lens, target_out = sample_lengths(rng, n)
    is_failed = np.zeros(n, dtype=bool)
    is_failed[list(failed)] = True
    output_lens = np.where(is_failed, 0, target_out)
    gaps = rng.exponential(1.0 / request_rate, size=n)
    start_times = 35_000.0 + np.cumsum(gaps)  # time.perf_counter() values
    ttfts = np.where(is_failed, 0.0, 0.02 + input_lens * 4.5e-5 * rng.gamma(4.0, 0.25, n))
    itl_counts = np.where(is_failed, 0, output_lens - 1)
    step = rng.gamma(9.0, 0.0125 / 9.0, size=n)  # per-request mean ITL around 12.5 ms
    offsets = np.concatenate([[0], np.cumsum(itl_counts)])
    itls = np.empty(int(offsets[-1]), dtype=np.float32)  # float32 keeps a million rows small
    itl_sums = np.zeros(n)
    for start, stop, a, b, rows in _chunks(offsets):
        itls[a:b] = rng.gamma(16.0, 1.0 / 16.0, size=b - a) * step[start:stop][rows]
        itl_sums[start:stop] = np.bincount(rows, weights=itls[a:b], minlength=stop - start)
    latencies = np.where(is_failed, 0.0, ttfts + itl_sums + 1e-4)
    duration = float((start_times + latencies).max() - start_times.min())

    ok = ~is_failed
    tpots = (latencies[ok] - ttfts[ok]) / np.maximum(output_lens[ok] - 1, 1)
    tpots = tpots[output_lens[ok] > 1]
    completed = int(ok.sum())
    total_in = int(input_lens[ok].sum())
    total_out = int(output_lens.sum())
    head: dict = {"date": "20251103-141502"}
    if layout == "serve":
        head.update({"endpoint_type": "vllm", "backend": "vllm", "label": None})
    else:
        head["backend"] = "vllm"
    head.update({"model_id": model_id, "tokenizer_id": model_id, "num_prompts": n})
    head.update(metadata or {})
    head.update({"request_rate": request_rate, "burstiness": 1.0, "max_concurrency": None})
    head.update({"duration": duration, "completed": completed})
    if layout == "serve":
        head["failed"] = int(is_failed.sum())
    head.update({"total_input_tokens": total_in, "total_output_tokens": total_out,
                 "request_throughput": completed / duration, "request_goodput": None,
                 "output_throughput": total_out / duration,
                 "total_token_throughput": (total_in + total_out) / duration})
    tail: dict = {}
    if layout == "serve":
        tail.update(_peaks(start_times, ttfts, latencies, itls, offsets, ok))
    for name, values in (("ttft", ttfts[ok]), ("tpot", tpots), ("itl", itls),
                         ("e2el", latencies[ok])):
        values = values if len(values) else np.zeros(1)
        tail[f"mean_{name}_ms"] = float(np.mean(values, dtype=np.float64) * 1000)
        tail[f"median_{name}_ms"] = float(np.median(values)) * 1000
        tail[f"std_{name}_ms"] = float(np.std(values, dtype=np.float64) * 1000)
        tail[f"p99_{name}_ms"] = float(np.percentile(values, 99)) * 1000

    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps(head)[:-1])
        if detailed or layout == "legacy":  # the legacy script never removed the lists
            _write_list(out, "input_lens", input_lens.tolist())
            _write_list(out, "output_lens", output_lens.tolist())
            _write_list(out, "ttfts", ttfts.tolist())
            out.write(', "itls": [')
            for start in range(0, n, 4096):
                stop = min(start + 4096, n)
                parts = []
                for i in range(start, stop):
                    values = itls[offsets[i]:offsets[i + 1]].tolist()
                    parts.append("[" + ", ".join(map(repr, values)) + "]")
                out.write(("" if start == 0 else ", ") + ", ".join(parts))
            out.write("]")
        if layout == "serve":
            _write_list(out, "latencies", latencies.tolist())
        if detailed and layout == "serve":
            _write_list(out, "start_times", start_times.tolist())
        if layout == "serve":
            _write_list(out, "queue_times", [0.0] * n)
        if detailed or layout == "legacy":
            if texts:
                sentence = np.array(_WORDS)
                out.write(', "generated_texts": [')
                for i in range(n):
                    words = sentence[rng.integers(0, len(_WORDS), size=min(int(output_lens[i]),
                                                                          40))]
                    out.write(("" if i == 0 else ", ") + json.dumps(" " + " ".join(words)))
                out.write("]")
            else:
                _write_list(out, "generated_texts", [""] * n)
            _write_list(out, "errors", [_ERROR_TEXT if f else "" for f in is_failed])
        out.write(", " + json.dumps(tail)[1:])
    return {**head, **tail}


def _chunks(offsets: np.ndarray, size: int = 65536):
    """(first, last+1, ITL start, ITL stop, row of each ITL within the chunk) per request chunk."""
    n = len(offsets) - 1
    for start in range(0, n, size):
        stop = min(start + size, n)
        counts = np.diff(offsets[start:stop + 1])
        yield start, stop, int(offsets[start]), int(offsets[stop]), np.repeat(
            np.arange(stop - start), counts)


def _peaks(start_times, ttfts, latencies, itls, offsets, ok) -> dict:
    """vLLM's max_output_tokens_per_s (1-s buckets) and max_concurrent_requests (sweep line)."""
    origin = start_times[ok].min()
    first = (start_times + ttfts)[ok] - origin
    buckets = np.bincount(first.astype(np.int64),
                          minlength=int((start_times + latencies).max() - origin) + 2)
    for start, stop, a, b, rows in _chunks(offsets):
        within = np.cumsum(itls[a:b], dtype=np.float64)
        before = np.concatenate([[0.0], within])[offsets[start:stop] - a]
        first_tokens = (start_times + ttfts)[start:stop] - origin
        times = first_tokens[rows] + within - before[rows]
        buckets[:] += np.bincount(times.astype(np.int64), minlength=len(buckets))[:len(buckets)]
    events = np.concatenate([np.stack([start_times[ok], np.ones(ok.sum())], 1),
                             np.stack([(start_times + latencies)[ok], -np.ones(ok.sum())], 1)])
    events = events[np.lexsort((events[:, 1], events[:, 0]))]
    return {"max_output_tokens_per_s": float(buckets.max()),
            "max_concurrent_requests": int(np.cumsum(events[:, 1]).max())}


def _write_list(out, key: str, values: list) -> None:
    out.write(f', "{key}": ' + json.dumps(values))


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


def servetune_command() -> list[str]:
    """The installed ``servetune`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("servetune")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from servetune.cli import main; sys.exit(main())"]


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
