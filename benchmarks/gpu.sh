#!/usr/bin/env bash
# GPU benchmarks of xec on one node, in one go:
#   1. the card, driver and library versions;
#   2. the model benchmark per preset (benchmarks/model.py: bf16 autocast, the largest power-of-two
#      batch that fits, forward and forward + backward + AdamW, GFLOP/s achieved);
#   3. one training epoch of the regressor on 1 GPU per preset in TRAIN_PRESETS (EVENTS simulated
#      events, converted to shards here; bf16; ShardLoader with WORKERS data workers);
#   4. the same epoch under torchrun with all local GPUs (DDP over NCCL; one GPU still runs the
#      whole DDP path);
#   5. inference: ONNX Runtime's CUDA execution provider and PyTorch eager on the GPU vs ONNX
#      Runtime on the CPU (benchmarks/inference.py);
#   6. optionally (COMPILE=1) torch.compile'd training steps of the small preset.
# Every part has its own time limit and log under OUTDIR; a failing part is reported and the
# script goes on. The summary table at the end is also written to OUTDIR/summary.md.
#
#   benchmarks/gpu.sh [OUTDIR]          (default results/benchmarks/gpu; run from anywhere)
#   env: PYTHON (python3), EVENTS (40000), PRESETS ("tiny small base large"),
#        TRAIN_PRESETS ("small base"), TRAIN_BATCH (256), WORKERS (8), COMPILE (0),
#        PARTS ("model data epoch torchrun inference": the parts to run)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${1:-results/benchmarks/gpu}" && cd "${1:-results/benchmarks/gpu}" && pwd)
EVENTS=${EVENTS:-40000}
PRESETS=${PRESETS:-"tiny small base large"}
TRAIN_PRESETS=${TRAIN_PRESETS:-"small base"}
TRAIN_BATCH=${TRAIN_BATCH:-256}
WORKERS=${WORKERS:-8}
export XEC_NO_PROGRESS=1 PYTHONUNBUFFERED=1
DATA="$OUT/data"
mkdir -p "$DATA"

# part NAME LIMIT_S CMD...: run one part with a time limit, its output in OUT/NAME.log (CMD may
# be one of the functions below: they are exported, and timeout runs them through bash)
part() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit} s)"
    timeout "$limit" bash -c '"$@"' part "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - t0))" >>"$OUT/parts.txt"
    grep -E '^\|' "$OUT/$name.log" || tail -n 5 "$OUT/$name.log"
    echo "-- $name: exit $rc after $((SECONDS - t0)) s"
}

: >"$OUT/parts.txt"
echo "== machine"
{
    date -u '+%Y-%m-%d %H:%M UTC'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    "$PY" - <<'EOF'
import os, platform, torch
print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"NCCL {'.'.join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else '-'}")
print(f"GPUs: {torch.cuda.device_count()} x {torch.cuda.get_device_name() if torch.cuda.is_available() else '-'}")
try:
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
except ImportError:
    print("onnxruntime: not installed")
EOF
} | tee "$OUT/machine.txt"
NGPU=$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")

PARTS=${PARTS:-"model data epoch torchrun inference"}
has() { [[ " $PARTS " == *" $1 "* ]]; }
has model && part model 420 "$PY" benchmarks/model.py --devices cuda --presets $PRESETS --kinds ${KINDS:-regressor mae inpainter} --no-components --steps 5 \
    --json "$OUT/model.json"

# the data of the training epochs: EVENTS train + 4,000 val events at 15-60 MeV, as shards
cat >"$DATA/common.yaml" <<EOF
simulation:
  samples:
    train: {events: $EVENTS, seed: 101, energy_mev: [15.0, 60.0]}
    val: {events: 4000, seed: 202, energy_mev: [15.0, 60.0]}
regressor: {epochs: 1, batch_size: $TRAIN_BATCH}
train: {num_workers: $WORKERS}
mlflow: {enabled: false}
EOF
data() {
    for s in train val; do
        "$PY" -m xec.cli simulate --config "$DATA/common.yaml" --sample $s --out "$DATA/$s.root" \
            --workers "$(nproc)" || return
        "$PY" -m xec.cli shards --config "$DATA/common.yaml" --input "$DATA/$s.root" --split $s \
            --out "$DATA/shards/$s" --workers "$(nproc)" || return
    done
}
export -f data
export PY DATA EVENTS TRAIN_BATCH WORKERS
has data && part data 300 data

# train PRESET LAUNCHER...: one epoch of the regressor at PRESET
train() {
    local preset=$1
    shift
    sed "s/^regressor:/model: {preset: $preset}\nregressor:/" "$DATA/common.yaml" >"$DATA/$preset.yaml"
    "$@" train regressor --config "$DATA/$preset.yaml" --shards "$DATA/shards" \
        --out "$DATA/regressor_$preset" --log "$DATA/regressor_$preset.log"
}
export -f train
for p in $TRAIN_PRESETS; do
    has epoch && part "epoch_$p" 300 train "$p" "$PY" -m xec.cli
done
FIRST=${TRAIN_PRESETS%% *}
# (through xec's launcher: torchrun's own command line would take xec's --log for --log-dir)
TORCHRUN="import sys; from xec.train.distributed import launch_torchrun as run; sys.exit(run(int(sys.argv[1]), 'xec.cli', sys.argv[2:]))"
has torchrun && part "torchrun_${FIRST}_${NGPU}gpu" 300 train "$FIRST" "$PY" -c "$TORCHRUN" "$NGPU"

has inference && part inference 300 "$PY" benchmarks/inference.py --devices cpu cuda --threads "$(nproc)" \
    --batch-sizes 256 1024 --opt-levels all --spinning 0 --events 4096 --repeats 2

if [ "${COMPILE:-0}" = 1 ]; then
    part compile 400 "$PY" benchmarks/model.py --devices cuda --presets small --kinds regressor --modes train \
        --compile --no-components --steps 5
fi

# summary: one row per part
"$PY" - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| part | result |")
print("|---|---|")
for line in (out / "parts.txt").read_text().splitlines():
    name, rc, secs = line.split()
    log = (out / f"{name}.log").read_text(errors="replace")
    epoch = re.findall(r"epoch 1/1: .*?\| (\d+) events/s, data wait ([\d.]+)%", log)
    group = re.findall(r"process group (\w+)", log)
    if epoch:
        res = f"{int(epoch[-1][0]):,} events/s (data wait {epoch[-1][1]} %)" + (f", process group {group[0]}" if group else "")
    elif name == "model" and (out / "model.json").exists():
        rows = json.loads((out / "model.json").read_text())["rows"]
        ok = [r for r in rows if "error" not in r and r["mode"] == "train"]
        res = "; ".join(f"{r['preset']}/{r['kind']} {r['events_per_s_median']:,.0f} ev/s at batch {r['batch']}" for r in ok)
    else:
        res = "see log"
    print(f"| {name} | {rc.replace('rc=', 'exit ')}, {secs} s: {res} |")
EOF
