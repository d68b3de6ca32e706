"""Fast detector simulation: physics invariants with numbers, schema/units, reproducibility and
bad input. Budget ~60 s on 2 shared cores (a few hundred events per check)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from xec import geometry as geo
from xec.cli import main as xec_main
from xec.config import load_config
from xec.errors import XecError
from xec.rootio import SENSOR_BRANCHES, TRUTH_BRANCHES, iterate_events
from xec.simulation import BLOCK_SIZE, PhysicsParams, SampleSpec, iter_blocks, simulate_block
from xec.simulation import generator as gen
from xec.simulation import physics as ph

SENTINEL = np.float32(1e10)
G = geo.get_geometry()
EFF = np.where(G.is_mppc, 0.12, 0.16)


def _read(path: Path) -> dict[str, np.ndarray]:
    chunks = [
        c for _, c in iterate_events([str(path)], sensor_branches=SENSOR_BRANCHES, event_branches=tuple(TRUTH_BRANCHES))
    ]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _simulate(tmp: Path, name: str, sample: dict, *extra: str, physics: dict | None = None) -> Path:
    cfg = {"simulation": {"samples": {name: sample}}}
    if physics:
        cfg["simulation"]["physics"] = physics
    cfg_path = tmp / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp / f"{name}.root"
    rc = xec_main(
        [
            "simulate",
            "--config",
            str(cfg_path),
            "--sample",
            name,
            "--out",
            str(out),
            "--log",
            str(tmp / f"{name}.log"),
            *extra,
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict[str, np.ndarray]:
    """512 monochromatic 52.8 MeV events written and read back through the CLI."""
    tmp = tmp_path_factory.mktemp("sim")
    return _read(_simulate(tmp, "bench", {"events": 512, "seed": 11, "energy_mev": 52.8}))


@pytest.fixture(scope="module")
def datalike(tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("simdata")
    return _read(
        _simulate(
            tmp, "dl", {"events": 200, "seed": 12, "energy_mev": 52.8, "dead_fraction": 0.02, "gain_spread": 0.03}
        )
    )


# ---- first interaction and shower ----------------------------------------------------------
@pytest.mark.parametrize("length", [4.0, 6.0])
def test_conversion_depth_matches_conversion_length(length):
    params = PhysicsParams(conversion_length_cm=length)
    sensors = ph.sensor_arrays(params)
    rng = np.random.default_rng(1)
    n = 20000
    vertex = rng.standard_normal((n, 3)) * np.asarray(params.vertex_sigma_cm)
    direction, entry, conv = ph.sample_gammas(rng, vertex, params, sensors)
    assert ph.inside_active(conv).all()
    np.testing.assert_allclose(np.linalg.norm(direction, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.hypot(entry[:, 0], entry[:, 1]), geo.INNER_RADIUS, atol=1e-9)
    depth = np.linalg.norm(conv - entry, axis=1)
    # away from the edges, where no conversion point can leave the active volume sideways
    uvw = geo.xyz_to_uvw(entry)
    central = (np.abs(uvw[:, 0]) < 25) & (np.abs(uvw[:, 1]) < 60)
    d = depth[central]
    assert abs(d.mean() - length) < 3 * length / np.sqrt(d.size), (d.mean(), length)
    # directions cover the inner face plus the margin
    assert np.abs(uvw[:, 0]).max() > 33.0 and np.abs(uvw[:, 1]).max() > 70.0


def test_shower_profiles():
    params = PhysicsParams(profile_a_spread=0.0, track_spots=0)
    rng = np.random.default_rng(2)
    n = 4000
    energy = np.full(n, 52.8)
    direction = np.tile([[-1.0, 0.0, 0.0]], (n, 1))
    offsets, share = ph.sample_shower(rng, energy, direction, params)
    np.testing.assert_allclose(share.sum(axis=1), 1.0, rtol=1e-12)
    longit = -offsets[..., 0] / params.radiation_length_cm
    t_max = np.log(52.8 / params.critical_energy_mev) - 0.5
    a = params.profile_b * t_max + 1
    expected_mean = a / params.profile_b
    assert abs(longit.mean() - expected_mean) < 3 * np.sqrt(a) / params.profile_b / np.sqrt(longit.size)
    lateral = np.hypot(offsets[..., 1], offsets[..., 2])
    inside = (lateral < params.moliere_radius_cm).mean()
    assert 0.87 < inside < 0.92, inside  # ~90 % within one Moliere radius


def test_pair_track_spots_carry_the_ionisation_from_the_conversion_point():
    """Track spots: evenly on the first track_length_cm along the gamma, dE/dx x length of the
    energy (capped at track_max_fraction = 1/4 of it), the Gamma-profile spots sharing the rest."""
    params = PhysicsParams(track_spots=4, track_length_cm=2.0, track_dedx_mev_per_cm=7.4)
    rng = np.random.default_rng(5)
    energy = np.array([52.8, 20.0, 15.0, 60.0])
    direction = np.tile([[0.0, -1.0, 0.0]], (4, 1))
    offsets, share = ph.sample_shower(rng, energy, direction, params)
    assert offsets.shape == (4, params.spots + 4, 3) and share.shape == (4, params.spots + 4)
    np.testing.assert_allclose(share.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(-offsets[:, :4, 1], np.tile([0.25, 0.75, 1.25, 1.75], (4, 1)), atol=1e-12)
    np.testing.assert_allclose(offsets[:, :4, [0, 2]], 0.0, atol=1e-12)
    track_energy = share[:, :4].sum(axis=1) * energy
    np.testing.assert_allclose(track_energy, [13.2, 5.0, 3.75, 14.8], rtol=1e-9)  # 7.4 MeV/cm x 2 cm, <= E/4
    for key, value in (("track_spots", 17), ("track_max_fraction", 1.5)):
        with pytest.raises(XecError, match=key):  # the schema rejects it in the config ...
            load_config(None, overrides={f"simulation.physics.{key}": value})
        with pytest.raises(XecError, match=key):  # ... and PhysicsParams.check() when built in code
            PhysicsParams.from_config({**load_config(None)["simulation"]["physics"], key: value})


def test_physics_defaults_are_the_schema_defaults():
    physics = load_config(None)["simulation"]["physics"]
    assert PhysicsParams.from_config(physics) == PhysicsParams()
    cfg = load_config(None, overrides={"simulation.samples.s": {"events": 7, "seed": 3}})
    sample = cfg["simulation"]["samples"]["s"]
    assert SampleSpec.from_config("s", sample) == SampleSpec("s", 7, 3, (52.8, 52.8))


# ---- light and response ---------------------------------------------------------------------
def test_npho_linear_in_energy():
    """Coverage-weighted npho sum (per-face 1/coverage weights) vs energy: a line through the
    origin fits every energy within 2 % (same seed: identical geometry at each energy)."""
    params = PhysicsParams()
    weights = ph.coverage_weights()
    energies = np.array([15.0, 25.0, 37.5, 50.0, 60.0])
    sums = []
    for e in energies:
        spec = SampleSpec("lin", BLOCK_SIZE, 5, (e, e))
        arrays = simulate_block(0, spec, params, gen.detector_state(spec))
        sums.append((arrays["npho"] * weights).sum(axis=1).mean())
    sums = np.array(sums)
    slope = sums @ energies / (energies @ energies)
    deviation = sums / (slope * energies) - 1
    assert np.abs(deviation).max() < 0.02, deviation
    # photons per MeV reaching the walls: of the order of the yield (40,000/MeV), less absorption/leakage
    assert 0.5 * 40000 < slope < 40000


def test_light_centroid_tracks_uv(bench):
    """npho-weighted centroid of the MPPCs within 8 cm of the hottest one vs true (u, v) of the
    first interaction, for w > 2 cm: mean residual within 1 cm in every bin of u and of v.

    The gammas cross the face at up to ~27 deg in z (none in phi: they come radially from the
    target), and the light comes from the shower developing beyond the first interaction, so
    in u the centroid sits at the parallax u + D dz/dr (D: one fitted effective depth of the
    light beyond the first interaction, expected a few cm); v needs no correction."""
    uv = geo.xyz_to_uvw(G.positions[G.is_mppc])[:, :2]
    npho = bench["npho"][:, G.is_mppc]
    truth = bench["uvwTruth"].astype(np.float64)
    hot = npho.argmax(axis=1)
    near = np.linalg.norm(uv[None] - uv[hot][:, None], axis=2) < 8.0
    w = np.where(near, npho, 0.0)
    centroid = w @ uv / w.sum(axis=1, keepdims=True)
    sel = (truth[:, 2] > 2) & (np.abs(truth[:, 0]) < 24) & (np.abs(truth[:, 1]) < 60)
    assert sel.sum() > 150
    vec = bench["emiVec"][sel].astype(np.float64)
    parallax = vec[:, 2] / np.hypot(vec[:, 0], vec[:, 1])  # du per cm of radial depth
    du = centroid[sel, 0] - truth[sel, 0]
    depth = (du @ parallax) / (parallax @ parallax)
    assert 1.0 < depth < 10.0, depth
    expected = truth[sel, :2].copy()
    expected[:, 0] += depth * parallax
    res = centroid[sel] - expected
    for axis, edges in ((0, np.linspace(-24, 24, 5)), (1, np.linspace(-60, 60, 5))):
        idx = np.digitize(truth[sel, axis], edges[1:-1])
        for b in range(len(edges) - 1):
            r = res[idx == b, axis]
            assert r.size > 15
            assert abs(r.mean()) < 1.0, (axis, b, r.mean())
        slope = np.polyfit(expected[:, axis], centroid[sel, axis], 1)[0]
        assert 0.95 < slope < 1.05, slope
    assert np.median(np.linalg.norm(res, axis=1)) < 2.0


def test_earliest_sensors_near_shower(bench):
    rt = bench["relative_time"]
    valid = rt < 1e9
    dist = np.linalg.norm(G.positions[None] - bench["xyzTruth"].astype(float)[:, None], axis=2)
    first5 = np.argsort(np.where(valid, rt, np.inf), axis=1)[:, :5]
    d_first = np.take_along_axis(dist, first5, axis=1)
    assert np.median(d_first) < 10.0, np.median(d_first)
    assert np.median(dist[valid]) > 30.0


def test_times_and_reference(bench):
    """relative_time = time - earliest time among sensors with > 50 pe; timeTruth is the gamma
    time at the vertex on the same reference: it is consistent with the sensor times."""
    t, rt = bench["time"].astype(np.float64), bench["relative_time"].astype(np.float64)
    valid = t < 1e9
    assert np.array_equal(valid, rt < 1e9)
    pe = bench["npho"] * EFF
    bright = valid & (pe > 50)
    has_ref = bright.any(axis=1)
    # (a rare edge event whose shower leaks out sideways has no sensor above 50 pe: its
    # reference falls back to the earliest timed sensor)
    assert has_ref.mean() > 0.99
    # the reference sensor has relative_time 0 and no bright sensor is earlier
    np.testing.assert_allclose(np.where(bright, rt, np.inf).min(axis=1)[has_ref], 0.0, atol=1e-15)
    np.testing.assert_allclose(np.where(valid, rt, np.inf).min(axis=1)[~has_ref], 0.0, atol=1e-15)
    offset = np.where(valid, t - rt, np.nan)
    np.testing.assert_allclose(np.nanmax(offset, axis=1) - np.nanmin(offset, axis=1), 0, atol=1e-12)
    assert np.nanmax(np.where(valid, t, np.nan)) < 1e-6  # seconds, not ns
    # timeTruth (ns) + flight + light path ~ relative time of the bright sensors
    tof = np.linalg.norm(bench["xyzTruth"] - bench["xyzVTX"], axis=1) / ph.C_CM_PER_NS
    d = np.linalg.norm(G.positions[None] - bench["xyzTruth"].astype(float)[:, None], axis=2)
    resid = rt * 1e9 - (bench["timeTruth"] + tof)[:, None] - d / 8.5
    per_event = np.array([np.median(r[b]) for r, b in zip(resid, pe > 200) if b.sum() >= 3])
    assert per_event.size > 0.9 * len(resid)
    assert abs(np.median(per_event)) < 0.5
    assert -6 < bench["timeTruth"].min() and bench["timeTruth"].max() < 0  # gamma emitted before the light


def test_schema_and_units(bench):
    n = len(bench["event"])
    for b in SENSOR_BRANCHES:
        assert bench[b].shape == (n, geo.N_SENSORS) and bench[b].dtype == np.float32
    for b, shape in TRUTH_BRANCHES.items():
        assert bench[b].shape == (n, *shape), b
    assert np.array_equal(bench["event"], np.arange(n)) and (bench["run"] == 11).all()
    np.testing.assert_allclose(bench["energyTruth"], 0.0528, rtol=1e-6)  # GeV
    np.testing.assert_allclose(geo.xyz_to_uvw(bench["xyzTruth"]), bench["uvwTruth"], atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(bench["emiVec"], axis=1), 1.0, atol=1e-6)
    theta, phi = geo.direction_to_angles(bench["emiVec"])
    np.testing.assert_allclose(np.stack([theta, phi], 1), bench["emiAng"], atol=1e-3)  # degrees
    assert 55 < theta.min() and theta.max() < 125 and np.abs(phi).max() < 66
    assert np.abs(bench["xyzVTX"]).max() < 5.0  # cm, near the target
    # the first interaction lies on the gamma line, inside the active xenon
    to_conv = bench["xyzTruth"].astype(float) - bench["xyzVTX"]
    along = np.einsum("nc,nc->n", to_conv, bench["emiVec"])
    np.testing.assert_allclose(np.linalg.norm(to_conv - along[:, None] * bench["emiVec"], axis=1), 0, atol=2e-3)
    assert ph.inside_active(bench["xyzTruth"].astype(float)).all()
    w = bench["uvwTruth"][:, 2]
    assert 0 <= w.min() and w.max() < 42
    # npho: photoelectrons / efficiency (integer pe without gain miscalibration)
    pe = bench["npho"] * EFF
    assert (np.abs(pe - np.rint(pe)) <= 2e-3 * np.maximum(pe, 1)).all()
    live_max = bench["npho"].max(axis=1)
    np.testing.assert_allclose(bench["relative_npho"], bench["npho"] / live_max[:, None], rtol=1e-6)
    # no sentinel without dead sensors, and realistic light levels
    assert (bench["npho"] < 1e9).all() and (bench["npho"] >= 0).all()
    assert 5e4 < np.median(pe.sum(axis=1)) < 3e5


def test_dead_sensors_and_gain(datalike):
    npho = datalike["npho"]
    dead = npho >= SENTINEL
    assert np.array_equal(dead, np.broadcast_to(dead[0], dead.shape))  # a fixed set per sample
    assert dead[0].sum() == round(0.02 * geo.N_SENSORS)
    assert np.array_equal(npho[dead], np.full(dead.sum(), SENTINEL))
    for b in ("relative_npho", "time", "relative_time"):
        assert (datalike[b][dead] == SENTINEL).all(), b
    live = ~dead
    assert (npho[live] < 1e9).all() and (datalike["relative_npho"][live] <= 1.0 + 1e-6).all()
    assert np.allclose(datalike["relative_npho"][live].reshape(len(npho), -1).max(axis=1), 1.0)
    # gain miscalibration: npho x efficiency is no longer an integer number of photoelectrons
    pe = npho[live] * np.broadcast_to(EFF, npho.shape)[live]
    frac = np.abs(pe - np.rint(pe))[pe > 20]
    assert np.median(frac) > 0.1
    # the dead set comes from the sample seed
    same = gen.detector_state(SampleSpec("x", 1, 12, (52.8, 52.8), dead_fraction=0.02))
    other = gen.detector_state(SampleSpec("x", 1, 13, (52.8, 52.8), dead_fraction=0.02))
    assert np.array_equal(same.dead, dead[0]) and not np.array_equal(other.dead, dead[0])


def test_pileup_adds_light():
    params = PhysicsParams()
    base = SampleSpec("pu", BLOCK_SIZE, 21, (52.8, 52.8))
    with_pu = dataclasses.replace(base, pileup_probability=1.0)
    a = simulate_block(0, base, params, gen.detector_state(base))
    b = simulate_block(0, with_pu, params, gen.detector_state(with_pu))
    np.testing.assert_array_equal(a["uvwTruth"], b["uvwTruth"])  # same main gamma
    ratio = b["npho"].sum(axis=1) / a["npho"].sum(axis=1)
    # pile-up energy ~ U(10, 52.8) MeV: on average ~60 % more light, always more
    assert (ratio > 1.0).mean() > 0.95 and 1.35 < np.median(ratio) < 1.85, (np.median(ratio), (ratio > 1).mean())


# ---- reproducibility ---------------------------------------------------------------------------
def test_same_seed_identical_whatever_chunk_size(tmp_path):
    sample = {"events": 300, "seed": 31, "energy_mev": [15.0, 60.0], "dead_fraction": 0.01}
    a = _read(_simulate(tmp_path, "a", sample, "--chunk-size", "1", "--workers", "1"))
    b = _read(_simulate(tmp_path, "b", sample, "--chunk-size", "5000", "--workers", "2", "--compression", "zstd"))
    assert len(a["event"]) == 300
    # the compression changes the bytes (lz4 by default: larger), never the content
    assert (tmp_path / "a.root").stat().st_size > 1.15 * (tmp_path / "b.root").stat().st_size
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # N events are the first N of a longer run; another seed gives other events
    spec = SampleSpec("c", 40, 31, (15.0, 60.0), dead_fraction=0.01)
    first = next(iter_blocks(spec, PhysicsParams()))
    assert len(first["event"]) == 40
    np.testing.assert_array_equal(first["npho"], a["npho"][:40])
    other = next(iter_blocks(dataclasses.replace(spec, seed=32), PhysicsParams()))
    assert not np.array_equal(other["npho"], first["npho"])


def test_worker_threads_keep_block_order_past_the_in_flight_window():
    # 5 blocks, 2 workers, chunk 1: 3 blocks in flight, so the window slides twice
    spec = SampleSpec("w", 4 * BLOCK_SIZE + 10, 5, (15.0, 60.0))
    serial = list(iter_blocks(spec, PhysicsParams(), chunk_size=1, workers=1))
    threaded = list(iter_blocks(spec, PhysicsParams(), chunk_size=1, workers=2))
    assert [len(b["event"]) for b in threaded] == [BLOCK_SIZE] * 4 + [10]
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a["event"], b["event"])
        np.testing.assert_array_equal(a["relative_time"], b["relative_time"])


# ---- bad input ------------------------------------------------------------------------------------
def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = xec_main(["simulate", *argv])
    return rc, capsys.readouterr().err


def test_bad_input(tmp_path, capsys):
    out = tmp_path / "out.root"
    rc, err = _run_cli(capsys, "--sample", "nope", "--out", str(out))
    assert rc == 2 and "unknown sample 'nope'" in err
    rc, err = _run_cli(capsys, "--sample", "bench", "--events", "0", "--out", str(out))
    assert rc == 2 and "--events must be > 0" in err
    rc, err = _run_cli(capsys, "--sample", "bench", "--events", "-5", "--out", str(out))
    assert rc == 2
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, err = _run_cli(capsys, "--sample", "bench", "--events", "10", "--out", str(blocker / "out.root"))
    assert rc == 2 and "cannot write the output file" in err
    rc, err = _run_cli(capsys, "--sample", "bench", "--events", "10", "--out", str(tmp_path))
    assert rc == 2 and "is a directory" in err
    for bad in (
        {"simulation": {"samples": {"s": {"events": 10, "seed": 1, "energy_mev": -3}}}},
        {"simulation": {"samples": {"s": {"events": 10, "seed": 1, "energy_mev": [60.0, 15.0]}}}},
        {"simulation": {"samples": {"s": {"events": 10, "seed": 1}}, "physics": {"spots": 0}}},
        {"simulation": {"samples": {"s": {"events": 10, "seed": 1, "dead_fraction": 1.5}}}},
    ):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(yaml.safe_dump(bad))
        rc, err = _run_cli(capsys, "--config", str(cfg), "--sample", "s", "--out", str(out))
        assert rc == 2 and err.count("\n") <= 3 and "error" in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "bad.yaml"]


def test_failure_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    from xec.errors import XecError

    real = gen.simulate_block

    def failing(block, *args, **kwargs):
        if block == 1:
            raise XecError("simulated failure in block 1")
        return real(block, *args, **kwargs)

    monkeypatch.setattr(gen, "simulate_block", failing)
    out = tmp_path / "partial.root"
    rc, err = _run_cli(capsys, "--sample", "bench", "--events", "600", "--chunk-size", "256", "--out", str(out))
    assert rc == 2 and "simulated failure" in err
    assert list(tmp_path.iterdir()) == []


def test_pileup_sample_has_the_configured_fraction_of_second_gammas(tmp_path):
    """The default config's pile-up evaluation sample (simulation.samples.pileup): the fraction
    of events with a second gamma, read from the truth the simulator writes (pileupEnergyTruth
    > 0), is the configured pileup_probability within 4 binomial sigmas; the second gamma's
    energy and time lie in simulation.physics.pileup_energy_mev / pileup_window_ns; samples
    without pile-up carry no such branches; the main gamma is drawn as without pile-up."""
    import uproot

    from xec.config import DEFAULT_CONFIG

    cfg = load_config(DEFAULT_CONFIG)
    spec = cfg["simulation"]["samples"]["pileup"]
    p = spec["pileup_probability"]
    assert 0 < p < 1
    n = 1024
    out = tmp_path / "pileup.root"
    assert (
        xec_main(
            ["simulate", "--config", str(DEFAULT_CONFIG), "--sample", "pileup", "--events", str(n)]
            + ["--out", str(out), "--workers", "1"]
        )
        == 0
    )
    with uproot.open(out) as f:
        a = f["tree"].arrays(["pileupEnergyTruth", "pileupTimeTruth", "energyTruth"], library="np")
    e_pu, t_pu = a["pileupEnergyTruth"], a["pileupTimeTruth"]
    has = e_pu > 0
    frac = has.mean()
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n), (frac, p)
    lo, hi = cfg["simulation"]["physics"]["pileup_energy_mev"]
    assert np.all((e_pu[has] >= lo * 1e-3 * (1 - 1e-6)) & (e_pu[has] <= hi * 1e-3 * (1 + 1e-6)))
    w_lo, w_hi = cfg["simulation"]["physics"]["pileup_window_ns"]
    assert np.all((t_pu[has] >= w_lo - 1e-3) & (t_pu[has] <= w_hi + 1e-3)) and np.all(t_pu[~has] == 0)
    assert np.allclose(a["energyTruth"], spec["energy_mev"] * 1e-3)
    # without pile-up: no pile-up branches, the same main-gamma truth
    base = SampleSpec("nopu", BLOCK_SIZE, 21, (52.8, 52.8))
    plain = simulate_block(0, base, PhysicsParams(), gen.detector_state(base))
    assert not any(k.startswith("pileup") for k in plain)
    piled = simulate_block(
        0, dataclasses.replace(base, pileup_probability=p), PhysicsParams(), gen.detector_state(base)
    )
    np.testing.assert_array_equal(plain["uvwTruth"], piled["uvwTruth"])
    assert (piled["pileupEnergyTruth"] > 0).sum() > 0
