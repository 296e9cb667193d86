"""Synthetic vLLM benchmark results in vLLM's own layout, for tests and benchmarks.

Test and benchmark tool, not product code. :func:`write_vllm_result` writes what
``vllm bench serve --save-result [--save-detailed]`` writes: the same keys in the same order, the
same units (seconds in the per-request lists, milliseconds in the summary), failed requests the
way vLLM records them (``ttft`` 0, no ITLs, output length 0, the exception text in ``errors``)
and summary metrics computed from the per-request data exactly as
``vllm/benchmarks/serve.py:calculate_metrics`` computes them. The request lengths are sampled
from the real Splitwise conversation trace when it is available. Rows are streamed to the file,
so a million requests need little memory beyond the ITLs.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from servetune.testing import write_vllm_result
    >>> summary = write_vllm_result(Path(tempfile.mkdtemp()) / "r.json", 10, failed=(3,))
    >>> summary["completed"], summary["failed"]
    (9, 1)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: the real Splitwise conversation trace, beside the repository (``shared/workloads``)
SPLITWISE = Path(__file__).resolve().parents[2] / "shared" / "workloads" / "splitwise_conv.csv"

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
