"""PeakWindowFit: the regressor heads' learned local fit around the brightest inner MPPC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xec.geometry import N_SENSORS, get_geometry, xyz_to_uvw
from xec.models import XECRegressor, model_config
from xec.models.peakfit import COORD_SCALE_CM, PeakWindowFit

SENTINEL = -1.0


@pytest.fixture(scope="module")
def geo():
    return get_geometry()


def event_with_hot_mppc(geo, row: int, col: int, b: int = 1) -> torch.Tensor:
    """Dim uniform light everywhere, a 3x3 bump around inner MPPC (row, col), times valid."""
    x = torch.full((b, N_SENSORS, 2), 0.05)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r, c = row + dr, col + dc
            if 0 <= r < geo.inner_index.shape[0] and 0 <= c < geo.inner_index.shape[1]:
                x[:, geo.inner_index[r, c], 0] = 0.3 if (dr, dc) == (0, 0) else 0.2
    return x


def anchor_of(geo, row: int, col: int) -> np.ndarray:
    return xyz_to_uvw(geo.positions[geo.inner_index[row, col]])[:2] / COORD_SCALE_CM


def test_anchor_is_the_brightest_mppc_inside_and_clamped_at_the_edges(geo):
    fit = PeakWindowFit(geo, window=11, sentinel=SENTINEL)
    for (row, col), centre in (((40, 20), (40, 20)), ((0, 0), (5, 5)), ((92, 43), (87, 38)), ((3, 30), (5, 30))):
        out = fit(event_with_hot_mppc(geo, row, col))
        np.testing.assert_allclose(out[0, -2:].detach().numpy(), anchor_of(geo, *centre), atol=1e-6)


def test_dead_sensor_sentinel_is_never_the_peak(geo):
    fit = PeakWindowFit(geo, window=5, sentinel=SENTINEL)
    x = event_with_hot_mppc(geo, 50, 10)
    x[0, geo.inner_index[20, 30], :] = SENTINEL  # a dead sensor elsewhere; sentinel < any valid npho
    x[0, :, 0] = torch.where(x[0, :, 0] == 0.05, torch.tensor(-0.5), x[0, :, 0])  # invalid-looking low values
    out = fit(x)
    np.testing.assert_allclose(out[0, -2:].detach().numpy(), anchor_of(geo, 50, 10), atol=1e-6)


def test_shifted_pattern_gives_the_same_patch_and_a_shifted_anchor(geo):
    """Inside the face the MLP reads the same patch for a shifted light pattern; only the
    anchor moves by one MPPC pitch (1.53 cm in v per row, 1.51 cm in u per column)."""
    fit = PeakWindowFit(geo, window=7, sentinel=SENTINEL)
    pa, aa = fit.local_patch(event_with_hot_mppc(geo, 40, 20))
    pb, ab = fit.local_patch(event_with_hot_mppc(geo, 41, 21))
    torch.testing.assert_close(pa, pb)
    assert pa[0, 24, 0] == 0.3 and pa.shape == (1, 49, 2)  # the peak sits in the middle of the 7x7 patch
    step = (ab[0] - aa[0]).numpy() * COORD_SCALE_CM
    assert abs(abs(step[0]) - 1.51) < 0.01 and abs(abs(step[1]) - 1.530) < 0.01


def test_regressor_with_and_without_peak_window(geo):
    x = event_with_hot_mppc(geo, 30, 12, b=3)
    with_peak = XECRegressor(model_config({"preset": "tiny"}), ["uvwFI"])
    without = XECRegressor(model_config({"preset": "tiny", "peak_window": 0}), ["uvwFI"])
    assert with_peak.peak is not None and without.peak is None
    assert with_peak(x)["uvwFI"].shape == without(x)["uvwFI"].shape == (3, 3)
    loss = with_peak(x)["uvwFI"].square().sum()
    loss.backward()
    assert with_peak.peak.mlp[0].weight.grad.abs().sum() > 0
    assert with_peak.heads["uvwFI"].skip.weight.grad.abs().sum() > 0


def test_window_larger_than_the_face_is_rejected(geo):
    with pytest.raises(ValueError, match="does not fit"):
        PeakWindowFit(geo, window=45)
