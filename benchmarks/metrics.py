"""Resolution estimators' speed: the bootstrap refits of the Gaussian core (the physics summary's
and the resolution plots' slow part), xec.gaussfit's rows side by side against one scipy
``curve_fit`` per resample (what xec.metrics did until 2026-12-04), on the same resamples; and
``xec.metrics.resolution`` and ``resolution_ratio`` (two methods on the same events, paired
bootstrap) as the summary calls them.

    .venv/bin/python benchmarks/metrics.py [--events 300 2000] [--resamples 30] [--repeats 5]

Samples: a unit Gaussian with a 10 % low exponential tail (an energy response's shape). The
resamples start from the full sample's fit, as in ``resolution``. Prints the median and best of
``--repeats`` timings, and how far the two fits' sigmas lie apart; results in
docs/performance.md ("Physics summary and plots").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def curve_fit_core(x: np.ndarray, start: tuple[float, float], nsigma: float = 2.0, iterations: int = 5) -> float:
    """The core fit as xec.metrics ran it with scipy (the reference): one curve_fit per window."""
    from scipy.optimize import OptimizeWarning, curve_fit

    from xec import metrics

    def gauss(v, a, mu, sigma):
        return a * np.exp(-0.5 * ((v - mu) / sigma) ** 2)

    def jac(v, a, mu, sigma):
        z = (v - mu) / sigma
        e = np.exp(-0.5 * z * z)
        return np.stack([e, a * e * z / sigma, a * e * z * z / sigma], axis=-1)

    mu, sigma = start
    for _ in range(iterations):
        lo, hi = mu - nsigma * sigma, mu + nsigma * sigma
        core = x[(x >= lo) & (x <= hi)]
        if core.size < metrics.MIN_EVENTS:
            break
        nbins = int(np.clip(np.sqrt(core.size), 10, 60))
        width = (hi - lo) / nbins
        counts = np.bincount(np.minimum(((core - lo) / width).astype(np.int64), nbins - 1), minlength=nbins)
        counts = counts.astype(np.float64)
        centres = lo + width * (np.arange(nbins) + 0.5)
        p0 = (counts.max(), float(core.mean()), float(core.std() / metrics._TRUNC2_STD))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, _ = curve_fit(
                    gauss,
                    centres,
                    counts,
                    p0=p0,
                    sigma=np.sqrt(np.maximum(counts, 1.0)),
                    absolute_sigma=True,
                    jac=jac,
                    maxfev=2000,
                )
        except RuntimeError:
            return float("nan")
        new_mu, new_sigma = float(popt[1]), abs(float(popt[2]))
        converged = abs(new_sigma - sigma) < 1e-2 * sigma and abs(new_mu - mu) < 1e-2 * sigma
        mu, sigma = new_mu, new_sigma
        if converged:
            break
    return sigma


def timed(repeats: int, fn, *args, **kwargs) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.min(times)), out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, nargs="+", default=[300, 2000])
    ap.add_argument("--resamples", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    from xec import metrics
    from xec.gaussfit import core_fits

    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, numpy {np.__version__}")
    print(
        "| events | resamples | curve_fit, one per resample (ms) | xec.gaussfit rows (ms) | speed-up "
        "| max rel. diff of sigma | resolution(n_boot 200, n_boot_core 30) (ms) | resolution_ratio (same) (ms) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.events:
        rng = np.random.default_rng(n)
        x = np.concatenate([rng.normal(0.0, 1.0, n - n // 10), -1.0 - rng.exponential(4.0, n // 10)])
        mu, sigma = metrics.gaussian_core_fit(x)
        samples = x[np.random.default_rng(0).integers(0, n, (args.resamples, n))]
        start = np.tile([mu, sigma], (args.resamples, 1))
        ref_med, ref_min, ref = timed(
            args.repeats, lambda rows, st: [curve_fit_core(r, st) for r in rows], samples, (mu, sigma)
        )
        new_med, new_min, new = timed(
            args.repeats, core_fits, samples, start, 2.0, 5, metrics.MIN_EVENTS, metrics._TRUNC2_STD
        )
        new = new[:, 1]
        res_med, _, _ = timed(args.repeats, metrics.resolution, x, n_boot=200, n_boot_core=30)
        # a second method sharing most of the first one's error, on the same events
        other = x + np.random.default_rng(n + 1).normal(0.0, 0.7, n)
        ratio_med, _, _ = timed(args.repeats, metrics.resolution_ratio, x, other, n_boot=200, n_boot_core=30)
        diff = np.nanmax(np.abs(np.asarray(new) - np.asarray(ref)) / np.asarray(ref))
        print(
            f"| {n} | {args.resamples} | {1e3 * ref_med:.1f} (best {1e3 * ref_min:.1f}) | {1e3 * new_med:.1f} "
            f"(best {1e3 * new_min:.1f}) | {ref_med / new_med:.1f}x | {diff:.1e} | {1e3 * res_med:.1f} "
            f"| {1e3 * ratio_med:.1f} |"
        )


if __name__ == "__main__":
    main()
