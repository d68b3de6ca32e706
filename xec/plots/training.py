"""Training curves from the stages' metrics.json (``history``: one row per epoch)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xec.plots.common import DEFAULT_FORMATS, plt, save_figure


def training_curves(
    metrics: Mapping[str, Mapping[str, Any]],
    out: str | os.PathLike,
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """One panel per stage (mae, inpainter, regressor): train and val losses per epoch (log y),
    the best epoch marked; a second row with the stage's other val metrics (normalized to their
    first epoch, so that they share an axis)."""
    stages = {k: v for k, v in metrics.items() if v.get("history")}
    if not stages:
        raise ValueError("no metrics with a history to plot")
    fig, axes = plt.subplots(2, len(stages), figsize=(4.8 * len(stages), 6.5), squeeze=False)
    for j, (stage, m) in enumerate(stages.items()):
        hist = m["history"]
        ep = np.array([h.get("epoch", i + 1) for i, h in enumerate(hist)], dtype=float)
        ax = axes[0, j]
        for key in ("train_loss", "val_loss"):
            y = np.array([h.get(key, np.nan) for h in hist], dtype=float)
            if np.isfinite(y).any():
                ax.plot(ep, y, "o-", ms=3, label=key)
        best = m.get("best", {})
        if best.get("epoch"):
            ax.axvline(best["epoch"], color="k", ls=":", lw=1, label=f"best ({best.get('metric', '')})")
        if all(np.all(np.array([h.get(k, 1) for h in hist], float) > 0) for k in ("train_loss", "val_loss")):
            ax.set_yscale("log")
        ax.set_title(stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
        ax = axes[1, j]
        keys = sorted(
            {k for h in hist for k in h if k.startswith("val_") and k != "val_loss" and isinstance(h[k], (int, float))}
        )
        for key in keys[:10]:
            y = np.array([h.get(key, np.nan) for h in hist], dtype=float)
            if np.isfinite(y).sum() and np.isfinite(y[0]) and y[0] != 0:
                ax.plot(ep, y / y[0], ".-", lw=1, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val metric / first epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_figure(fig, out, formats, dpi)
