"""Shared plotting helpers: Agg backend, atomic multi-format saving, column names."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display anywhere (batch jobs, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xec.utils import atomic_path  # noqa: E402

DEFAULT_FORMATS = ("png", "pdf")
METHOD_COLORS = {"ML": "C0", "baseline": "C1", "ML (inpainted)": "C0", "ML (no inpainting)": "C2"}


def save_figure(
    fig: plt.Figure, out: str | os.PathLike, formats: Sequence[str] = DEFAULT_FORMATS, dpi: int = 110
) -> list[Path]:
    """Write ``fig`` as ``out.<fmt>`` for every format (atomically) and close it."""
    out = Path(out)
    written = []
    try:
        # The tight bounding box once for all formats: savefig(bbox_inches="tight") lays out every
        # label and tick again per format (~20 % of a multi-panel figure's png + pdf save).
        fig.set_dpi(dpi)
        bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
        for fmt in formats:
            path = out.with_name(out.name + f".{fmt}")
            with atomic_path(path, suffix=f".{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches=bbox)
            written.append(path)
    finally:
        plt.close(fig)
    return written


def color(method: str, i: int) -> str:
    return METHOD_COLORS.get(method, f"C{i}")


def finite(x: Iterable[float]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def robust_range(values: Sequence[np.ndarray], lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
    """Common histogram range covering the central part of every array."""
    v = [finite(x) for x in values]
    v = [x for x in v if x.size]
    if not v:
        return -1.0, 1.0
    a = min(np.percentile(x, lo) for x in v)
    b = max(np.percentile(x, hi) for x in v)
    if not b > a:
        a, b = a - 0.5, b + 0.5
    return float(a), float(b)
