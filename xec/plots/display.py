"""Event displays: all six faces of the detector at their real layout.

Inner face: the 93 x 44 MPPC grid unrolled (z, phi'); outer face: the fine 72 x 27 grid built
from the physical PMT positions (``g.outer_grid(1)``, npho shared between cells, time copied);
US/DS: 24 phi' strips x 6 rings; top/bottom: the hexagonal PMT planes at their physical
(z, r) positions (``g.hex_face(name).xy``). Dead sensors (npho > 9e9 or NaN) and sensors
without time are grey.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm, Normalize

from xec.geometry import (
    FACE_NAMES,
    INNER_DPHI,
    INNER_DZ,
    INNER_PHI0,
    INNER_Z0,
    OUTER_DPHI,
    OUTER_PHI0,
    OUTER_ZMAX,
    SLANT_R,
    get_geometry,
)
from xec.plots.common import DEFAULT_FORMATS, plt, save_figure

INVALID = 9e9


def _clean(values: np.ndarray, quantity: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).copy()
    bad = ~np.isfinite(v) | (np.abs(v) > INVALID)
    if quantity == "npho":
        v[bad] = np.nan
        v = np.where(np.isnan(v), np.nan, np.maximum(v, 0.0))
    else:
        v[bad] = np.nan
    return v


def draw_face(ax, face: str, values: np.ndarray, norm, cmap: str = "viridis", quantity: str = "npho"):
    """Draw one face of per-sensor ``values`` (4760,) (already cleaned: NaN = no value) on ``ax``."""
    g = get_geometry()
    cm = plt.get_cmap(cmap).with_extremes(bad="0.8")
    ax.set_title(face, fontsize=9)
    if face == "inner":
        img = values[g.inner_index]
        z0, z1 = INNER_Z0 - INNER_DZ / 2, INNER_Z0 + INNER_DZ * (g.inner_index.shape[1] - 0.5)
        p0 = INNER_PHI0 - INNER_DPHI / 2
        p1 = INNER_PHI0 + INNER_DPHI * (g.inner_index.shape[0] - 0.5)
        art = ax.imshow(
            np.ma.masked_invalid(img),
            origin="upper",
            aspect="auto",
            extent=(z0, z1, p1, p0),
            norm=norm,
            cmap=cm,
            interpolation="nearest",
        )
        ax.set_xlabel("z (cm)", fontsize=8)
        ax.set_ylabel("phi' (deg)", fontsize=8)
    elif face == "outer":
        grid = g.outer_grid(1)
        img = grid.to_grid(np.nan_to_num(values, nan=-1.0), "npho" if quantity == "npho" else "time")
        dead = grid.to_grid(np.isnan(values).astype(np.float64), "time") > 0
        img = np.where(dead, np.nan, img)
        # the fine grid tiles the coarse 24 x 9 PMT layout: same physical extent
        pz = 2 * OUTER_ZMAX / 8
        p0, p1 = OUTER_PHI0 - OUTER_DPHI / 2, OUTER_PHI0 + OUTER_DPHI * 23.5
        art = ax.imshow(
            np.ma.masked_invalid(img),
            origin="upper",
            aspect="auto",
            extent=(-OUTER_ZMAX - pz / 2, OUTER_ZMAX + pz / 2, p1, p0),
            norm=norm,
            cmap=cm,
            interpolation="nearest",
        )
        ax.set_xlabel("z (cm)", fontsize=8)
    elif face in ("us", "ds"):
        index = g.us_index if face == "us" else g.ds_index
        img = values[index]
        dr = (SLANT_R[1] - SLANT_R[0]) / 5
        r0, r1 = SLANT_R[0] - dr / 2, SLANT_R[1] + dr / 2
        p0, p1 = OUTER_PHI0 - OUTER_DPHI / 2, OUTER_PHI0 + OUTER_DPHI * 23.5
        art = ax.imshow(
            np.ma.masked_invalid(img),
            origin="upper",
            aspect="auto",
            extent=(r0, r1, p1, p0),
            norm=norm,
            cmap=cm,
            interpolation="nearest",
        )
        ax.set_xlabel("r (cm)", fontsize=8)
    elif face in ("top", "bottom"):
        hf = g.hex_face(face)
        v = values[hf.ids]
        ok = np.isfinite(v)
        ax.scatter(hf.xy[~ok, 0], hf.xy[~ok, 1], marker="h", s=120, c="0.8", edgecolors="none")
        art = ax.scatter(hf.xy[ok, 0], hf.xy[ok, 1], c=v[ok], marker="h", s=120, norm=norm, cmap=cm, edgecolors="none")
        ax.set_xlabel("z (cm)", fontsize=8)
        ax.set_ylabel("r (cm)", fontsize=8)
        ax.set_aspect("equal")
        ax.set_xlim(hf.xy[:, 0].min() - 5, hf.xy[:, 0].max() + 5)
        ax.set_ylim(hf.xy[:, 1].min() - 5, hf.xy[:, 1].max() + 5)
    else:
        raise ValueError(f"unknown face {face!r}; faces are {FACE_NAMES}")
    ax.tick_params(labelsize=7)
    return art


def _norm(values: np.ndarray, quantity: str):
    v = values[np.isfinite(values)]
    if quantity == "npho":
        vmax = float(v.max()) if v.size and v.max() > 1 else 10.0
        return LogNorm(vmin=max(1.0, vmax * 1e-4), vmax=vmax, clip=True)
    if not v.size:
        return Normalize(0, 1)
    lo, hi = np.percentile(v, [1, 95])  # late (diffuse-light) sensors would wash out the scale
    return Normalize(lo, hi if hi > lo else lo + 1)


def face_row(fig, gs_row, values: np.ndarray, quantity: str, label: str):
    """One row of six face panels for (4760,) cleaned values; returns the axes."""
    norm = _norm(values, quantity)
    cmap = "viridis" if quantity == "npho" else "plasma"
    axes = []
    art = None
    for k, face in enumerate(("inner", "outer", "us", "ds", "top", "bottom")):
        ax = fig.add_subplot(gs_row[k])
        a = draw_face(ax, face, values, norm, cmap, quantity)
        art = a if face == "inner" else art
        axes.append(ax)
    cb = fig.colorbar(art, ax=axes, fraction=0.02, pad=0.01)
    cb.set_label(label, fontsize=8)
    return axes


def event_display(
    npho: np.ndarray,
    time_ns: np.ndarray | None,
    out: str | os.PathLike,
    title: str = "",
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """Display of one event: npho (log colour scale) and, if given, the time (ns) of every
    sensor on all six faces at their real layout."""
    npho = _clean(npho, "npho")
    rows = [(npho, "npho", "npho (photons)")]
    if time_ns is not None:
        rows.append((_clean(time_ns, "time"), "time", "time (ns)"))
    fig = plt.figure(figsize=(17, 3.6 * len(rows)))
    gs = fig.add_gridspec(len(rows), 6, width_ratios=[2.2, 1.6, 0.8, 0.8, 1.4, 1.4], wspace=0.35, hspace=0.45)
    for i, (vals, q, label) in enumerate(rows):
        face_row(fig, [gs[i, k] for k in range(6)], vals, q, label)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out, formats, dpi)
