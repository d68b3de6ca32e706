"""SolidAngleFit: the classical position fit inside the regressor's graph (xec.models.solidfit)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from xec.baseline.reco import BaselineConfig, fit_position
from xec.errors import XecError
from xec.geometry import get_geometry
from xec.metrics import width68
from xec.models import XECRegressor, model_config
from xec.models.peakfit import PeakWindowFit
from xec.models.solidfit import N_FEATURES, SolidAngleFit
from xec.normalization import get_normalizer
from xec.simulation import physics as ph
from xec.simulation.generator import SampleSpec, iter_blocks


@pytest.fixture(scope="module")
def events():
    """256 simulated signal events (52.8 MeV): raw npho, the normalized input and the true uvw."""
    spec = SampleSpec(name="fit", events=256, seed=11, energy_mev=(52.8, 52.8))
    block = next(iter_blocks(spec, ph.PhysicsParams()))
    norm = get_normalizer()
    npho_n, time_n = norm.normalize(block["npho"], block["relative_time"])
    x = torch.from_numpy(np.stack([npho_n, time_n], -1).astype(np.float32))
    return block["npho"], x, block["uvwTruth"], norm


def graph_fit(x: torch.Tensor, norm, cfg: BaselineConfig) -> tuple[SolidAngleFit, torch.Tensor, torch.Tensor]:
    peak = PeakWindowFit(get_geometry(), cfg.window, 8, sentinel=norm.sentinel)
    fit = SolidAngleFit(norm, cfg.mppc_efficiency, cfg.sys_fraction, cfg.w_max)
    sensors, _ = peak.window_sensors(peak.peak_index(x))
    return fit, sensors, fit(x, sensors)


def test_graph_fit_reproduces_the_classical_fit(events):
    """Same window, errors and solid angles as xec.baseline's fit, a fixed number of steps:
    the same (u, v, w) to a few microns on most events, the same resolutions."""
    npho, x, truth, norm = events
    cfg = BaselineConfig()
    classical = fit_position(npho, np.zeros(npho.shape, bool), cfg)["uvw"]
    _, _, out = graph_fit(x, norm, cfg)
    assert out.shape == (len(x), N_FEATURES) and torch.isfinite(out).all()
    graph = out[:, :3].double().numpy() * 10.0  # coord_scale_cm
    diff = np.abs(graph - classical)
    assert (np.median(diff, axis=0) < [0.002, 0.002, 0.005]).all(), np.median(diff, axis=0)
    assert (np.quantile(diff, 0.9, axis=0) < [0.02, 0.02, 0.05]).all()
    for i in range(3):
        w_graph, w_classical = width68(graph[:, i] - truth[:, i]), width68(classical[:, i] - truth[:, i])
        assert w_graph == pytest.approx(w_classical, rel=0.03), i
        assert 0.1 < w_graph < 1.5  # cm: the fit measures the position (mm-scale on the inner face)


def test_jacobian_is_the_derivative_of_the_pattern(events):
    """The fit's analytic d omega / d(u, v, w) (solid-angle derivatives chained with the
    cylinder's d xyz / d uvw) equals central differences of the pattern, shallow to deep."""
    _, x, _, norm = events
    fit, sensors, out = graph_fit(x[:16], norm, BaselineConfig())
    frames = fit._frames(sensors)
    uvw = out[:, :3].double() * fit.scale
    uvw = torch.cat([uvw[:8], uvw[8:] * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) + 0.3])  # w = 0.3 cm
    step = 1e-5
    fd = torch.stack(
        [
            (fit._omega(uvw + step * e, *frames) - fit._omega(uvw - step * e, *frames)) / (2 * step)
            for e in torch.eye(3, dtype=torch.float64)
        ],
        -1,
    )
    jac = fit._jacobian(uvw, *frames)
    assert jac.shape == (16, sensors.shape[1], 3)
    torch.testing.assert_close(jac, fd, rtol=1e-5, atol=1e-9 * fd.abs().max().item())


def test_dead_mppcs_weigh_nothing(events):
    """A dead (sentinel) MPPC of the window leaves the fit as if its light were unknown: a
    second, brighter sentinel value changes nothing."""
    _, x, _, norm = events
    fit, sensors, _ = graph_fit(x[:8], norm, BaselineConfig())
    dead = x[:8].clone()
    rows = torch.arange(8)
    dead[rows, sensors[:, 3], 0] = norm.sentinel
    a = fit(dead, sensors)
    dead[rows, sensors[:, 3], 1] = 5.0  # its time: not read
    torch.testing.assert_close(fit(dead, sensors), a, rtol=0, atol=0)
    assert not torch.equal(a, fit(x[:8], sensors))


def test_regressor_heads_read_the_fit_and_export_to_onnx(events, tmp_path):
    """solid_fit_tasks: the uvwFI head reads 5 more features; the other heads and the energy
    are those of the model without it; the exported graph gives the same outputs."""
    import onnxruntime as ort

    _, x, _, norm = events
    x = x[:6]
    cfg = model_config({"preset": "tiny", "angle_from_position": True, "physics_aggregates": True})
    tasks = ["angle", "energy", "timing", "uvwFI"]
    torch.manual_seed(0)
    plain = XECRegressor(cfg, tasks, normalizer=norm).eval()
    solid = XECRegressor(cfg, tasks, normalizer=norm, solid_fit_tasks=["uvwFI"]).eval()
    assert solid.solid_fit_tasks == ("uvwFI",)
    assert solid.heads["uvwFI"].fc1.in_features == plain.heads["uvwFI"].fc1.in_features + N_FEATURES
    state = {k: v for k, v in plain.state_dict().items() if not k.startswith("heads.uvwFI.")}
    missing = solid.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == sorted(k for k in solid.state_dict() if k.startswith("heads.uvwFI."))
    with torch.no_grad():
        a, b = plain(x), solid(x)
    torch.testing.assert_close(b["energy"], a["energy"], rtol=0, atol=0)
    assert not torch.equal(b["uvwFI"], a["uvwFI"])

    class Position(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["uvwFI"]

    path = tmp_path / "solid.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Position(solid), (x[:2],), str(path), input_names=["x"], output_names=["uvwFI"],
            dynamic_axes={"x": {0: "b"}, "uvwFI": {0: "b"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["uvwFI"], {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, b["uvwFI"].numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(XecError, match="peak_window"):
        XECRegressor(model_config({"preset": "tiny", "peak_window": 0}), ["uvwFI"], solid_fit_tasks=["uvwFI"])


def test_position_blend_in_the_graph_and_its_export(events, tmp_path):
    """fit_blend: u, v move toward the fit by the gate's weight, w, energy and time stay those of
    the model without it (the time correction reads the network's position); the angle is the
    direction to the blended position; ONNX Runtime gives PyTorch's numbers (the fit in float64)."""
    import onnxruntime as ort

    from xec.models.aggregates import direction_to_angles_torch, uvw_to_xyz_torch

    _, x, _, norm = events
    x = x[:32]
    cfg = model_config({"preset": "tiny", "angle_from_position": True, "physics_aggregates": True})
    tasks = ["angle", "energy", "timing", "uvwFI"]
    torch.manual_seed(0)
    plain = XECRegressor(cfg, tasks, normalizer=norm, sigma_tasks=["uvwFI"]).eval()
    blended = XECRegressor(cfg, tasks, normalizer=norm, sigma_tasks=["uvwFI"], fit_blend_hidden=8).eval()
    missing = blended.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == sorted(k for k in blended.state_dict() if k.startswith("fit_blend."))
    with torch.no_grad():
        blended.fit_blend.gate[2].bias.fill_(0.0)  # a = 0.5: half way to the fit
        a, b = plain(x), blended(x)
    for t in ("energy", "timing", "uvwFI_logvar"):
        torch.testing.assert_close(b[t], a[t], rtol=0, atol=0)
    torch.testing.assert_close(b["uvwFI_net"], a["uvwFI"], rtol=0, atol=0)
    phys = blended._physical("uvwFI", b["uvwFI"])
    net = blended._physical("uvwFI", b["uvwFI_net"])
    torch.testing.assert_close(phys[:, :2], 0.5 * (net[:, :2] + b["uvwFI_fit"][:, :2]))
    torch.testing.assert_close(phys[:, 2], net[:, 2])
    angle = blended._physical("angle", b["angle"])
    torch.testing.assert_close(angle, direction_to_angles_torch(uvw_to_xyz_torch(phys)), rtol=1e-5, atol=1e-4)

    class Outputs(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return out["uvwFI"], out["angle"]

    path = tmp_path / "blend.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Outputs(blended), (x[:2],), str(path), input_names=["x"], output_names=["uvwFI", "angle"],
            dynamic_axes={"x": {0: "b"}, "uvwFI": {0: "b"}, "angle": {0: "b"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["uvwFI", "angle"], {"x": x.numpy()})
    np.testing.assert_allclose(got[0], b["uvwFI"].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], b["angle"].numpy(), rtol=1e-4, atol=1e-4)
