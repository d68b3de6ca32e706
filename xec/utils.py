"""Small shared helpers: atomic file writes, logging set-up, seeding."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block
    succeeds. A crash or exception leaves neither a half-written file nor a stale temp file,
    and never touches an existing ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs are shared on clusters
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Swap the finished directory ``tmp`` into place as ``out``; an old ``out`` is moved aside
    first and removed only after the swap, so a reader never sees a half-written directory."""
    import shutil
    import uuid

    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` to ``dst`` (a merged view costs no space), copying where the file
    system refuses links."""
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented)."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def finite_or_none(obj: Any) -> Any:
    """NaN/inf -> null, so that the JSON is strict (NaN is not JSON); numpy floats -> float."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_tables(
    out: str | os.PathLike,
    obj: Any,
    markdown: tuple[str | None, str] = (None, ""),
    html: tuple[str | None, str] = (None, ""),
) -> None:
    """A result as optional markdown and HTML (each (path or None, text)), then as strict JSON
    in ``out``, last: it is the rule's main output, so a failure leaves no stale result."""
    for (path, text), suffix in ((markdown, ".md"), (html, ".html")):
        if path:
            with atomic_path(path, suffix=suffix) as tmp:
                tmp.write_text(text)
    write_json(out, finite_or_none(obj))


def arrow_table(columns: dict[str, np.ndarray]) -> Any:
    """A ``pyarrow.Table`` of 1-D numpy columns, numeric ones wrapped without a copy. What
    ``pa.table(columns)`` gives, without its pandas check: that imports pandas (~0.25 s, a tenth
    of ``xec infer`` or ``xec baseline`` on a 4,000-event file)."""
    import pyarrow as pa

    arrays = []
    for values in columns.values():
        a = np.asarray(values)
        if a.ndim != 1 or a.dtype.kind not in "iuf":
            arrays.append(pa.array(a))  # bools (bit-packed in Arrow), strings, ...
            continue
        a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="), copy=False))  # ROOT's big-endian
        arrays.append(pa.Array.from_buffers(pa.from_numpy_dtype(a.dtype), len(a), [None, pa.py_buffer(a)]))
    return pa.Table.from_arrays(arrays, names=list(columns))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, if given, to ``log_file`` (Snakemake's per-rule log)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", handlers=handlers, force=True
    )
    return logging.getLogger("xec")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def progress_enabled() -> bool:
    """tqdm bars unless XEC_NO_PROGRESS is set (e.g. in tests)."""
    return not os.environ.get("XEC_NO_PROGRESS")


def array_namespace(a: Any) -> Any:
    """numpy or torch: the module whose functions apply to ``a`` (torch imported only for tensors),
    for the formulas shared by the numpy pipeline and the models."""
    if type(a).__module__.startswith("torch"):
        import torch

        return torch
    return np
