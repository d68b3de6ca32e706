"""Post-hoc calibration of the predicted per-event sigmas: a monotone map fitted on val.

The Gaussian NLL's optimum is the conditional RMS, which the tails of real residuals make wider
than the 68 % width physicists quote, and not by the same factor everywhere: with the physics
aggregates the energy sigma of the narrow-core events (inside the fiducial volume) came out
~25 % too large and that of the leaking edge events 2x too small, so one scale per component
left the bench pulls at 0.80 (fiducial) and 1.40 (all). The heads rank events well, though: the
map only has to bend.

The map, per component: log sigma_cal = log sigma + c(log sigma), with c piecewise linear between
K knots and constant outside them. The knots are the medians of log sigma in K quantile bins of
the val events; c at a knot is the log of the 68 % half-width of the pulls in its bin. The fit
enforces log sigma + c non-decreasing (pool-adjacent-violators), so a larger raw sigma never
becomes a smaller calibrated one. K = 1 is one scale factor per component.

JSON form (checkpoint ``sigma_calibration``, ONNX metadata): {task: {"log_sigma": [[knots of
column 0], ...], "log_factor": [[c at those knots], ...]}}. The older form, {task: [scale per
column]}, reads as one knot per column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from xec.errors import XecError
from xec.metrics import pulls, width68

MIN_EVENTS_PER_BIN = 50


def _pool_adjacent_violators(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of y (equal weights)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return np.concatenate([np.full(int(n), m) for m, n in blocks])


def fit_component(residual: np.ndarray, sigma: np.ndarray, bins: int) -> tuple[list[float], list[float]]:
    """(knots, log factors) of one component from val residuals (pred - true) and raw sigmas."""
    ok = np.isfinite(residual) & np.isfinite(sigma) & (sigma > 0)
    r, s = residual[ok], sigma[ok]
    bins = max(1, min(int(bins), r.size // MIN_EVENTS_PER_BIN))
    if r.size == 0:
        return [0.0], [0.0]
    ls = np.log(s)
    if bins == 1:  # one factor: the 68 % half-width of all pulls
        factor = width68(pulls(r, 0.0, s))
        return [float(np.median(ls))], [float(np.log(factor)) if np.isfinite(factor) and factor > 0 else 0.0]
    order = np.argsort(ls, kind="stable")
    groups = np.array_split(order, bins)
    knots = np.array([np.median(ls[g]) for g in groups])
    factors = np.array([width68(r[g] / s[g]) for g in groups])
    good = np.isfinite(factors) & (factors > 0)
    knots, logf = knots[good], np.log(factors[good])
    if knots.size == 0:
        return [0.0], [0.0]
    calibrated = _pool_adjacent_violators(knots + logf)  # log sigma_cal at the knots, non-decreasing
    knots = np.maximum.accumulate(knots)  # medians of sorted bins are sorted; guard ties
    return [float(v) for v in knots], [float(v) for v in calibrated - knots]


def fit(pred: np.ndarray, true: np.ndarray, sigma: np.ndarray, bins: int) -> dict[str, list[list[float]]]:
    """Calibration of one task: pred, true, sigma (N, dim) physical units -> its JSON form."""
    pred, true, sigma = (np.asarray(a, dtype=np.float64).reshape(len(pred), -1) for a in (pred, true, sigma))
    parts = [fit_component(pred[:, i] - true[:, i], sigma[:, i], bins) for i in range(pred.shape[1])]
    return {"log_sigma": [k for k, _ in parts], "log_factor": [c for _, c in parts]}


def normalize(entry: Any, dim: int, task: str) -> dict[str, list[list[float]]]:
    """The JSON form of one task's calibration from either form (None: identity), checked."""
    if entry is None:
        entry = [1.0] * dim
    if not isinstance(entry, Mapping):  # older checkpoints: one scale per column
        scale = np.asarray(entry, dtype=np.float64).reshape(-1)
        if scale.size != dim or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            raise XecError(f"sigma calibration of {task!r} must be {dim} positive numbers, got {list(scale)}")
        return {"log_sigma": [[0.0] for _ in range(dim)], "log_factor": [[float(np.log(v))] for v in scale]}
    knots, logf = entry.get("log_sigma"), entry.get("log_factor")
    if knots is None or logf is None or len(knots) != dim or len(logf) != dim:
        raise XecError(f"sigma calibration of {task!r} needs log_sigma and log_factor lists for {dim} columns")
    for k, c in zip(knots, logf):
        k, c = np.asarray(k, np.float64), np.asarray(c, np.float64)
        if k.size == 0 or k.shape != c.shape or not (np.all(np.isfinite(k)) and np.all(np.isfinite(c))):
            raise XecError(f"sigma calibration of {task!r}: knots and factors must be equal, non-empty finite lists")
        if np.any(np.diff(k) < 0) or np.any(np.diff(k + c) < -1e-9):
            raise XecError(f"sigma calibration of {task!r} is not monotone (knots or calibrated sigmas decrease)")
    return {"log_sigma": [list(map(float, k)) for k in knots], "log_factor": [list(map(float, c)) for c in logf]}


def apply_numpy(entry: Mapping[str, Sequence[Sequence[float]]], sigma: np.ndarray) -> np.ndarray:
    """Calibrated sigma (N, dim) of raw sigma (N, dim) with one task's JSON form."""
    sigma = np.asarray(sigma, dtype=np.float64)
    out = np.empty_like(sigma)
    for i, (k, c) in enumerate(zip(entry["log_sigma"], entry["log_factor"])):
        with np.errstate(divide="ignore"):
            ls = np.log(sigma[:, i])
        out[:, i] = sigma[:, i] * np.exp(np.interp(ls, k, c))  # np.interp is constant outside
    return out


def as_tensors(entry: Mapping[str, Sequence[Sequence[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(knots, log factors), each (dim, K) float32, the columns padded to a common K by repeating
    their last knot (a zero-length segment changes nothing)."""
    k_max = max(len(k) for k in entry["log_sigma"])
    pad = [
        (list(k) + [k[-1]] * (k_max - len(k)), list(c) + [c[-1]] * (k_max - len(c)))
        for k, c in zip(entry["log_sigma"], entry["log_factor"])
    ]
    return (
        torch.tensor([k for k, _ in pad], dtype=torch.float32),
        torch.tensor([c for _, c in pad], dtype=torch.float32),
    )


def apply_torch(sigma: torch.Tensor, knots: torch.Tensor, log_factor: torch.Tensor) -> torch.Tensor:
    """Calibrated sigma (B, dim) from raw sigma (B, dim) > 0 and tensors of ``as_tensors``.

    c(x) = c_0 + sum_k slope_k (clamp(x, x_k, x_k+1) - x_k), written with min/max (exports to
    ONNX as Min/Max, no gather); constant outside the knots."""
    x = torch.log(sigma).unsqueeze(-1)  # (B, dim, 1)
    lo, hi = knots[:, :-1], knots[:, 1:]
    width = hi - lo
    slope = torch.where(width > 0, (log_factor[:, 1:] - log_factor[:, :-1]) / width.clamp_min(1e-12), 0.0)
    seg = torch.minimum(torch.maximum(x, lo), hi) - lo  # (B, dim, K-1)
    c = log_factor[:, 0] + (slope * seg).sum(-1)
    return sigma * torch.exp(c)
