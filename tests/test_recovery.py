"""Classical recovery of dead/hidden sensors (xec.baseline.recovery) and the stratified seeded
hiding of the inpainting evaluation (xec.inpainting.masking), with numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xec.baseline.recovery import TimeModel, estimate_dead, first_photon_delay, recover
from xec.baseline.solid_angles import sensor_solid_angles
from xec.errors import XecError
from xec.geometry import FACE_NAMES, get_geometry, uvw_to_xyz
from xec.inpainting.masking import check_counts, hide_sensors

# MPPC 2000 = row 45, column 20; its column neighbours 1999 and 2001 lie 1.510 cm away along z,
# the row neighbours 1.53 cm away in phi': a 1.52 cm radius keeps exactly the two along z.
SID, LEFT, RIGHT, RADIUS = 2000, 1999, 2001, 1.52


def _hand_omega(h: float, x0: float, side: float = 1.2) -> float:
    """Solid angle of a side x side square from height h, offset x0 along one side, by hand:
    sum over the corner rectangles of arctan(x y / (h sqrt(x^2 + y^2 + h^2)))."""

    def f(x, y):
        return math.atan(x * y / (h * math.sqrt(x * x + y * y + h * h)))

    a = side / 2
    x1, x2, y1, y2 = -a - x0, a - x0, -a, a
    return f(x2, y2) - f(x1, y2) - f(x2, y1) + f(x1, y1)


def test_solid_angle_rule_reproduces_a_hand_computed_case():
    g = get_geometry()
    xyz = (g.positions[SID] + 1.0 * g.normals[SID])[None]  # 1 cm above the MPPC's centre
    npho = np.zeros((1, 4760))
    npho[0, LEFT], npho[0, RIGHT] = 300.0, 500.0
    dead = np.zeros((1, 4760), bool)
    dead[0, SID] = True
    r = recover(npho, dead, [0], [SID], xyz, radius=RADIUS)
    om_s = _hand_omega(1.0, 0.0)  # 4 atan(0.36 / sqrt(1.72)) = 1.0716 sr
    om_n = _hand_omega(1.0, 1.510)  # both neighbours: same height, 1.51 cm along z
    assert om_s == pytest.approx(1.0716, abs=1e-4) and om_n == pytest.approx(0.2599, abs=1e-4)
    assert r["n_live"][0] == 2 and r["average"][0] == pytest.approx(400.0)
    # 800 x 1.0716 / (2 x 0.2599) = 1649 photons
    assert r["solid_angle"][0] == pytest.approx(800.0 * om_s / (2 * om_n), rel=1e-6)
    assert r["solid_angle"][0] == pytest.approx(1649.2, abs=0.5)
    assert not r["fallback"][0]


def test_fallback_to_the_neighbour_average_at_50_photons():
    g = get_geometry()
    xyz = (g.positions[SID] + 1.0 * g.normals[SID])[None]
    dead = np.zeros((1, 4760), bool)
    dead[0, SID] = True
    for total, fallback in ((40.0, True), (50.0, True), (60.0, False)):
        npho = np.zeros((1, 4760))
        npho[0, LEFT] = npho[0, RIGHT] = total / 2
        r = recover(npho, dead, [0], [SID], xyz, radius=RADIUS)
        assert bool(r["fallback"][0]) is fallback, total
        expect = total / 2 if fallback else total * _hand_omega(1.0, 0.0) / (2 * _hand_omega(1.0, 1.510))
        assert r["solid_angle"][0] == pytest.approx(expect, rel=1e-6), total


def test_neighbour_average_is_the_mean_of_the_live_face_neighbours_within_20cm():
    g = get_geometry()
    rng = np.random.default_rng(3)
    npho = rng.uniform(0, 1000, (2, 4760))
    dead = np.zeros((2, 4760), bool)
    targets = [(0, 2000), (1, 4100), (1, 4600)]  # an MPPC, an outer PMT, a top PMT
    dead[0, [2000, 2001, 2044]] = True  # two dead neighbours of the first target
    dead[1, [4100, 4600]] = True
    ev, sid = np.array(targets).T
    r = recover(npho, dead, ev, sid)
    for k, (e, s) in enumerate(targets):
        d = np.linalg.norm(g.positions - g.positions[s], axis=1)
        near = (g.face == g.face[s]) & (d <= 20.0) & ~dead[e]
        assert r["n_live"][k] == near.sum()
        assert r["average"][k] == pytest.approx(npho[e, near].mean(), rel=1e-9)


def _point_source(n: int, seed: int, n_photons: float):
    rng = np.random.default_rng(seed)
    uvw = np.column_stack([rng.uniform(-15, 15, n), rng.uniform(-50, 50, n), rng.uniform(1, 10, n)])
    xyz = uvw_to_xyz(uvw)
    om = sensor_solid_angles(xyz, np.tile(np.arange(4760), (n, 1)))
    eff = np.where(get_geometry().is_mppc, 0.12, 0.16)
    npho = rng.poisson(n_photons / (4 * np.pi) * om * eff) / eff
    return xyz, npho


def test_point_source_hidden_sensor_within_a_few_percent_and_its_time():
    """Light and time from a point: the rule's estimate of the hidden brightest MPPC and a
    bright PMT agrees within a few percent (Poisson noise only), and the recovered time (times
    = light path / v + expected first-photon delay) within 20 ps."""
    xyz, npho = _point_source(20, seed=5, n_photons=2e7)
    g = get_geometry()
    tm = TimeModel()
    eff = tm.efficiency(np.arange(4760))
    path = np.linalg.norm(g.positions[None] - xyz[:, None], axis=-1)
    t_ns = 3.0 + path / tm.light_velocity_cm_ns + first_photon_delay(npho * eff, tm.decay_time_ns)
    rows = np.arange(len(npho))
    peak = np.argmax(npho[:, :4092], axis=1)
    pmt = 4092 + np.argmax(npho[:, 4092:], axis=1)
    dead = np.zeros(npho.shape, bool)
    dead[rows, peak] = dead[rows, pmt] = True
    ev, sid = np.concatenate([rows, rows]), np.concatenate([peak, pmt])
    r = recover(npho, dead, ev, sid, xyz, time_ns=t_ns, time_valid=np.ones(npho.shape, bool), time_model=tm)
    rel = r["solid_angle"] / npho[ev, sid] - 1
    assert np.median(np.abs(rel)) < 0.03 and np.abs(rel).max() < 0.08
    assert np.abs(r["time"] - t_ns[ev, sid]).max() < 0.02
    # the plain average of the neighbours is far lower for the brightest sensor
    assert np.median(r["average"][: len(rows)] / npho[rows, peak]) < 0.5
    # the classical reconstruction's fill (estimate_dead) is the same rule
    filled = estimate_dead(np.where(dead, 0, npho), dead, xyz)
    assert np.allclose(filled[ev, sid], r["solid_angle"])


def test_hiding_is_stratified_seeded_and_chunk_independent():
    rng = np.random.default_rng(0)
    npho = rng.exponential(200.0, (40, 4760))
    dead = rng.random(npho.shape) < 0.01
    counts = {"inner": 10, "outer": 1, "us": 1, "ds": 1, "top": 1, "bottom": 1}
    h = hide_sensors(npho, dead, counts, 100.0, seed=7, first_event=0)
    g = get_geometry()
    for face, k in counts.items():
        per_event = h[:, g.face == FACE_NAMES.index(face)].sum(axis=1)
        assert np.all(per_event == k), face
    assert not (h & dead).any() and np.all(npho[h] >= 100.0)
    # same seed: same sensors, also read in two chunks; another seed: others
    h2 = np.concatenate(
        [
            hide_sensors(npho[:15], dead[:15], counts, 100.0, seed=7, first_event=0),
            hide_sensors(npho[15:], dead[15:], counts, 100.0, seed=7, first_event=15),
        ]
    )
    assert np.array_equal(h, h2)
    assert (h != hide_sensors(npho, dead, counts, 100.0, seed=8, first_event=0)).any()
    # an event with fewer candidates than asked: all of them, no more
    few = np.zeros((1, 4760))
    few[0, [10, 20, 30]] = 500.0
    assert hide_sensors(few, np.zeros_like(few, bool), {"inner": 10}, 100.0, 1, 0).sum() == 3


def test_bad_hiding_input_names_the_key_or_event():
    with pytest.raises(XecError, match=r"inpainting.hide.top = 100: the top face has only 73 sensors"):
        check_counts({"top": 100})
    with pytest.raises(XecError, match="inpainting.hide.side: unknown face"):
        check_counts({"side": 1})
    npho = np.full((2, 4760), 500.0)
    dead = np.zeros(npho.shape, bool)
    dead[1, get_geometry().face == FACE_NAMES.index("us")] = True
    with pytest.raises(XecError, match=r"real.root: event 11 has no live sensor on the us face"):
        hide_sensors(npho, dead, {"us": 1}, 100.0, 0, first_event=10, where="real.root")
