"""xec.models.local_fill: the inpainter's sensor-level correction from the nearest live sensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xec.baseline.solid_angles import sensor_solid_angles
from xec.geometry import N_SENSORS, get_geometry, uvw_to_xyz
from xec.models.local_fill import LocalFill
from xec.normalization import get_normalizer

NORM = get_normalizer("meg2")


@pytest.fixture(scope="module")
def geometry():
    return get_geometry()


def _randomize_output(lf: LocalFill, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lf.mlp[-1].weight.copy_(0.3 * torch.randn(lf.mlp[-1].weight.shape, generator=g))


def test_neighbours_are_the_nearest_of_the_same_face(geometry):
    lf = LocalFill(geometry, NORM, neighbours=8, hidden=16)
    near = lf.near.numpy()
    face = np.asarray(geometry.face)
    pos = np.asarray(geometry.positions)
    assert near.shape == (N_SENSORS, 8)
    assert np.all(face[near] == face[:, None]) and not np.any(near == np.arange(N_SENSORS)[:, None])
    d = np.linalg.norm(pos[near] - pos[:, None], axis=2)
    inner = face == 0
    # MPPC pitch 1.5 cm: the 4 nearest are the edge neighbours, the next 4 the diagonals
    np.testing.assert_allclose(np.median(d[inner], axis=0)[[0, 3, 4, 7]], [1.51, 1.51, 2.14, 2.14], atol=0.05)
    assert np.all(np.diff(d, axis=1) >= -1e-9)  # sorted by distance


def test_untrained_correction_is_the_neighbours_geometric_mean_and_only_fill_sensors_change(geometry):
    torch.manual_seed(0)
    lf = LocalFill(geometry, NORM, neighbours=8, hidden=16)
    x = torch.rand(3, N_SENSORS, 2) * 0.5
    pred = torch.rand(3, N_SENSORS, 2) * 0.5
    fill = torch.rand(3, N_SENSORS) < 0.05
    fill[0, lf.near[100]] = True  # every neighbour of sensor 100 hidden too: the heads' guess stays
    fill[0, 100] = True
    out = lf(x, pred, fill)
    assert torch.equal(out[~fill], pred[~fill])
    # zero-initialized last layer: 1 + photons = the geometric mean of the known neighbours' 1 + photons
    log1 = torch.log1p(NORM.npho_inverse(x[..., 0]))
    b, s = torch.nonzero(fill, as_tuple=True)
    near = lf.near[s]
    known = (~fill[b[:, None], near]).float()
    expect = (log1[b[:, None], near] * known).sum(1) / known.sum(1).clamp_min(1.0)
    expect = torch.where(known.sum(1) > 0, expect, torch.log1p(NORM.npho_inverse(pred[b, s, 0])))
    got = torch.log1p(NORM.npho_inverse(out[b, s, 0]))
    np.testing.assert_allclose(got.detach().numpy(), expect.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out[0, 100, 0].item(), pred[0, 100, 0].item(), rtol=1e-5)
    # time: the heads' where at least 3/4 of the neighbours are known, none (sentinel) elsewhere
    mostly_known = known.sum(1) >= 6
    assert 0 < int((~mostly_known).sum()) < int(mostly_known.sum())
    assert torch.equal(out[b, s, 1][mostly_known], pred[b, s, 1][mostly_known])
    assert torch.all(out[b, s, 1][~mostly_known] == NORM.sentinel)
    _randomize_output(lf)
    out2 = lf(x, pred, fill)
    assert torch.equal(out2[~fill], pred[~fill])
    assert float((out2[fill] - out[fill]).abs().mean().detach()) > 1e-3
    empty = torch.zeros_like(fill)  # no sensor to fill: nothing to do
    assert torch.equal(lf(x, pred, empty), pred)


def test_untrained_time_from_neighbours_is_their_mean_time(geometry):
    """time_ref "neighbours": an untrained correction fills the mean time of the known neighbours
    that have one (the heads' time where none has), and the same npho as with "heads"."""
    torch.manual_seed(2)
    lf = LocalFill(geometry, NORM, neighbours=8, hidden=16, time_ref="neighbours")
    heads_ref = LocalFill(geometry, NORM, neighbours=8, hidden=16)
    heads_ref.load_state_dict(lf.state_dict())
    x = torch.rand(2, N_SENSORS, 2) * 0.5
    x[..., 1][torch.rand(2, N_SENSORS) < 0.3] = NORM.sentinel  # sensors without a time
    pred = torch.rand(2, N_SENSORS, 2) * 0.5
    fill = torch.rand(2, N_SENSORS) < 0.05
    target, nb = 200, lf.near[200]
    fill[0, nb], fill[0, target] = False, True  # every neighbour known, none with a time
    x[0, nb, 1] = NORM.sentinel
    with torch.no_grad():
        out, out_heads = lf(x, pred, fill), heads_ref(x, pred, fill)
    b, s = torch.nonzero(fill, as_tuple=True)
    near = lf.near[s]
    known = ~fill[b[:, None], near]
    t_near = x[b[:, None], near, 1]
    timed = (known & (t_near != NORM.sentinel)).float()
    mean_t = (t_near * timed).sum(1) / timed.sum(1).clamp_min(1.0)
    expect = torch.where(timed.sum(1) > 0, mean_t, pred[b, s, 1])
    mostly_known = known.sum(1) >= 6
    assert int(mostly_known.sum()) > 100
    np.testing.assert_allclose(out[b, s, 1][mostly_known].numpy(), expect[mostly_known].numpy(), atol=1e-6)
    assert torch.all(out[b, s, 1][~mostly_known] == NORM.sentinel)
    assert out[0, target, 1].item() == pytest.approx(pred[0, target, 1].item())
    assert torch.equal(out[..., 0], out_heads[..., 0])
    assert torch.equal(out[~fill], pred[~fill])
    with pytest.raises(ValueError, match="time_ref"):
        LocalFill(geometry, NORM, neighbours=8, hidden=16, time_ref="mean")


@pytest.mark.parametrize("time_ref, peak", [("heads", False), ("neighbours", False), ("neighbours", True)])
def test_hidden_and_dead_values_never_enter(geometry, time_ref, peak):
    torch.manual_seed(1)
    lf = LocalFill(geometry, NORM, neighbours=8, hidden=16, time_ref=time_ref, peak_context=peak)
    _randomize_output(lf)
    x = torch.rand(2, N_SENSORS, 2) * 0.5
    x[:, ::50, :] = NORM.sentinel  # dead sensors
    pred = torch.rand(2, N_SENSORS, 2) * 0.5
    fill = (torch.rand(2, N_SENSORS) < 0.1) | (x[..., 0] == NORM.sentinel)
    ref = lf(x, pred, fill)
    x2 = x.clone()
    x2[fill] = 0.9  # whatever the sensors to fill hold, the correction must not read it
    # (with the peak context: a hidden sensor brighter than every known one never becomes the peak)
    assert torch.equal(lf(x2, pred, fill), ref)
    assert torch.equal(lf(x2, None, fill), lf(x, None, fill))


def _point_source_events(geometry, n: int, rng: np.random.Generator) -> torch.Tensor:
    """Normalized events lit by a point source in front of the inner face (photons ~ solid angle)."""
    uvw = np.stack([rng.uniform(-20, 20, n), rng.uniform(-50, 50, n), rng.uniform(0.5, 4.0, n)], 1)
    omega = sensor_solid_angles(uvw_to_xyz(uvw), np.arange(N_SENSORS))
    photons = rng.uniform(2e6, 5e6, (n, 1)) * omega / (4 * np.pi)
    x = np.stack([NORM.npho_forward(photons), np.zeros_like(photons)], -1)
    return torch.from_numpy(x.astype(np.float32))


def _smooth_guess(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """What the heads give: the right place, a wrong scale (x 0.5-2 per event)."""
    scale = torch.from_numpy(rng.uniform(0.5, 2.0, (x.shape[0], 1)).astype(np.float32))
    return torch.stack([NORM.npho_forward(NORM.npho_inverse(x[..., 0]) * scale), x[..., 1]], -1)


def test_shower_peak_finds_a_point_source_and_its_depth(geometry):
    """The peak context (LocalFill.shower_peak) of a point source in front of the inner face: the
    light centroid of the brightest MPPC's ring within a third of a pitch (5 mm) of the source's
    (u, v) on the face (a 3 x 3 centroid leans to the peak MPPC's centre), the peak's excess over
    its ring falling with the depth; hiding the brightest MPPC moves the peak to a known
    neighbour, and the centroid by less than a pitch."""
    lf = LocalFill(geometry, NORM, neighbours=8, hidden=16, time_ref="neighbours", peak_context=True)
    rng = np.random.default_rng(3)
    n = 6
    uvw = np.stack([rng.uniform(-20, 20, n), rng.uniform(-50, 50, n), np.linspace(0.5, 4.0, n)], 1)
    omega = sensor_solid_angles(uvw_to_xyz(uvw), np.arange(N_SENSORS))
    photons = 3e6 * omega / (4 * np.pi)
    x = torch.from_numpy(np.stack([NORM.npho_forward(photons), np.zeros_like(photons)], -1).astype(np.float32))
    none = torch.zeros(n, N_SENSORS, dtype=torch.bool)
    centroid, peak_log, sharp = (t.numpy() for t in lf.shower_peak(x, none))
    on_face = uvw_to_xyz(uvw * [1.0, 1.0, 0.0])
    assert np.all(np.linalg.norm(centroid - on_face, axis=1) < 0.5)
    np.testing.assert_allclose(peak_log, np.log1p(photons.max(1)), rtol=1e-5)
    assert np.all(np.diff(sharp) < 0) and sharp[0] > 1.0 and sharp[-1] < 0.5
    hide = none.clone()
    hide[torch.arange(n), torch.from_numpy(photons.argmax(1))] = True
    c2, p2, _ = (t.numpy() for t in lf.shower_peak(x, hide))
    assert np.all(p2 < peak_log) and np.all(np.linalg.norm(c2 - centroid, axis=1) < 1.5)


def test_learns_to_recover_a_point_source_better_than_its_neighbours_mean(geometry):
    """Trained alone on point sources 0.5-4 cm in front of the inner face (peaked light), given a
    mis-scaled guess, the correction learns the local shape of the light: on hidden bright inner
    sensors its relative error is a fraction of the guess's and of the mean of the 8 nearest
    sensors' (the neighbour rule without solid angles)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lf = LocalFill(geometry, NORM, neighbours=8, hidden=64)
    opt = torch.optim.Adam(lf.parameters(), lr=3e-3)
    inner = torch.from_numpy(np.asarray(geometry.face) == 0)
    for _ in range(100):
        x = _point_source_events(geometry, 16, rng)
        fill = (torch.rand(16, N_SENSORS) < 0.05) & inner
        out = lf(x, _smooth_guess(x, rng), fill)
        scored = fill & (NORM.npho_inverse(x[..., 0]) >= 100)
        loss = (lf.log_photons(out[..., 0]) - lf.log_photons(x[..., 0]))[scored].abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = _point_source_events(geometry, 64, np.random.default_rng(99))
    fill = (torch.rand(64, N_SENSORS, generator=torch.Generator().manual_seed(5)) < 0.05) & inner
    guess = _smooth_guess(x, np.random.default_rng(7))
    with torch.no_grad():
        out = lf(x, guess, fill)
    true = NORM.npho_inverse(x[..., 0])
    est = NORM.npho_inverse(out[..., 0])
    near = lf.near[:, :8]
    mean8 = NORM.npho_inverse(x[..., 0])[:, near].mean(-1)  # no neighbour is hidden often enough to matter
    sel = fill & (true > 300)
    rel_local = float(((est - true) / true)[sel].abs().mean())
    rel_mean = float(((mean8 - true) / true)[sel].abs().mean())
    rel_guess = float(((NORM.npho_inverse(guess[..., 0]) - true) / true)[sel].abs().mean())
    assert sel.sum() > 200
    assert rel_local < 0.5 * rel_mean and rel_local < 0.2 * rel_guess, (rel_local, rel_mean, rel_guess)
