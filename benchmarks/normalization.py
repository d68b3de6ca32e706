"""Normalization speed: ``Normalizer.normalize_events`` (the shards' float64 path and `xec infer`'s
float32 path) in microseconds per event, per block size, on real events; and the same formulas
(``Normalizer.apply`` in float32) exported into an ONNX graph and run by ONNX Runtime on one
thread, i.e. what moving the normalization into the exported regressor would cost.

    .venv/bin/python benchmarks/normalization.py [--input results/data/realdata.root] [--events 1024]
        [--blocks 32 256 0] [--repeats 7]

Real events matter: the invalid-value masks of a detector event come in runs (the ~80 % of the
sensors without a time lie far from the shower), which random test arrays do not reproduce, and
the cost of a masked step depends on that pattern. Without ``--input`` the events are simulated
(the default config's realdata sample, 1 % dead sensors). One thread (numpy); median and best of
``--repeats`` passes over the events; results in docs/performance.md ("Inference").
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def load_events(path: str | None, events: int) -> tuple[np.ndarray, np.ndarray]:
    """(npho, time) float32 arrays of the first ``events`` events of ``path`` (simulated when None)."""
    from xec.rootio import iterate_events

    if path is None:
        import subprocess

        with tempfile.TemporaryDirectory(prefix="xec-bench-norm-") as d:
            sim = str(Path(d) / "realdata.root")
            cmd = [sys.executable, "-m", "xec.cli", "simulate", "--sample", "realdata", "--events", str(events)]
            subprocess.run(cmd + ["--out", sim], check=True, env=dict(os.environ, XEC_NO_PROGRESS="1"))
            return load_events(sim, events)
    _, arrays = next(iterate_events([path], step_size=events))
    return arrays["npho"][:events], arrays["relative_time"][:events]


def per_event_us(fn, n_events: int, repeats: int) -> tuple[float, float]:
    """(median, best) microseconds per event of ``fn()`` over ``repeats`` calls after a warm-up."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) / n_events * 1e6, min(ts) / n_events * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=None, help="ROOT file (default: simulate realdata events)")
    p.add_argument("--events", type=int, default=1024)
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 256, 0], help="events per block (0: the whole chunk)")
    p.add_argument("--onnx-batch", type=int, default=128, help="batch of the ONNX Runtime row (xec infer's)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    import xec.normalization as normalization

    norm = normalization.get_normalizer("meg2")
    npho, time_s = load_events(args.input, args.events)
    out = np.empty(npho.shape + (2,), np.float32)
    no_time = (npho < norm.npho_threshold) | ~(np.abs(time_s) <= 9e9)
    print(
        f"# normalize_events on {len(npho)} events in one call (a chunk) of {args.input or 'simulated realdata'} "
        f"(no time: {no_time.mean():.0%} of the sensors), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    print("| normalization | events per block | us/event (median) | us/event (best) |")
    print("|---|---:|---:|---:|")
    for precision in ("float32", "float64"):
        for block in args.blocks:
            call = functools.partial(norm.normalize_events, npho, time_s, out, precision, block or len(npho))
            med, best = per_event_us(call, len(npho), args.repeats)
            label = block or f"{len(npho)} (whole chunk)"
            mark = " (default)" if block == normalization.NORMALIZE_BLOCK else ""
            print(f"| numpy {precision}{mark} | {label} | {med:.1f} | {best:.1f} |")
    session = onnx_session(norm)

    def run_onnx(b: int = args.onnx_batch) -> None:
        for s in range(0, len(npho), b):
            session.run(None, {"npho": npho[s : s + b], "time": time_s[s : s + b]})

    med, best = per_event_us(run_onnx, len(npho), args.repeats)
    print(f"| ONNX Runtime float32, 1 thread | {args.onnx_batch} (batches) | {med:.1f} | {best:.1f} |")
    return 0


def onnx_session(norm):
    """An ONNX Runtime session (one thread, full graph optimization) of ``norm.apply`` in float32:
    inputs npho and time (B, 4760), output the (B, 4760, 2) network input."""
    import io

    import onnxruntime as ort
    import torch

    class Normalize(torch.nn.Module):
        def forward(self, npho: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
            return torch.stack(norm.apply(npho, time), dim=-1)

    example = (torch.ones(2, 4760), torch.ones(2, 4760))
    buf = io.BytesIO()
    axes = {"npho": {0: "batch"}, "time": {0: "batch"}, "x": {0: "batch"}}
    names = dict(input_names=["npho", "time"], output_names=["x"], dynamic_axes=axes)
    torch.onnx.export(Normalize(), example, buf, **names, opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    raise SystemExit(main())
