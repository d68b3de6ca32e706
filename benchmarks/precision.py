"""Resolution of a trained regressor evaluated in float32 and under bf16 autocast, which is what
validation, the head refit's feature cache and ``predictions.parquet`` run in on a GPU
(``train.precision: auto``): 68 % half-widths of time, energy, u, v, w on the val shards, one
row per precision. A wide gap means a measured quantity is computed in bf16
(docs/performance.md, "bf16 autocast and the measurements").

    .venv/bin/python benchmarks/precision.py [--checkpoint results/regressor/checkpoint.pt]
        [--val results/shards/val] [--events 4000] [--device cpu|cuda] [--threads 2]

bf16 on a CPU without AVX512-BF16 or AMX is emulated (slow), but gives the same numbers.
``benchmarks/gpu.sh`` runs it on the GPU (part "precision").
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch

from xec.data.loader import ShardLoader
from xec.metrics import width68
from xec.train.checkpoint import load_checkpoint
from xec.train.stages import build_model_from_checkpoint


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def widths(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, float]:
    """68 % half-widths: time (ps), energy (relative, %), u, v, w (mm)."""
    out = {
        "time_ps": 1e3 * width68(pred["timing"][:, 0] - truth["timing"][:, 0]),
        "energy_pct": 100 * width68(pred["energy"][:, 0] / truth["energy"][:, 0] - 1.0),
    }
    for i, c in enumerate("uvw"):
        out[f"{c}_mm"] = 10 * width68(pred["uvwFI"][:, i] - truth["uvwFI"][:, i])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="results/regressor/checkpoint.pt", help="regressor checkpoint")
    ap.add_argument("--val", default="results/shards/val", help="val shard directory")
    ap.add_argument("--events", type=int, default=4000, help="first val events")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ckpt = load_checkpoint(args.checkpoint, expected_stage="regressor")
    model = build_model_from_checkpoint(ckpt, use_ema=True).to(device).eval()
    val = ShardLoader(Path(args.val), args.batch, tasks=list(ckpt["tasks"]), shuffle=False, max_events=args.events)
    preds: dict[str, dict[str, list]] = {"float32": {}, "bf16 autocast": {}}
    truth: dict[str, list] = {}
    with torch.no_grad():
        for x, targets, _ in val:
            for k, v in targets.items():
                truth.setdefault(k, []).append(v.numpy())
            x = x.to(device)
            for name, pred in preds.items():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name != "float32"):
                    out = model.forward_physical(x)
                for k, v in out.items():
                    pred.setdefault(k, []).append(v.float().cpu().numpy())
    truth_all = {k: np.concatenate(v) for k, v in truth.items()}
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"# {args.checkpoint}, {len(truth_all['timing'])} val events, {device.type} ({card})")
    print("| forward | time (ps) | energy (%) | u (mm) | v (mm) | w (mm) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, pred in preds.items():
        w = widths({k: np.concatenate(v) for k, v in pred.items()}, truth_all)
        cells = [f"{w['time_ps']:.1f}", f"{w['energy_pct']:.2f}"] + [f"{w[c + '_mm']:.3f}" for c in "uvw"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
