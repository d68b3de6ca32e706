"""Speed of the regressor's head refit with the peak-window MLP (``regressor.head_refit``) in
float32 and in bf16 (``head_refit.precision``): the stage's ``fit_heads`` on a synthetic cache
with the default model's feature sizes, alternating fp32 / bf16 runs in fresh subprocesses, plus
the matrix-product throughput of the MLP's first layer in both types.

    .venv/bin/python benchmarks/refit.py [--repeats 3] [--events 16384] [--epochs 2] [--threads 2]

The last column extrapolates to the default refit (head_refit.max_events x epochs). bf16 pays
only on hardware with native bf16 products (AVX512-BF16 or AMX on a CPU; any recent GPU):
``auto`` column of the header line.
"""

from __future__ import annotations

import argparse
import os
import time

from ab_runs import alternate


def _model(threads: int):
    import torch

    torch.set_num_threads(threads)
    from xec.config import load_config
    from xec.models.presets import model_config
    from xec.models.regressor import XECRegressor

    cfg = load_config("config.yaml")
    torch.manual_seed(0)
    model = XECRegressor(model_config(dict(cfg["model"])), list(cfg["regressor"]["tasks"])).eval()
    return model, cfg


def _run(bf16: bool, events: int, epochs: int, threads: int, queue) -> None:
    import copy

    import torch

    from xec.train.refit import fit_heads

    model, cfg = _model(threads)
    spec = cfg["regressor"]["head_refit"]
    with torch.no_grad():
        feats = model.head_features(torch.rand(8, 4760, 2))
    g = torch.Generator().manual_seed(0)
    cache = {k: torch.randn(events, feats[k].shape[1], generator=g) for k in ("z", "window", "passed", "extra")}
    cache["y_uvwFI"] = torch.randn(events, 3, generator=g)
    cache["w_uvwFI"] = torch.ones(events)
    mlp = copy.deepcopy(model.peak.mlp).float()
    loss = {"uvwFI": lambda p, y: (p - y).abs()}
    batch = int(spec["batch_size"])
    hidden, lr = int(spec["hidden"]), float(spec["lr"])
    # warm-up: the first steps pay for kernel selection (oneDNN's bf16 kernels above all)
    warm = {k: v[: 4 * batch] for k, v in cache.items()}
    fit_heads(warm, loss, hidden, 1, lr, batch, 0, torch.device("cpu"), peak_mlp=copy.deepcopy(mlp), mlp_bf16=bf16)
    c0, w0 = time.process_time(), time.perf_counter()
    fit_heads(cache, loss, hidden, epochs, lr, batch, 0, torch.device("cpu"), peak_mlp=mlp, mlp_bf16=bf16)
    steps = epochs * -(-events // batch)
    default_steps = int(spec["epochs"]) * -(-int(spec["max_events"]) // batch)
    wall = (time.perf_counter() - w0) / steps
    queue.put(
        {
            "ms_per_step": 1e3 * wall,
            "cpu_ms_per_step": 1e3 * (time.process_time() - c0) / steps,
            "default_refit_s": wall * default_steps,
            "window": int(feats["window"].shape[1]),
            "mlp_hidden": int(model.peak.mlp[0].out_features),  # PeakWindowFit.mlp: Linear, GELU, ...
            "batch": batch,
        }
    )


def _matmul_gflops(threads: int, window: int, hidden: int, batch: int) -> dict[str, float]:
    """GFLOP/s of (batch x window) @ (window x hidden) products, float32 and bfloat16."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(batch, window, dtype=dtype), torch.randn(window, hidden, dtype=dtype)
        for _ in range(3):
            a @ b
        # for at least half a second: on CPUs that emulate bf16 (e.g. AMD Zen 2) one product takes
        # ~50 ms, so a fixed 500 of them took 25 s
        n, t = 0, time.perf_counter()
        while n < 5 or time.perf_counter() - t < 0.5:
            a @ b
            n += 1
        out[name] = n * 2 * batch * window * hidden / (time.perf_counter() - t) / 1e9
    return out


def main() -> None:
    os.environ["XEC_NO_PROGRESS"] = "1"  # inherited by the spawned runs
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--events", type=int, default=16384)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from xec.train.refit import refit_bf16

    print(
        f"# torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.2f}, "
        f"auto -> {'bf16' if refit_bf16('auto', torch.device('cpu')) else 'fp32'}"
    )
    rows = alternate(_run, (False, True), args.repeats, args.events, args.epochs, args.threads)
    for res in rows:
        res["precision"] = "bf16" if res["variant"] else "fp32"
    flops = _matmul_gflops(args.threads, rows[0]["window"], rows[0]["mlp_hidden"], rows[0]["batch"])
    print("\n| precision | ms/step (median) | CPU ms/step | default refit (s) | first-layer GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    for name in ("fp32", "bf16"):
        sel = sorted((x for x in rows if x["precision"] == name), key=lambda x: x["ms_per_step"])
        mid = sel[len(sel) // 2]
        print(
            f"| {name} | {mid['ms_per_step']:.2f} | {mid['cpu_ms_per_step']:.2f} | "
            f"{mid['default_refit_s']:.0f} | {flops[name]:.0f} |"
        )


if __name__ == "__main__":
    main()
