"""Small generated step traces (a plausible step-time law) for tests and benchmark development.

Test and benchmark tool, not product code. Real accuracy figures come from the shipped H200
sample (benchmarks/); these frames only exercise the code paths, so the law is simple: fixed
overhead by engine knobs, plus per-sequence, per-token, KV-read and prefill-attention costs,
times multiplicative noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

def synthetic_traces(n_runs: int = 8, steps_per_run: int = 300, seed: int = 0,
                     noise: float = 0.02) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(steps, runs)`` frames shaped like the store's ``steps``/``runs`` query results."""
    rng = np.random.default_rng(seed)
    steps, runs = [], []
    for r in range(n_runs):
        run_id = f"run-{seed}-{r:03d}"
        block_size = int(rng.choice([16, 32, 64]))
        async_batching = bool(r % 2)
        cuda_graph = bool((r // 2) % 2)
        max_tokens = int(rng.choice([256, 512, 1024, 2048]))
        runs.append({"run_id": run_id, "engine": "transformers-cb", "model": "tiny",
                     "hardware": "CPU", "source": "measured", "block_size": block_size,
                     "async_batching": async_batching, "cuda_graph": cuda_graph, "tp_size": 1,
                     "max_batch_tokens": max_tokens})
        n = steps_per_run
        decode = rng.integers(0, 48, n)
        prefill_seqs = rng.integers(0, 3, n) * (rng.random(n) < 0.4)
        prefill_tokens = np.where(prefill_seqs > 0,
                                  rng.integers(1, max_tokens + 1, n), 0)
        kv_decode = decode * rng.integers(50, 1500, n)
        context = rng.integers(0, 800, n) * (prefill_seqs > 0)
        kv_sum = kv_decode + prefill_tokens + context
        kv_max = np.maximum(np.where(decode > 0, kv_decode // np.maximum(decode, 1) * 2, 0),
                            prefill_tokens + context)
        attn = prefill_tokens * (context + prefill_tokens)
        num_seqs = decode + prefill_seqs
        base = 5.0 * (0.8 if async_batching else 1.0) * (0.9 if cuda_graph else 1.0)
        ms = (base + 0.08 * num_seqs + 0.004 * (prefill_tokens + decode) + 2e-5 * kv_sum
              + 1.5e-8 * attn + 3e-4 * kv_sum / block_size / 10)
        ms = ms * np.exp(rng.normal(0.0, noise, n)) * np.exp(rng.normal(0.0, noise / 2))
        steps.append(pd.DataFrame({
            "run_id": run_id, "engine": "transformers-cb", "model": "tiny", "hardware": "CPU",
            "source": "measured", "step_index": np.arange(n), "duration_ms": ms,
            "num_seqs": num_seqs, "num_prefill_seqs": prefill_seqs, "num_decode_seqs": decode,
            "prefill_tokens": prefill_tokens, "decode_tokens": decode, "kv_tokens_sum": kv_sum,
            "kv_tokens_max": kv_max, "prefill_attn_work": attn, "block_size": block_size,
            "tp_size": 1,
        }))
    return pd.concat(steps, ignore_index=True), pd.DataFrame(runs)
