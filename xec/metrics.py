"""Resolution estimators: the one home for how xec quotes a resolution.

Every resolution in xec (training metrics, the physics summary, the plots) comes from here, so
that ML and classical reconstruction are always compared with the same estimator:

- ``width68``: half-width of the central 68.27 % interval (q84.135 - q15.865) / 2. Robust, no
  fit, equals sigma for a Gaussian.
- ``gaussian_core_sigma``: Gaussian fitted to the histogram of the core, iterated on
  mu +- 2 sigma (xec.gaussfit). Insensitive to non-Gaussian tails (e.g. the low-energy
  tail of a calorimeter), which is how MEG quotes its energy and position resolutions.
- ``resolution``: both, with seeded bootstrap errors, plus bias (median), mean, rms and n.
- per-event uncertainties: ``pulls`` (pred - true) / sigma, whose ``width68`` is 1 for a
  calibrated sigma; ``kept_fraction_resolution`` and ``split_by_sigma``, the resolution of the
  events with the smallest sigma (does the sigma rank events?).

Non-finite values are dropped everywhere (``n`` counts what was used); too few values give NaN
rather than an exception, so that an empty bin of a profile does not kill a whole plot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from xec.gaussfit import core_fits

# Central 68.27 % interval (+-1 sigma of a Gaussian).
_Q_LO, _Q_HI = 50.0 - 34.1345, 50.0 + 34.1345
# Standard deviation of a unit Gaussian truncated to +-2 sigma: used to start the core fit.
# std of a unit Gaussian truncated at +-2 sigma; erf(2 / sqrt 2) written out so that the metrics
# never import scipy (0.3 s; every per-file inference job imports them)
_ERF_SQRT2 = 0.9544997361036416
_TRUNC2_STD = float(np.sqrt(1.0 - 2.0 * 2.0 * np.exp(-2.0) / np.sqrt(2 * np.pi) / _ERF_SQRT2))
MIN_EVENTS = 10  # fewer finite values than this: every estimator returns NaN
CORE_NSIGMA = 2.0  # core window of the Gaussian fit, in fitted sigmas
CORE_ITERATIONS = 5


def _finite(x: np.ndarray | Sequence[float]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def width68(x: np.ndarray | Sequence[float]) -> float:
    """Half-width of the central 68.27 % interval of ``x`` (equals sigma for a Gaussian)."""
    x = _finite(x)
    if x.size < MIN_EVENTS:
        return float("nan")
    lo, hi = np.percentile(x, [_Q_LO, _Q_HI])
    return float(0.5 * (hi - lo))


def bias(x: np.ndarray | Sequence[float]) -> float:
    """Median of the residuals (robust against tails, unlike the mean)."""
    x = _finite(x)
    return float(np.median(x)) if x.size >= MIN_EVENTS else float("nan")


def rms(x: np.ndarray | Sequence[float]) -> float:
    """Root mean square of the residuals around zero (includes the bias)."""
    x = _finite(x)
    return float(np.sqrt(np.mean(x * x))) if x.size >= MIN_EVENTS else float("nan")


def skewness(x: np.ndarray | Sequence[float]) -> float:
    """Sample skewness E[(x-mu)^3]/sigma^3 (negative for a low tail)."""
    x = _finite(x)
    if x.size < MIN_EVENTS:
        return float("nan")
    d = x - x.mean()
    s2 = np.mean(d * d)
    return float(np.mean(d**3) / s2**1.5) if s2 > 0 else 0.0


def gaussian_core_fit(
    x: np.ndarray | Sequence[float],
    nsigma: float = CORE_NSIGMA,
    iterations: int = CORE_ITERATIONS,
    start: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """(mu, sigma) of a Gaussian fitted (chi2 with Poisson errors, xec.gaussfit) to the
    histogram of ``x`` within mu +- nsigma*sigma, iterated: start from the median and width68 (or
    from ``start``), fit, re-centre the window on the fit, refit until the window moves by less
    than 1 % of sigma. Returns (nan, nan) if there are too few values or the fit fails."""
    x = _finite(x)
    if x.size < MIN_EVENTS:
        return float("nan"), float("nan")
    mu, sigma = start if start is not None else (float(np.median(x)), width68(x))
    if not sigma > 0:  # constant sample (or all but a few identical)
        return mu, 0.0
    mu, sigma = core_fits(x[None], np.array([[mu, sigma]]), nsigma, iterations, MIN_EVENTS, _TRUNC2_STD)[0]
    return float(mu), float(sigma)


def gaussian_core_sigma(x: np.ndarray | Sequence[float]) -> float:
    """Sigma of the iterative +-2 sigma Gaussian core fit (see :func:`gaussian_core_fit`)."""
    return gaussian_core_fit(x)[1]


def resolution(
    x: np.ndarray | Sequence[float], n_boot: int = 200, seed: int = 0, n_boot_core: int | None = None
) -> dict[str, float]:
    """Resolution summary of residuals ``x``: width68 and sigma_core with bootstrap errors
    (standard deviation over ``n_boot`` resamples with a seeded generator: same input, same
    numbers), bias (median), mu_core, mean, rms, skewness and n (finite values used).
    ``n_boot_core`` (default ``n_boot``) limits the resamples refitted for sigma_core_err, the
    expensive part (one histogram fit per resample)."""
    x = _finite(x)
    n = int(x.size)
    out: dict[str, float] = {
        "n": n,
        "width68": width68(x),
        "bias": bias(x),
        "rms": rms(x),
        "skewness": skewness(x),
        "mean": float(x.mean()) if n >= MIN_EVENTS else float("nan"),
    }
    mu_core, sigma_core = gaussian_core_fit(x)
    out["mu_core"], out["sigma_core"] = mu_core, sigma_core
    out["width68_err"] = out["sigma_core_err"] = float("nan")
    if n >= MIN_EVENTS and n_boot > 1:
        nc = n_boot if n_boot_core is None else min(n_boot, n_boot_core)
        fit_cores = np.isfinite(sigma_core)
        halves, cores, n_cores = [], [], 0
        for samples in _resamples(x, n_boot, seed):
            lo, hi = np.percentile(samples, [_Q_LO, _Q_HI], axis=1)
            halves.append(0.5 * (hi - lo))
            if fit_cores and n_cores < nc:
                # each resample starts from the full-sample fit (same estimator, fewer iterations),
                # all of them at once (xec.gaussfit); a constant sample's 0 stays 0
                take = samples[: nc - n_cores]
                cores.append(_resample_core_sigmas(take, (mu_core, sigma_core)))
                n_cores += len(take)
        out["width68_err"] = float(np.std(np.concatenate(halves), ddof=1))
        cores = np.concatenate(cores) if cores else np.array([])
        cores = cores[np.isfinite(cores)]
        if cores.size > 1:
            out["sigma_core_err"] = float(np.std(cores, ddof=1))
    return out


def _resample_core_sigmas(rows: np.ndarray, start: tuple[float, float]) -> np.ndarray:
    """Core-fit sigmas of bootstrap resamples (rows, n), all started from the full sample's fit."""
    starts = np.tile(start, (len(rows), 1))
    return core_fits(rows, starts, CORE_NSIGMA, CORE_ITERATIONS, MIN_EVENTS, _TRUNC2_STD)[:, 1]


def resolution_ratio(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    n_boot: int = 200,
    seed: int = 0,
    n_boot_core: int | None = None,
) -> dict[str, float]:
    """How two methods compare on the same events (``a[i]``, ``b[i]``: residuals of event i):
    width68(a) / width68(b) and sigma_core(a) / sigma_core(b), with paired bootstrap errors.

    Each resample draws events, both methods' residuals of each, so the errors keep the two
    widths' correlation: both measure the same showers, and the ratio's error is smaller than
    the two widths' errors added in quadrature. Events where either residual is non-finite are
    left out (``n``). ``n_boot_core`` (default ``n_boot``) limits the resamples refitted for
    sigma_core_err (two core fits each)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"resolution_ratio: {a.size} and {b.size} residuals; expected one pair per event")
    keep = np.isfinite(a) & np.isfinite(b)
    pairs = np.stack([a[keep], b[keep]], 1)
    n = int(pairs.shape[0])
    nan = float("nan")
    out: dict[str, float] = {"n": n, "width68": nan, "width68_err": nan, "sigma_core": nan, "sigma_core_err": nan}
    if n < MIN_EVENTS:
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        out["width68"] = float(width68(pairs[:, 0]) / width68(pairs[:, 1]))
        fits = [gaussian_core_fit(pairs[:, k]) for k in range(2)]
        out["sigma_core"] = float(fits[0][1] / fits[1][1])
    if n_boot < 2:
        return out
    nc = n_boot if n_boot_core is None else min(n_boot, n_boot_core)
    fit_cores = bool(np.isfinite(out["sigma_core"]))
    halves, cores, n_cores = [], [], 0
    for samples in _resamples(pairs, n_boot, seed):  # (rows, n, 2)
        lo, hi = np.percentile(samples, [_Q_LO, _Q_HI], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            halves.append((hi - lo)[:, 0] / (hi - lo)[:, 1])
        if fit_cores and n_cores < nc:
            take = samples[: nc - n_cores]
            sig = [_resample_core_sigmas(take[..., k], fits[k]) for k in range(2)]
            with np.errstate(divide="ignore", invalid="ignore"):
                cores.append(sig[0] / sig[1])
            n_cores += len(take)
    halves = np.concatenate(halves)
    halves = halves[np.isfinite(halves)]
    if halves.size > 1:
        out["width68_err"] = float(np.std(halves, ddof=1))
    cores = np.concatenate(cores) if cores else np.array([])
    cores = cores[np.isfinite(cores)]
    if cores.size > 1:
        out["sigma_core_err"] = float(np.std(cores, ddof=1))
    return out


def _resamples(x: np.ndarray, n_boot: int, seed: int, block_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
    """``n_boot`` bootstrap resamples of ``x`` (events along the first axis) in blocks of rows
    (the same numbers as one (n_boot, n) draw: the generator's stream does not depend on the
    block size), so that the memory stays ~``block_bytes`` whatever the sample size (2 x 10^6
    events: 3.2 GB at once)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    rows = max(1, block_bytes // (16 * x.size))
    for start in range(0, n_boot, rows):
        yield x[rng.integers(0, n, size=(min(rows, n_boot - start), n))]


def tail_fraction(x: np.ndarray | Sequence[float], nsigma: float = 3.0, side: str = "low") -> float:
    """Fraction of values beyond ``nsigma`` core sigmas from the core mean, on the ``low`` or
    ``high`` side (a Gaussian gives 0.13 % at 3 sigma). Used for the energy low tail."""
    x = _finite(x)
    mu, sigma = gaussian_core_fit(x)
    if not np.isfinite(sigma):
        return float("nan")
    if side == "low":
        return float(np.mean(x < mu - nsigma * sigma))
    if side == "high":
        return float(np.mean(x > mu + nsigma * sigma))
    raise ValueError(f"side must be 'low' or 'high', not {side!r}")


def opening_angle_deg(theta1, phi1, theta2, phi2) -> np.ndarray:
    """Angle (deg) between the directions (theta1, phi1) and (theta2, phi2), all in degrees,
    using the MEG II convention of :func:`xec.geometry.angles_to_direction`."""
    from xec.geometry import angles_to_direction

    d1 = angles_to_direction(np.asarray(theta1, dtype=np.float64), np.asarray(phi1, dtype=np.float64))
    d2 = angles_to_direction(np.asarray(theta2, dtype=np.float64), np.asarray(phi2, dtype=np.float64))
    # atan2(|a x b|, a.b) is accurate for tiny angles, where arccos(a.b) loses all precision
    cross = np.linalg.norm(np.cross(d1, d2), axis=-1)
    dot = np.sum(d1 * d2, axis=-1)
    return np.degrees(np.arctan2(cross, dot))


def binned_resolution(
    values: np.ndarray,
    residuals: np.ndarray,
    edges: np.ndarray | Sequence[float],
    n_boot: int = 50,
    seed: int = 0,
    n_boot_core: int | None = None,
) -> list[dict[str, float]]:
    """:func:`resolution` of ``residuals`` in bins of ``values`` (for resolution profiles);
    each dict also carries the bin's ``lo``, ``hi`` and ``centre``."""
    values = np.asarray(values, dtype=np.float64).ravel()
    residuals = np.asarray(residuals, dtype=np.float64).ravel()
    edges = np.asarray(edges, dtype=np.float64)
    out = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        sel = (values >= lo) & ((values < hi) if i < len(edges) - 2 else (values <= hi))
        r = resolution(residuals[sel], n_boot=n_boot, seed=seed + i, n_boot_core=n_boot_core)
        r.update(lo=float(lo), hi=float(hi), centre=float(0.5 * (lo + hi)))
        out.append(r)
    return out


def quantile(x: np.ndarray | Sequence[float], q: float = 68.27, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """``q``-th percentile of ``x`` (e.g. the 68 % containment of an opening angle) with a
    seeded bootstrap error: dict(value, err, n)."""
    x = _finite(x)
    n = int(x.size)
    if n < MIN_EVENTS:
        return {"value": float("nan"), "err": float("nan"), "n": n}
    out = {"value": float(np.percentile(x, q)), "err": float("nan"), "n": n}
    if n_boot > 1:
        boot = np.concatenate([np.percentile(s, q, axis=1) for s in _resamples(x, n_boot, seed)])
        out["err"] = float(np.std(boot, ddof=1))
    return out


def pulls(pred: np.ndarray, true: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(pred - true) / sigma, elementwise; NaN where sigma is not a positive finite number."""
    pred, true, sigma = (np.asarray(a, dtype=np.float64) for a in (pred, true, sigma))
    ok = np.isfinite(sigma) & (sigma > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, (pred - true) / np.where(ok, sigma, 1.0), np.nan)


def kept_fraction_resolution(
    residual: np.ndarray | Sequence[float],
    sigma: np.ndarray | Sequence[float],
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
) -> list[dict[str, float]]:
    """``width68`` of the residuals of the events kept by a cut on the per-event ``sigma``:
    for each fraction f, the f * n events with the smallest sigma (events whose residual or sigma
    is not finite are dropped first). Each dict: fraction, n, width68, sigma_cut (largest kept
    sigma). A sigma that ranks events well gives a width that grows with f."""
    r = np.asarray(residual, dtype=np.float64).ravel()
    s = np.asarray(sigma, dtype=np.float64).ravel()
    ok = np.isfinite(r) & np.isfinite(s)
    r, s = r[ok], s[ok]
    order = np.argsort(s, kind="stable")
    out = []
    for f in fractions:
        k = int(round(float(f) * r.size))
        kept = order[:k]
        out.append(
            {
                "fraction": float(f),
                "n": int(k),
                "width68": width68(r[kept]),
                "sigma_cut": float(s[kept[-1]]) if k else float("nan"),
            }
        )
    return out


def split_by_sigma(
    residual: np.ndarray | Sequence[float], sigma: np.ndarray | Sequence[float], fraction: float = 0.5
) -> dict[str, float]:
    """``width68`` of the ``fraction`` of events with the smallest sigma (``best``) and of the
    rest (``rest``), and rest / best: how well the per-event sigma ranks events."""
    r = np.asarray(residual, dtype=np.float64).ravel()
    s = np.asarray(sigma, dtype=np.float64).ravel()
    ok = np.isfinite(r) & np.isfinite(s)
    r, s = r[ok], s[ok]
    order = np.argsort(s, kind="stable")
    k = int(round(fraction * r.size))
    best, rest = width68(r[order[:k]]), width68(r[order[k:]])
    return {"fraction": float(fraction), "best": best, "rest": rest, "ratio": rest / best if best > 0 else float("nan")}
