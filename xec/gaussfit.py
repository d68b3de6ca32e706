"""The iterative Gaussian core fit of many samples at once (the engine of
:func:`xec.metrics.gaussian_core_fit`).

A resolution's error bar refits the core of every bootstrap resample: ~10,000 fits of 3
parameters to ~40-bin histograms per physics summary. One scipy ``curve_fit`` per fit spent most
of its ~0.4 ms in per-call checks and Python callbacks (the summary's 22 s were 15 s of fits);
here the rows are fitted side by side, each its own window, histogram and Levenberg-Marquardt
damping, with numpy over the rows (docs/performance.md, "Physics summary and plots").

The estimator is that of :func:`xec.metrics.gaussian_core_fit`: the chi2 with Poisson errors
(empty bins error 1) minimized by Levenberg-Marquardt with Marquardt's scaling and MINPACK's
default tolerance, so that it agrees with ``curve_fit`` to its tolerance on well-posed histograms.
"""

from __future__ import annotations

import numpy as np

MAX_BINS = 60  # histogram bins of a window: ~sqrt(n), at least 10 and at most MAX_BINS
MIN_BINS = 10
MAX_STEPS = 200  # Levenberg-Marquardt steps of one fit; more: the fit failed (NaN)
TOL = 1.49012e-8  # relative step or chi2 gain at which a fit has converged (MINPACK's default)
_LAMBDA_START, _LAMBDA_MIN, _LAMBDA_MAX = 1e-3, 1e-12, 1e12


def _residuals(p: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(rows, bins) weighted residuals of a * exp(-(x - mu)^2 / 2 sigma^2) against y."""
    z = (x - p[:, 1:2]) / p[:, 2:3]
    return (p[:, 0:1] * np.exp(-0.5 * z * z) - y) * w


def _solve(m: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise solution of m x = b; NaN for a singular row (its step is then rejected)."""
    try:
        return np.linalg.solve(m, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.full(b.shape, np.nan)
        for i in range(len(b)):
            try:
                out[i] = np.linalg.solve(m[i], b[i])
            except np.linalg.LinAlgError:
                pass
        return out


def fit_gaussians(x: np.ndarray, y: np.ndarray, w: np.ndarray, p0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of a Gaussian (a, mu, sigma) per row: minimize sum(((g(x) - y) * w) ** 2)
    over the bins of each row of x, y, w (rows, bins); padding bins have w = 0. Returns the
    parameters (rows, 3) and whether each row converged to a finite minimum."""
    # a degenerate row (sigma -> 0, a runaway amplitude) gives inf/NaN: rejected steps, not warnings
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _fit_gaussians(x, y, w, p0)


def _fit_gaussians(x: np.ndarray, y: np.ndarray, w: np.ndarray, p0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.array(p0, dtype=np.float64)
    r = _residuals(p, x, y, w)
    chi2 = np.einsum("rb,rb->r", r, r)
    ok = np.isfinite(chi2)
    active = ok.copy()
    lam = np.full(len(p), _LAMBDA_START)
    for _ in range(MAX_STEPS):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        q, xr, yr, wr = p[rows], x[rows], y[rows], w[rows]
        z = (xr - q[:, 1:2]) / q[:, 2:3]
        e = np.exp(-0.5 * z * z) * wr
        j1 = q[:, 0:1] * e * z / q[:, 2:3]
        jac = np.stack([e, j1, j1 * z], axis=1)  # (k, 3, bins): d residual / d (a, mu, sigma)
        a = jac @ jac.transpose(0, 2, 1)
        g = np.einsum("kpb,kb->kp", jac, r[rows])
        scale = np.maximum(np.einsum("kii->ki", a), 1e-300)
        # damped steps until each row goes downhill (or its damping saturates: at its minimum)
        step = np.zeros_like(q)
        trial_r = np.zeros_like(r[rows])
        trial_chi2 = np.zeros(rows.size)
        pending = np.ones(rows.size, dtype=bool)
        at_minimum = np.zeros(rows.size, dtype=bool)
        while pending.any():
            i = np.flatnonzero(pending)
            m = a[i] + (lam[rows[i]][:, None] * scale[i])[:, None, :] * np.eye(3)
            s = _solve(m, -g[i])
            t = q[i] + s
            tr = _residuals(t, xr[i], yr[i], wr[i])
            tc = np.einsum("kb,kb->k", tr, tr)
            down = tc <= chi2[rows[i]]  # False for NaN
            step[i[down]], trial_r[i[down]], trial_chi2[i[down]] = s[down], tr[down], tc[down]
            pending[i[down]] = False
            up = i[~down]
            lam[rows[up]] *= 10.0
            saturated = up[lam[rows[up]] > _LAMBDA_MAX]
            at_minimum[saturated] = True
            pending[saturated] = False
        moved = ~at_minimum
        mrows = rows[moved]
        small_step = (np.abs(step[moved]) <= TOL * (np.abs(q[moved]) + TOL)).all(axis=1)
        small_gain = chi2[mrows] - trial_chi2[moved] <= TOL * chi2[mrows]
        p[mrows], r[mrows], chi2[mrows] = q[moved] + step[moved], trial_r[moved], trial_chi2[moved]
        lam[mrows] = np.maximum(lam[mrows] * 0.1, _LAMBDA_MIN)
        active[mrows[small_step | small_gain]] = False
        done = rows[at_minimum]
        active[done] = False
        ok[done] &= p[done, 2] != 0
    ok &= ~active  # MAX_STEPS without converging: failed, as curve_fit's maxfev
    return p, ok


def core_fits(
    samples: np.ndarray, start: np.ndarray, nsigma: float, iterations: int, min_events: int, trunc_std: float
) -> np.ndarray:
    """(rows, 2) (mu, sigma) of the iterative Gaussian core fit of each row of ``samples`` (rows,
    n; finite values) from its ``start`` (rows, 2) (mu, sigma > 0; other rows come back as given):
    histogram the values within mu +- nsigma sigma, fit, re-centre on the fit, until the window
    moves by less than 1 % of sigma or after ``iterations`` fits. A window with fewer than
    ``min_events`` values keeps the last (mu, sigma); a failed fit gives NaN. ``trunc_std``: the
    std of a unit Gaussian truncated at +- nsigma, which turns the window's std into the fit's
    starting sigma."""
    samples = np.asarray(samples, dtype=np.float64)
    out = np.array(start, dtype=np.float64).reshape(-1, 2)
    todo = np.isfinite(out).all(axis=1) & (out[:, 1] > 0)  # no window to fit in: returned as given
    for _ in range(iterations):
        rows = np.flatnonzero(todo)
        if rows.size == 0:
            break
        x, mu, sigma = samples[rows], out[rows, 0], out[rows, 1]
        lo, hi = mu - nsigma * sigma, mu + nsigma * sigma
        inside = (x >= lo[:, None]) & (x <= hi[:, None])
        n = inside.sum(axis=1)
        few = n < min_events
        todo[rows[few]] = False
        keep = ~few
        rows, x, inside, n, lo, hi, mu, sigma = (v[keep] for v in (rows, x, inside, n, lo, hi, mu, sigma))
        if rows.size == 0:
            break
        nbins = np.clip(np.sqrt(n), MIN_BINS, MAX_BINS).astype(np.int64)
        width = (hi - lo) / nbins
        k = len(rows)
        b = np.minimum(np.floor((x - lo[:, None]) / width[:, None]).astype(np.int64), nbins[:, None] - 1)
        flat = (np.arange(k)[:, None] * MAX_BINS + b)[inside]
        counts = np.bincount(flat, minlength=k * MAX_BINS).reshape(k, MAX_BINS).astype(np.float64)
        centres = lo[:, None] + width[:, None] * (np.arange(MAX_BINS) + 0.5)
        # Poisson errors; empty bins get error 1 so they still pull the fit down; padding weight 0
        w = np.where(np.arange(MAX_BINS) < nbins[:, None], 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0)
        mean = np.where(inside, x, 0.0).sum(axis=1) / n
        std = np.sqrt(np.where(inside, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / n)
        p0 = np.stack([counts.max(axis=1), mean, std / trunc_std if nsigma == 2.0 else sigma], axis=1)
        p, ok = fit_gaussians(centres, counts, w, p0)
        new_mu, new_sigma = p[:, 1], np.abs(p[:, 2])
        good = ok & np.isfinite(new_mu) & np.isfinite(new_sigma) & (new_sigma > 0)
        out[rows[~good]] = np.nan
        todo[rows[~good]] = False
        converged = good & (np.abs(new_sigma - sigma) < 1e-2 * sigma) & (np.abs(new_mu - mu) < 1e-2 * sigma)
        out[rows[good], 0], out[rows[good], 1] = new_mu[good], new_sigma[good]
        todo[rows[converged]] = False
    return out
