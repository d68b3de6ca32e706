"""Plots of a pipeline run: one function per plot, each writing PNG (for the report) and PDF.

Every function takes plain inputs (data frames of ``xec infer`` / ``xec baseline`` columns, or
numpy arrays), an output path without suffix and ``formats``/``dpi``, and returns the files it
wrote. ``xec plots`` (xec.plots.cli) makes every plot that the files of a run allow.
"""

from xec.plots.common import save_figure
from xec.plots.display import draw_face, event_display
from xec.plots.models import inpainter_truth_vs_prediction, mae_reconstruction
from xec.plots.physics import (
    energy_response,
    opening_angle_distribution,
    profile_edges,
    realdata_distributions,
    residual_distributions,
    resolution_profile_table,
    resolution_profiles,
    run_stability,
    timing_residuals,
)
from xec.plots.saliency import saliency_bars
from xec.plots.training import training_curves
from xec.plots.uncertainty import kept_fraction, pull_distributions
from xec.targets import standard_columns

__all__ = [
    "save_figure",
    "standard_columns",
    "draw_face",
    "event_display",
    "inpainter_truth_vs_prediction",
    "mae_reconstruction",
    "energy_response",
    "opening_angle_distribution",
    "realdata_distributions",
    "residual_distributions",
    "profile_edges",
    "resolution_profile_table",
    "resolution_profiles",
    "saliency_bars",
    "run_stability",
    "timing_residuals",
    "training_curves",
    "kept_fraction",
    "pull_distributions",
]
