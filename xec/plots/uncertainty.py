"""Plots of the per-event uncertainties (``sigma_<task>_<col>`` columns of ``xec infer``): the
resolution vs the fraction of events kept by a cut on sigma, and the pull distributions.
The numbers come from xec.summary.uncertainty_summary, the same as in summary.json."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xec.metrics import pulls, width68
from xec.plots.common import DEFAULT_FORMATS, finite, plt, save_figure
from xec.plots.physics import LABEL
from xec.summary import OBSERVABLES, uncertainty_summary

if TYPE_CHECKING:
    import pandas as pd


def _grid(n: int, size: tuple[float, float] = (3.6, 3.0)):
    fig, axes = plt.subplots(1, n, figsize=(size[0] * n, size[1]), squeeze=False)
    return fig, axes.ravel()


def kept_fraction(
    df: pd.DataFrame,
    classes: Mapping[str, np.ndarray],
    out: str | os.PathLike,
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
    title: str = "",
) -> list[Path]:
    """Resolution (68 % half-width) vs the fraction of events kept when cutting on the per-event
    sigma (smallest first), one panel per observable with a sigma, one line per event class;
    the width of all events of the class is the point at fraction 1."""
    summary = uncertainty_summary(df, classes, n_boot=0)
    if not summary:
        raise ValueError("no sigma_/pred_/true_ column triplets: the frame has no per-event uncertainties")
    fig, axes = _grid(len(summary))
    for ax, (key, per_class) in zip(axes, summary.items()):
        for i, (cls, entry) in enumerate(per_class.items()):
            f = [k["fraction"] for k in entry["kept"]]
            w = [k["width68"] for k in entry["kept"]]
            split = entry["split"]
            ax.plot(
                f,
                w,
                "o-",
                ms=3,
                color=f"C{i}",
                label=f"{cls}: best 50% {split['best']:.3g}, rest {split['rest']:.3g}",
            )
        ax.set_xlabel("kept fraction (smallest sigma first)")
        ax.set_ylabel(LABEL[key].replace("residual", "68% width").replace("E_reco/E_true - 1", "sigma_E/E"))
        ax.set_xlim(0, 1.02)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(title or "resolution vs fraction kept by a cut on the per-event sigma")
    fig.tight_layout()
    return save_figure(fig, out, formats, dpi)


def pull_distributions(
    df: pd.DataFrame,
    out: str | os.PathLike,
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
    title: str = "",
) -> list[Path]:
    """Histogram of (pred - true) / sigma per observable with a sigma, against a unit Gaussian."""
    keys = [
        k
        for k, (col, _, _) in OBSERVABLES.items()
        if all(f"{p}_{col}" in df.columns for p in ("pred", "true", "sigma"))
    ]
    if not keys:
        raise ValueError("no sigma_/pred_/true_ column triplets: the frame has no per-event uncertainties")
    fig, axes = _grid(len(keys))
    bins = np.linspace(-5, 5, 81)
    xs = np.linspace(-5, 5, 200)
    for ax, key in zip(axes, keys):
        col = OBSERVABLES[key][0]
        p = finite(pulls(df[f"pred_{col}"], df[f"true_{col}"], df[f"sigma_{col}"]))
        ax.hist(np.clip(p, -5, 5), bins=bins, histtype="step", color="C0", label=f"68% width {width68(p):.3f}")
        ax.plot(xs, p.size * (bins[1] - bins[0]) * np.exp(-0.5 * xs**2) / np.sqrt(2 * np.pi), "k--", lw=1)
        ax.set_xlabel(f"{key.split('_')[0]} pull (pred - true) / sigma")  # u_mm -> u, energy_pct -> energy
        ax.set_ylabel("events")
        ax.legend(fontsize=7)
    fig.suptitle(title or "pulls (dashed: unit Gaussian)")
    fig.tight_layout()
    return save_figure(fig, out, formats, dpi)
