#!/usr/bin/env bash
# The verify -> calibrate -> re-tune loop (`servetune tune --verify --rounds 2`) on one GPU host
# (issue 14 part 5). Run from the repository root on the GPU host, with the wheels the host lacks
# in .whl/ (serving extras) and .whl/loop/ (xgboost-cpu, mlflow-skinny, sqlalchemy, alembic,
# paramiko and their dependencies); OUT is where the loop's JSON and log go.
set -euo pipefail
OUT=${OUT:?set OUT}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl .whl/loop/*.whl
rm -rf /tmp/p && mkdir -p /tmp/p && cp -r . /tmp/p/servetune
export PYTHONPATH=/tmp/p:/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd /tmp/p/servetune
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > "$OUT/gpu.txt"
# the served model: llama-1b-like, random weights, a word-level tokenizer, no EOS
python3 -c "from servetune.testing import word_level_model; word_level_model('/tmp/m')"
WORKLOAD=${WORKLOAD:-"poisson:rate=3,n=80,input=lognormal:512:0.6:2048,output=uniform:32:160"}
timeout "${LOOP_TIMEOUT:-530}" python3 -c "import sys; from servetune.cli import main; sys.exit(main())" --workspace /tmp/ws \
  tune --space transformers-cb --workload "$WORKLOAD" --particles 8 --iterations 5 --top-k 1 \
  --verify --rounds 2 --cluster benchmarks/gpu_loop_cluster.toml --model /tmp/m \
  --study "${STUDY:-gpuloop}" --json > "$OUT/loop.json" 2> "$OUT/loop.log" || echo "loop exited $?"
timeout "${LOOP_TIMEOUT:-530}" python3 -c "import sys; from servetune.cli import main; sys.exit(main())" --workspace /tmp/ws \
  data ls --json > "$OUT/data.json" 2>> "$OUT/loop.log" || true
tar czf "$OUT/ws.tgz" -C /tmp/ws --exclude="*.db" . 2>/dev/null || true
