"""What ``servetune collect transformers-serve`` recorded on a GPU host: the served engine's own
steps against the requests the streaming client measured.

    # GPU host (transformers[serving] present), repository at /tmp/p/servetune:
    PYTHONPATH=/tmp/p python3 -m servetune.data.collect transformers-serve --model llama-1b-like \\
      --set max_batch_tokens=512 --set block_size=64 --set num_blocks=4096 \\
      --set use_cuda_graph=true --seed 11 --label served-h100- --work-dir /tmp/sw \\
      --workload 'poisson:rate=12,n=100,input=lognormal:384:0.8:3072,output=uniform:32:256' \\
      --out $OUT/served
    # here:
    python benchmarks/served_collect.py [--data benchmarks/data/served_collect]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from servetune.data._benchmark_record import write_record

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "served_collect"))
    args = parser.parse_args()
    data = Path(args.data)
    steps, requests, runs = (pd.read_parquet(data / f"{k}.parquet")
                             for k in ("steps", "requests", "runs"))
    figures = {}
    for run in runs.itertuples():
        s = steps[steps.run_id == run.run_id]
        r = requests[requests.run_id == run.run_id]
        provenance = json.loads(run.provenance)
        figures[run.run_id] = {
            "gpu": f"{provenance.get('gpu_name')} {provenance.get('gpu_uuid', '')}".strip(),
            "requests_ok": int((r.status == "ok").sum()), "requests": len(r),
            "steps": len(s), "median_step_ms": float(s.duration_ms.median()),
            "busy_s": float(s.duration_ms.sum() / 1e3),
            "decode_seqs_mean": float(s.num_decode_seqs.mean()),
            "decode_tokens_recorded": int(s.decode_tokens.sum()),
            "decode_tokens_from_requests": int((r.output_tokens - 1).sum()),
            "prefill_tokens_recorded": int(s.prefill_tokens.sum()),
            "prompt_tokens": int(r.input_tokens.sum()),
            "ttft_mean_ms": float(run.ttft_mean_ms), "tpot_mean_ms": float(run.tpot_mean_ms),
            "output_throughput_tok_s": float(run.output_throughput_tok_s)}
    print(json.dumps(figures, indent=1))
    write_record("served_collect", {"runs": figures}, args=args,
                 measured_on=sorted({f["gpu"] for f in figures.values()}))


if __name__ == "__main__":
    main()
