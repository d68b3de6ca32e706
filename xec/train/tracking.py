"""MLflow tracking that never breaks training.

- Tracking URI from the config (default ``sqlite:///results/mlflow.db``); a relative sqlite or
  file path resolves against the working directory (the Snakemake run directory).
- One experiment per stage (``<prefix>-<stage>``), params = the flattened resolved config,
  per-epoch metrics, system metrics, artifacts.
- Several stages may log at once (inpainter and regressor both start after the MAE). SQLite
  allows one writer at a time: the schema (alembic migrations on first connection) and the
  experiment are created under an exclusive file lock next to the database, and every call is
  retried with exponential backoff on "database is locked".
- If MLflow cannot be used at all, a warning is logged and training goes on untracked.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("xec.train")

_RETRY_WORDS = ("database is locked", "database table is locked", "locked", "busy", "disk i/o error")


def resolve_tracking_uri(uri: str, base: str | os.PathLike | None = None) -> str:
    """Make relative ``sqlite:///rel.db`` / ``file:rel`` / plain paths absolute against ``base``
    (default: the working directory). ``sqlite:////abs.db`` and server URIs pass through."""
    base = Path(base or os.getcwd())
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and not path.startswith("/") and path != ":memory:":
            return "sqlite:///" + str((base / path).resolve())
        return uri
    if uri.startswith("file:"):
        path = uri[len("file:") :].lstrip()
        if path.startswith("//"):
            return uri
        return "file://" + str((base / path).resolve()) if not path.startswith("/") else "file://" + path
    if "://" not in uri:
        return "file://" + str((base / uri).resolve())
    return uri


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists become their repr, values capped at 500 chars."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def with_retry(fn: Callable[..., Any], *args: Any, attempts: int = 8, base_delay: float = 0.2, **kwargs: Any) -> Any:
    """Call ``fn``; on a "database is locked"-type error sleep base*2^k (+ jitter) and retry."""
    for k in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException / sqlalchemy OperationalError wrap sqlite's message
            msg = str(exc).lower()
            if k == attempts - 1 or not any(w in msg for w in _RETRY_WORDS):
                raise
            delay = base_delay * (2**k) * (1.0 + random.random())
            log.debug("mlflow busy (%s); retry %d in %.2fs", msg[:80], k + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class NullTracker:
    """Used on non-zero ranks and when MLflow is off or unusable."""

    active = False
    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    active = True

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        artifact_root: str | None = None,
        run_id: str | None = None,
    ):
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        lock = _lock_path(tracking_uri)
        # Schema creation, experiment creation and run creation under one exclusive lock: two
        # processes racing alembic migrations on a fresh sqlite file is what fails otherwise.
        with _file_lock(lock) if lock else contextlib.nullcontext():
            self.client = MlflowClient(tracking_uri=tracking_uri)
            exp = with_retry(self.client.get_experiment_by_name, experiment)
            if exp is None:
                loc = None
                if artifact_root:
                    loc = str(Path(artifact_root) / experiment)
                    loc = Path(loc).resolve().as_uri()
                exp_id = with_retry(self.client.create_experiment, experiment, artifact_location=loc)
            else:
                exp_id = exp.experiment_id
            if run_id:
                self.run_id = run_id
                with_retry(self.client.update_run, run_id, status="RUNNING")
            else:
                run = with_retry(self.client.create_run, exp_id, run_name=run_name)
                self.run_id = run.info.run_id
        self._failed = False

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._failed:
            return
        try:
            with_retry(fn, *args, **kwargs)
        except Exception as exc:  # tracking must never kill a training run
            log.warning("MLflow logging failed, continuing without it: %s", exc)
            self._failed = True

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:500]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self._call(self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(_metric_key(k), float(v), ts, int(step or 0))
            for k, v in sorted(metrics.items())
            if v is not None and isinstance(v, (int, float))
        ]
        for i in range(0, len(items), 500):
            self._call(self.client.log_batch, self.run_id, metrics=items[i : i + 500])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self._call(self.client.set_tag, self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        self._call(self.client.set_terminated, self.run_id, status)


def _metric_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / ; map anything else to _.
    return "".join(c if (c.isalnum() or c in "_-. /") else "_" for c in key)


def _lock_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :] + ".lock")
    if uri.startswith("file://"):
        return Path(uri[len("file://") :]) / ".xec.lock"
    return None


def make_tracker(
    mlflow_cfg: Mapping[str, Any],
    stage: str,
    run_name: str | None = None,
    is_main: bool = True,
    run_id: str | None = None,
) -> NullTracker:
    """An MlflowTracker for rank 0 when enabled, else a NullTracker (with a warning on failure).
    ``mlflow_cfg``: the validated ``mlflow`` section (every key filled in by the schema)."""
    if not is_main or not mlflow_cfg["enabled"]:
        return NullTracker()
    uri = resolve_tracking_uri(mlflow_cfg["tracking_uri"])
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    artifact_root = mlflow_cfg["artifact_root"]
    if artifact_root is None and uri.startswith("sqlite:///"):
        artifact_root = str(Path(uri[len("sqlite:///") :]).parent / "mlartifacts")
    elif artifact_root:
        artifact_root = str(Path(artifact_root).resolve())
    experiment = f"{mlflow_cfg['experiment_prefix']}-{stage}"
    try:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        tracker = MlflowTracker(uri, experiment, run_name=run_name, artifact_root=artifact_root, run_id=run_id)
        log.info("MLflow: %s, experiment %s, run %s", uri, experiment, tracker.run_id)
        return tracker
    except Exception as exc:
        log.warning("MLflow unavailable (%s: %s); training continues without tracking", type(exc).__name__, exc)
        return NullTracker()


def system_metrics(device) -> dict[str, float]:
    """RSS (MB) and, on CUDA, GPU memory allocated / peak (MB)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    out["rss_mb"] = int(line.split()[1]) / 1024.0
    except OSError:
        import resource

        out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        out["gpu_mem_alloc_mb"] = torch.cuda.memory_allocated(device) / 2**20
        out["gpu_mem_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
