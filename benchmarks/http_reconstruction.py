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
    python benchmarks/http_reconstruction.py compare --gpu-dir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# the collector's sample configuration g-fifo-512-bs64-sync (fifo, sync, CUDA graphs), which
# `transformers serve` can express with its --cb-* flags (rendered by the engine spec)
CONFIG = {"max_batch_tokens": 512, "block_size": 64, "num_blocks": 4096, "use_cuda_graph": True}
WORKLOAD = "poisson:rate=12,n=100,input=lognormal:384:0.8:3072,output=uniform:32:256"
SEED = 11
VOCAB = 32000
PORT = 8321


def served_config(device: str) -> dict:
    """:data:`CONFIG`, without CUDA graphs on a CPU (the smoke run)."""
    return CONFIG if device != "cpu" else {**CONFIG, "use_cuda_graph": False}


def build_model(directory: Path, *, tiny: bool = False) -> Path:
    """The llama-1b-like preset with a word-level tokenizer (client words first) and no EOS."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from servetune.data.collect import PRESETS
    from servetune.tuner.hardware._client import _WORDS

    words = list(dict.fromkeys(_WORDS))
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), VOCAB)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")
    fast.save_pretrained(directory)
    shape = dict(PRESETS["llama-1b-like"].kwargs)
    if tiny:  # a smoke run on a CPU
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    config = LlamaConfig(**{**shape, "vocab_size": VOCAB, "eos_token_id": None,
                            "bos_token_id": None, "pad_token_id": 0})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory)
    return directory


def serve_and_replay(model_dir: Path, out: Path, device: str) -> dict:
    """`transformers serve` in its own session, the client's replay, the server stopped."""
    import asyncio

    import httpx
    import pandas as pd

    from servetune.data import synthetic_workload
    from servetune.tuner.hardware._client import ClientOptions, replay

    from servetune.data.engines import TRANSFORMERS_CB

    flags = list(TRANSFORMERS_CB.check_launchable(served_config(device), unapplied="error").flags)
    name, *sub = TRANSFORMERS_CB.program
    program = shutil.which(name) or str(Path(sys.executable).parent / name)
    argv = [program, *sub, str(model_dir), *TRANSFORMERS_CB.fixed_args, "--host",
            "127.0.0.1", "--port", str(PORT), "--dtype", "bfloat16", "--device", device,
            "--attn-implementation", "sdpa",  # CB serves it through the paged cache
            *flags]
    log = open(out / "serve.log", "w")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        base = f"http://127.0.0.1:{PORT}"
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(base + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {server.returncode}")
            time.sleep(2)
        options = ClientOptions(model=str(model_dir), seed=SEED)
        warm = synthetic_workload("poisson:rate=20,n=8,input=const:32,output=const:8", 1)
        asyncio.run(replay(base, warm, options))
        workload = synthetic_workload(WORKLOAD, SEED)
        result = asyncio.run(replay(base, workload, options))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        log.close()
    rows = [{"request_id": r.request_id, "arrival_s": r.arrival_s, "sent_s": r.sent_s,
             "input_tokens": r.input_tokens, "prompt_tokens": r.prompt_tokens,
             "output_tokens": r.output_tokens, "ttft_ms": r.ttft_ms, "itl_ms": r.itl_ms,
             "e2e_ms": r.e2e_ms, "status": r.status, "error": r.error}
            for r in result.requests]
    pd.DataFrame(rows).to_parquet(out / "http_requests.parquet")
    return {"requests": len(rows), "ok": sum(r.status == "ok" for r in result.requests),
            "duration_s": result.duration_s}


def collect(model_dir: Path, out: Path, device: str) -> None:
    """The collector on the same model directory, configuration and workload."""
    sweep = out / "sweep.toml"
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
    model_dir = build_model(Path(args.model_dir), tiny=args.device == "cpu")
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
    import numpy as np
    import pandas as pd

    from servetune.data import reconstruct_steps
    from servetune.data._benchmark_record import write_record

    root = Path(args.gpu_dir)
    info = json.loads((root / "info.json").read_text())
    runs = pd.read_parquet(root / "collector" / "runs.parquet")
    recorded = pd.read_parquet(root / "collector" / "steps.parquet")
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
               "recorded": summary(recorded), "rebuilt_from_http": summary(from_http),
               "rebuilt_in_process": summary(from_process)}
    for name in ("rebuilt_from_http", "rebuilt_in_process"):
        figures[f"{name}_vs_recorded"] = ratios(figures[name], figures["recorded"])
    print(json.dumps(figures, indent=1, default=str))
    write_record("http_reconstruction", figures, args=args,
                 measured_on=[info["gpu"]])


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
    c.add_argument("--gpu-dir", required=True)
    args = parser.parse_args()
    (gpu if args.phase == "gpu" else compare)(args)


if __name__ == "__main__":
    main()
