"""Inference speed: ONNX Runtime (CPU) vs PyTorch eager on the same batches; and `xec infer` end
to end against ONNX Runtime alone on the same events.

    .venv/bin/python benchmarks/inference.py [--preset tiny] [--events 1024] [--batch-sizes 32 128 256]
    .venv/bin/python benchmarks/inference.py --e2e-input results/data/realdata.root \
        [--e2e-inpainter results/inpainter/model.onnx] [--e2e-model results/regressor/model.onnx] [--repeats 3]

End to end (``--e2e-input``): ``xec infer`` runs as a subprocess (ROOT read, normalization,
inpainter on the events with dead sensors, regressor, ROOT + parquet write; start-up and imports
included) with the regressor of ``--preset`` (random weights, exported with its metadata); its
log gives the time per stage. "ORT only" runs the same sessions over the same, already
normalized events (the command's batch size): the ceiling the command approaches.

Builds a regressor of the model preset (random weights: speed does not depend on training),
exports it exactly as `xec export` does (xec.deploy.export.RegressorGraph), and times
events/s of PyTorch eager (inference_mode) and of ONNX Runtime sessions with different graph
optimization levels and intra-op thread counts, on identical normalized input batches.
Each ORT row is compared with PyTorch eager at the same thread count. Prints a markdown table
(best of ``--repeats``, since the machine may be shared) and the load average; results are
recorded in docs/performance.md ("Inference").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def build_graph(preset: str):
    """The exported regressor graph of ``preset`` with random weights, built the way
    ``build_model_from_checkpoint`` builds a trained one."""
    from xec.deploy.export import RegressorGraph
    from xec.models.presets import get_preset
    from xec.normalization import get_normalizer
    from xec.targets import DEFAULT_TASKS, get_task
    from xec.train.stages import build_stage_model

    ts = {t: {"mean": [0.0] * get_task(t).dim, "std": [1.0] * get_task(t).dim} for t in DEFAULT_TASKS}
    spec = {
        "stage": "regressor",
        "model": {"preset": preset, **get_preset(preset).to_dict()},
        "normalization": get_normalizer("meg2").to_dict(),
        "tasks": list(DEFAULT_TASKS),
        "target_standardization": ts,
        "model_args": {"tasks": list(DEFAULT_TASKS), "nll_tasks": []},
    }
    torch.manual_seed(0)
    model = build_stage_model(spec).eval()
    return RegressorGraph(model, DEFAULT_TASKS).eval()


def time_it(fn, batches, repeats: int) -> float:
    """Best events/s over ``repeats`` passes (one warm-up batch first)."""
    fn(batches[0])
    n = sum(len(b) for b in batches)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def export_regressor(preset: str, path: Path) -> Path:
    """The random-weight regressor of ``preset`` as `xec infer` reads it (graph + metadata)."""
    import onnx

    from xec.deploy.export import export_graph
    from xec.deploy.onnx_meta import regressor_metadata, set_metadata, software_versions
    from xec.normalization import get_normalizer
    from xec.targets import DEFAULT_TASKS

    meta = regressor_metadata(get_normalizer("meg2"), DEFAULT_TASKS, None, software_versions(17))
    export_graph(build_graph(preset), meta, (torch.zeros(2, 4760, 2),), path, 17)
    model = onnx.load(str(path))
    set_metadata(model, meta)
    onnx.save(model, str(path))
    return path


def ort_only(reg_path: Path, inp_path: str | None, root: str, threads: int, batch: int = 256) -> float:
    """events/s of the ONNX Runtime calls alone (inpainter on events with dead sensors, then the
    regressor) over all events of ``root``, normalized beforehand."""
    import numpy as np

    from xec.deploy.runtime import make_session, run_batched
    from xec.normalization import get_normalizer
    from xec.rootio import iterate_events

    norm = get_normalizer("meg2")
    xs = [norm.normalize_events(a["npho"], a["relative_time"]) for _, a in iterate_events([root], step_size=2000)]
    x = np.concatenate(xs)
    dead = x[..., 0] == np.float32(norm.sentinel)
    rows = np.flatnonzero(dead.any(axis=1))
    reg = make_session(reg_path, "cpu", threads)
    inp = make_session(inp_path, "cpu", threads) if inp_path else None
    t0 = time.perf_counter()
    if inp is not None and len(rows):
        (x[rows],) = run_batched(inp, {"input": x[rows], "mask": dead[rows].astype(np.float32)}, batch)
    run_batched(reg, {"input": x}, batch)
    return len(x) / (time.perf_counter() - t0)


def end_to_end(args) -> int:
    import re
    import subprocess

    from xec.config import load_config

    rows = []
    with tempfile.TemporaryDirectory() as d:
        reg = args.e2e_model or export_regressor(args.preset, Path(d) / "regressor.onnx")
        for th in args.threads:
            env = dict(os.environ, XEC_NO_PROGRESS="1", OMP_NUM_THREADS=str(th))
            # the repository's config.yaml, as the pipeline's inference runs (one regressor pass
            # per event unless inference.time_from_live_sensors), at th threads
            cfg = REPO / "config.yaml"
            batch = load_config(cfg)["inference"]["batch_size"]  # the ORT-only ceiling runs at the command's
            for rep in range(args.repeats):
                log = Path(d) / f"infer{th}_{rep}.log"
                cmd = [sys.executable, "-m", "xec.cli", "infer", "--model", str(reg), "--input", args.e2e_input]
                cmd += ["--out", str(Path(d) / "o.root"), "--config", str(cfg), "--threads", str(th)]
                cmd += ["--log", str(log)]
                if args.e2e_inpainter:
                    cmd += ["--inpainter", args.e2e_inpainter]
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                r = subprocess.run(cmd, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if r.returncode:
                    raise SystemExit(r.stderr[-2000:])
                n, loop_eps = map(float, re.search(r"(\d+) events, (\d+) events/s", r.stdout).groups())
                shares = re.search(r"time per stage: (.*)", log.read_text()).group(1)
                torch.set_num_threads(th)
                ceiling = ort_only(reg, args.e2e_inpainter, args.e2e_input, th, batch)
                rows.append((th, n / wall, loop_eps, ceiling, load, shares))
    print(
        f"# xec infer end to end on {args.e2e_input} (inpainter: {args.e2e_inpainter or 'none'}), regressor "
        f"{args.e2e_model or 'preset ' + args.preset}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores"
    )
    print("| threads | events/s (command) | events/s (event loop) | ORT only | loop / ORT | load | stages |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for th, cmd_eps, loop_eps, ceiling, load, shares in rows:
        ratio = loop_eps / ceiling
        print(f"| {th} | {cmd_eps:.0f} | {loop_eps:.0f} | {ceiling:.0f} | {ratio:.2f} | {load:.1f} | {shares} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--events", type=int, default=1024)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--opt-levels", nargs="+", default=["all", "disable"])
    parser.add_argument("--spinning", type=int, nargs="+", default=[0, 1], help="ORT allow_spinning values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--devices",
        nargs="+",
        default=["cpu"],
        help="cpu and/or cuda: cuda adds ONNX Runtime's CUDA execution provider and PyTorch eager on the GPU "
        "(host-to-device copies included)",
    )
    parser.add_argument("--e2e-input", default=None, help="ROOT file: benchmark `xec infer` end to end on it")
    parser.add_argument("--e2e-inpainter", default=None, help="exported inpainter for the end-to-end run")
    parser.add_argument(
        "--e2e-model",
        default=None,
        help="exported regressor for the end-to-end run (e.g. the pipeline's results/regressor/model.onnx, with "
        "the peak window, aggregates and the position blend's fit the preset's random model lacks)",
    )
    args = parser.parse_args()
    if args.e2e_input:
        return end_to_end(args)

    import numpy as np

    from xec.deploy.export import export_graph, parity_batches
    from xec.deploy.onnx_meta import regressor_metadata, software_versions
    from xec.deploy.runtime import make_session, run_batched
    from xec.normalization import get_normalizer
    from xec.targets import DEFAULT_TASKS

    graph = build_graph(args.preset)
    norm = get_normalizer("meg2")
    meta = regressor_metadata(norm, DEFAULT_TASKS, None, software_versions(17))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        export_graph(graph, meta, (torch.zeros(2, 4760, 2),), path, 17)
        sessions = {
            (opt, th, spin): make_session(path, "cpu", th, opt, bool(spin))
            for opt in args.opt_levels
            for th in (args.threads if "cpu" in args.devices else [])
            for spin in args.spinning
        }
        gpu_sessions = {}
        if "cuda" in args.devices:
            from xec.errors import XecError

            try:
                gpu_sessions["ORT CUDA"] = make_session(path, "cuda")
            except XecError as exc:
                rows.append((0, f"ORT CUDA: unavailable ({exc})", 0.0, 0.0))
        for bs in args.batch_sizes:
            batches = list(parity_batches(None, norm, args.events, bs, seed=1))
            whole = np.concatenate(batches)  # the ORT rows: run_batched over all of them

            def eager(b):
                with torch.inference_mode():
                    graph(torch.from_numpy(b))  # zero-copy view of the same numpy batch ORT gets

            for th in args.threads if "cpu" in args.devices else []:
                torch.set_num_threads(th)
                eager_eps = time_it(eager, batches, args.repeats)
                rows.append((bs, f"PyTorch eager, {th} thread(s)", eager_eps, 1.0))
                for (opt, th_s, spin), sess in sessions.items():
                    if th_s != th:
                        continue
                    # the batches as `xec infer` runs them: sess.workers of them at once
                    eps = time_it(lambda b, s=sess, n=bs: run_batched(s, {"input": b}, n), [whole], args.repeats)
                    intra = sess.get_session_options().intra_op_num_threads
                    rows.append(
                        (
                            bs,
                            f"ORT CPU opt={opt}, {th} thread(s) = {sess.workers} batch(es) at once x {intra} "
                            f"intra-op, spinning={'on' if spin else 'off'}",
                            eps,
                            eps / eager_eps,
                        )
                    )
            if "cuda" in args.devices and torch.cuda.is_available():
                gpu_graph = graph.to("cuda")

                def eager_gpu(b, gpu_graph=gpu_graph):
                    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                        out = gpu_graph(torch.from_numpy(b).to("cuda", non_blocking=False))
                    [o.float().cpu() for o in out]  # results back on the host, as ORT returns them

                ref = time_it(eager_gpu, batches, args.repeats)
                rows.append((bs, "PyTorch eager CUDA bf16 (copies included)", ref, 1.0))
                for name, sess in gpu_sessions.items():
                    eps = time_it(lambda b, s=sess: s.run(None, {"input": b}), batches, args.repeats)
                    rows.append((bs, f"{name} ({sess.get_providers()[0]}, fp32)", eps, eps / ref))
                graph.to("cpu")
    print(f"# inference benchmark: preset {args.preset}, {args.events} events per pass, best of {args.repeats}")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print("| batch | runtime | events/s | vs eager (same threads / same GPU) |")
    print("|---:|---|---:|---:|")
    for bs, name, eps, ratio in rows:
        print(f"| {bs} | {name} | {eps:.0f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
