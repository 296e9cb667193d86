"""Top candidates of a transformers-cb study, measured with `transformers serve` on this GPU.

The local transport starts ``transformers serve MODEL --continuous-batching --cb-...`` for the
study's engine default (the baseline, measured first: the per-host calibration) and each tuned
candidate, the built-in streaming client replays the study's workload ``--repeats`` times, every
measurement is ingested into a trace store (source measured), and the predicted-vs-measured
report is written as JSON and Markdown.

The model is a collector preset (random weights, the architecture of the bundled traces the
step-time model was trained on) saved once to a local directory with a word-level tokenizer that
covers its whole vocabulary (nothing can be downloaded on the GPU host).

Usage (on the GPU host, with servetune importable and transformers' serving extras installed):
    python3 benchmarks/hw_gpu_validate.py --study DIR --out DIR [--preset llama-1b-like]
        [--repeats 2] [--hardware NVIDIA-H200]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

from servetune.data import TraceStore, resolve_workload
from servetune.data._benchmark_record import write_record
from servetune.data.collect._presets import PRESETS
from servetune.tuner.hardware import (
    ClientOptions,
    ClusterSpec,
    Dispatcher,
    DispatchOptions,
    NodeSpec,
    ServiceGroupSpec,
    build_report,
    launcher_for,
    load_study_candidates,
)
from servetune.tuner.hardware._client import _WORDS


def save_model(preset: str, directory: Path, seed: int = 0) -> Path:
    """The preset with random bf16 weights and a tokenizer over its whole vocabulary."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    spec = PRESETS[preset]
    config = getattr(transformers, spec.config_class)(**spec.kwargs)
    vocab_size = config.vocab_size
    words = list(dict.fromkeys(_WORDS))
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update({f"t{i}": i for i in range(len(words), vocab_size - 2)})
    vocab["<unk>"], vocab["<eos>"] = vocab_size - 2, vocab_size - 1
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>",
                                                eos_token="<eos>", pad_token="<eos>")
    fast.save_pretrained(directory)
    config.eos_token_id = config.pad_token_id = vocab_size - 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    del model
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="study folder with candidates.json")
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="llama-1b-like")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hardware", default="NVIDIA-H200")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--workload", default=None, help="default: the study's")
    parser.add_argument("--timeout", type=float, default=240.0, help="per candidate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    study = json.loads((Path(args.study) / "study.json").read_text())
    workload = resolve_workload(args.workload or study["evaluator"]["workload"],
                                seed=study["evaluator"].get("sim_seed", 0),
                                qps=study["evaluator"].get("qps"),
                                limit=study["evaluator"].get("limit"))
    candidates = load_study_candidates(args.study)
    base = {"device": args.device, "dtype": "bfloat16", "attn_implementation": "sdpa"}
    candidates = [type(c)(c.name, {**base, **c.config}, c.predicted, c.baseline)
                  for c in candidates]
    work = Path("/tmp/servetune-gpu")
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    model_dir = save_model(args.preset, work / args.preset)  # the store's model label
    model_s = time.perf_counter() - started
    program = Path(sys.executable).parent / "transformers"
    group = ServiceGroupSpec("gpu0", (NodeSpec("local", gpus=(0,), work_dir=str(work)),),
                             service_port=args.port,
                             start_command=(str(program) if program.exists() else "transformers",
                                            "serve"))
    cluster = ClusterSpec(groups=(group,), engine="transformers", model=str(model_dir),
                          health_timeout_s=180, candidate_timeout_s=args.timeout,
                          stop_grace_s=20, retries=0,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    store = TraceStore(work / "ws" / "traces")
    slo = {k: float(v) for k, v in re.findall(r"(ttft_ms|tpot_ms)=([0-9.]+)",
                                              str(study.get("objective", "")))}
    options = DispatchOptions(repeats=args.repeats, hardware=args.hardware, study=study["name"],
                              slo_ttft_ms=slo.get("ttft_ms"), slo_tpot_ms=slo.get("tpot_ms"))
    dispatcher = Dispatcher(cluster, launcher_for("transformers"), workload,
                            client=ClientOptions(model=str(model_dir)), store=store,
                            options=options)
    result = dispatcher.run(candidates)
    report = build_report(result)
    document = {"statistics": result.statistics(), "model_build_s": model_s,
                "workload": json.loads(workload.to_json()),
                "outcomes": [o.to_dict() for o in result.outcomes], "report": report.to_dict(),
                "store": store.summary()}
    (out / "validation.json").write_text(json.dumps(document, indent=1, default=str))
    (out / "report.md").write_text(report.table() + "\n")
    for kind in ("runs", "requests"):
        store.query_table(kind).to_pandas().to_parquet(out / f"measured_{kind}.parquet")
    print(report.table())
    print(json.dumps(result.statistics(), indent=1, default=str))
    write_record("hw_gpu_validate", {"statistics": result.statistics(), "model_build_s": model_s,
                                     "report": report.to_dict(), "output": str(out)}, args=args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
