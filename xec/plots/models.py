"""Plots of the self-supervised stages: MAE reconstructions and inpainter predictions.

The training stages save no per-sensor reconstructions by default, so these functions take
arrays; :func:`run_mae_examples` / :func:`run_inpainter_examples` produce them by running the
checkpoints on a few val events (xec plots does that when the checkpoints and val shards exist).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xec.geometry import FACE_NAMES, get_geometry
from xec.plots.common import DEFAULT_FORMATS, plt, save_figure
from xec.plots.display import _norm, draw_face


def mae_reconstruction(
    npho: np.ndarray,
    mask: np.ndarray,
    reco_npho: np.ndarray,
    out: str | os.PathLike,
    title: str = "",
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """One event: input npho, the input with the masked sensors hidden, and the MAE
    reconstruction (visible sensors from the input, masked ones from the model), all faces,
    one colour scale. Arrays (4760,) in photons; ``mask`` bool (4760,) = hidden."""
    npho = np.asarray(npho, np.float64)
    mask = np.asarray(mask, bool)
    clean = np.where(np.isfinite(npho) & (npho < 9e9), np.maximum(npho, 0), np.nan)
    masked = np.where(mask, np.nan, clean)
    filled = np.where(mask, np.maximum(np.asarray(reco_npho, np.float64), 0), clean)
    rows = [("input", clean), (f"masked ({mask.sum()} sensors hidden)", masked), ("MAE reconstruction", filled)]
    norm = _norm(clean, "npho")
    fig = plt.figure(figsize=(17, 3.4 * len(rows)))
    gs = fig.add_gridspec(len(rows), 6, width_ratios=[2.2, 1.6, 0.8, 0.8, 1.4, 1.4], wspace=0.35, hspace=0.5)
    for i, (label, vals) in enumerate(rows):
        axes = []
        for k, face in enumerate(("inner", "outer", "us", "ds", "top", "bottom")):
            ax = fig.add_subplot(gs[i, k])
            art = draw_face(ax, face, vals, norm, "viridis", "npho")
            if k == 0:
                first = art
                ax.set_title(f"{label}: inner", fontsize=9)
            axes.append(ax)
        fig.colorbar(first, ax=axes, fraction=0.02, pad=0.01).set_label("npho", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out, formats, dpi)


def inpainter_truth_vs_prediction(
    truth: np.ndarray,
    pred: np.ndarray,
    sensor: np.ndarray,
    out: str | os.PathLike,
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """Truth vs inpainter prediction of the npho of hidden sensors, one panel per face
    (log-log, with the median relative error and its 68 % width)."""
    truth, pred, sensor = (np.asarray(a).ravel() for a in (truth, pred, sensor))
    face = get_geometry().face[sensor.astype(np.int64)]
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for k, ax in enumerate(axes.ravel()):
        sel = (face == k) & np.isfinite(truth) & np.isfinite(pred)
        t, p = np.maximum(truth[sel], 0.5), np.maximum(pred[sel], 0.5)
        ax.set_title(f"{FACE_NAMES[k]} ({sel.sum()} sensors)", fontsize=9)
        if sel.sum() == 0:
            ax.text(0.5, 0.5, "no hidden sensors", ha="center", va="center", transform=ax.transAxes)
            continue
        lo, hi = min(t.min(), p.min()), max(t.max(), p.max())
        ax.hexbin(t, p, xscale="log", yscale="log", gridsize=40, mincnt=1, bins="log", cmap="viridis")
        ax.plot([lo, hi], [lo, hi], "r--", lw=1)
        bright = t > 50
        if bright.any():
            rel = p[bright] / t[bright] - 1
            q16, q50, q84 = np.percentile(rel, [16, 50, 84])
            ax.text(
                0.03,
                0.95,
                f"npho>50: median {100 * q50:+.1f} %\n68% width {50 * (q84 - q16):.1f} %",
                transform=ax.transAxes,
                va="top",
                fontsize=8,
            )
        ax.set_xlabel("true npho")
        ax.set_ylabel("predicted npho")
    fig.tight_layout()
    return save_figure(fig, out, formats, dpi)


def _val_batch(checkpoint: dict[str, Any], val_manifest: str, n: int):
    from xec.data.loader import ShardLoader
    from xec.normalization import Normalizer

    norm = Normalizer.from_dict(dict(checkpoint["normalization"]))
    loader = ShardLoader(val_manifest, n, tasks=(), shuffle=False, expected_normalizer=norm, max_events=n)
    x, _, _ = next(iter(loader))[:3]
    return x, norm


def run_mae_examples(checkpoint_path: str, val_manifest: str, n: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Run the MAE checkpoint (EMA weights) on the first ``n`` val events with a seeded mask:
    [{npho, mask, reco_npho}] in photons."""
    import torch

    from xec.train.checkpoint import load_checkpoint
    from xec.train.stages import build_model_from_checkpoint

    ck = load_checkpoint(checkpoint_path, expected_stage="mae")
    model = build_model_from_checkpoint(ck)
    x, norm = _val_batch(ck, val_manifest, n)
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(seed))
    pred = out["pred"].float().numpy()
    xs = x.numpy()
    res = []
    for i in range(len(xs)):
        npho = norm.denormalize_npho(xs[i, :, 0])
        dead = xs[i, :, 0] == norm.sentinel
        res.append(
            {
                "npho": np.where(dead, 1e10, npho),
                "mask": out["mask"][i].numpy().astype(bool),
                "reco_npho": norm.denormalize_npho(pred[i, :, 0]),
            }
        )
    return res


def run_inpainter_examples(
    checkpoint_path: str, val_manifest: str, n: int = 64, mask_ratio: float = 0.05, seed: int = 0
) -> dict[str, np.ndarray]:
    """Hide ``mask_ratio`` of the valid sensors of ``n`` val events (seeded), fill them with the
    inpainter checkpoint: {truth, pred, sensor} npho of the hidden sensors."""
    import torch

    from xec.train.checkpoint import load_checkpoint
    from xec.train.stages import build_model_from_checkpoint

    ck = load_checkpoint(checkpoint_path, expected_stage="inpainter")
    model = build_model_from_checkpoint(ck)
    x, norm = _val_batch(ck, val_manifest, n)
    gen = np.random.default_rng(seed)
    valid = x[..., 0].numpy() != norm.sentinel
    mask = valid & (gen.random(valid.shape) < mask_ratio)
    with torch.no_grad():
        filled = model(x, torch.from_numpy(mask)).float().numpy()
    ev, sensor = np.nonzero(mask)
    return {
        "truth": norm.denormalize_npho(x.numpy()[ev, sensor, 0]),
        "pred": norm.denormalize_npho(filled[ev, sensor, 0]),
        "sensor": sensor,
    }
