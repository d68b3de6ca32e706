"""The dead-fraction sweep (xec deadsweep): resolution vs the fraction of dead sensors, one panel
per observable (u, v, w, energy, time), the ML (colour per dead-sensor treatment) and the
classical reconstruction, random (solid) and clustered (dashed) dead sensors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xec.plots.common import plt, save_figure

LABELS = {
    "u_mm": "u resolution (mm)",
    "v_mm": "v resolution (mm)",
    "w_mm": "w resolution (mm)",
    "energy_pct": "sigma_E / E (%)",
    "time_ps": "time resolution (ps)",
}
STYLES = {"random": ("-", "o"), "clustered": ("--", "s")}


def method_label(method: str) -> str:
    """ml_inpainter -> 'ML (inpainter)', classical -> 'classical'."""
    return f"ML ({method[3:]})" if method.startswith("ml_") else method


def deadsweep_plot(result: Mapping[str, Any], out: str | os.PathLike, dpi: int = 110) -> list[Path]:
    """One figure, ``out`` (its suffix picks the format; PNG without one): 68 % half-width vs
    dead fraction (%) with bootstrap errors."""
    from xec.inpainting.deadsweep import SWEEP_OBSERVABLES, curves

    out = Path(out)
    fmt = out.suffix.lstrip(".") or "png"
    fig, axes = plt.subplots(1, len(SWEEP_OBSERVABLES), figsize=(4.0 * len(SWEEP_OBSERVABLES), 3.6))
    patterns = result["meta"]["patterns"] if "meta" in result else ["random", "clustered"]
    for ax, obs in zip(axes, SWEEP_OBSERVABLES):
        for i, method in enumerate(result["methods"]):
            colour = "C1" if method == "classical" else f"C{0 if i == 0 else i + 1}"
            for pattern in patterns:
                f, w, e = curves(result, method, pattern, obs)
                ls, marker = STYLES.get(pattern, (":", "^"))
                label = f"{method_label(method)}, {pattern}"
                ax.errorbar(100 * f, w, yerr=e, ls=ls, marker=marker, ms=4, color=colour, capsize=2, label=label)
        ax.set_xlabel("dead sensors (%)")
        ax.set_ylabel(LABELS[obs])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Resolution vs dead fraction ({result['events']} bench events)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out.with_suffix(""), (fmt,), dpi)
