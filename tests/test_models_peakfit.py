"""PeakWindowFit: the regressor heads' learned local fit around the brightest inner MPPC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xec.errors import XecError
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


def test_coarse_view_averages_2x2_blocks_of_valid_mppcs_around_the_peak(geo):
    """The second view: block means over the valid MPPCs only (the sentinel where none is),
    centred on the same peak's block, with the block's mean (u, v) as its centre."""
    fit = PeakWindowFit(geo, window=5, sentinel=SENTINEL, coarse=3)
    x = event_with_hot_mppc(geo, 40, 20)
    block = [geo.inner_index[r, c] for r in (42, 43) for c in (20, 21)]  # the block below the peak's
    x[0, block[0], :] = SENTINEL  # one dead MPPC: the mean of the other three
    x[0, block[1:], 0] = torch.tensor([0.1, 0.2, 0.3])
    patch, centre = fit.coarse_patch(x)
    assert patch.shape == (1, 9, 2)
    # peak (40, 20) -> block (20, 10), the middle of the 3 x 3 coarse patch; block (21, 10) below it
    assert patch[0, 4, 0] == pytest.approx((0.3 + 3 * 0.2) / 4)
    assert patch[0, 7, 0] == pytest.approx(0.2) and patch[0, 7, 1] == pytest.approx(0.05)
    rows = [anchor_of(geo, r, c) for r in (40, 41) for c in (20, 21)]
    np.testing.assert_allclose(centre[0].numpy(), np.mean(rows, axis=0), atol=1e-6)
    x[0, block[1:], :] = SENTINEL  # a wholly dead block reads as the sentinel
    assert (fit.coarse_patch(x)[0][0, 7] == SENTINEL).all()


def test_coarse_view_at_the_odd_last_row_and_in_the_regressor(geo):
    fit = PeakWindowFit(geo, window=11, sentinel=SENTINEL, coarse=9)
    patch, centre = fit.coarse_patch(event_with_hot_mppc(geo, 92, 43))
    # the last block row holds one MPPC row (93 rows): the mean of the peak (0.3) and its left
    # neighbour (0.2), not diluted by the padding; the centre of the patch is clamped at the edge
    assert patch[0, -1, 0] == pytest.approx(0.25)
    corner = np.mean([anchor_of(geo, r, c) for r in (84, 85) for c in (34, 35)], axis=0)
    np.testing.assert_allclose(centre[0].numpy(), corner, atol=1e-6)
    x = event_with_hot_mppc(geo, 30, 12, b=2)
    model = XECRegressor(model_config({"preset": "tiny", "peak_coarse": 9}), ["uvwFI"])
    assert model.peak.out_dim == 32 + 2 * 16 + 2
    model(x)["uvwFI"].square().sum().backward()
    assert model.peak.coarse_log_tau.grad.abs().sum() > 0


def test_coarse_view_exports_to_onnx_with_the_same_numbers(geo, tmp_path):
    """The exported graph gathers and pools the same blocks (a batch of 2 exported, 5 run: the
    batch axis is dynamic; peaks in the middle, at the odd last row and at a corner)."""
    import warnings

    import onnxruntime as ort

    fit = PeakWindowFit(geo, window=5, sentinel=SENTINEL, coarse=4).eval()
    x = torch.cat([event_with_hot_mppc(geo, r, c) for r, c in ((40, 20), (92, 43), (0, 0), (61, 3), (7, 40))])
    x[1, geo.inner_index[91, 40], :] = SENTINEL
    path = tmp_path / "peak.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fit, (x[:2],), str(path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, fit(x).numpy(), rtol=1e-5, atol=1e-5)


def test_refitted_peak_mlp_feeds_only_its_heads(geo):
    """peak_refit_tasks: the uvwFI head reads the window through its own MLP (peak_mlp). A copy
    of the shared MLP changes nothing; another MLP moves the position (and what follows it: the
    angle, the time's TOF correction), never the energy."""
    x = event_with_hot_mppc(geo, 30, 12, b=3)
    cfg = model_config({"preset": "tiny", "angle_from_position": True, "physics_aggregates": True})
    tasks = ["angle", "energy", "timing", "uvwFI"]
    torch.manual_seed(0)
    plain = XECRegressor(cfg, tasks).eval()
    refit = XECRegressor(cfg, tasks, peak_refit_tasks=["uvwFI"]).eval()
    assert refit.peak_refit_tasks == ("uvwFI",) and plain.peak_mlp is None
    state = plain.state_dict()
    state.update({f"peak_mlp.{k}": v for k, v in plain.peak.mlp.state_dict().items()})
    refit.load_state_dict(state)  # strict: the checkpoint of a refitted model holds peak_mlp.*
    with torch.no_grad():
        a, b = plain(x), refit(x)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
        refit.peak_mlp[-1].bias.add_(0.5)
        c = refit(x)
    torch.testing.assert_close(c["energy"], a["energy"], rtol=0, atol=0)
    for k in ("uvwFI", "angle", "timing"):
        assert not torch.equal(c[k], a[k]), k
    with pytest.raises(XecError, match="not among the tasks"):
        XECRegressor(cfg, ["uvwFI"], peak_refit_tasks=["angle"])
    with pytest.raises(XecError, match="peak_window"):
        XECRegressor(model_config({"preset": "tiny", "peak_window": 0}), ["uvwFI"], peak_refit_tasks=["uvwFI"])
