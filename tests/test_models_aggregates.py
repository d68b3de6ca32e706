"""Physics aggregates of the regressor heads (xec.models.aggregates): light sums, the dead-sensor
fill, the TOF-corrected time on events built from its own model, the energy-scale init, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xec.errors import XecError
from xec.geometry import N_SENSORS, direction_to_angles, get_geometry, uvw_to_xyz
from xec.models import XECRegressor, model_config
from xec.models.aggregates import C_LIGHT_CM_NS, PhysicsAggregates, direction_to_angles_torch, uvw_to_xyz_torch
from xec.normalization import get_normalizer
from xec.targets import TargetStandardizer

TASKS = ["angle", "energy", "timing", "uvwFI"]


@pytest.fixture(scope="module")
def agg():
    return PhysicsAggregates(get_geometry(), get_normalizer("meg2"))


def _events(npho: np.ndarray, time_s: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(get_normalizer("meg2").normalize_events(npho, time_s))


def test_uvw_to_xyz_torch_matches_geometry():
    uvw = np.array([[3.0, -20.0, 1.5], [-40.0, 60.0, 12.0]])
    got = uvw_to_xyz_torch(torch.tensor(uvw, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, uvw_to_xyz(uvw), rtol=1e-12)


def test_direction_to_angles_torch_matches_geometry():
    rng = np.random.default_rng(0)
    uvw = np.stack([rng.uniform(-30, 30, 50), rng.uniform(-80, 80, 50), rng.uniform(0, 30, 50)], axis=1)
    xyz = uvw_to_xyz(uvw)
    got = direction_to_angles_torch(torch.tensor(xyz, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, np.stack(direction_to_angles(xyz), axis=1), atol=1e-12)
    # the detector centre (u = v = w = 0) is seen at theta 90, phi 0 from the target centre
    centre = direction_to_angles_torch(uvw_to_xyz_torch(torch.zeros(1, 3, dtype=torch.float64)))
    np.testing.assert_allclose(centre.numpy(), [[90.0, 0.0]], atol=1e-12)


def test_angle_from_position_is_the_direction_of_the_predicted_first_interaction(tmp_path):
    """model.angle_from_position: the angle output is the geometric direction of the predicted
    first interaction; the angle head still trains (the angle_head output, which the loss reads)
    without reaching the position head; the angle's input gradient is the position's; the graph
    exports with parity."""
    from tests.test_models_heads import realistic_input, standardizer

    torch.manual_seed(0)
    std = standardizer()
    reg = XECRegressor(model_config({"preset": "tiny", "angle_from_position": True}), TASKS, std).eval()
    assert reg.angles_from_position
    x = realistic_input(4)
    with torch.no_grad():
        out = reg(x)
        phys = reg.to_physical(out)
    geo = np.stack(direction_to_angles(uvw_to_xyz(phys["uvwFI"].double().numpy())), axis=1)
    np.testing.assert_allclose(phys["angle"].numpy(), geo, atol=1e-4)  # float32, degrees
    head = reg.to_physical({**out, "angle": out["angle_head"]})["angle"]
    assert (head - phys["angle"]).abs().max() > 1.0  # an untrained head: not the output

    reg.train()
    out = reg(x)
    out["angle_head"].square().sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in reg.heads["uvwFI"].parameters())
    assert reg.heads["angle"].fc1.weight.grad.abs().sum() > 0

    reg.eval().zero_grad()
    xg = x.clone().requires_grad_(True)
    reg(xg)["angle"].sum().backward()
    assert xg.grad.abs().sum() > 0  # saliency of the angle = that of the position
    assert reg.heads["angle"].fc1.weight.grad is None or not reg.heads["angle"].fc1.weight.grad.any()

    with pytest.raises(XecError, match="angle_from_position"):
        XECRegressor(model_config({"preset": "tiny", "angle_from_position": True}), TASKS, std, sigma_tasks=["angle"])
    assert_exports_with_parity(reg.eval(), std, tmp_path)


def test_face_sums_and_dead_fill(agg):
    g = get_geometry()
    rng = np.random.default_rng(0)
    npho = rng.uniform(200.0, 2000.0, (2, N_SENSORS))
    x_live = _events(npho, np.full_like(npho, 3e-8))
    _, sums = agg.photons(x_live)
    expect = np.stack([npho[:, g.face == f].sum(1) for f in range(6)], 1)
    np.testing.assert_allclose(sums.numpy(), expect, rtol=1e-4)  # float32 normalization round trip
    # a dead sensor in a uniform field is filled with the field's value: sums unchanged
    flat = np.full((1, N_SENSORS), 500.0)
    dead = flat.copy()
    dead[0, [10, 2000, 4500]] = 1e10
    n_dead, s_dead = agg.photons(_events(dead, np.full_like(dead, 3e-8)))
    _, s_flat = agg.photons(_events(flat, np.full_like(flat, 3e-8)))
    np.testing.assert_allclose(n_dead[0, [10, 2000, 4500]].numpy(), 500.0, rtol=1e-4)
    np.testing.assert_allclose(s_dead.numpy(), s_flat.numpy(), rtol=1e-5)


def _time(agg, x, photons, uvw, offset=None):
    fi = uvw_to_xyz_torch(torch.tensor(uvw, dtype=torch.float32))
    centroid = agg.light_centroid(fi, torch.zeros_like(fi) if offset is None else offset)
    return agg.time(x, photons, fi, centroid)


def test_time_recovers_the_gamma_time_of_its_own_model(agg):
    """Sensor times built from the module's own model (TOF of the gamma to the first
    interaction, optical path from the light centroid, first-photon delay, no jitter) give back
    the gamma time; a wrong centroid does not, and its gradient points back to the right one."""
    g = get_geometry()
    rng = np.random.default_rng(1)
    b = 4
    uvw = np.stack([rng.uniform(-20, 20, b), rng.uniform(-60, 60, b), rng.uniform(0.5, 10, b)], 1)
    fi = uvw_to_xyz(uvw)
    r = np.linalg.norm(fi, axis=1, keepdims=True)
    centroid = fi * (1 + float(agg.shift_cm.detach()) / r)
    path = np.linalg.norm(g.positions[None] - centroid[:, None], axis=-1)
    npho = rng.uniform(150.0, 5000.0, (b, N_SENSORS))
    delay = np.exp(agg.log_delay.detach().numpy())[(~g.is_mppc).astype(int)] / npho
    t_gamma = rng.uniform(-5.0, 5.0, (b, 1))  # ns, the inputs' reference
    t_ns = t_gamma + r / C_LIGHT_CM_NS + path * np.exp(float(agg.log_inv_velocity.detach())) + delay
    x = _events(npho, t_ns * 1e-9)
    with torch.no_grad():
        photons, _ = agg.photons(x)
        got = _time(agg, x, photons, uvw).numpy()
    np.testing.assert_allclose(got, t_gamma, atol=0.003)  # 3 ps: float32 normalized times
    # a centroid 2 cm off along u: the time moves, and descending the squared error moves it back
    offset = torch.tensor([[0.0, 0.0, 2.0]] * b, requires_grad=True)  # xyz: z = u
    wrong = _time(agg, x, photons, uvw, offset)
    err = (wrong - torch.tensor(t_gamma, dtype=torch.float32)).square().sum()
    err.backward()
    assert float(err.detach()) > 1e-6
    assert (offset.grad[:, 2] > 0).all()  # d err / d offset points away from the truth


def test_energy_scale_init_calibrates_the_light_sum():
    cfg = model_config({"preset": "tiny", "physics_aggregates": True})
    std = TargetStandardizer.from_dict(
        {"angle": {"mean": [90, 0], "std": [10, 30]}, "energy": {"mean": [0.04], "std": [0.01]},
         "timing": {"mean": [0.5], "std": [0.5]}, "uvwFI": {"mean": [0, 0, 3], "std": [20, 20, 20]}}
    )  # fmt: skip
    torch.manual_seed(0)
    m = XECRegressor(cfg, TASKS, std, normalizer=get_normalizer("meg2"))
    rng = np.random.default_rng(2)
    energy = rng.uniform(0.02, 0.06, 16)
    npho = rng.uniform(0.5, 1.5, (16, N_SENSORS)) * energy[:, None] * 2e4  # light proportional to E
    x = _events(npho, np.full_like(npho, 3e-8))
    assert m.init_energy_scale(x, torch.tensor(energy, dtype=torch.float32))
    assert not m.init_energy_scale(x, torch.tensor(energy, dtype=torch.float32))  # once only
    with torch.no_grad():
        _, sums = m.aggregates.photons(x)
        e = m.aggregates.energy(m.aggregates.light(sums), torch.zeros(16, 1))[:, 0].numpy()
    np.testing.assert_allclose(e, energy, rtol=0.01)  # the light sum alone is the energy here
    # the scale travels in the state dict
    m2 = XECRegressor(cfg, TASKS, std, normalizer=get_normalizer("meg2"))
    m2.load_state_dict(m.state_dict())
    assert bool(m2.aggregates.energy_scale_set)
    assert float(m2.aggregates.energy_log_scale.detach()) == float(m.aggregates.energy_log_scale.detach())


def test_timing_without_the_position_task_predicts_time_on_its_own():
    cfg = model_config({"preset": "tiny", "physics_aggregates": True})
    m = XECRegressor(cfg, ["energy", "timing"])
    assert not m.times_from_sensors and not hasattr(m, "centroid_head")
    from tests.test_models_heads import realistic_input

    out = m(realistic_input(2))
    assert out["timing"].shape == (2, 1) and torch.isfinite(out["timing"]).all()


def test_regressor_with_aggregates_exports_with_parity(tmp_path):
    from tests.test_models_heads import standardizer

    cfg = model_config({"preset": "tiny", "physics_aggregates": True})
    torch.manual_seed(0)
    std = standardizer()
    reg = XECRegressor(cfg, TASKS, std, normalizer=get_normalizer("meg2")).eval()
    assert_exports_with_parity(reg, std, tmp_path)


def assert_exports_with_parity(reg, std, tmp_path) -> None:
    """The regressor exports to ONNX and the graph agrees with PyTorch on fresh events."""
    from tests.test_models_heads import realistic_input
    from xec.deploy.export import RegressorGraph, check_parity, export_graph
    from xec.deploy.onnx_meta import regressor_metadata

    graph = RegressorGraph(reg, TASKS).eval()
    meta = regressor_metadata(get_normalizer("meg2"), TASKS, std.to_dict(), {})
    path = tmp_path / "reg.onnx"
    export_graph(graph, meta, (realistic_input(2),), path, opset=17)
    report = check_parity(path, graph, meta, iter([realistic_input(5, seed=5).numpy()]), rtol=1e-4, atol=1e-5)
    assert report["passed"], report
