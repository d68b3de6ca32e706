"""xec.metrics: the shared resolution estimators, checked on samples with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from xec import metrics


@pytest.fixture(scope="module")
def gauss():
    return np.random.default_rng(123).normal(0.5, 2.0, 20000)


def test_width68_equals_sigma_for_gaussian(gauss):
    # stat. error of a quantile-based width ~ 0.8 sigma/sqrt(n) ~ 0.011 for n=20000
    assert metrics.width68(gauss) == pytest.approx(2.0, abs=0.04)


def test_width68_of_uniform_is_analytic():
    x = np.linspace(-1.0, 1.0, 100001)
    assert metrics.width68(x) == pytest.approx(0.682689, abs=1e-4)


def test_core_sigma_ignores_tail():
    rng = np.random.default_rng(7)
    core = rng.normal(0.0, 1.0, 18000)
    tail = -rng.exponential(6.0, 2000) - 1.0  # 10 % low tail, as an energy response has
    x = np.concatenate([core, tail])
    assert metrics.gaussian_core_sigma(x) == pytest.approx(1.0, abs=0.05)
    # the robust width is pulled by the tail, the rms much more
    assert metrics.width68(x) > 1.08
    assert metrics.rms(x) > 2.0
    assert metrics.skewness(x) < -2.0
    # ~10 % of the events are in the tail (a part of them falls inside 3 sigma)
    assert 0.07 < metrics.tail_fraction(x, 3.0, "low") < 0.10
    assert metrics.tail_fraction(x, 3.0, "high") < 0.005


def test_core_fit_gaussian_mean_and_sigma(gauss):
    mu, sigma = metrics.gaussian_core_fit(gauss)
    assert mu == pytest.approx(0.5, abs=0.05)
    assert sigma == pytest.approx(2.0, abs=0.05)


def test_resolution_bootstrap_errors_match_statistics():
    x = np.random.default_rng(3).normal(0.0, 1.0, 2000)
    r = metrics.resolution(x, n_boot=100, seed=1)
    assert r["n"] == 2000
    assert r["width68"] == pytest.approx(1.0, abs=0.06)
    # expected error of the 68 % half-width: ~ 0.76 sigma/sqrt(n) = 0.017; of a Gaussian fit ~ 0.016
    assert 0.010 < r["width68_err"] < 0.028
    assert 0.008 < r["sigma_core_err"] < 0.03
    assert abs(r["bias"]) < 0.1 and abs(r["mean"]) < 0.1
    assert r["rms"] == pytest.approx(1.0, abs=0.05)
    # same seed, same numbers; another seed, other bootstrap errors
    assert metrics.resolution(x, n_boot=100, seed=1) == r
    assert metrics.resolution(x, n_boot=100, seed=2)["width68_err"] != r["width68_err"]


def test_non_finite_dropped_and_small_samples_nan():
    x = np.r_[np.random.default_rng(0).normal(0, 1, 500), np.nan, np.inf]
    r = metrics.resolution(x, n_boot=20)
    assert r["n"] == 500 and np.isfinite(r["width68"])
    small = metrics.resolution([1.0, 2.0, 3.0], n_boot=20)
    assert small["n"] == 3 and np.isnan(small["width68"]) and np.isnan(small["sigma_core"])
    assert metrics.gaussian_core_sigma(np.ones(100)) == 0.0


def test_opening_angle():
    # same direction -> 0, opposite -> 180, 90 deg apart in theta at phi=0
    assert metrics.opening_angle_deg(90.0, 0.0, 90.0, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert metrics.opening_angle_deg(0.0, 0.0, 180.0, 0.0) == pytest.approx(180.0, abs=1e-9)
    assert metrics.opening_angle_deg(90.0, 10.0, 90.0, 30.0) == pytest.approx(20.0, abs=1e-9)
    assert metrics.opening_angle_deg(90.0, 0.0, 0.0, 0.0) == pytest.approx(90.0, abs=1e-9)
    # at theta=90 a phi difference is the opening angle; at theta=30 it is sin(30) times smaller
    small = metrics.opening_angle_deg(30.0, 0.0, 30.0, 0.1)
    assert small == pytest.approx(0.05, rel=1e-3)
    # vectorised, symmetric, precise for tiny angles
    t1, p1 = np.array([80.0, 100.0]), np.array([170.0, 190.0])
    a = metrics.opening_angle_deg(t1, p1, t1 + 1e-6, p1)
    assert a.shape == (2,) and np.allclose(a, 1e-6, rtol=1e-3)
    assert np.allclose(
        metrics.opening_angle_deg(t1, p1, t1[::-1], p1[::-1]), metrics.opening_angle_deg(t1[::-1], p1[::-1], t1, p1)
    )


def test_binned_resolution_profile():
    rng = np.random.default_rng(5)
    w = rng.uniform(0, 20, 20000)
    resid = rng.normal(0, 1, w.size) * (1 + 0.1 * w)  # resolution grows with depth
    prof = metrics.binned_resolution(w, resid, [0, 5, 10, 20], n_boot=10)
    assert [p["centre"] for p in prof] == [2.5, 7.5, 15.0]
    widths = [p["width68"] for p in prof]
    assert widths[0] < widths[1] < widths[2]
    assert widths[2] == pytest.approx(2.5, rel=0.1)


def test_quantile_of_rayleigh_opening_angles():
    # 2D Gaussian angular errors of 1 deg per axis: opening angle is Rayleigh, q68 = sqrt(-2 ln 0.3173)
    rng = np.random.default_rng(11)
    a = np.hypot(rng.normal(0, 1, 20000), rng.normal(0, 1, 20000))
    r = metrics.quantile(a, 68.27, n_boot=50, seed=0)
    assert r["value"] == pytest.approx(np.sqrt(-2 * np.log(1 - 0.6827)), abs=0.03)
    assert 0.002 < r["err"] < 0.02 and r["n"] == 20000
    assert np.isnan(metrics.quantile([1.0, 2.0])["value"])


def test_resolution_ratio_of_scaled_residuals_is_exact():
    a = np.random.default_rng(5).normal(0.0, 1.0, 3000)
    r = metrics.resolution_ratio(a, 2.0 * a, n_boot=50, seed=0, n_boot_core=10)
    assert r["n"] == 3000
    assert r["width68"] == pytest.approx(0.5, rel=1e-12)
    assert r["width68_err"] < 1e-12  # every resample scales both alike
    assert r["sigma_core"] == pytest.approx(0.5, rel=1e-3)
    assert r["sigma_core_err"] < 2e-3


def test_resolution_ratio_error_is_the_paired_spread():
    """Two methods that share most of their error (the same showers): the paired bootstrap error
    matches the spread of the ratio over repeated experiments and is well below the two widths'
    errors added in quadrature."""
    rng = np.random.default_rng(11)

    def experiment(n=2000):
        shared = rng.normal(0.0, 1.0, n)
        return shared + rng.normal(0.0, 0.3, n), shared + rng.normal(0.0, 0.6, n)

    ratios = [metrics.width68(a) / metrics.width68(b) for a, b in (experiment() for _ in range(300))]
    a, b = experiment()
    r = metrics.resolution_ratio(a, b, n_boot=300, seed=3, n_boot_core=40)
    assert r["width68"] == pytest.approx(np.sqrt(1.09 / 1.36), abs=0.02)
    assert r["sigma_core"] == pytest.approx(np.sqrt(1.09 / 1.36), abs=0.02)
    truth = np.std(ratios, ddof=1)
    assert 0.7 * truth < r["width68_err"] < 1.4 * truth
    ra, rb = metrics.resolution(a, n_boot=300, seed=3), metrics.resolution(b, n_boot=300, seed=3)
    independent = r["width68"] * np.hypot(ra["width68_err"] / ra["width68"], rb["width68_err"] / rb["width68"])
    assert r["width68_err"] < 0.8 * independent
    assert 0.0 < r["sigma_core_err"] < 3 * truth
    # same seed, same numbers
    assert metrics.resolution_ratio(a, b, n_boot=300, seed=3, n_boot_core=40) == r


def test_resolution_ratio_pairs_finite_events_only():
    a = np.random.default_rng(2).normal(0.0, 1.0, 500)
    b = a.copy()
    a[:10], b[10:30] = np.nan, np.inf
    r = metrics.resolution_ratio(a, b, n_boot=20, seed=0, n_boot_core=5)
    assert r["n"] == 470 and r["width68"] == pytest.approx(1.0)
    assert np.isnan(metrics.resolution_ratio([1.0, 2.0], [1.0, 3.0])["width68"])
    with pytest.raises(ValueError, match="one pair per event"):
        metrics.resolution_ratio(np.ones(20), np.ones(21))
