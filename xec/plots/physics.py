"""Physics plots: residuals, resolution profiles, energy response, timing, opening angle and
real-data distributions. ``methods`` maps a label ("ML", "baseline", ...) to a data frame with
the pred_<task>_<col> (and true_<task>_<col>) columns of xec infer / xec baseline."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xec.metrics import binned_resolution, gaussian_core_fit, quantile, resolution
from xec.plots.common import DEFAULT_FORMATS, color, finite, plt, robust_range, save_figure
from xec.summary import OBSERVABLES, residual

if TYPE_CHECKING:
    import pandas as pd

LABEL = {
    "u_mm": "u residual (mm)",
    "v_mm": "v residual (mm)",
    "w_mm": "w residual (mm)",
    "energy_pct": "E_reco/E_true - 1 (%)",
    "time_ps": "time residual (ps)",
    "theta_deg": "theta residual (deg)",
    "phi_deg": "phi residual (deg)",
}
# profile variable -> (true column, axis label, scale of the column to the axis unit)
PROFILE_VARIABLES = {
    "theta": ("true_angle_theta", "true theta (deg)", 1.0),
    "phi": ("true_angle_phi", "true phi (deg)", 1.0),
    "u": ("true_uvwFI_u", "true u (cm)", 1.0),
    "v": ("true_uvwFI_v", "true v (cm)", 1.0),
    "w": ("true_uvwFI_w", "true w (cm)", 1.0),
    "energy": ("true_energy_energy", "true energy (MeV)", 1000.0),
}


def _residuals(methods: Mapping[str, pd.DataFrame], key: str) -> dict[str, np.ndarray]:  # noqa: F821
    col, scale, kind = OBSERVABLES[key]
    out = {}
    for name, df in methods.items():
        r = residual(df, col, kind)
        if r is not None and np.isfinite(r).any():
            out[name] = r * scale
    return out


def _grid(n: int, size: tuple[float, float] = (4.0, 3.2)):
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def residual_distributions(
    methods: Mapping[str, pd.DataFrame],
    out: str | os.PathLike,  # noqa: F821
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
    title: str = "",
) -> list[Path]:
    """Histogram of each residual (u, v, w, energy, time, theta, phi) per method, with the 68 %
    width and the fitted Gaussian core (curve) in the legend."""
    keys = [k for k in OBSERVABLES if _residuals(methods, k)]
    if not keys:
        raise ValueError("no residuals to plot: the frames have no pred_/true_ column pairs")
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        res = _residuals(methods, key)
        lo, hi = robust_range(list(res.values()), 1, 99)
        bins = np.linspace(lo, hi, 61)
        for i, (name, r) in enumerate(res.items()):
            st = resolution(r, n_boot=0)
            c = color(name, i)
            counts, _, _ = ax.hist(
                finite(r),
                bins=bins,
                histtype="step",
                color=c,
                label=f"{name}: w68 {st['width68']:.3g}, core {st['sigma_core']:.3g}",
            )
            mu, sig = st["mu_core"], st["sigma_core"]
            if np.isfinite(sig) and sig > 0:
                xs = np.linspace(mu - 2 * sig, mu + 2 * sig, 100)
                sel = finite(r)
                sel = sel[np.abs(sel - mu) < 2 * sig]
                # the core Gaussian normalised to the counts inside +-2 sigma
                norm = sel.size * (bins[1] - bins[0]) / (sig * np.sqrt(2 * np.pi) * 0.9545)
                ax.plot(xs, norm * np.exp(-0.5 * ((xs - mu) / sig) ** 2), color=c, lw=1, ls="--")
        ax.set_xlabel(LABEL[key])
        ax.set_ylabel("events")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out, formats, dpi)


def profile_edges(methods: Mapping[str, pd.DataFrame], variable: str, n_bins: int = 8) -> np.ndarray:  # noqa: F821
    """Bin edges (axis units) of a resolution profile: equal-width over the 1-99 % range of the
    true ``variable`` (w: equal-population bins up to its 98th percentile, where the events are)."""
    col, _, scale = PROFILE_VARIABLES[variable]
    frames = [d for d in methods.values() if col in d.columns]
    if not frames:
        raise ValueError(f"no frame has the column {col}")
    allx = np.concatenate([finite(d[col]) * scale for d in frames])
    lo, hi = np.percentile(allx, [1, 99]) if allx.size else (0.0, 1.0)
    if not hi > lo:
        raise ValueError(f"{variable} is constant ({lo:g}): no profile to draw")
    if variable == "w":
        return np.unique(np.percentile(allx, np.linspace(0, 98, n_bins + 1)))
    return np.linspace(lo, hi, n_bins + 1)


def resolution_profile_table(
    methods: Mapping[str, pd.DataFrame],  # noqa: F821
    variable: str,
    edges: np.ndarray | Sequence[float],
    n_boot: int = 30,
    observables: Sequence[str] | None = None,
    n_boot_core: int | None = None,
) -> dict[str, dict[str, list[dict[str, float]]]]:
    """observable -> method -> per bin of the true ``variable`` (``edges`` in axis units: MeV for
    the energy) the :func:`xec.metrics.binned_resolution` of that residual (68 % half-width
    ``width68`` and Gaussian core ``sigma_core``, bootstrap errors, ``n``), in the units of
    xec.summary.OBSERVABLES. Methods are compared on the events they were given (match them on
    (run, event) first: xec.summary)."""
    col, _, scale = PROFILE_VARIABLES[variable]
    frames = {n: d for n, d in methods.items() if col in d.columns}
    if not frames:
        raise ValueError(f"no frame has the column {col}")
    edges = np.asarray(edges, dtype=np.float64)
    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    for key in observables or OBSERVABLES:
        res = _residuals(frames, key)
        if res:
            out[key] = {
                name: binned_resolution(
                    frames[name][col].to_numpy(np.float64) * scale, r, edges, n_boot=n_boot, n_boot_core=n_boot_core
                )
                for name, r in res.items()
            }
    if not out:
        raise ValueError("no residuals to profile: the frames have no pred_/true_ column pairs")
    return out


def resolution_profiles(
    methods: Mapping[str, pd.DataFrame],
    variable: str,
    out: str | os.PathLike,  # noqa: F821
    n_bins: int = 8,
    n_boot: int = 30,
    edges: np.ndarray | Sequence[float] | None = None,
    title: str = "",
    n_boot_core: int | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """Resolution in bins of the true ``variable`` (theta, phi, u, v, w or energy), one panel
    per residual, ML and classical in the same panel: 68 % half-width (filled markers, solid,
    bootstrap error bars) and Gaussian core sigma (open markers, dashed). The numbers go to
    ``out``.json (:func:`resolution_profile_table`, with the edges). ``edges`` default:
    :func:`profile_edges`."""
    _, xlabel, _ = PROFILE_VARIABLES[variable]
    edges = profile_edges(methods, variable, n_bins) if edges is None else np.asarray(edges, np.float64)
    table = resolution_profile_table(methods, variable, edges, n_boot=n_boot, n_boot_core=n_boot_core)
    fig, axes = _grid(len(table))
    half = np.diff(edges) / 2
    for ax, (key, per_method) in zip(axes, table.items()):
        for i, (name, prof) in enumerate(per_method.items()):
            c = color(name, i)
            x = np.array([p["centre"] for p in prof])
            for stat, marker, ls, dx in (("width68", "o", "-", -0.15), ("sigma_core", "s", "--", 0.15)):
                y = np.array([p[stat] for p in prof])
                e = np.nan_to_num(np.array([p[f"{stat}_err"] for p in prof]))
                ax.errorbar(
                    x + dx * half,
                    y,
                    yerr=e,
                    xerr=half if stat == "width68" else None,
                    fmt=marker,
                    ls=ls,
                    lw=0.8,
                    ms=3.5,
                    color=c,
                    mfc=c if stat == "width68" else "none",
                    label=f"{name} {'68 %' if stat == 'width68' else 'core'}",
                )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(LABEL[key].replace("residual", "resolution").replace("E_reco/E_true - 1", "sigma_E/E"))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title or f"resolution vs {variable} (filled: 68 % half-width, open/dashed: Gaussian core)")
    fig.tight_layout()
    files = save_figure(fig, out, formats, dpi)
    from xec.utils import finite_or_none, write_json

    path = Path(out)
    write_json(
        path.with_name(path.name + ".json"),
        finite_or_none({"variable": variable, "axis": xlabel, "edges": edges.tolist(), "observables": table}),
    )
    return files


def energy_response(
    methods: Mapping[str, pd.DataFrame],
    out: str | os.PathLike,  # noqa: F821
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """Energy response: reconstructed energy (MeV) of each method overlaid, and
    E_reco/E_true with its core fit and low tail (log scale) when the truth is known."""
    frames = {n: d for n, d in methods.items() if "pred_energy_energy" in d.columns}
    if not frames:
        raise ValueError("no frame has pred_energy_energy")
    has_truth = all("true_energy_energy" in d.columns for d in frames.values())
    fig, axes = plt.subplots(1, 2 if has_truth else 1, figsize=(10 if has_truth else 5, 3.6), squeeze=False)
    ax = axes[0, 0]
    e = {n: 1000 * d["pred_energy_energy"].to_numpy(np.float64) for n, d in frames.items()}
    lo, hi = robust_range(list(e.values()), 0.5, 99.9)
    for i, (name, x) in enumerate(e.items()):
        ax.hist(finite(x), bins=np.linspace(lo, hi, 81), histtype="step", color=color(name, i), label=name)
    if has_truth:
        t = 1000 * next(iter(frames.values()))["true_energy_energy"].to_numpy(np.float64)
        if np.nanstd(t) < 1e-6:
            ax.axvline(t[0], color="k", ls=":", lw=1, label=f"true {t[0]:.1f} MeV")
    ax.set_xlabel("reconstructed energy (MeV)")
    ax.set_ylabel("events")
    ax.legend(fontsize=8)
    if has_truth:
        ax = axes[0, 1]
        ratios = {
            n: d["pred_energy_energy"].to_numpy(np.float64) / d["true_energy_energy"].to_numpy(np.float64)
            for n, d in frames.items()
        }
        bins = np.linspace(0.7, 1.1, 121)
        for i, (name, r) in enumerate(ratios.items()):
            mu, sig = gaussian_core_fit(r)
            ax.hist(
                np.clip(finite(r), bins[0], bins[-1]),
                bins=bins,
                histtype="step",
                color=color(name, i),
                label=f"{name}: core mu {mu:.4f}, sigma {100 * sig:.2f} %",
            )
        ax.axvline(1.0, color="k", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("E_reco / E_true (under/overflow in the edge bins)")
        ax.set_ylabel("events")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, formats, dpi)


def timing_residuals(
    methods: Mapping[str, pd.DataFrame],
    out: str | os.PathLike,  # noqa: F821
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """Time residual (ps) per method (linear and log scale) with the core fit."""
    res = _residuals(methods, "time_ps")
    if not res:
        raise ValueError("no frame has pred_timing_time and true_timing_time")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    lo, hi = robust_range(list(res.values()), 0.5, 99.5)
    bins = np.linspace(lo, hi, 81)
    for ax, log in zip(axes, (False, True)):
        for i, (name, r) in enumerate(res.items()):
            st = resolution(r, n_boot=0)
            ax.hist(
                finite(r),
                bins=bins,
                histtype="step",
                color=color(name, i),
                label=f"{name}: w68 {st['width68']:.0f} ps, core {st['sigma_core']:.0f} ps, bias {st['bias']:.0f} ps",
            )
        ax.set_xlabel("t_reco - t_true (ps)")
        ax.set_ylabel("events")
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, formats, dpi)


def opening_angle_distribution(
    methods: Mapping[str, pd.DataFrame],
    out: str | os.PathLike,  # noqa: F821
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """Opening angle between reconstructed and true direction, with the 68 % quantile."""
    ang = {
        n: d["opening_angle_deg"].to_numpy(np.float64) for n, d in methods.items() if "opening_angle_deg" in d.columns
    }
    if not ang:
        raise ValueError("no frame has opening_angle_deg")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    hi = robust_range(list(ang.values()), 0, 99)[1]
    for i, (name, a) in enumerate(ang.items()):
        q = quantile(a, 68.27, n_boot=0)["value"]
        c = color(name, i)
        ax.hist(finite(a), bins=np.linspace(0, hi, 81), histtype="step", color=c, label=f"{name}: 68 % at {q:.3g} deg")
        ax.axvline(q, color=c, ls="--", lw=1)
    ax.set_xlabel("opening angle to the true direction (deg)")
    ax.set_ylabel("events")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, formats, dpi)


def realdata_distributions(
    methods: Mapping[str, pd.DataFrame],
    out: str | os.PathLike,  # noqa: F821
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """Distributions of the reconstructed quantities on real data (no truth needed): ML with and
    without inpainting against the classical reconstruction."""
    cols = [
        ("pred_energy_energy", "energy (MeV)", 1000.0),
        ("pred_timing_time", "time (ns)", 1.0),
        ("pred_uvwFI_u", "u (cm)", 1.0),
        ("pred_uvwFI_v", "v (cm)", 1.0),
        ("pred_uvwFI_w", "w (cm)", 1.0),
        ("pred_angle_theta", "theta (deg)", 1.0),
        ("pred_angle_phi", "phi (deg)", 1.0),
    ]
    cols = [c for c in cols if any(c[0] in d.columns for d in methods.values())]
    if not cols:
        raise ValueError("no pred_ columns to plot")
    fig, axes = _grid(len(cols))
    for ax, (col, label, scale) in zip(axes, cols):
        vals = {n: scale * d[col].to_numpy(np.float64) for n, d in methods.items() if col in d.columns}
        lo, hi = robust_range(list(vals.values()), 0.5, 99.5)
        for i, (name, x) in enumerate(vals.items()):
            ax.hist(finite(x), bins=np.linspace(lo, hi, 61), histtype="step", color=color(name, i), label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("events")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, formats, dpi)


def run_stability(
    rows: Sequence[Mapping[str, Any]],
    out: str | os.PathLike,
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """Run-by-run stability of a run period (xec.runs.run_table rows): the ML energy (mean, bars
    = 68 % width) and the median ML - classical differences against the run number."""
    if not rows:
        raise ValueError("no runs")
    from xec.runs import RUN_DIFFS, RUN_LABELS

    runs = np.array([r["run"] for r in rows], np.float64)
    diffs = [k for k in RUN_DIFFS if any(np.isfinite(r[k]) for r in rows)]
    fig, axes = plt.subplots(1 + len(diffs), 1, figsize=(7, 1.8 * (1 + len(diffs)) + 0.6), sharex=True, squeeze=False)
    axes = axes[:, 0]
    mean = np.array([r["energy_mean_mev"] for r in rows])
    width = np.array([r["energy_width_mev"] for r in rows])
    axes[0].errorbar(runs, mean, yerr=width, fmt="o", ms=3, color="C0")
    axes[0].set_ylabel(RUN_LABELS["energy_mean_mev"], fontsize=8)
    for ax, key in zip(axes[1:], diffs):
        ax.plot(runs, [r[key] for r in rows], "o", ms=3, color="C1")
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_ylabel(RUN_LABELS[key], fontsize=8)
    axes[-1].set_xlabel("run")
    axes[0].set_title(f"run by run ({len(rows)} runs, {sum(r['events'] for r in rows)} events)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, formats, dpi)
