"""Cost of the in-graph classical position fit (xec.models.solidfit), eager PyTorch and ONNX Runtime.

    .venv/bin/python benchmarks/solidfit.py [--events 512] [--batch 128] [--threads 1]

The fit runs in the regressor's graph when regressor.fit_blend is on (xec.models.blend) or a
refitted head reads it (regressor.head_refit.solid_fit). Prints microseconds per event for its
Levenberg-Marquardt step counts, and how far fewer steps leave the fitted (u, v, w) from the
default's (99th percentile over the events, um).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, nargs="+", default=[6, 4, 3])
    a = ap.parse_args()
    import onnxruntime as ort

    from xec.geometry import get_geometry
    from xec.models.peakfit import PeakWindowFit
    from xec.models.solidfit import SolidAngleFit
    from xec.normalization import get_normalizer
    from xec.simulation import physics as ph
    from xec.simulation.generator import SampleSpec, iter_blocks

    torch.set_num_threads(a.threads)
    spec = SampleSpec(name="fit", events=a.events, seed=11, energy_mev=(52.8, 52.8))
    block = next(iter_blocks(spec, ph.PhysicsParams()))
    norm = get_normalizer()
    npho_n, time_n = norm.normalize(block["npho"], block["relative_time"])
    x = torch.from_numpy(np.stack([npho_n, time_n], -1).astype(np.float32))
    peak = PeakWindowFit(get_geometry(), 11, 8, sentinel=norm.sentinel)

    class Fit(torch.nn.Module):
        def __init__(self, iterations: int):
            super().__init__()
            self.fit = SolidAngleFit(norm, iterations=iterations)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fit(x, peak.window_sensors(peak.peak_index(x))[0])

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    ref = None
    print(f"{a.events} events, batch {a.batch}, {a.threads} thread(s); us per event")
    print("| LM steps | PyTorch eager | ONNX Runtime | 99 % |d(u, v, w)| vs the first row (um) |")
    print("|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for it in a.iterations:
            model = Fit(it).eval()
            batches = [x[i : i + a.batch] for i in range(0, len(x), a.batch)]
            model(batches[0])
            t0 = time.perf_counter()
            out = torch.cat([model(b) for b in batches])
            eager = (time.perf_counter() - t0) / len(x) * 1e6
            path = Path(tmp) / f"fit{it}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, (batches[0],), str(path), input_names=["x"], output_names=["fit"],
                    dynamic_axes={"x": {0: "b"}, "fit": {0: "b"}}, opset_version=17, dynamo=False,
                )  # fmt: skip
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            sess.run(None, {"x": batches[0].numpy()})
            t0 = time.perf_counter()
            for b in batches:
                sess.run(None, {"x": b.numpy()})
            onnx = (time.perf_counter() - t0) / len(x) * 1e6
            uvw = out[:, :3].numpy() * model.fit.scale * 1e4  # um
            ref = uvw if ref is None else ref
            dev = np.quantile(np.abs(uvw - ref), 0.99, axis=0)
            print(f"| {it} | {eager:.0f} | {onnx:.0f} | {' / '.join(f'{d:.0f}' for d in dev)} |")


if __name__ == "__main__":
    main()
