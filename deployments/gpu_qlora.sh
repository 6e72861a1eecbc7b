#!/usr/bin/env bash
# QLoRA once on a GPU machine: a 4-bit NF4 base, DPO steps, drift against the reference, the
# gates, and a registered adapter; then the figures. Not part of `make test` (no GPU there).
#
#   deployments/gpu_qlora.sh                 # from the repository root, its .venv set up (make setup)
#   STEPS=60 PAIRS=256 deployments/gpu_qlora.sh
#
# Needs: an NVIDIA GPU, torch with CUDA, bitsandbytes, and the embedded model (offline: no
# network is needed). Everything goes under $OUT (default $PREFDESK_HOME/gpu_qlora): summary.json,
# figures.txt, gpu_memory.csv. With more than one GPU it also runs the data-parallel check
# (deployments/ddp_tiny.py) across all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PREFDESK_HOME=${PREFDESK_HOME:-$PWD/.prefdesk-gpu}
OUT=${OUT:-$PREFDESK_HOME/gpu_qlora}
STEPS=${STEPS:-40}
PAIRS=${PAIRS:-160}
mkdir -p "$OUT"

command -v nvidia-smi >/dev/null || { echo "gpu_qlora: no nvidia-smi: this script is for a machine with an NVIDIA GPU" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" - <<'EOF'
import importlib.util, sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_qlora: torch {torch.__version__} sees no CUDA device (a CPU build?)")
if importlib.util.find_spec("bitsandbytes") is None:
    sys.exit("gpu_qlora: bitsandbytes is not installed: pip install bitsandbytes")
import bitsandbytes
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), bitsandbytes {bitsandbytes.__version__}, {torch.cuda.get_device_name(0)}")
EOF

# GPU memory every 200 ms while the run goes (the peak is the QLoRA footprint with eval).
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/gpu_memory.csv" &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

start=$(date +%s)
"$PY" -m prefdesk.cli run --json \
  --set model.quantization=4bit --set model.dtype=bf16 \
  --set train.optimizer=dpo --set train.params.max_steps="$STEPS" --set train.params.batch_size=8 \
  --set train.params.learning_rate=5e-5 --set data.limit="$PAIRS" \
  --set eval.max_prompts=64 --set eval.max_new_tokens=64 --set eval.batch_size=32 \
  --set registry.model_name=qlora-policy \
  > "$OUT/run.out" 2> "$OUT/run.err" || { tail -20 "$OUT/run.err" >&2; echo "gpu_qlora: the run failed (see $OUT/run.err)" >&2; exit 1; }
end=$(date +%s)
tail -1 "$OUT/run.out" > "$OUT/summary.json"
kill $SAMPLER 2>/dev/null || true

"$PY" - "$OUT" "$((end - start))" <<'EOF' | tee "$OUT/figures.txt"
import json, sys
from pathlib import Path

out, seconds = Path(sys.argv[1]), int(sys.argv[2])
s = json.loads((out / "summary.json").read_text())
from prefdesk.tracking import client

run = client().get_run(s["run_id"])
tags, metrics = run.data.tags, run.data.metrics
mem = [int(x) for x in (out / "gpu_memory.csv").read_text().split() if x.strip().isdigit()]
train = json.loads((Path(s["run_dir"]) / "train.json").read_text()) if (Path(s["run_dir"]) / "train.json").exists() else {}
print(f"status: {s['status']} in {seconds} s (whole flow: ingest, validate, train, drift, gates, register)")
print(f"base quantized (4-bit NF4): {tags.get('prefdesk.quantized')}, compute dtype {tags.get('prefdesk.dtype')}")
print(f"pairs accepted: {s['data']['accepted']}, DPO steps: {train.get('steps')}")
for k in ("train/loss", "train/reward_accuracy", "train/reward_margin", "train/kl", "train/tokens_per_s"):
    if k in metrics:
        print(f"  {k} = {metrics[k]:.4g} (last)")
print(f"peak GPU memory: {max(mem) if mem else 'n/a'} MiB")
for k, v in sorted(s["drift"].items()):
    if k.startswith("drift/"):
        print(f"  {k} = {v:.4g} (reference {s['drift'].get('reference/' + k, float('nan')):.4g})")
for g in s["gates"]:
    print(f"  gate {g['name']}: {'pass' if g['passed'] else 'FAIL'} ({g['reason']})")
r = s["registry"]
print(f"registered: {r['model_name']} version {r['version']}, aliases {', '.join(r['aliases'])}, {r.get('model_uri')}")
EOF

GPUS=$(nvidia-smi -L | wc -l)
if [ "$GPUS" -gt 1 ]; then
  echo "data parallel across $GPUS GPUs (tiny model, one process with grad-accum $GPUS vs $GPUS processes):"
  "$PY" -m accelerate.commands.launch --num_processes 1 deployments/ddp_tiny.py --grad-accum "$GPUS" --out "$OUT/ddp_one.json" >/dev/null 2>&1
  "$PY" -m accelerate.commands.launch --multi_gpu --num_processes "$GPUS" deployments/ddp_tiny.py --grad-accum 1 --out "$OUT/ddp_many.json" >/dev/null 2>&1
  "$PY" -c "import json,sys; a,b=(json.load(open(p))['loss_curve'] for p in sys.argv[1:]); print('  max |loss difference| over', len(a), 'steps:', max(abs(x-y) for x,y in zip(a,b)))" \
    "$OUT/ddp_one.json" "$OUT/ddp_many.json" | tee -a "$OUT/figures.txt"
fi
echo "files: $OUT"
