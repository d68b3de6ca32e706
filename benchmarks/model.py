"""Model benchmark: events/s (forward, and forward + backward + AdamW step), peak memory,
FLOPs per event and the forward-time share per component, for the model presets.

    .venv/bin/python benchmarks/model.py                      # tiny + base, CPU
    .venv/bin/python benchmarks/model.py --presets tiny --threads 1 2 --batch 256

Every measurement runs in a fresh subprocess (clean peak-RSS, no allocator carry-over). On a
shared machine the wall-clock rate depends on the load: the table also gives CPU time per
event (process time, all threads) and the load average before each run. With CUDA, the GPU
rows use bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time

import torch

TASKS = ["angle", "energy", "timing", "uvwFI"]


def make_input(b: int, device: str = "cpu") -> torch.Tensor:
    from xec.geometry import N_SENSORS

    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, N_SENSORS, 2, generator=g) * 1.5
    x[..., 1][torch.rand(b, N_SENSORS, generator=g) < 0.4] = -1.0
    x[torch.rand(b, N_SENSORS, generator=g) < 0.01] = -1.0
    return x.to(device)


def build(kind: str, preset: str, device: str):
    from xec.models import XECMAE, XECInpainter, XECRegressor, model_config

    cfg = model_config({"preset": preset})
    torch.manual_seed(0)
    if kind == "mae":
        m = XECMAE(cfg, time_npho_threshold=0.02)
    elif kind == "regressor":
        m = XECRegressor(cfg, TASKS)
    elif kind == "inpainter":
        m = XECInpainter(cfg, time_npho_threshold=0.02, freeze_encoder=True)
    else:
        raise ValueError(kind)
    return m.to(device)


def loss_fn(kind: str, m, x: torch.Tensor, mask: torch.Tensor):
    if kind == "mae":
        return m(x)["loss"]
    if kind == "regressor":
        return sum(v.float().square().mean() for v in m(x).values())
    return (m.predict(x, mask).float() - x).square().mean()


def forward_fn(kind: str, m, x: torch.Tensor, mask: torch.Tensor):
    if kind == "mae":
        return m(x)["pred"]
    if kind == "regressor":
        return m.forward_physical(x)
    return m(x, mask)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_one(spec: dict) -> dict:
    """One measurement (in a subprocess): spec keys kind, preset, mode (fwd/train), batch,
    threads, steps, device."""
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    kind, b = spec["kind"], spec["batch"]
    m = build(kind, spec["preset"], device)
    x = make_input(b, device)
    mask = torch.rand(b, x.shape[1], generator=torch.Generator().manual_seed(1)).to(device) < 0.05
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    if spec["mode"] == "fwd":
        m.eval()

        def step():
            with torch.no_grad(), amp:
                forward_fn(kind, m, x, mask)
    else:
        m.train()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)

        def step():
            with amp:
                loss = loss_fn(kind, m, x, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    step()  # warm-up (allocator, kernels)
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    walls, cpus = [], []
    for _ in range(spec["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    walls.sort()
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        **spec,
        "events_per_s_median": b / walls[len(walls) // 2],
        "events_per_s_best": b / walls[0],
        "cpu_ms_per_event": 1e3 * min(cpus) / b,
        "peak_mem_mb": peak / 2**20,
    }


def flops_per_event(kind: str, preset: str, b: int = 4) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per event from torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    m = build(kind, preset, "cpu")
    x = make_input(b)
    mask = torch.rand(b, x.shape[1]) < 0.05
    m.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        forward_fn(kind, m, x, mask)
    fwd = fc.get_total_flops() / b
    m.train()
    with FlopCounterMode(display=False) as fc:
        loss_fn(kind, m, x, mask).backward()
    return fwd, fc.get_total_flops() / b


def component_shares(preset: str, b: int, threads: int, reps: int = 3) -> dict[str, float]:
    """Forward time per component of the regressor (and of the MAE decoders), ms per event."""
    torch.set_num_threads(threads)
    mae = build("mae", preset, "cpu").eval()
    reg = build("regressor", preset, "cpu").eval()
    enc = reg.encoder
    x = make_input(b)
    cells = enc.gather_cells(x)
    tokens = torch.randn(b, enc.num_tokens, enc.cfg.token_dim)
    flat = tokens.flatten(1)
    feats = mae.encoder.forward_features(x)
    parts = {
        "faces gather": lambda: enc.gather_cells(x),
        "rect backbones": lambda: [enc.rect_face(cells, f) for f in enc.layout.rect],
        "hex backbone": lambda: enc.hex_faces(cells),
        "fusion": lambda: enc.fuse(tokens),
        "regressor heads": lambda: reg.to_physical({t: reg.heads[t](flat) for t in reg.tasks}),
        "MAE decoders": lambda: mae.decoder(feats),
    }
    out = {}
    with torch.no_grad():
        for name, fn in parts.items():
            fn()
            out[name] = 1e3 * min(_timed(fn) for _ in range(reps)) / b
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _child(spec: dict, q) -> None:
    try:
        q.put(run_one(spec))
    except Exception as exc:  # report, don't hang the parent
        q.put({**spec, "error": repr(exc)})


def measure(spec: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(spec, q))
    load = os.getloadavg()[0]
    p.start()
    res = q.get()
    p.join()
    res["load_before"] = load
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "base"])
    ap.add_argument("--kinds", nargs="+", default=["regressor", "mae", "inpainter"])
    ap.add_argument("--threads", nargs="+", type=int, default=[2])
    ap.add_argument("--batch", type=int, default=256, help="batch for tiny (base: --batch-base)")
    ap.add_argument("--batch-base", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-components", action="store_true")
    ap.add_argument("--json", default=None, help="write all rows to this JSON file")
    args = ap.parse_args(argv)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.machine()} {os.cpu_count()} cores  "
        f"torch {torch.__version__}  cuda {'yes: ' + torch.cuda.get_device_name() if 'cuda' in devices else 'no'}"
    )
    rows = []
    print(
        f"{'preset':6} {'model':9} {'mode':5} {'dev':4} {'thr':>3} {'batch':>5} {'ev/s med':>9} {'ev/s best':>9} "
        f"{'cpu ms/ev':>9} {'peak MB':>8} {'load':>5}"
    )
    for preset in args.presets:
        b = args.batch if preset == "tiny" else args.batch_base
        for device in devices:
            for threads in args.threads if device == "cpu" else [args.threads[0]]:
                for kind in args.kinds:
                    for mode in ("fwd", "train"):
                        spec = dict(
                            kind=kind,
                            preset=preset,
                            mode=mode,
                            batch=b if device == "cpu" else 4 * b,
                            threads=threads,
                            steps=args.steps if preset == "tiny" else 3,
                            device=device,
                        )
                        r = measure(spec)
                        rows.append(r)
                        if "error" in r:
                            print(f"{preset:6} {kind:9} {mode:5} {device:4} {threads:>3} error: {r['error']}")
                            continue
                        print(
                            f"{preset:6} {kind:9} {mode:5} {device:4} {threads:>3} {r['batch']:>5} "
                            f"{r['events_per_s_median']:>9.0f} {r['events_per_s_best']:>9.0f} "
                            f"{r['cpu_ms_per_event']:>9.3f} {r['peak_mem_mb']:>8.0f} {r['load_before']:>5.1f}",
                            flush=True,
                        )
    print("\n# FLOPs per event (torch.utils.flop_counter, convs + matmuls). Its backward count of")
    print("# grouped (depthwise) convs ignores the groups (16x too high for a 32-channel dwconv), so the")
    print("# training cost is given as ~3x forward; the raw counter value is in the JSON.")
    flops = {}
    for preset in args.presets:
        for kind in args.kinds:
            f, fb = flops_per_event(kind, preset)
            flops[f"{preset}/{kind}"] = {"forward": f, "forward_backward_counter": fb}
            print(f"{preset:6} {kind:9} forward {f / 1e6:9.2f} MFLOP   training ~{3 * f / 1e6:9.2f} MFLOP")
    comps = {}
    if not args.no_components:
        print("\n# forward time per component (ms per event, no_grad, best of 3, 1 thread: the most")
        print("# load-robust setting on a shared machine)")
        for preset in args.presets:
            b = args.batch if preset == "tiny" else args.batch_base
            c = component_shares(preset, b, 1)
            comps[preset] = c
            total = sum(v for k, v in c.items() if k != "MAE decoders")
            parts = ", ".join(
                f"{k} {v:.3f} ({100 * v / total:.0f}%)" if k != "MAE decoders" else f"{k} {v:.3f}" for k, v in c.items()
            )
            print(f"{preset:6} {parts}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "flops": flops, "components": comps}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
