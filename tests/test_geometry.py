"""Detector geometry: computed sensors vs the reference tables, index maps, grids, conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xec.geometry import (
    FACE_NAMES,
    INNER_RADIUS,
    N_SENSORS,
    OUTER_GRID_SHAPE,
    OUTER_RADIUS,
    angles_to_direction,
    direction_to_angles,
    faces_from_flat,
    flat_from_faces,
    get_geometry,
    hex_opposite,
    uvw_to_xyz,
    xyz_to_uvw,
)

G = get_geometry()


def _phi(pos: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(pos[..., 1], -pos[..., 0]))


@pytest.fixture(scope="module")
def ref(reference_geometry):
    pos = np.loadtxt(reference_geometry / "sensor_positions.txt")
    dirs = np.loadtxt(reference_geometry / "sensor_directions.txt")
    assert pos.shape == (N_SENSORS, 4) and dirs.shape == (N_SENSORS, 8)
    assert np.array_equal(pos[:, 0], np.arange(N_SENSORS))
    assert np.array_equal(dirs[:, 0], np.arange(N_SENSORS))
    return pos[:, 1:4], dirs[:, 1:4], dirs[:, 7].astype(int)


# ---- sensors ------------------------------------------------------------------------------
def test_face_counts_types_and_areas():
    assert FACE_NAMES == ("inner", "outer", "us", "ds", "top", "bottom")
    counts = {name: G.face_ids(name).size for name in FACE_NAMES}
    assert counts == {"inner": 4092, "outer": 234, "us": 144, "ds": 144, "top": 73, "bottom": 73}
    outer = G.face_ids("outer")
    assert np.array_equal(outer, np.r_[4092:4308, 4742:4760])
    assert np.array_equal(G.face_ids("us"), np.arange(4308, 4452))
    assert np.array_equal(G.face_ids("top"), np.arange(4596, 4669))
    assert np.array_equal(G.is_mppc, G.face == 0)
    assert G.is_mppc.sum() == 4092 and (~G.is_mppc).sum() == 668
    assert np.allclose(G.active_area[G.is_mppc], 1.44)
    assert np.allclose(G.active_area[~G.is_mppc], math.pi * 2.25**2)
    with pytest.raises(ValueError, match="unknown face"):
        G.face_ids("side")


def test_arrays_are_read_only_and_cached():
    assert get_geometry() is G
    assert G.positions.shape == (N_SENSORS, 3) and G.positions.dtype == np.float64
    assert G.face.dtype == np.int8
    for arr in (G.positions, G.normals, G.face, G.inner_index, G.outer_grid().index):
        with pytest.raises(ValueError):
            arr[0] = 0


def test_positions_match_reference(ref):
    pos, _, face = ref
    dev = np.linalg.norm(G.positions - pos, axis=1)
    assert dev.max() < 0.1, f"sensor {dev.argmax()} is {dev.max():.3f} cm off"
    assert np.array_equal(G.face, face)


def test_normals_match_reference(ref):
    _, dirs, _ = ref
    ang = np.degrees(np.arccos(np.clip(np.sum(G.normals * dirs, axis=1), -1, 1)))
    assert ang[~G.is_mppc].max() < 1.0
    # Inner face: our normals are exactly radial (nominal cylinder). The reference normals carry
    # a per-block survey tilt of up to 1.09 deg (rows 0-23, 24-46, 47-69, 70-92 each tilted
    # linearly in phi'), which no published constant describes: 88 MPPCs at the ends of the
    # last block exceed 1 deg. Bound it tightly instead of hiding it.
    assert ang[G.is_mppc].max() < 1.1
    assert np.mean(ang[G.is_mppc] > 1.0) < 0.025


def _in_xenon(p: np.ndarray) -> np.ndarray:
    """Inside the active volume: between the inner and outer cylinders, the top/bottom planes
    and the slanted us/ds faces (|z| limit linear in r through the published rings)."""
    r = np.hypot(p[:, 0], p[:, 1])
    zmax = 35.15 + (r - 69.53) * (46.84 - 35.15) / (102.95 - 69.53)
    return (r > INNER_RADIUS) & (r < OUTER_RADIUS) & (np.abs(_phi(p)) < 62.76) & (np.abs(p[:, 2]) < zmax)


def test_normals_are_unit_and_point_into_the_xenon():
    assert np.allclose(np.linalg.norm(G.normals, axis=1), 1.0)
    assert np.all(_in_xenon(G.positions + 1.0 * G.normals))
    assert not np.any(_in_xenon(G.positions - 1.0 * G.normals))
    r_hat = G.positions[:, :2] / np.linalg.norm(G.positions[:, :2], axis=1, keepdims=True)
    radial = np.sum(G.normals[:, :2] * r_hat, axis=1)
    assert np.allclose(radial[G.face == 0], 1.0) and np.allclose(radial[G.face == 1], -1.0)
    assert np.all(G.normals[G.face == 2, 2] > 0.9) and np.all(G.normals[G.face == 3, 2] < -0.9)
    # us/ds normals are perpendicular to the slanted ring line
    for name in ("us", "ds"):
        idx = getattr(G, f"{name}_index")
        along = G.positions[idx[:, -1]] - G.positions[idx[:, 0]]
        assert np.allclose(np.sum(along * G.normals[idx[:, 0]], axis=1), 0, atol=1e-9)
    # top/bottom normals are perpendicular to their planes (which contain the z axis)
    for name in ("top", "bottom"):
        ids = G.face_ids(name)
        assert np.allclose(G.normals[ids] @ (G.positions[ids] - G.positions[ids[0]]).T, 0)
        assert np.allclose(G.normals[ids, 2], 0)


# ---- index maps ---------------------------------------------------------------------------
def test_inner_index_is_a_physical_grid():
    idx = G.inner_index
    assert idx.shape == (93, 44) and idx.dtype == np.int64
    assert np.array_equal(np.sort(idx.ravel()), G.face_ids("inner"))
    pos = G.positions[idx]
    phi = _phi(pos)
    assert np.all(np.diff(phi, axis=0) < 0) and np.allclose(phi[0, 0], 62.085, atol=0.01)
    assert np.all(np.diff(pos[..., 2], axis=1) > 0)
    dz = np.linalg.norm(np.diff(pos, axis=1), axis=-1)
    dphi = np.linalg.norm(np.diff(pos, axis=0), axis=-1)
    assert np.allclose(dz, 1.51, atol=2e-3)
    assert np.allclose(dphi, INNER_RADIUS * math.radians(1.3497), atol=2e-3)  # 1.530 cm


@pytest.mark.parametrize("name", ["us", "ds"])
def test_slanted_face_index(name):
    idx = getattr(G, f"{name}_index")
    assert idx.shape == (24, 6) and idx.dtype == np.int64
    assert np.array_equal(np.sort(idx.ravel()), G.face_ids(name))
    pos = G.positions[idx]
    r = np.hypot(pos[..., 0], pos[..., 1])
    assert np.all(np.diff(_phi(pos), axis=0) < 0)  # rows ordered like the inner rows
    assert np.all(np.diff(r, axis=1) > 0)  # columns outward in r
    assert np.allclose(r[:, [0, -1]], [69.53, 102.95], atol=0.01)
    assert np.allclose(np.abs(pos[:, [0, -1], 2]), [35.15, 46.84], atol=0.01)
    step = np.linalg.norm(np.diff(pos, axis=1), axis=-1)
    assert np.allclose(step, math.hypot(33.42, 11.69) / 5, atol=1e-3)


# ---- outer grid ---------------------------------------------------------------------------
def _cell_centres() -> tuple[np.ndarray, np.ndarray]:
    """(v, z) of the fine cell centres from the grid definition (cm on the outer cylinder)."""
    H, W = OUTER_GRID_SHAPE
    dphi, dz = 5.23 / 3, (2 * 41.42 / 8) / 5
    phi = 60.145 + dphi - dphi * np.arange(H)
    z = -41.42 - 2 * dz + dz * np.arange(W)
    return OUTER_RADIUS * np.radians(phi), z


def test_outer_fine_grid_maps_every_outer_sensor():
    grid = G.outer_grid()
    assert grid.shape == OUTER_GRID_SHAPE == (72, 45) and grid.exact
    outer = G.face_ids("outer")
    assert np.array_equal(np.unique(grid.index), outer)  # every outer sensor, nothing else
    cells = np.bincount(grid.index.ravel(), minlength=N_SENSORS)[outer]
    assert set(cells[:216][np.isin(outer[:216], [4185, 4186, 4195, 4213])]) == {6}
    assert np.sum(cells == 15) == 204 and np.sum(cells == 6) == 30  # coarse 3x5, lattice 2x3
    wsum = np.bincount(grid.index.ravel(), weights=grid.weight.ravel(), minlength=N_SENSORS)
    assert np.allclose(wsum[outer], 1.0)
    # each cell's sensor is the nearest outer sensor to the cell centre, and close to it
    v, z = _cell_centres()
    sv = OUTER_RADIUS * np.radians(_phi(G.positions[outer]))
    d = np.hypot(v[:, None, None] - sv, z[None, :, None] - G.positions[outer, 2])
    own = np.hypot(
        v[:, None] - OUTER_RADIUS * np.radians(_phi(G.positions[grid.index])), z[None, :] - G.positions[grid.index, 2]
    )
    assert own.max() < 6.0
    assert np.mean(np.isclose(own, d.min(axis=-1))) > 0.99  # ties/edges of the centre block


def test_outer_grid_neighbours_are_physical_neighbours():
    pos = G.positions[G.outer_grid().index]
    for axis in (0, 1):
        step = np.linalg.norm(np.diff(pos, axis=axis), axis=-1)
        assert step.max() < 12.0  # the reference reshape had 83 cm jumps
    coarse = G.positions[G.outer_grid((3, 5)).index]
    assert np.linalg.norm(np.diff(coarse, axis=1), axis=-1).max() < 12.5
    # coarse ids 4185.. / 4194.. sit on the centre lattice (8.72 and 1.74 deg): 12.9 cm apart
    assert np.linalg.norm(np.diff(coarse, axis=0), axis=-1).max() < 13.0


def test_outer_grid_pooled_to_coarse_layout():
    grid = G.outer_grid((3, 5))
    assert grid.shape == (24, 9) and not grid.exact
    assert np.array_equal(grid.index, np.arange(4092, 4308).reshape(24, 9))
    ncell = grid.index.size
    assert np.allclose(np.bincount(grid.entry_cell, grid.entry_area, ncell), 1.0)
    assert np.allclose(np.bincount(grid.entry_sensor, grid.entry_share, N_SENSORS)[G.face_ids("outer")], 1.0)
    patch_cells = np.unique(grid.entry_cell[grid.entry_sensor >= 4742])
    assert np.array_equal(
        np.sort(grid.index.ravel()[patch_cells]),
        [4185, 4186, 4187, 4194, 4195, 4196, 4203, 4204, 4205, 4212, 4213, 4214],
    )
    assert G.outer_grid(3).shape == (24, 15)
    with pytest.raises(ValueError, match="divide"):
        G.outer_grid(4)


def test_outer_grid_round_trip_and_conservation():
    rng = np.random.default_rng(0)
    npho = rng.gamma(2.0, 50.0, size=(3, N_SENSORS)).astype(np.float32)
    time = rng.normal(0.0, 1e-9, size=(3, N_SENSORS))
    outer = G.face_ids("outer")
    fine = G.outer_grid()
    img = fine.to_grid(npho, "npho")
    assert img.shape == (3, 72, 45)
    assert np.allclose(img.sum(axis=(1, 2)), npho[:, outer].sum(axis=1), rtol=1e-5)
    back = fine.to_flat(img, "npho")
    assert np.allclose(back[:, outer], npho[:, outer], rtol=1e-6)
    assert np.all(back[:, np.setdiff1d(np.arange(N_SENSORS), outer)] == 0)
    t_img = fine.to_grid(time, "time")
    assert np.array_equal(fine.to_flat(t_img, "time")[:, outer], time[:, outer])
    pooled = G.outer_grid((3, 5))
    assert np.allclose(pooled.to_grid(npho).sum(axis=(1, 2)), npho[:, outer].sum(axis=1), rtol=1e-5)
    # a cell owned by one sensor copies its time; a merged cell averages by area
    t_pool = pooled.to_grid(time, "time")
    assert np.allclose(t_pool[:, 0, 0], time[:, 4092])
    with pytest.raises(ValueError, match="pool=1"):
        pooled.to_flat(pooled.to_grid(npho))


def test_faces_round_trip_every_sensor():
    rng = np.random.default_rng(1)
    npho = rng.gamma(2.0, 50.0, size=(2, 3, N_SENSORS))
    faces = faces_from_flat(npho, "npho")
    shapes = {k: v.shape for k, v in faces.items()}
    assert shapes == {
        "inner": (2, 3, 93, 44),
        "outer": (2, 3, 72, 45),
        "us": (2, 3, 24, 6),
        "ds": (2, 3, 24, 6),
        "top": (2, 3, 73),
        "bottom": (2, 3, 73),
    }
    assert np.allclose(flat_from_faces(faces, "npho"), npho, rtol=1e-12)
    time = rng.normal(size=(5, N_SENSORS)).astype(np.float32)
    back = flat_from_faces(faces_from_flat(time, "time"), "time")
    assert back.dtype == np.float32 and np.array_equal(back, time)
    # sentinels of one sensor stay in that sensor's cells
    dead = npho[0, 0].copy()
    dead[4186] = 1e10
    img = faces_from_flat(dead, "time")["outer"]
    assert np.sum(img == 1e10) == 6


# ---- hex faces ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["top", "bottom"])
def test_hex_layout(name):
    hf = G.hex_face(name)
    assert np.array_equal(hf.ids, G.face_ids(name)) and hf.xy.shape == (73, 2)
    assert np.array_equal(np.bincount(hf.row), [11, 12, 11, 12, 13, 14])
    assert np.all(np.diff(hf.row) >= 0)  # ids run row by row from inner r outward
    for k in range(6):
        z = hf.xy[hf.row == k, 0]
        assert np.all(np.diff(z) > 0) and np.isclose(z.mean(), 0, atol=1e-9)
        assert np.allclose(np.diff(z), 6.12)
    assert np.allclose(np.unique(hf.xy[:, 1]), [68.27, 75.18, 82.09, 89.00, 95.91, 102.82])
    assert np.allclose(np.abs(_phi(G.positions[hf.ids])), 62.76)


@pytest.mark.parametrize("name", ["top", "bottom"])
def test_hex_adjacency_from_physical_distances(name):
    hf = G.hex_face(name)
    nb = hf.neighbors
    assert nb.shape == (73, 7) and nb.dtype == np.int64
    assert np.array_equal(nb[:, 0], np.arange(73))
    dist = np.linalg.norm(hf.xy[:, None] - hf.xy[None], axis=-1)
    close = (dist > 6.1) & (dist < 7.6)
    edges = np.zeros((73, 73), bool)
    for i in range(73):
        for d in range(1, 7):
            if nb[i, d] >= 0:
                edges[i, nb[i, d]] = True
    assert np.array_equal(edges, close)  # every edge is a 6.1-7.6 cm pair and vice versa
    assert edges.sum() // 2 == 67 + 3 * 22 + 24 + 26  # in-row + between-row edges
    # direction classes follow the physical offset, and are antisymmetric
    for i in range(73):
        for d in range(1, 7):
            j = nb[i, d]
            if j < 0:
                continue
            off = hf.xy[j] - hf.xy[i]
            ang = math.degrees(math.atan2(off[1], off[0]))
            assert abs((ang - (d - 1) * 60 + 180) % 360 - 180) < 30
            assert nb[j, hex_opposite(d)] == i
    # interior PMTs (not in the first/last row, not at a row end) have all 6 directions
    first = np.r_[True, np.diff(hf.row) != 0]
    last = np.r_[np.diff(hf.row) != 0, True]
    interior = (hf.row > 0) & (hf.row < 5) & ~first & ~last
    assert interior.sum() == 40
    assert np.all(nb[interior, 1:] >= 0)
    assert np.all((nb[~interior, 1:] >= 0).sum(axis=1) < 6)


def test_hex_opposite_and_bad_face():
    assert [hex_opposite(d) for d in range(1, 7)] == [4, 5, 6, 1, 2, 3]
    assert np.array_equal(hex_opposite(np.arange(1, 7)), [4, 5, 6, 1, 2, 3])
    with pytest.raises(ValueError, match="top"):
        G.hex_face("inner")


# ---- conversions --------------------------------------------------------------------------
def test_uvw_round_trip_and_inner_surface():
    rng = np.random.default_rng(2)
    uvw = np.stack([rng.uniform(-30, 30, 1000), rng.uniform(-70, 70, 1000), rng.uniform(0, 42, 1000)], axis=-1).reshape(
        10, 100, 3
    )
    assert np.allclose(xyz_to_uvw(uvw_to_xyz(uvw)), uvw, atol=1e-10)
    s = xyz_to_uvw(G.positions[G.is_mppc])
    assert np.allclose(s[:, 2], 0, atol=1e-9)
    assert np.allclose(s[:, 0], G.positions[G.is_mppc, 2])
    assert np.isclose(np.abs(s[:, 1]).max(), INNER_RADIUS * math.radians(62.0862), atol=1e-3)
    assert np.allclose(uvw_to_xyz([0.0, 0.0, 10.0]), [-(INNER_RADIUS + 10), 0, 0])


def test_angle_conventions_and_round_trip():
    assert np.allclose(angles_to_direction(90.0, 0.0), [-1, 0, 0])  # towards the detector
    assert np.allclose(angles_to_direction(0.0, 33.0), [0, 0, 1])
    assert np.allclose(angles_to_direction(90.0, 90.0), [0, 1, 0])
    rng = np.random.default_rng(3)
    theta = rng.uniform(1, 179, (4, 50))
    phi = rng.uniform(-179.9, 179.9, (4, 50))
    vec = angles_to_direction(theta, phi)
    assert vec.shape == (4, 50, 3) and np.allclose(np.linalg.norm(vec, axis=-1), 1)
    t2, p2 = direction_to_angles(3.0 * vec)  # any length
    assert np.allclose(t2, theta) and np.allclose(p2, phi)
    # the direction of a sensor seen from the origin points at it
    t, p = direction_to_angles(G.positions)
    assert np.allclose(angles_to_direction(t, p) * np.linalg.norm(G.positions, axis=1)[:, None], G.positions)
