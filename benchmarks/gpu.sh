#!/usr/bin/env bash
# GPU benchmarks of xec on one node, in one go:
#   1. the card, driver and library versions;
#   2. the model benchmark per preset (benchmarks/model.py: bf16 autocast, the largest power-of-two
#      batch that fits, forward and forward + backward + AdamW, GFLOP/s achieved);
#   3. one training epoch of the regressor on 1 GPU per preset in TRAIN_PRESETS (EVENTS simulated
#      events, converted to shards here; bf16; ShardLoader with WORKERS data workers);
#   3b. that epoch's model evaluated in float32 and under bf16 autocast (benchmarks/precision.py);
#   4. the same epoch under torchrun with all local GPUs (DDP over NCCL; one GPU still runs the
#      whole DDP path);
#   5. inference: ONNX Runtime's CUDA execution provider and PyTorch eager on the GPU vs ONNX
#      Runtime on the CPU (benchmarks/inference.py);
#   6. accuracy vs compute: per preset in ACC_PRESETS, MAE + regressor with one fixed recipe on the
#      same training events (ACC_RECIPE), exported and run on the bench sample, ML vs classical
#      (xec summary); the presets train side by side on the GPU; with "torchrun_acc" in PARTS the
#      first preset's regressor trains under torchrun (DDP, NCCL);
#   7. optionally (COMPILE=1) torch.compile'd training steps of the small preset;
#   8. with "stages" in PARTS (or its halves "stages_train", "stages_infer"): the default config's
#      models (tiny) on the GPU as the workflow chains them (MAE beside the inpainter, regressor
#      epochs + finish, both exported), then `xec infer` with the inpainter on a realdata-like
#      sample (1 % dead sensors) through ONNX Runtime's CUDA provider and on the CPU
#      (STAGES_RECIPE: the training keys, YAML).
# Every part has its own time limit and log under OUTDIR; a failing part is reported and the
# script goes on. The summary table at the end is also written to OUTDIR/summary.md.
#
#   benchmarks/gpu.sh [OUTDIR]          (default results/benchmarks/gpu; run from anywhere)
#   env: PYTHON (python3), EVENTS (40000), PRESETS ("tiny small base large"),
#        TRAIN_PRESETS ("small base"), TRAIN_BATCH (256), WORKERS (8), COMPILE (0),
#        PARTS ("model data epoch precision torchrun inference": the parts to run; also "accuracy",
#        "torchrun_acc"), ACC_PRESETS ("small base"), ACC_RECIPE (the accuracy part's training
#        keys, YAML), ACC_LIMIT (420 s per preset), ACC_WAIT (180 s), COMPILE_LIMIT (400 s),
#        MODEL_ARGS (more arguments of benchmarks/model.py), STAGES_RECIPE, STAGES_LIMIT (300 s),
#        STAGES_DEVICES ("cuda cpu": xec infer's devices in stages_infer)
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

PARTS=${PARTS:-"model data epoch precision torchrun inference"}
has() { [[ " $PARTS " == *" $1 "* ]]; }
wants_stages() { has stages || has stages_train || has stages_infer; }
has model && part model 420 "$PY" benchmarks/model.py --devices cuda --presets $PRESETS --kinds ${KINDS:-regressor mae inpainter} --no-components --steps 5 \
    --json "$OUT/model.json" ${MODEL_ARGS:-}

# the data of the training epochs: EVENTS train + 4,000 val events at 15-60 MeV, as shards
cat >"$DATA/common.yaml" <<EOF
simulation:
  samples:
    train: {events: $EVENTS, seed: 101, energy_mev: [15.0, 60.0]}
    val: {events: 4000, seed: 202, energy_mev: [15.0, 60.0]}
    bench: {events: 4000, seed: 303, energy_mev: 52.8}
    realdata: {events: 4000, seed: 404, energy_mev: 52.8, dead_fraction: 0.01, gain_spread: 0.03}
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
    if has accuracy || wants_stages; then
        # the reweighting of the regressors' training
        "$PY" -m xec.cli reweight --config "$DATA/common.yaml" --manifest "$DATA/shards/train/manifest.json" \
            --out "$DATA/weights.npz" --plot "$DATA/weights.png" || return
    fi
    if wants_stages; then
        "$PY" -m xec.cli simulate --config "$DATA/common.yaml" --sample realdata --out "$DATA/realdata.root" \
            --workers "$(nproc)" || return
    fi
    if has accuracy; then
        # the accuracy part's bench sample and classical reconstruction (CPU, in the background of
        # the first training)
        "$PY" -m xec.cli simulate --config "$DATA/common.yaml" --sample bench --out "$DATA/bench.root" \
            --workers "$(nproc)" || return
        ("$PY" -m xec.cli baseline --config "$DATA/common.yaml" --calibrate-on "$DATA/train.root" \
            --calibration "$DATA/calibration.json" &&
            "$PY" -m xec.cli baseline --config "$DATA/common.yaml" --input "$DATA/bench.root" \
                --calibration "$DATA/calibration.json" --out "$DATA/baseline_bench.parquet"
            echo $? >"$DATA/baseline.rc") >"$DATA/baseline.log" 2>&1 &
    fi
}
export -f data has wants_stages
export PARTS
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
# the first preset's epoch evaluated in float32 and under bf16 autocast: the measured quantities
# must not lose resolution to bf16 (docs/performance.md, "bf16 autocast and the measurements")
has precision && part "precision_$FIRST" 180 "$PY" benchmarks/precision.py --device cuda \
    --checkpoint "$DATA/regressor_$FIRST/checkpoint.pt" --val "$DATA/shards/val"
# (through xec's launcher: torchrun's own command line would take xec's --log for --log-dir)
TORCHRUN="import sys; from xec.train.distributed import launch_torchrun as run; sys.exit(run(int(sys.argv[1]), 'xec.cli', sys.argv[2:]))"
has torchrun && part "torchrun_${FIRST}_${NGPU}gpu" 300 train "$FIRST" "$PY" -c "$TORCHRUN" "$NGPU"

has inference && part inference 300 "$PY" benchmarks/inference.py --devices cpu cuda --threads "$(nproc)" \
    --batch-sizes 256 1024 --opt-levels all --spinning 0 --events 4096 --repeats 2

# the default config's models on the GPU, chained as the workflow chains them (the inpainter
# needs no MAE: it trains beside it, as with workflow.inpainter_after_mae false on a cluster),
# then `xec infer` with the inpainter on the realdata-like sample, ONNX Runtime on the GPU and on
# the CPU. Short training (STAGES_RECIPE): this checks the GPU path and times it; it measures no
# resolution.
STAGES_RECIPE=${STAGES_RECIPE:-"mae: {epochs: 1}
inpainter: {epochs: 1}
regressor: {epochs: 2}"}
export STAGES_RECIPE
stages_train() {
    local d="$DATA/stages" c="$DATA/stages/config.yaml" t0=$SECONDS
    mkdir -p "$d"
    { grep -v '^regressor:' "$DATA/common.yaml"; echo "$STAGES_RECIPE"; } >"$c"
    local io=(--train "$DATA/shards/train/manifest.json" --val "$DATA/shards/val/manifest.json")
    "$PY" -m xec.cli train mae --config "$c" "${io[@]}" --out "$d/mae" --log "$d/mae.log" &
    "$PY" -m xec.cli train inpainter --config "$c" --init none "${io[@]}" --out "$d/inpainter" \
        --log "$d/inpainter.log" || return
    wait $! || return
    echo "MAE and inpainter side by side: $((SECONDS - t0)) s"
    "$PY" -m xec.cli export --config "$c" --checkpoint "$d/inpainter/checkpoint.pt" \
        --val-shards "$DATA/shards/val/manifest.json" --out "$d/inpainter.onnx" --log "$d/export_inpainter.log" &
    "$PY" -m xec.cli train regressor --config "$c" --init "$d/mae/checkpoint.pt" --weights "$DATA/weights.npz" \
        "${io[@]}" --out "$d/regressor" --log "$d/regressor.log" || return
    echo "regressor done: $((SECONDS - t0)) s"
    wait $! || return
    "$PY" -m xec.cli export --config "$c" --checkpoint "$d/regressor/checkpoint.pt" \
        --val-shards "$DATA/shards/val/manifest.json" --out "$d/regressor.onnx" --log "$d/export_regressor.log" || return
    grep -hE "events/s|parity" "$d"/mae.log "$d"/inpainter.log "$d"/regressor.log "$d"/export_*.log | tail -n 20
}
stages_infer() {
    local d="$DATA/stages" c="$DATA/stages/config.yaml"
    # twice each: the first run of a process pays ONNX Runtime's CUDA start-up (the command's time
    # includes it, as a job's does)
    local dev th rep t1 res
    for dev in ${STAGES_DEVICES:-cuda cpu}; do
        th=$([ "$dev" = cpu ] && nproc || echo 1)
        for rep in 1 2; do
            t1=$SECONDS
            res=$("$PY" -m xec.cli infer --config "$c" --model "$d/regressor.onnx" --inpainter "$d/inpainter.onnx" \
                --input "$DATA/realdata.root" --out "$d/realdata_$dev.root" --device "$dev" --threads "$th" \
                --log "$d/infer_$dev.log" | tail -n 1) || return
            echo "xec infer --device $dev --threads $th, run $rep: $res; $((SECONDS - t1)) s wall"
        done
        grep -h "ONNX Runtime runs on\|time per stage" "$d/infer_$dev.log" | tail -n 3
    done
    if [ -e "$d/realdata_cuda.parquet" ] && [ -e "$d/realdata_cpu.parquet" ]; then
        "$PY" - "$d" <<'PYEOF'
import sys
import numpy as np, pandas as pd
d = sys.argv[1]
a, b = (pd.read_parquet(f"{d}/realdata_{dev}.parquet") for dev in ("cuda", "cpu"))
diffs = {c: float(np.nanmax(np.abs(a[c].to_numpy() - b[c].to_numpy()))) for c in a.columns if a[c].dtype.kind == "f"}
worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:4]
print(f"ORT CUDA vs CPU, {len(a)} events: largest output differences " + ", ".join(f"{c} {v:.3g}" for c, v in worst))
PYEOF
    fi
}
export -f stages_train stages_infer
# (in two parts, so that a short device lease can run them in two calls)
{ has stages || has stages_train; } && part stages_train "${STAGES_LIMIT:-300}" stages_train
{ has stages || has stages_infer; } && part stages_infer 180 stages_infer

# accuracy vs compute: the same training events and recipe for each preset (the default config's
# optimizer; batch and epochs sized for one GPU lease), then bench ML vs classical
ACC_PRESETS=${ACC_PRESETS:-"small base"}
ACC_RECIPE=${ACC_RECIPE:-"mae: {epochs: 1, batch_size: 256}
regressor: {epochs: 5, batch_size: 512}
export: {parity_events: 64}"}
export ACC_RECIPE
# acc PRESET LAUNCHER...: MAE, regressor (through LAUNCHER), export, bench inference, summary
acc() {
    local preset=$1 d="$DATA/acc_$1"
    shift
    mkdir -p "$d"
    { grep -v '^regressor:' "$DATA/common.yaml"; echo "model: {preset: $preset}"; echo "$ACC_RECIPE"; } >"$d/config.yaml"
    "$PY" -m xec.cli train mae --config "$d/config.yaml" --shards "$DATA/shards" --out "$d/mae" --log "$d/mae.log" || return
    "$@" train regressor --config "$d/config.yaml" --shards "$DATA/shards" --init "$d/mae/checkpoint.pt" \
        --weights "$DATA/weights.npz" --out "$d/regressor" --log "$d/regressor.log" || return
    # export, bench inference (ONNX Runtime, CPU) and the summary run beside the next preset's training
    (
        "$PY" -m xec.cli export --config "$d/config.yaml" --checkpoint "$d/regressor/checkpoint.pt" \
            --val-shards "$DATA/shards/val/manifest.json" --out "$d/model.onnx" --log "$d/export.log" &&
            "$PY" -m xec.cli infer --config "$d/config.yaml" --model "$d/model.onnx" --input "$DATA/bench.root" \
                --out "$d/bench.root" --parquet "$d/bench.parquet" --threads 8 --log "$d/infer.log" &&
            while [ ! -e "$DATA/baseline.rc" ]; do sleep 2; done && [ "$(cat "$DATA/baseline.rc")" = 0 ] &&
            "$PY" -m xec.cli summary --config "$d/config.yaml" --bench-predictions "$d/bench.parquet" \
                --bench-baseline "$DATA/baseline_bench.parquet" --out "$d/summary.json" \
                --markdown "$d/summary.md" --log "$d/summary.log"
        echo $? >"$d/evaluate.rc"
    ) >"$d/evaluate.log" 2>&1 &
}
export -f acc
if has accuracy; then
    # the presets train side by side on the one GPU (each alone leaves it mostly idle at these
    # batches): their accuracy is unaffected, their events/s are not clean single-job rates
    FIRST_ACC=1
    for p in $ACC_PRESETS; do
        if [ $FIRST_ACC = 1 ] && has torchrun_acc; then
            part "accuracy_$p" "${ACC_LIMIT:-420}" acc "$p" "$PY" -c "$TORCHRUN" "$NGPU" &
        else
            part "accuracy_$p" "${ACC_LIMIT:-420}" acc "$p" "$PY" -m xec.cli &
        fi
        FIRST_ACC=0
        sleep 5
    done
    wait
fi
# (the GPU is free here while the accuracy part's evaluations run on the CPU)
if [ "${COMPILE:-0}" = 1 ]; then
    part compile "${COMPILE_LIMIT:-400}" "$PY" benchmarks/model.py --devices cuda --presets small --kinds regressor --modes train \
        --compile --no-components --steps 5
fi
if has accuracy; then
    # the evaluations run in the background of the parts: wait for them (at most ACC_WAIT s)
    t0=$SECONDS
    for p in $ACC_PRESETS; do
        while [ -e "$DATA/acc_$p/regressor/checkpoint.pt" ] && [ ! -e "$DATA/acc_$p/evaluate.rc" ] &&
            [ $((SECONDS - t0)) -lt "${ACC_WAIT:-180}" ]; do sleep 2; done
        echo "accuracy_$p evaluation: exit $(cat "$DATA/acc_$p/evaluate.rc" 2>/dev/null || echo none)"
        grep -E '^\| (u|v|w|sigma_E/E|time) .*\[fiducial\]' "$DATA/acc_$p/summary.md" 2>/dev/null
    done
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
    epoch = re.findall(r"regressor epoch (\d+)/\1: .*?\| (\d+) events/s, data wait ([\d.]+)%", log)
    group = re.findall(r"process group (\w+)", log)
    if epoch:
        res = f"{int(epoch[-1][1]):,} events/s (data wait {epoch[-1][2]} %)" + (f", process group {group[0]}" if group else "")
        acc = out / "data" / f"acc_{name.removeprefix('accuracy_')}" / "summary.json"
        if name.startswith("accuracy_") and acc.exists():
            m = json.loads(acc.read_text())["bench"]["methods"]
            ratio = lambda o, k: m["ml"][o]["fiducial"][k] / m["baseline"][o]["fiducial"][k]
            res += "; bench fiducial ML/classical 68 % (core): " + ", ".join(
                f"{o.split('_')[0]} {ratio(o, 'width68'):.2f} ({ratio(o, 'sigma_core'):.2f})"
                for o in ("u_mm", "v_mm", "w_mm", "energy_pct", "time_ps"))
    elif name == "model" and (out / "model.json").exists():
        rows = json.loads((out / "model.json").read_text())["rows"]
        ok = [r for r in rows if "error" not in r and r["mode"] == "train"]
        res = "; ".join(f"{r['preset']}/{r['kind']} {r['events_per_s_median']:,.0f} ev/s at batch {r['batch']}" for r in ok)
    else:
        res = "see log"
    print(f"| {name} | {rc.replace('rc=', 'exit ')}, {secs} s: {res} |")
EOF
