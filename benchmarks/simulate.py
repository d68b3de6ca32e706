"""Benchmark of the fast simulation: throughput, peak memory, and physics plausibility.

    .venv/bin/python benchmarks/simulate.py [--events 16384] [--big 32768] [--workers 1 2]
                                            [--compression lz4 zstd]

1. Throughput: `xec simulate`-equivalent runs (simulation + TTree writing) in a fresh
   subprocess each, for each worker count and basket compression: wall events/s, CPU seconds
   per event (user+sys of the process: the per-core cost, meaningful on a shared machine),
   peak RSS and file size. The first and last blocks of a run overlap less with the writing,
   so short runs (4,096 events) read ~5 % below the steady state.
2. Memory: the same chunk size with --events and --big events: peak RSS must not grow with N.
3. Intrinsic energy resolution of the ideal npho sum on a 52.8 MeV sample (sigma/E as
   xec.metrics.width68 / median, fiducial |u| < 23.9, |v| < 67.9 cm), for w < 2 cm and w > 2 cm:
   "raw" = plain sum of npho; "ideal" = npho weighted by 1/coverage of each face, divided by
   the median of the 32 nearest events in true (u, v, w) (an ideal position correction: what a
   perfect position-dependent calibration leaves).
4. Time resolution: (a) "simple" estimator: per event, the pe-weighted mean over sensors with
   > 200 pe of relative_time - |vertex - conversion|/c - |sensor - conversion|/v_group, minus
   timeTruth (true conversion point; the shower's own extent, ~10 cm = ~1 ns of light path,
   is not modelled, so this is an upper bound); (b) "sensor noise": the spread that the
   first-photon statistics and the jitter alone give to that weighted mean,
   sqrt(sum pe_i^2 ((tau/pe_i)^2 + jitter^2)) / sum pe_i, median over events.

Prints a small table (also `uptime` load, since the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time, os
from xec.cli import retain_freed_memory
from xec.simulation import PhysicsParams, SampleSpec, write_sample
retain_freed_memory()  # as `xec simulate` does
n, workers, chunk, out, compression = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
spec = SampleSpec("bench", n, 303, (52.8, 52.8))
t0, c0 = time.perf_counter(), time.process_time()
write_sample(out, spec, PhysicsParams(), chunk_size=chunk, workers=workers, compression=compression)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"events": n, "workers": workers, "chunk": chunk, "wall_s": wall, "cpu_s": cpu,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "file_mb": os.path.getsize(out) / 1e6}))
"""


def run_child(n: int, workers: int, chunk: int, out: str, compression: str) -> dict:
    env = dict(os.environ, XEC_NO_PROGRESS="1")
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n), str(workers), str(chunk), out, compression],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def physics_numbers(path: str) -> dict:
    from scipy.spatial import cKDTree

    from xec import geometry as geo
    from xec.metrics import width68
    from xec.rootio import TRUTH_BRANCHES, iterate_events
    from xec.simulation.physics import C_CM_PER_NS, PhysicsParams, coverage_weights

    chunks = [
        c
        for _, c in iterate_events(
            [path], sensor_branches=("npho", "relative_time"), event_branches=tuple(TRUTH_BRANCHES)
        )
    ]
    a = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    g = geo.get_geometry()
    p = PhysicsParams()
    u, v, w = a["uvwTruth"].T.astype(np.float64)
    raw = a["npho"].sum(axis=1, dtype=np.float64)
    weighted = (a["npho"] * coverage_weights()).sum(axis=1, dtype=np.float64)
    # ideal position correction: ratio to the median of the nearest events in true (u, v, w)
    pts = np.stack([u, v, w], axis=1)
    _, nn = cKDTree(pts).query(pts, k=33)
    ideal = weighted / np.median(weighted[nn[:, 1:]], axis=1)
    fid = (np.abs(u) < 23.9) & (np.abs(v) < 67.9)
    out = {}
    for name, x in (("raw", raw), ("ideal", ideal)):
        for label, sel in (("w<2", fid & (w < 2)), ("w>2", fid & (w >= 2))):
            out[f"{name} {label}"] = (width68(x[sel]) / np.median(x[sel]), int(sel.sum()))
    # time
    eff = np.where(g.is_mppc, p.efficiency_mppc, p.efficiency_pmt)
    pe = a["npho"] * eff
    rt = a["relative_time"].astype(np.float64)
    ok = (rt < 1e9) & (pe > 200) & (a["npho"] < 1e9)
    conv = a["xyzTruth"].astype(np.float64)
    tof = np.linalg.norm(conv - a["xyzVTX"], axis=1) / C_CM_PER_NS
    d = np.linalg.norm(g.positions[None] - conv[:, None], axis=2)
    corr = rt * 1e9 - tof[:, None] - d / p.group_velocity_cm_per_ns
    wsum = np.where(ok, pe, 0).sum(axis=1)
    t_est = np.where(ok, corr * pe, 0).sum(axis=1) / np.maximum(wsum, 1e-9)
    good = wsum > 0
    out["time simple w68 (ns)"] = (width68(t_est[good] - a["timeTruth"][good]), int(good.sum()))
    jit = np.where(g.is_mppc, p.jitter_mppc_ns, p.jitter_pmt_ns)
    var = np.where(ok, pe**2 * ((p.decay_time_ns / np.maximum(pe, 1)) ** 2 + jit**2), 0).sum(axis=1)
    out["time sensor-noise (ns)"] = (float(np.median(np.sqrt(var[good]) / wsum[good])), int(good.sum()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=16384)
    ap.add_argument("--big", type=int, default=32768, help="N of the memory check (0: skip)")
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--physics-events", type=int, default=4096, help="events of the physics numbers")
    ap.add_argument("--compression", nargs="+", default=["lz4", "zstd"], help="names of xec.rootio.COMPRESSIONS")
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load before: {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "bench.root")
        print(
            f"{'events':>7} {'workers':>7} {'chunk':>6} {'compr.':>6} {'events/s':>9} {'cpu ms/ev':>9} "
            f"{'peak RSS MB':>11} {'file MB':>8}  load"
        )
        rows = [(args.events, wk, c) for c in args.compression for wk in args.workers]
        if args.big:
            rows.append((args.big, args.workers[-1], args.compression[0]))
        for n, wk, c in rows:
            r = run_child(n, wk, args.chunk, out, c)
            print(
                f"{n:>7} {wk:>7} {args.chunk:>6} {c:>6} {n / r['wall_s']:>9.0f} {1e3 * r['cpu_s'] / n:>9.3f} "
                f"{r['peak_rss_mb']:>11.0f} {r['file_mb']:>8.1f}  {load()}"
            )
        run_child(args.physics_events, args.workers[-1], args.chunk, out, args.compression[0])
        print(f"\n# physics on {args.physics_events} events at 52.8 MeV (seed 303)")
        for k, (val, n) in physics_numbers(out).items():
            unit = "" if "time" in k else " (sigma/E)"
            print(f"{k:>16}: {val:.4f}{unit}  [{n} events]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
