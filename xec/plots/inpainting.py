"""Inpainter vs classical recovery of hidden sensors (xec inpainting): one figure per face,
relative MAE and bias of npho vs true npho, per method (colour) and sample (line style)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xec.plots.common import plt, save_figure

METHODS = {"inpainter": "inpainter", "neighbour_average": "neighbour average", "solid_angle": "solid-angle rule"}
STYLES = ("-", "--", ":", "-.")


def _centres(bins: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Geometric bin centres; the open last bin is drawn at twice its lower edge."""
    return np.array([math.sqrt(b["lo"] * b["hi"]) if math.isfinite(b["hi"]) else 2 * b["lo"] for b in bins])


def inpainting_face(
    result: Mapping[str, Any], face: str, out: str | os.PathLike, formats: Sequence[str] = ("png",), dpi: int = 110
) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for s_i, (sample, res) in enumerate(result["samples"].items()):
        entry = res["faces"].get(face)
        if entry is None:
            continue
        bins = [b for b in entry["bins"] if b["inpainter"]["n"] > 0]
        if not bins:
            continue
        x = _centres(bins)
        for m_i, (method, label) in enumerate(METHODS.items()):
            for ax, key in zip(axes, ("rel_mae", "bias")):
                y = [b[method][key] for b in bins]
                y = [np.nan if v is None else v for v in y]
                ax.plot(x, y, STYLES[s_i % len(STYLES)], marker="o", color=f"C{m_i}", label=f"{label} ({sample})")
    for ax, title in zip(axes, ("relative MAE of npho", "bias of npho (mean relative error)")):
        ax.set_xscale("log")
        ax.set_xlabel("true npho of the hidden sensor (photons)")
        ax.set_title(f"{face} face: {title}")
        ax.grid(alpha=0.3)
    axes[1].axhline(0.0, color="k", lw=0.8)
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    return save_figure(fig, out, formats, dpi)


def inpainting_plots(
    result: Mapping[str, Any], out_dir: str | os.PathLike, formats: Sequence[str] = ("png",)
) -> list[Path]:
    """One figure per face present in any sample, ``out_dir/<face>.<fmt>``; the directory is
    created (only) here."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    faces = dict.fromkeys(f for res in result["samples"].values() for f in res["faces"])
    written: list[Path] = []
    for face in faces:
        written += inpainting_face(result, face, out_dir / face, formats)
    return written
