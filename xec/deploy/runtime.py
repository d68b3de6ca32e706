"""ONNX Runtime sessions: provider choice (CUDA where onnxruntime-gpu and a GPU are present,
else CPU), thread count and graph optimization level, shared by `xec export` (parity check),
`xec infer` and benchmarks/inference.py."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from xec.errors import XecError

log = logging.getLogger("xec.deploy")

OPT_LEVELS = ("disable", "basic", "extended", "all")
# Batches a CPU session runs at once (one intra-op thread group each). Measured on 2 cores only
# (docs/performance.md, "Batches side by side"); the cap keeps the activations of many workers
# out of a big node's memory and leaves wide nodes intra-op threads per batch.
MAX_BATCH_WORKERS = 4


def add_threads_argument(parser) -> None:
    """``--threads``: the ONNX Runtime CPU threads of a command (the workflow passes its job's
    threads, so that jobs side by side do not oversubscribe the cores; :func:`batch_workers`)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime CPU threads, 2 or more run batches side by side (default: config "
        "inference.intra_op_threads; the workflow passes its job's threads)",
    )


def threads_from(args, inference_cfg) -> int:
    """The intra-op threads of a command: ``--threads`` when given, else the config's."""
    threads = getattr(args, "threads", None)
    return int(inference_cfg["intra_op_threads"] if threads is None else threads)


def providers_for(device: str = "auto") -> list[str]:
    """Execution providers for ``device`` in {"auto", "cpu", "cuda"}."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        _preload_cuda_libraries(ort)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise XecError(
            f"device 'cuda' asked for but ONNX Runtime offers only {available} "
            "(install onnxruntime-gpu on a machine with a GPU)"
        )
    return ["CPUExecutionProvider"]


_CUDA_PRELOADED: list[bool] = []


def _preload_cuda_libraries(ort) -> None:
    """Load the CUDA and cuDNN libraries onnxruntime-gpu was built for from the NVIDIA pip
    packages (``onnxruntime.preload_dlls``, onnxruntime >= 1.21), once per process. Without it the
    CUDA provider finds them only on LD_LIBRARY_PATH or when torch was imported first, which
    `xec infer` avoids (start-up time): the session would fall back to the CPU."""
    if _CUDA_PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _CUDA_PRELOADED.append(True)
    try:
        ort.preload_dlls()
    except Exception as exc:  # a library it cannot load: the provider check below names the fallback
        log.warning("onnxruntime.preload_dlls failed (%s: %s)", type(exc).__name__, exc)


def _job_threads() -> int:
    """The job's OMP_NUM_THREADS (a positive integer), else 0."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 0


def make_session(
    path: str | os.PathLike,
    device: str = "auto",
    intra_op_threads: int = 0,
    optimization: str = "all",
    allow_spinning: bool = False,
) -> Session:
    """A :class:`Session` (an ``onnxruntime.InferenceSession``) for ``path``; XecError naming the
    file on failure. ``intra_op_threads`` (the CPU threads, split over :func:`batch_workers`
    concurrent batches) 0: the job's ``OMP_NUM_THREADS`` when set (Snakemake and SLURM jobs set
    it to their allocation; ONNX Runtime's own choice, one thread per physical core of the node,
    would crowd the other jobs there), else ONNX Runtime's choice. Spin-waiting worker threads
    are off by default: on a shared or oversubscribed CPU they burn the cores the other thread
    needs (measurements: docs/performance.md, "Inference")."""
    import onnxruntime as ort

    if optimization not in OPT_LEVELS:
        raise XecError(f"unknown graph optimization level {optimization!r}; choose one of {OPT_LEVELS}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    opts.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    path = Path(path)
    if not path.exists():
        raise XecError(f"{path}: no such file")
    asked = providers_for(device)
    threads = int(intra_op_threads) or _job_threads()
    workers = batch_workers(threads, asked[0])
    opts.intra_op_num_threads = threads // workers
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=asked)
    except XecError:
        raise
    except Exception as exc:
        raise XecError(f"{path}: ONNX Runtime cannot load the model ({type(exc).__name__}: {exc})") from exc
    running = session.get_providers()
    (log.info if running[:1] == asked[:1] else log.warning)("%s", provider_report(path, asked, running))
    if workers > 1:
        log.info("%s: %d batches at once, %d intra-op thread(s) each", path, workers, threads // workers)
    return Session(session, workers)


def batch_workers(threads: int, provider: str = "CPUExecutionProvider") -> int:
    """How many batches a session runs at once with ``threads`` CPU threads: one per thread up
    to MAX_BATCH_WORKERS, each with ``threads // workers`` intra-op threads. Every op of these
    graphs is small (batch 128: ~2,000 ops of a few to a few hundred us), so an intra-op thread
    spends much of its time waking up and waiting at the op's end; two batches side by side at one
    thread each ran the regressor graph 1.3x and the inpainter graph 1.4x faster than one batch at
    two threads on 2 cores. 0 threads (ONNX Runtime's choice) and GPUs: one batch at a time."""
    if provider != "CPUExecutionProvider" or threads < 2:
        return 1
    return min(threads, MAX_BATCH_WORKERS)


class Session:
    """An ONNX Runtime session (every attribute of ``onnxruntime.InferenceSession``) and the
    number of batches :func:`run_batched` runs on it at once (ONNX Runtime's ``run`` is
    thread-safe and releases the GIL)."""

    def __init__(self, session: Any, workers: int = 1):
        self.session, self.workers = session, max(1, int(workers))
        self._pool: ThreadPoolExecutor | None = None

    def __getattr__(self, name: str) -> Any:
        if name in ("session", "workers", "_pool"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.session, name)

    def map(self, fn, items: list) -> list:
        """``[fn(item) for item in items]``, ``workers`` at a time, in order."""
        if self.workers == 1 or len(items) < 2:
            return [fn(item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="xec-ort")
        return list(self._pool.map(fn, items))


def provider_report(path: str | os.PathLike, asked: list[str], running: list[str]) -> str:
    """The log line saying which execution provider runs ``path``. ONNX Runtime falls back to
    the CPU without an error when the CUDA provider is offered but cannot load (CUDA or cuDNN
    libraries missing or mismatched): that case is named, since it costs an order of magnitude
    in speed."""
    ran = running[0] if running else "none"
    if asked[0] == "CUDAExecutionProvider" and ran != "CUDAExecutionProvider":
        return (
            f"{path}: ONNX Runtime runs on {ran}: the CUDA execution provider was asked for but did not "
            "load (check the CUDA/cuDNN libraries onnxruntime-gpu was built for)"
        )
    return f"{path}: ONNX Runtime runs on {ran} (providers {running})"


def run_batched(session, feeds: dict[str, np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Run ``session`` (a :class:`Session`: its ``workers`` batches at once; or a plain ONNX Runtime
    session) over the leading axis of ``feeds`` in batches; outputs concatenated in the session's
    output order. Every batch is computed alone, so the numbers do not depend on the workers."""
    n = len(next(iter(feeds.values())))

    def batch(start: int) -> list[np.ndarray]:
        return session.run(None, {k: v[start : start + batch_size] for k, v in feeds.items()})

    starts = list(range(0, n, batch_size))
    parts = session.map(batch, starts) if isinstance(session, Session) else [batch(s) for s in starts]
    if not parts:
        return [np.zeros((0,), np.float32) for _ in session.get_outputs()]
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]
