"""Classical reconstruction (xec.baseline): solid angles, the position fit on a point source,
and the full reconstruction on simulated 52.8 MeV events against their truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import uproot

from xec import metrics
from xec.baseline import cli as bcli
from xec.baseline.reco import BaselineConfig, fit_position, reconstruct_chunk
from xec.baseline.recovery import estimate_dead
from xec.baseline.solid_angles import inner_solid_angles, rect_solid_angle, rect_solid_angle_grad, sensor_solid_angles
from xec.errors import XecError
from xec.geometry import get_geometry, uvw_to_xyz


def test_rect_solid_angle_limits():
    # far away: A cos(theta) / d^2
    h, x0 = 50.0, 30.0
    d = np.hypot(h, x0)
    assert rect_solid_angle(h, x0, 0.0) == pytest.approx(1.44 * (h / d) / d**2, rel=1e-3)
    # touching the centre: half of the sphere
    assert rect_solid_angle(1e-6, 0.0, 0.0) == pytest.approx(2 * np.pi, rel=1e-3)
    # above the centre of a square of side 2h: 4 arctan(1/sqrt(3)) = 2 pi / 3
    assert rect_solid_angle(1.0, 0.0, 0.0, side=2.0) == pytest.approx(2 * np.pi / 3, rel=1e-9)
    # above a corner of an a x b rectangle: arctan(a b / (h sqrt(a^2 + b^2 + h^2)))
    assert rect_solid_angle(1.0, 1.0, 1.0, side=2.0) == pytest.approx(np.arctan(4 / 3), rel=1e-9)


def _points(n: int = 20000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heights and offsets from far and behind (h < 0) to within 0.6 cm of the square (where the
    solid angle passes pi and approaches 2 pi)."""
    rng = np.random.default_rng(3)
    h = np.concatenate([rng.uniform(-1.0, 50.0, n), rng.uniform(1e-3, 0.6, n)])
    x0, y0 = rng.normal(0.0, 8.0, (2, 2 * n)) * np.repeat([1.0, 0.05], n)
    return h, x0, y0


def test_rect_solid_angle_is_the_four_corner_arctangents():
    """One atan2 of a complex product equals the textbook sum over the four corner rectangles,
    on both sides of pi; zero behind the plane."""
    h, x0, y0 = _points()
    hh = np.clip(h, 1e-6, None)
    x = np.stack([0.6 - x0, -0.6 - x0])
    y = np.stack([0.6 - y0, -0.6 - y0])
    f = np.arctan(x[:, None] * y[None] / (hh * np.sqrt(x[:, None] ** 2 + y[None] ** 2 + hh**2)))
    textbook = np.where(h > 0, f[0, 0] - f[1, 0] - f[0, 1] + f[1, 1], 0.0)
    omega = rect_solid_angle(h, x0, y0)
    np.testing.assert_allclose(omega, textbook, rtol=1e-9, atol=1e-14)
    assert (omega > np.pi).sum() > 1000 and omega.max() < 2 * np.pi and omega[h <= 0].max() == 0.0


def test_rect_solid_angle_grad_is_the_derivative():
    """The analytic (d/dh, d/dx0, d/dy0) of the position fit's Jacobian equal autograd through
    the torch formula."""
    h, x0, y0 = _points(5000)
    t = [torch.tensor(a, requires_grad=True) for a in (h, x0, y0)]
    rect_solid_angle(*t).sum().backward()
    for analytic, auto in zip(rect_solid_angle_grad(h, x0, y0), t):
        np.testing.assert_allclose(analytic, auto.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert all((g[h <= 0] == 0).all() for g in rect_solid_angle_grad(h, x0, y0))


def test_inner_solid_angles_on_the_cylinder():
    g = get_geometry()
    # 0.5 cm above the centre of MPPC 2000 (its own plane): the planar formula, ~ 2 pi x 0.77
    sid = 2000
    p = g.positions[sid] + 0.5 * g.normals[sid]
    om = inner_solid_angles(p[None], np.arange(4092)[None])[0]
    assert om[sid] == pytest.approx(rect_solid_angle(0.5, 0.0, 0.0), rel=1e-9)
    assert om.argmax() == sid
    # the face is convex seen from the xenon: MPPCs beyond the horizon (cos a = R/(R+w)) see
    # nothing, those just inside it see a little
    horizon = np.degrees(np.arccos(64.97 / (64.97 + 0.5)))
    dphi = np.abs(g.phi_prime[:4092] - g.phi_prime[sid])
    same_col = (np.arange(4092) % 44) == sid % 44
    assert np.all(om[same_col & (dphi > horizon + 1.4)] == 0.0)
    assert np.all(om[same_col & (dphi < horizon - 1.4)] > 0.0)
    # PMT and MPPC paths agree in the far field for an MPPC (A cos / d^2)
    far = uvw_to_xyz(np.array([[0.0, 0.0, 30.0]]))
    assert sensor_solid_angles(far, np.array([[2000]]))[0, 0] == pytest.approx(
        inner_solid_angles(far, np.array([[2000]]))[0, 0], rel=0.02
    )


def _point_source(n: int, seed: int = 0, n_photons: float = 2.0e6):
    rng = np.random.default_rng(seed)
    uvw = np.column_stack([rng.uniform(-18, 18, n), rng.uniform(-55, 55, n), rng.uniform(0.5, 12, n)])
    ids = np.tile(np.arange(4760), (n, 1))
    om = sensor_solid_angles(uvw_to_xyz(uvw), ids)
    eff = np.where(get_geometry().is_mppc, 0.12, 0.16)
    npho = rng.poisson(n_photons / (4 * np.pi) * om * eff) / eff
    return uvw, npho


def test_fit_recovers_point_source():
    uvw, npho = _point_source(60)
    fit = fit_position(npho, np.zeros(npho.shape, bool), BaselineConfig())
    assert np.all(fit["status"] == 0)
    err = np.abs(fit["uvw"] - uvw)
    # Poisson-only pattern from a point: below 1 mm in u, v and 2.5 mm in w
    assert np.percentile(err[:, 0], 68) < 0.1 and np.percentile(err[:, 1], 68) < 0.1
    assert np.percentile(err[:, 2], 68) < 0.25
    assert np.median(fit["chi2"] / fit["ndf"]) == pytest.approx(1.0, abs=0.3)


def test_dead_sensor_estimate_point_source():
    uvw, npho = _point_source(20, seed=1, n_photons=2e7)
    g = get_geometry()
    dead = np.zeros(npho.shape, bool)
    rows = np.arange(len(npho))
    peak = np.argmax(npho[:, :4092], axis=1)
    dead[rows, peak] = True  # the brightest MPPC
    pmt = 4092 + np.argmax(npho[:, 4092:], axis=1)
    dead[rows, pmt] = True  # the brightest PMT
    filled = estimate_dead(np.where(dead, 0, npho), dead, uvw_to_xyz(uvw), 20.0)
    for ids in (peak, pmt):
        rel = filled[rows, ids] / npho[rows, ids] - 1
        # exact solid angles from the true point: only Poisson noise of the sensor and
        # the neighbours' sum remains (a few percent at these intensities)
        assert np.median(np.abs(rel)) < 0.05, ids
    assert g.face[pmt].min() > 0


# ---------------------------------------------------------------- on simulated events
@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from xec.simulation.generator import SampleSpec, write_sample
    from xec.simulation.physics import PhysicsParams

    d = tmp_path_factory.mktemp("baseline")
    params = PhysicsParams()
    files = {}
    for name, events, seed, energy, dead in (
        ("train", 1536, 11, (15.0, 60.0), 0.0),
        ("bench", 768, 12, (52.8, 52.8), 0.0),
        ("realdata", 256, 13, (52.8, 52.8), 0.01),
    ):
        path = d / f"{name}.root"
        write_sample(
            path, SampleSpec(name=name, events=events, seed=seed, energy_mev=energy, dead_fraction=dead), params
        )
        files[name] = str(path)
    return d, files


@pytest.fixture(scope="module")
def calibrated(simulated):
    d, files = simulated
    from xec.config import load_config

    cfg = load_config(None, command="baseline")  # the view `xec baseline` reads: undeclared keys raise
    cal = d / "calibration.json"
    bcli.run_calibration([files["train"]], str(cal), cfg)
    out = d / "bench.parquet"
    root_out = d / "bench_reco.root"
    bcli.run_baseline([files["bench"]], str(out), cfg, bcli.load_calibration(str(cal)), str(root_out))
    return d, files, cfg, cal, pd.read_parquet(out), root_out


@pytest.mark.slow
def test_dead_sensor_estimate_on_showers(simulated):
    """Remove a bright MPPC next to the peak and a bright PMT from real (simulated) showers:
    the solid-angle estimate from the neighbours recovers their npho."""
    from xec.rootio import iterate_events

    _, files = simulated
    _, a = next(iterate_events([files["bench"]], step_size=300))
    npho = a["npho"].astype(np.float64)
    reco = reconstruct_chunk(npho, a["relative_time"], BaselineConfig())
    ok = reco["status"] == 0
    rows = np.flatnonzero(ok)
    g = get_geometry()
    peak = reco["peak"][rows]
    r, c = np.divmod(peak, 44)
    neighbour = g.inner_index[np.clip(r + 2, 0, 92), c]  # 2 rows (3 cm) away from the peak
    pmt = 4092 + np.argmax(npho[rows, 4092:], axis=1)
    # measured on 52.8 MeV showers: median |error| ~ 0.11 (MPPC 3 cm from the peak), ~ 0.24
    # (brightest PMT, which sees a shower far from point-like and scattered light)
    for ids, tol in ((neighbour, 0.18), (pmt, 0.35)):
        dead = np.zeros(npho.shape, bool)
        dead[rows, ids] = True
        filled = estimate_dead(np.where(dead, 0, npho), dead, reco["xyz_fit"], 20.0)
        rel = filled[rows, ids] / np.maximum(npho[rows, ids], 1.0) - 1
        assert np.median(np.abs(rel)) < tol
        assert abs(np.median(rel)) < 0.15


@pytest.mark.slow
def test_baseline_resolutions_on_simulated_bench(calibrated):
    d, files, cfg, cal, df, _ = calibrated
    assert len(df) == 768
    assert (df.fit_status == 2).mean() < 0.02
    deep = df[df.true_uvwFI_w > 2.0]
    for c in "uv":
        res = metrics.resolution(deep[f"pred_uvwFI_{c}"] - deep[f"true_uvwFI_{c}"], n_boot=0)
        assert res["width68"] < 1.0, c  # cm
        assert abs(res["bias"]) < 0.2, c
    w_res = metrics.resolution(df.pred_uvwFI_w - df.true_uvwFI_w, n_boot=0)
    assert w_res["width68"] < 2.5 and abs(w_res["bias"]) < 0.5  # shower-depth shift calibrated
    # calibrated energy: the core sits at the truth within 1 %, core resolution of ~1 %
    r = df.pred_energy_energy / df.true_energy_energy - 1
    mu, sigma = metrics.gaussian_core_fit(r)
    assert abs(mu) < 0.01
    assert 0.003 < sigma < 0.03
    # time: small bias, resolution of order 100 ps
    dt = df.pred_timing_time - df.true_timing_time
    assert abs(metrics.gaussian_core_fit(dt)[0]) < 0.05
    assert metrics.width68(dt) < 0.2
    # direction from the target: the position error at ~70 cm gives ~1 deg
    assert np.percentile(df.opening_angle_deg, 68) < 2.0
    calib = json.loads(cal.read_text())
    assert calib["meta"]["n_events"] > 1000 and len(calib["w_factors"]) >= 5


@pytest.mark.slow
def test_root_copy_has_reco_branches(calibrated):
    d, files, cfg, cal, df, root_out = calibrated
    with uproot.open(root_out) as f:
        t = f["tree"]
        for b in ("energyReco", "timeReco", "uvwRecoFI", "xyzRecoFI", "npho", "relative_time", "energyTruth"):
            assert b in t.keys()
        a = t.arrays(["energyReco", "uvwRecoFI", "npho"], library="np")
    assert np.allclose(a["energyReco"], df.pred_energy_energy)
    assert np.allclose(a["uvwRecoFI"][:, 2], df.pred_uvwFI_w)
    with uproot.open(files["bench"]) as f:
        assert np.array_equal(f["tree"]["npho"].array(library="np", entry_stop=5), a["npho"][:5])


def test_calibration_leaves_out_piled_up_events(tmp_path):
    """A train sample simulated with pile-up (simulation.samples.train.pileup_probability): the
    classical calibration is of one gamma's response and is fitted on the events without a second
    gamma only, so the classical reference does not change when the ML trains on pile-up."""
    from xec.config import load_config
    from xec.simulation.generator import SampleSpec, write_sample
    from xec.simulation.physics import PhysicsParams

    path = tmp_path / "train_pu.root"
    spec = SampleSpec(name="train", events=512, seed=21, energy_mev=(15.0, 60.0), pileup_probability=0.5)
    write_sample(path, spec, PhysicsParams())
    with uproot.open(path) as f:
        clean = int((f["tree"]["pileupEnergyTruth"].array(library="np") == 0).sum())
    assert 180 < clean < 330  # about half of 512
    cfg = load_config(None, command="baseline")
    calib = bcli.run_calibration([str(path)], str(tmp_path / "cal.json"), cfg)
    assert 0.95 * clean <= calib.meta["n_events"] <= clean  # (a few without light are dropped too)


@pytest.mark.slow
def test_cli_on_realdata_with_dead_sensors(calibrated, tmp_path):
    d, files, cfg, cal, _, _ = calibrated
    from xec.cli import main

    out = tmp_path / "realdata.parquet"
    assert (
        main(
            [
                "baseline",
                "--input",
                files["realdata"],
                "--calibration",
                str(cal),
                "--out",
                str(out),
                "--log",
                str(tmp_path / "log.txt"),
            ]
        )
        == 0
    )
    df = pd.read_parquet(out)
    assert len(df) == 256 and (df.n_dead == round(0.01 * 4760)).all()
    r = df.pred_energy_energy / df.true_energy_energy - 1
    # the dead-sensor estimate keeps the energy scale (48 dead sensors, ~1 % of the light)
    assert abs(metrics.gaussian_core_fit(r)[0]) < 0.015
    assert (tmp_path / "log.txt").read_text().count("events/s") == 1


def test_bad_inputs(tmp_path):
    from xec.cli import main
    from xec.config import load_config

    missing = tmp_path / "nope.root"
    assert main(["baseline", "--input", str(missing), "--out", str(tmp_path / "x.parquet")]) == 2
    # a ROOT file without the npho branch
    bad = tmp_path / "bad.root"
    with uproot.recreate(bad) as f:
        f.mktree("tree", {"energyTruth": np.float32}).extend({"energyTruth": np.ones(3, np.float32)})
    with pytest.raises(XecError, match="bad.root.*npho"):
        bcli.run_baseline([str(bad)], str(tmp_path / "y.parquet"), load_config(None), None)
    assert not (tmp_path / "y.parquet").exists()
    empty = tmp_path / "empty.root"
    with uproot.recreate(empty) as f:
        f.mktree("tree", {"npho": np.dtype((np.float32, (4760,))), "relative_time": np.dtype((np.float32, (4760,)))})
    with pytest.raises(XecError, match="empty.root: no events"):
        bcli.run_baseline([str(empty)], str(tmp_path / "e.parquet"), load_config(None), None)
    assert not (tmp_path / "e.parquet").exists()
    with pytest.raises(XecError, match="calibration file not found"):
        bcli.load_calibration(str(tmp_path / "cal.json"))
    (tmp_path / "cal.json").write_text('{"bogus": 1}')
    with pytest.raises(XecError, match="not a baseline calibration"):
        bcli.load_calibration(str(tmp_path / "cal.json"))
    assert main(["baseline", "--out", str(tmp_path / "z.parquet")]) == 2
