"""xec.gaussfit: the batched Gaussian core fit against scipy's curve_fit (the oracle it replaced)
and against itself one row at a time."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from xec import metrics
from xec.gaussfit import core_fits, fit_gaussians


def _histogram(x: np.ndarray, nbins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sigma = np.median(x), metrics.width68(x)
    counts, edges = np.histogram(x, bins=nbins, range=(mu - 2 * sigma, mu + 2 * sigma))
    return 0.5 * (edges[1:] + edges[:-1]), counts.astype(np.float64), np.sqrt(np.maximum(counts, 1.0))


def test_fit_agrees_with_curve_fit():
    from scipy.optimize import OptimizeWarning, curve_fit

    def gauss(x, a, mu, sigma):
        return a * np.exp(-0.5 * ((x - mu) / sigma) ** 2)

    rng = np.random.default_rng(11)
    hists = []
    for n in (100, 300, 1000, 3000, 20000):
        for _ in range(4):
            x = rng.normal(rng.normal(), rng.uniform(0.3, 3.0), n)
            x = np.concatenate([x, -rng.exponential(3.0, n // 10)])  # a low tail, as the energy's
            hists.append(_histogram(x, int(np.clip(np.sqrt(0.8 * n), 10, 60))))
    width = max(len(h[0]) for h in hists)

    def pad(v, fill):
        return np.array([np.pad(h, (0, width - len(h)), constant_values=fill) for h in v])

    centres, counts = pad([h[0] for h in hists], 0.0), pad([h[1] for h in hists], 0.0)
    w = pad([1.0 / h[2] for h in hists], 0.0)  # padding bins weigh nothing
    p0 = np.array([[c.max(), c @ x / c.sum(), (x.max() - x.min()) / 4] for x, c, _ in hists])
    p, ok = fit_gaussians(centres, counts, w, p0)
    assert ok.all()
    for (x, c, err), start, got in zip(hists, p0, p):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            want, _ = curve_fit(gauss, x, c, p0=start, sigma=err, absolute_sigma=True, maxfev=2000)
        assert abs(got[2]) == pytest.approx(abs(want[2]), rel=1e-5)
        assert got[1] == pytest.approx(want[1], abs=1e-5 * abs(want[2]))
        assert got[0] == pytest.approx(want[0], rel=1e-5)


def test_rows_fit_as_one_at_a_time():
    rng = np.random.default_rng(5)
    samples = rng.normal(1.0, 2.0, (12, 1500))
    samples[::3, :150] = -8.0 - rng.exponential(4.0, (4, 150))  # some rows with a low tail
    start = np.tile([1.1, 1.9], (12, 1))
    together = core_fits(samples, start, 2.0, 5, 10, metrics._TRUNC2_STD)
    alone = np.array([core_fits(s[None], start[:1], 2.0, 5, 10, metrics._TRUNC2_STD)[0] for s in samples])
    np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-12)
    assert np.all(np.abs(together[:, 1] - 2.0) < 0.15)  # the core's sigma, tail or not
    # the public estimator is the same fit
    assert metrics.gaussian_core_fit(samples[1], start=(1.1, 1.9)) == pytest.approx(tuple(together[1]), rel=1e-12)


def test_few_values_keep_the_start_and_failed_fits_are_nan():
    rng = np.random.default_rng(2)
    far = rng.normal(50.0, 1.0, (1, 200))  # nothing inside the start's window
    assert core_fits(far, np.array([[0.0, 1.0]]), 2.0, 5, 10, metrics._TRUNC2_STD)[0].tolist() == [0.0, 1.0]
    # a window holding one repeated value: the Gaussian narrows without end (as with curve_fit)
    flat = np.full((1, 100), 3.0)
    assert np.isnan(core_fits(flat, np.array([[3.0, 1.0]]), 2.0, 5, 10, metrics._TRUNC2_STD)).all()
    # a start without a window is returned as given
    assert core_fits(far, np.array([[50.0, 0.0]]), 2.0, 5, 10, metrics._TRUNC2_STD)[0].tolist() == [50.0, 0.0]
    # the public estimator says 0 for a constant sample before fitting anything
    assert metrics.gaussian_core_fit(flat[0]) == (3.0, 0.0)
