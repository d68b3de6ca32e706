"""The monotone sigma calibration (xec.models.sigma_calibration): it fixes a sigma whose scale is
wrong by a sigma-dependent factor, keeps the order of events, one bin is the old single scale,
and the torch form (exported to ONNX) matches the numpy form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xec.errors import XecError
from xec.metrics import width68
from xec.models import sigma_calibration as SC


def _compressed(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Residuals whose true width is 3 sigma^1.5 (in units where the median sigma is ~0.3): a
    head that ranks events right but compresses the range, like the energy head on leaking
    events."""
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.uniform(np.log(0.05), np.log(2.0), n))
    residual = rng.standard_normal(n) * 3 * sigma**1.5
    return residual, sigma


def _tercile_pull_widths(residual, sigma_cal, sigma_raw) -> list[float]:
    edges = np.quantile(sigma_raw, [0, 1 / 3, 2 / 3, 1])
    idx = np.clip(np.searchsorted(edges, sigma_raw, side="right") - 1, 0, 2)
    return [width68(residual[idx == k] / sigma_cal[idx == k]) for k in range(3)]


def test_bins_make_every_sigma_range_unit_width_where_one_scale_cannot():
    r, s = _compressed()
    one = SC.fit(r[:, None], np.zeros((len(r), 1)), s[:, None], bins=1)
    eight = SC.fit(r[:, None], np.zeros((len(r), 1)), s[:, None], bins=8)
    r2, s2 = _compressed(seed=1)  # fitted on one sample, judged on another
    w_one = _tercile_pull_widths(r2, SC.apply_numpy(one, s2[:, None])[:, 0], s2)
    w_eight = _tercile_pull_widths(r2, SC.apply_numpy(eight, s2[:, None])[:, 0], s2)
    assert w_one[0] < 0.75 and w_one[2] > 1.3  # one scale: small sigmas too large, large too small
    assert w_eight == pytest.approx([1.0, 1.0, 1.0], abs=0.08)
    assert width68(r2 / SC.apply_numpy(eight, s2[:, None])[:, 0]) == pytest.approx(1.0, abs=0.05)


def test_one_bin_is_the_single_scale_of_the_pull_width():
    r, s = _compressed(n=4000)
    cal = SC.fit(r[:, None], np.zeros((4000, 1)), s[:, None], bins=1)
    factor = width68(r / s)
    np.testing.assert_allclose(SC.apply_numpy(cal, s[:, None])[:, 0], s * factor, rtol=1e-12)


def test_calibrated_sigma_keeps_the_order_of_events():
    rng = np.random.default_rng(3)
    s = np.exp(rng.uniform(-3, 1, 3000))
    r = rng.standard_normal(3000) * np.where(s < 0.5, 1.0, 0.2) * s  # a drop the fit must smooth
    cal = SC.fit(r[:, None], np.zeros((3000, 1)), s[:, None], bins=12)
    k = np.asarray(cal["log_sigma"][0])
    assert np.all(np.diff(k + np.asarray(cal["log_factor"][0])) >= -1e-12)
    grid = np.exp(np.linspace(-5, 3, 2001))[:, None]
    assert np.all(np.diff(SC.apply_numpy(cal, grid)[:, 0]) >= -1e-12)  # flat where the fit pooled bins


def test_too_few_events_fall_back_to_fewer_bins():
    r, s = _compressed(n=120)
    cal = SC.fit(r[:, None], np.zeros((120, 1)), s[:, None], bins=8)
    assert len(cal["log_sigma"][0]) == 120 // SC.MIN_EVENTS_PER_BIN


def test_torch_form_matches_numpy_with_columns_of_different_length():
    entry = {"log_sigma": [[-3.0, -1.0, 0.5], [0.0]], "log_factor": [[0.4, -0.2, 0.3], [np.log(2.0)]]}
    entry = SC.normalize(entry, 2, "toy")
    sigma = np.exp(np.random.default_rng(5).uniform(-5, 2, (500, 2)))
    knots, logf = SC.as_tensors(entry)
    got = SC.apply_torch(torch.from_numpy(sigma).float(), knots, logf).numpy()
    np.testing.assert_allclose(got, SC.apply_numpy(entry, sigma), rtol=2e-6)
    np.testing.assert_allclose(got[:, 1], 2 * sigma[:, 1], rtol=2e-6)
    # constant factor outside the knots
    edge = SC.apply_torch(torch.tensor([[np.exp(-9.0), 1.0], [np.exp(4.0), 1.0]]), knots, logf)
    assert edge[0, 0].item() == pytest.approx(np.exp(-9.0 + 0.4), rel=1e-5)
    assert edge[1, 0].item() == pytest.approx(np.exp(4.0 + 0.3), rel=1e-5)


def test_bad_calibrations_are_named():
    with pytest.raises(XecError, match="'energy'.*positive"):
        SC.normalize([0.0], 1, "energy")
    with pytest.raises(XecError, match="not monotone"):
        SC.normalize({"log_sigma": [[0.0, 1.0]], "log_factor": [[0.0, -2.0]]}, 1, "energy")
    with pytest.raises(XecError, match="3 columns"):
        SC.normalize({"log_sigma": [[0.0]], "log_factor": [[0.0]]}, 3, "uvwFI")
