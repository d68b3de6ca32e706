"""Model benchmark: events/s (forward, and forward + backward + AdamW step), GFLOP/event and
GFLOP/s achieved, peak memory, and the forward-time share per component, for the model presets.

    .venv/bin/python benchmarks/model.py                      # tiny, small, base on CPU (+ CUDA)
    .venv/bin/python benchmarks/model.py --presets tiny --threads 1 2 --batch 256
    .venv/bin/python benchmarks/model.py --presets tiny tiny:physics_aggregates=false --kinds regressor
    python benchmarks/model.py --devices cuda --presets tiny small base large   # a GPU node

Every measurement runs in a fresh subprocess (clean peak-RSS, no allocator carry-over). On a
shared machine the wall-clock rate depends on the load: the table also gives CPU time per
event (process time, all threads) and the load average before each run. GPU rows use bf16
autocast at the largest batch that fits (doubling from 32 up to ``--gpu-max-batch`` until
CUDA runs out of memory); ``--compile`` adds torch.compile'd GPU rows. GFLOP/event is the
forward count of ``xec.models.info.forward_flops``; training is taken as 3x the forward.
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


def model_section(preset: str) -> dict:
    """``tiny`` or ``tiny:key=value,key=value`` (model overrides, e.g.
    ``tiny:physics_aggregates=false`` for an A/B of one model part) -> a config ``model`` section."""
    import yaml

    name, _, overrides = preset.partition(":")
    section = {"preset": name}
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        section[key] = yaml.safe_load(value)
    return section


def build(kind: str, preset: str, device: str):
    from xec.models import XECMAE, XECInpainter, XECRegressor, model_config

    cfg = model_config(model_section(preset))
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


def make_step(spec: dict, m, x: torch.Tensor, mask: torch.Tensor):
    """The timed step: forward (no_grad) or forward + backward + AdamW, bf16 autocast on CUDA,
    optionally through torch.compile."""
    kind, device = spec["kind"], spec["device"]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    fwd = torch.compile(lambda: forward_fn(kind, m, x, mask)) if spec.get("compile") else None
    if spec["mode"] == "fwd":
        m.eval()

        def step():
            with torch.no_grad(), amp:
                fwd() if fwd else forward_fn(kind, m, x, mask)

        return step
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, fused=device == "cuda")
    lossf = torch.compile(lambda: loss_fn(kind, m, x, mask)) if spec.get("compile") else None

    def step():
        with amp:
            loss = lossf() if lossf else loss_fn(kind, m, x, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def largest_batch(spec: dict, start: int = 32) -> int:
    """Largest power-of-two training batch (from ``start`` up to ``spec['max_batch']``) whose
    step fits in GPU memory."""
    fits, b = 0, start
    while b <= spec["max_batch"]:
        try:
            m = build(spec["kind"], spec["preset"], "cuda")
            x = make_input(b, "cuda")
            step = make_step({**spec, "mode": "train", "compile": False}, m, x, torch.zeros_like(x[..., 0]).bool())
            step()
            step()
            torch.cuda.synchronize()
            fits = b
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            m = x = step = None
            torch.cuda.empty_cache()
        b *= 2
    if not fits:
        raise RuntimeError(f"batch {start} does not fit")
    return fits


def run_one(spec: dict) -> dict:
    """One measurement (in a subprocess): spec keys kind, preset, mode (fwd/train), batch,
    threads, steps, device."""
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    if spec["batch"] == "largest":
        spec = {**spec, "batch": largest_batch(spec)}
    kind, b = spec["kind"], spec["batch"]
    m = build(kind, spec["preset"], device)
    x = make_input(b, device)
    mask = torch.rand(b, x.shape[1], generator=torch.Generator().manual_seed(1)).to(device) < 0.05
    step = make_step(spec, m, x, mask)

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


def flops_per_event(kind: str, preset: str) -> float:
    """Forward FLOPs per event (xec.models.info.forward_flops: the one FLOP count of the project)."""
    from xec.models.info import forward_flops

    with torch.device("meta"):
        m = build(kind, preset, "meta")
    call = {"mae": lambda m, x, mask: m(x), "regressor": lambda m, x, mask: m(x)}.get(
        kind, lambda m, x, mask: m(x, mask)
    )
    return forward_flops(m, call)["total"]


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
    with torch.no_grad():
        loc = reg.peak(x) if reg.peak is not None else None
        if reg.aggregates is not None:
            _, sums = reg.aggregates.photons(x)
            agg = reg.aggregates.features(sums, reg.aggregates.light(sums))
            loc = agg if loc is None else torch.cat([loc, agg], dim=1)
    parts = {
        "faces gather": lambda: enc.gather_cells(x),
        "rect backbones": lambda: [enc.rect_face(cells, f) for f in enc.layout.rect],
        "hex backbone": lambda: enc.hex_faces(cells),
        "fusion": lambda: enc.fuse(tokens),
        "peak-window fit": lambda: reg.peak(x) if reg.peak is not None else None,
        "physics aggregates": lambda: reg.aggregates.photons(x) if reg.aggregates is not None else None,
        "regressor heads": lambda: reg.to_physical({t: reg.heads[t](flat, loc) for t in reg.tasks}),
        "MAE decoders": lambda: mae.decoder(feats),
    }
    out = {}
    with torch.no_grad():
        for name, fn in parts.items():
            fn()
            out[name] = 1e3 * min(_timed(fn) for _ in range(reps)) / b
        whole = 1e3 * min(_timed(lambda: reg(x)) for _ in range(reps)) / b
    # what the parts above leave out: the time-of-flight time aggregate, the sigma heads, masks
    out["rest of the regressor"] = max(whole - sum(v for k, v in out.items() if k != "MAE decoders"), 0.0)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _child(spec: dict, q) -> None:
    from xec.cli import retain_freed_memory

    retain_freed_memory()  # as every `xec` command does
    try:
        q.put(run_one(spec))
    except Exception as exc:  # report, don't hang the parent
        q.put({**spec, "error": repr(exc)})


def measure(spec: dict) -> dict:
    """One row: CPU rows in a fresh subprocess (clean peak RSS); GPU rows in this process (one
    CUDA start for the whole table; the allocator's peak is reset per row)."""
    if spec["device"] == "cuda":
        load = os.getloadavg()[0]
        try:
            res = run_one(spec)
        except Exception as exc:
            res = {**spec, "error": repr(exc)}
        torch.cuda.empty_cache()
        res["load_before"] = load
        return res
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(spec, q))
    load = os.getloadavg()[0]
    p.start()
    res = q.get()
    p.join()
    res["load_before"] = load
    return res


def _row(r: dict, gflop: float) -> str:
    mult = 1 if r["mode"] == "fwd" else 3
    tag = r["device"] + ("+compile" if r.get("compile") else "")
    return (
        f"| {r['preset']} | {r['kind']} | {r['mode']} | {tag} | {r['threads']} | {r['batch']} | "
        f"{r['events_per_s_median']:,.0f} | {r['events_per_s_best']:,.0f} | {gflop:.4g} | "
        f"{r['events_per_s_median'] * gflop * mult:,.1f} | {r['cpu_ms_per_event']:.3f} | "
        f"{r['peak_mem_mb']:,.0f} | {r['load_before']:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--kinds", nargs="+", default=["regressor", "mae", "inpainter"])
    ap.add_argument("--modes", nargs="+", default=["fwd", "train"])
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda when present)")
    ap.add_argument("--threads", nargs="+", type=int, default=[2])
    ap.add_argument("--batch", type=int, default=256, help="CPU batch for tiny (other presets: --batch-base)")
    ap.add_argument("--batch-base", type=int, default=16)
    ap.add_argument("--gpu-max-batch", type=int, default=4096, help="largest GPU batch tried")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd steps (GPU)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-components", action="store_true")
    ap.add_argument("--json", default=None, help="write all rows to this JSON file")
    args = ap.parse_args(argv)

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.machine()} {os.cpu_count()} cores  "
        f"torch {torch.__version__}  cuda {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}"
    )
    flops = {f"{p}/{k}": flops_per_event(k, p) for p in args.presets for k in args.kinds}
    rows = []
    print(
        "| preset | model | mode | device | threads | batch | events/s (median) | events/s (best) | "
        "GFLOP/event (fwd) | GFLOP/s | CPU ms/event | peak MB | load |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for preset in args.presets:
        for device in devices:
            for threads in args.threads if device == "cpu" else [args.threads[0]]:
                for kind in args.kinds:
                    found = "largest"  # the GPU batch search runs once per model
                    for compiled in [False, True] if (args.compile and device == "cuda") else [False]:
                        for mode in sorted(args.modes, reverse=True):  # train (the batch search) first
                            cpu_batch = args.batch if preset.startswith("tiny") else args.batch_base
                            spec = dict(
                                kind=kind,
                                preset=preset,
                                mode=mode,
                                batch=found if device == "cuda" else cpu_batch,
                                max_batch=args.gpu_max_batch,
                                threads=threads,
                                steps=args.steps if preset.startswith("tiny") or device == "cuda" else 3,
                                device=device,
                                compile=compiled,
                            )
                            r = measure(spec)
                            rows.append(r)
                            if device == "cuda" and "error" not in r:
                                found = r["batch"]
                            if "error" in r:
                                print(f"| {preset} | {kind} | {mode} | {device} | {threads} | error: {r['error']} |")
                                continue
                            print(_row(r, flops[f"{preset}/{kind}"] / 1e9), flush=True)
    comps = {}
    if not args.no_components and "cpu" in devices:
        print("\n# forward time per component (ms per event, no_grad, best of 3, 1 thread: the most")
        print("# load-robust setting on a shared machine)")
        for preset in args.presets:
            b = args.batch if preset.startswith("tiny") else args.batch_base
            c = component_shares(preset, b, 1)
            comps[preset] = c
            total = sum(v for k, v in c.items() if k != "MAE decoders")
            parts = ", ".join(
                f"{k} {v:.3f} ({100 * v / total:.0f}%)" if k != "MAE decoders" else f"{k} {v:.3f}" for k, v in c.items()
            )
            print(f"{preset:6} {parts}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "flops_forward": flops, "components": comps}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
