"""MEG II LXe detector geometry: the one home for sensor positions, normals, faces and index maps.

Everything is computed from the published constants of the MEG II layout (radii, pitches,
angles, hex rows; conventions: docs/architecture.md, "Geometry conventions"); the reference
sensor tables are only used by an optional test.

Coordinates (MEG II): origin at the target, z = beam axis, detector on the -x side,
phi' = atan2(y, -x). A point at radius r and angle phi' is (x, y) = (-r cos phi', r sin phi').

Global sensor ids (4760):
    0-4091     inner   93 rows (phi' descending) x 44 columns (z ascending), id = row*44 + col
    4092-4307  outer   24 strips x 9 along z (coarse PMTs)
    4308-4451  us      24 strips x 6 rings outward in r (slanted face, z < 0)
    4452-4595  ds      mirror of us (z > 0)
    4596-4668  top     hex plane at phi' = +62.76 deg, rows of [11,12,11,12,13,14]
    4669-4741  bottom  mirror of top at phi' = -62.76 deg
    4742-4759  outer   18-PMT centre patch

Index maps are built from the computed physical positions (binning phi', z, r), never by
reshaping id ranges, so a grid neighbour is always a physical neighbour.

Outer face: the coarse PMTs form 24 strips x 9 z positions, except the centre block
(strips 10-13 x z positions 3-5), which holds a denser 6 x 5 lattice (phi' pitch 2/3 and z pitch
~3/5 of the coarse one) of 12 coarse + 18 patch PMTs. The fine grid (72, 45) gives each coarse
PMT 3 x 5 cells and each lattice PMT 2 x 3 cells, so every cell belongs to exactly one sensor
(npho split evenly over a sensor's cells, time copied) and the map back to sensors is exact.
``outer_grid(pool=(3, 5))`` is the 24 x 9 coarse layout, the lattice merged into its 12 cells.

Normals are the nominal ones (radial on the inner/outer cylinders, perpendicular to the slanted
and hex planes). The reference table's inner-face normals carry a survey tilt of up to 1.09 deg
per block of ~23 rows that no published constant describes; 98 % agree with ours within 1 deg.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

N_SENSORS = 4760
FACE_NAMES = ("inner", "outer", "us", "ds", "top", "bottom")  # face code = index
INNER_RADIUS = 64.97  # cm, MPPC photosensitive surface

# ---- published constants ----------------------------------------------------------------
# Rows/strips are laid out symmetrically about phi' = 0 and columns about z = 0; the published
# first-row values (62.085 deg, 60.15 deg, -32.46 cm) are these numbers rounded.
INNER_ROWS, INNER_COLS = 93, 44
INNER_DPHI = -1.3497  # deg, row pitch (row 0 at phi' = +62.086)
INNER_PHI0 = -INNER_DPHI * (INNER_ROWS - 1) / 2
INNER_DZ = 1.510  # cm, column pitch (column 0 at z = -32.465)
INNER_Z0 = -INNER_DZ * (INNER_COLS - 1) / 2
MPPC_SIDE = 1.2  # cm, active side of one MPPC (4 chips)

OUTER_RADIUS = 106.27
OUTER_STRIPS, OUTER_NZ = 24, 9
OUTER_DPHI = -5.23  # deg, strip pitch (shared by us/ds); strip 0 at phi' = +60.145
OUTER_PHI0 = -OUTER_DPHI * (OUTER_STRIPS - 1) / 2
OUTER_ZMAX = 41.42  # cm: z = -41.42 ... +41.42 in 9 steps
OUTER_DZ = 2 * OUTER_ZMAX / (OUTER_NZ - 1)
# Centre block: coarse strips 10-13 x z positions 3-5 hold a dense 6 x 5 lattice instead
# (phi' = 5.23 deg * {5,3,1,-1,-3,-5}/3, z = 6.2 cm * {-2..2}). The 12 coarse PMTs of the block
# (ids 4185-4187, 4194-4196, 4203-4205, 4212-4214) sit on lattice rows 0,2,3,5 x columns 0,2,4;
# the 18 patch PMTs (4742-4759) fill the other lattice sites in row-major order.
CENTRE_STRIPS = (10, 11, 12, 13)
CENTRE_ZCOLS = (3, 4, 5)
CENTRE_PHI = tuple(-OUTER_DPHI * k / 3.0 for k in (5, 3, 1, -1, -3, -5))
CENTRE_Z = tuple(6.2 * k for k in (-2, -1, 0, 1, 2))
CENTRE_COARSE_ROWS = (0, 2, 3, 5)
CENTRE_COARSE_COLS = (0, 2, 4)

SLANT_RINGS = 6
SLANT_R = (69.53, 102.95)  # cm, first and last ring (linear in between)
SLANT_Z = (35.15, 46.84)  # |z| of first and last ring

HEX_PHI = 62.76  # deg, |phi'| of the top/bottom planes
HEX_ROW_COUNTS = (11, 12, 11, 12, 13, 14)
HEX_R0, HEX_DR = 68.27, 6.91  # cm: rows at 68.27, 75.18, ..., 102.82
HEX_DZ = 6.12  # cm, in-row pitch
HEX_NEIGHBOR_RANGE = (6.1, 7.6)  # cm: nearest neighbours are 6.12 (in row) / 7.56 (across);
# the next-nearest pairs are >= 11.5 cm apart, so this window is unambiguous

PMT_DIAMETER = 4.5  # cm, photocathode

FACE_SIZES = {"inner": 4092, "outer": 234, "us": 144, "ds": 144, "top": 73, "bottom": 73}
_FIRST_ID = {"inner": 0, "outer_coarse": 4092, "us": 4308, "ds": 4452, "top": 4596, "bottom": 4669, "outer_patch": 4742}

# fine outer grid cells per coarse PMT (rows in phi', columns in z): 3 x 5 makes every centre
# lattice PMT own exactly 2 x 3 cells
OUTER_FINE = (3, 5)
OUTER_GRID_SHAPE = (OUTER_STRIPS * OUTER_FINE[0], OUTER_NZ * OUTER_FINE[1])  # (72, 45)

GridKind = Literal["npho", "time", "extensive", "intensive"]


def _radial(phi_deg: np.ndarray) -> np.ndarray:
    """Unit vector pointing away from the z axis at angle phi' (deg)."""
    p = np.radians(phi_deg)
    return np.stack([-np.cos(p), np.sin(p), np.zeros_like(p)], axis=-1)


def _cylinder(r: np.ndarray, phi_deg: np.ndarray, z: np.ndarray) -> np.ndarray:
    return _radial(phi_deg) * np.asarray(r, float)[..., None] + np.stack(
        [np.zeros_like(z), np.zeros_like(z), z], axis=-1
    )


def _freeze(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _bin(values: np.ndarray, start: float, pitch: float, n: int, what: str) -> np.ndarray:
    """Index of the grid position nearest to each value; fails loudly if off-grid."""
    f = (values - start) / pitch
    i = np.rint(f).astype(np.int64)
    if np.any(np.abs(f - i) > 0.25) or i.min() < 0 or i.max() >= n:
        raise AssertionError(f"geometry: {what} positions do not lie on their grid")
    return i


def _index_map(rows: np.ndarray, cols: np.ndarray, ids: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    index = np.full(shape, -1, np.int64)
    index[rows, cols] = ids
    if np.any(index < 0) or np.unique(index).size != index.size:
        raise AssertionError(f"geometry: {what} index map is not a permutation")
    return _freeze(index)


# ---- grids --------------------------------------------------------------------------------
def _canonical_kind(kind: str) -> str:
    k = {"npho": "extensive", "time": "intensive"}.get(kind, kind)
    if k not in ("extensive", "intensive"):
        raise ValueError(f"grid value kind must be npho/extensive or time/intensive, got {kind!r}")
    return k


@dataclass(frozen=True, eq=False)
class RectGrid:
    """Rectangular image of the outer face: exact sparse map between sensors and cells.

    ``entry_cell[m]``, ``entry_sensor[m]``, ``entry_share[m]``, ``entry_area[m]``: cell
    (flat index into (H, W)) m covers part of sensor ``entry_sensor[m]``; ``entry_share`` is
    the fraction of that sensor's npho placed in the cell (a sensor's shares sum to 1:
    npho is extensive) and ``entry_area`` the fraction of the cell it covers (a cell's areas
    sum to 1: time, intensive, is the area-weighted mean, i.e. a copy when one sensor owns it).

    ``index``/``weight`` (H, W) name the sensor covering most of each cell and its share.
    With ``pool=1`` (``exact``) every cell belongs to exactly one sensor, so ``index`` and
    ``weight`` alone are the whole map: npho_cell = npho[index] * weight, time_cell =
    time[index]; back: npho_s = sum of its cells, time_s = any of its cells. Pooled grids merge
    sensors in a cell (the centre patch), so ``to_flat`` is only defined for exact grids.
    """

    index: np.ndarray
    weight: np.ndarray
    entry_cell: np.ndarray
    entry_sensor: np.ndarray
    entry_share: np.ndarray
    entry_area: np.ndarray
    sensor_ids: np.ndarray  # sensors present in the grid (sorted)
    cells_per_sensor: np.ndarray  # (4760,) number of fine cells each sensor owns (0 off-face)
    pool: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.index.shape)  # type: ignore[return-value]

    @property
    def exact(self) -> bool:
        return bool(np.all(self.entry_area == 1.0))

    def to_grid(self, values: np.ndarray, kind: GridKind = "npho") -> np.ndarray:
        """(..., 4760) per-sensor values -> (..., H, W) cells (npho split, time copied)."""
        values = np.asarray(values)
        if values.shape[-1] != N_SENSORS:
            raise ValueError(f"to_grid expects (..., {N_SENSORS}) values, got {values.shape}")
        k = _canonical_kind(kind)
        if self.exact:  # pure gather: keeps NaN/sentinels of other sensors out of the cell
            out = values[..., self.index]
            # divide by the integer cell count (not the float32 weight) to keep full precision
            return out / self.cells_per_sensor[self.index].astype(out.dtype) if k == "extensive" else out
        w = self.entry_share if k == "extensive" else self.entry_area
        contrib = values[..., self.entry_sensor] * w.astype(np.result_type(values, np.float32))
        # entries are sorted by cell and every cell has one: a segmented sum per cell
        return np.add.reduceat(contrib, self._cell_starts, axis=-1).reshape(values.shape[:-1] + self.shape)

    @functools.cached_property
    def _cell_starts(self) -> np.ndarray:
        return np.flatnonzero(np.r_[True, np.diff(self.entry_cell) != 0])

    @functools.cached_property
    def _cells_by_sensor(self) -> tuple[np.ndarray, np.ndarray]:
        """Fine cells sorted by owning sensor (follows ``sensor_ids``) and each run's start."""
        owner = self.index.ravel()
        order = np.argsort(owner, kind="stable")
        return order, np.flatnonzero(np.r_[True, np.diff(owner[order]) != 0])

    def to_flat(self, grid: np.ndarray, kind: GridKind = "npho", out: np.ndarray | None = None) -> np.ndarray:
        """Inverse of ``to_grid`` for exact (pool=1) grids; fills this face's sensors of ``out``
        (zeros elsewhere when ``out`` is None).

        npho of a sensor = sum of its cells; time = the value of its first cell.
        """
        if not self.exact:
            raise ValueError(
                f"outer_grid(pool={self.pool}) merges sensors in a cell; "
                "only the pool=1 grid can be mapped back to sensors"
            )
        grid = np.asarray(grid)
        if grid.shape[-2:] != self.shape:
            raise ValueError(f"to_flat expects (..., {self.shape[0]}, {self.shape[1]}), got {grid.shape}")
        k = _canonical_kind(kind)
        flat = grid.reshape(grid.shape[:-2] + (-1,))
        if out is None:
            out = np.zeros(grid.shape[:-2] + (N_SENSORS,), grid.dtype)
        order, starts = self._cells_by_sensor
        if k == "extensive":
            out[..., self.sensor_ids] = np.add.reduceat(flat[..., order], starts, axis=-1)
        else:
            out[..., self.sensor_ids] = flat[..., order[starts]]
        return out


@dataclass(frozen=True, eq=False)
class HexFace:
    """Top or bottom PMT plane. ``xy`` = (z, r) in cm, r = distance from the beam axis in the
    plane. ``neighbors[i, d]`` (d = 1..6) = index into ``ids`` of the neighbour whose offset
    angle atan2(dr, dz) lies in the 60-degree sector centred on (d - 1) * 60 deg (1 = +z,
    2 = +z+r, 3 = -z+r, 4 = -z, 5 = -z-r, 6 = +z-r), -1 where none; column 0 = self.
    Opposite directions: d and (d + 2) % 6 + 1.
    """

    name: str
    ids: np.ndarray
    xy: np.ndarray
    row: np.ndarray  # hex row (0 = innermost r)
    neighbors: np.ndarray


def hex_opposite(d: np.ndarray | int) -> np.ndarray | int:
    """Opposite direction class of d in 1..6."""
    return (np.asarray(d) + 2) % 6 + 1 if not isinstance(d, int) else (d + 2) % 6 + 1


# ---- geometry -----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Geometry:
    positions: np.ndarray
    normals: np.ndarray
    face: np.ndarray
    is_mppc: np.ndarray
    active_area: np.ndarray
    inner_index: np.ndarray
    us_index: np.ndarray
    ds_index: np.ndarray

    def face_ids(self, name: str) -> np.ndarray:
        """Sorted sensor ids of a face (``outer`` includes the centre patch)."""
        return _freeze(np.flatnonzero(self.face == _face_code(name)))

    @property
    def phi_prime(self) -> np.ndarray:
        """phi' = atan2(y, -x) in degrees, (4760,)."""
        return np.degrees(np.arctan2(self.positions[:, 1], -self.positions[:, 0]))

    def outer_grid(self, pool: int | tuple[int, int] = 1) -> RectGrid:
        """Outer face (PMTs incl. centre patch) as a (72, 45) fine grid pooled by ``pool``
        (int or (rows, cols) dividing (72, 45)); ``pool=(3, 5)`` is the 24 x 9 coarse layout."""
        return _outer_grid_cached(_pool_pair(pool))

    def hex_face(self, name: str) -> HexFace:
        if name not in ("top", "bottom"):
            raise ValueError(f"hex_face expects 'top' or 'bottom', got {name!r}")
        return _hex_face(self, name)


def _face_code(name: str) -> int:
    try:
        return FACE_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown face {name!r}; faces are {FACE_NAMES}") from None


def _build() -> Geometry:
    pos = np.zeros((N_SENSORS, 3))
    nrm = np.zeros((N_SENSORS, 3))
    face = np.zeros(N_SENSORS, np.int8)

    # inner: MPPC surface, normals radial outward (into the xenon)
    row, col = np.divmod(np.arange(4092), INNER_COLS)
    phi = INNER_PHI0 + INNER_DPHI * row
    pos[:4092] = _cylinder(np.full(4092, INNER_RADIUS), phi, INNER_Z0 + INNER_DZ * col)
    nrm[:4092] = _radial(phi)

    # outer coarse: consecutive ids along z; normals radial inward
    strip, iz = np.divmod(np.arange(216), OUTER_NZ)
    phi = OUTER_PHI0 + OUTER_DPHI * strip
    z = -OUTER_ZMAX + OUTER_DZ * iz
    for s, row in zip(CENTRE_STRIPS, CENTRE_COARSE_ROWS):  # coarse PMTs of the centre block
        for k, c in zip(CENTRE_ZCOLS, CENTRE_COARSE_COLS):
            phi[s * OUTER_NZ + k], z[s * OUTER_NZ + k] = CENTRE_PHI[row], CENTRE_Z[c]
    sl = slice(4092, 4308)
    pos[sl] = _cylinder(np.full(216, OUTER_RADIUS), phi, z)
    nrm[sl] = -_radial(phi)
    face[sl] = 1

    # outer centre patch: the free lattice sites, row-major
    free = [
        (r, c)
        for r in range(len(CENTRE_PHI))
        for c in range(len(CENTRE_Z))
        if not (r in CENTRE_COARSE_ROWS and c in CENTRE_COARSE_COLS)
    ]
    pp = np.array([CENTRE_PHI[r] for r, _ in free])
    pz = np.array([CENTRE_Z[c] for _, c in free])
    pos[4742:] = _cylinder(np.full(18, OUTER_RADIUS), pp, pz)
    nrm[4742:] = -_radial(pp)
    face[4742:] = 1

    # us/ds slanted faces: rings linear in (r, |z|); normal in the (r, z) plane, perpendicular
    # to the ring line, pointing towards z = 0 and outward in r (into the xenon)
    strip, ring = np.divmod(np.arange(144), SLANT_RINGS)
    phi = OUTER_PHI0 + OUTER_DPHI * strip
    r = np.linspace(*SLANT_R, SLANT_RINGS)[ring]
    az = np.linspace(*SLANT_Z, SLANT_RINGS)[ring]
    dr, dz = SLANT_R[1] - SLANT_R[0], SLANT_Z[1] - SLANT_Z[0]
    nr, nz = dz / math.hypot(dr, dz), dr / math.hypot(dr, dz)
    for code, sign, start in ((2, -1.0, 4308), (3, 1.0, 4452)):
        sl = slice(start, start + 144)
        pos[sl] = _cylinder(r, phi, sign * az)
        nrm[sl] = _radial(phi) * nr + np.array([0.0, 0.0, -sign * nz])
        face[sl] = code

    # top/bottom hex planes: rows from inner r outward, z ascending in a row
    hr = np.concatenate([np.full(n, HEX_R0 + HEX_DR * k) for k, n in enumerate(HEX_ROW_COUNTS)])
    hz = np.concatenate([(np.arange(n) - (n - 1) / 2) * HEX_DZ for n in HEX_ROW_COUNTS])
    for code, sign, start in ((4, 1.0, 4596), (5, -1.0, 4669)):
        sl = slice(start, start + 73)
        ph = np.full(73, sign * HEX_PHI)
        pos[sl] = _cylinder(hr, ph, hz)
        # d(radial)/dphi' = (sin, cos, 0); the volume lies towards phi' = 0
        p = math.radians(sign * HEX_PHI)
        nrm[sl] = -sign * np.array([math.sin(p), math.cos(p), 0.0])
        face[sl] = code

    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    is_mppc = face == 0
    area = np.where(is_mppc, MPPC_SIDE**2, math.pi * (PMT_DIAMETER / 2) ** 2)

    # index maps from the positions
    phi = np.degrees(np.arctan2(pos[:, 1], -pos[:, 0]))
    rr = np.hypot(pos[:, 0], pos[:, 1])
    ids = np.flatnonzero(face == 0)
    inner_index = _index_map(
        _bin(phi[ids], INNER_PHI0, INNER_DPHI, INNER_ROWS, "inner phi'"),
        _bin(pos[ids, 2], INNER_Z0, INNER_DZ, INNER_COLS, "inner z"),
        ids,
        (INNER_ROWS, INNER_COLS),
        "inner",
    )
    slant = []
    for code in (2, 3):
        ids = np.flatnonzero(face == code)
        ring_pitch = (SLANT_R[1] - SLANT_R[0]) / (SLANT_RINGS - 1)
        slant.append(
            _index_map(
                _bin(phi[ids], OUTER_PHI0, OUTER_DPHI, OUTER_STRIPS, f"{FACE_NAMES[code]} phi'"),
                _bin(rr[ids], SLANT_R[0], ring_pitch, SLANT_RINGS, f"{FACE_NAMES[code]} r"),
                ids,
                (OUTER_STRIPS, SLANT_RINGS),
                FACE_NAMES[code],
            )
        )

    return Geometry(
        positions=_freeze(pos),
        normals=_freeze(nrm),
        face=_freeze(face),
        is_mppc=_freeze(is_mppc),
        active_area=_freeze(area),
        inner_index=inner_index,
        us_index=slant[0],
        ds_index=slant[1],
    )


@functools.lru_cache(maxsize=1)
def get_geometry() -> Geometry:
    """The detector geometry (computed once, read-only arrays)."""
    return _build()


# ---- outer grid ----------------------------------------------------------------------------
def _pool_pair(pool: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(pool, (tuple, list)):
        if len(pool) != 2:
            raise ValueError(f"outer_grid pool must be an int or (rows, cols), got {pool!r}")
        return int(pool[0]), int(pool[1])
    return int(pool), int(pool)


@functools.cache
def _outer_fine_owner() -> np.ndarray:
    """(72, 45) sensor id owning each fine cell of the outer face.

    Fine cell = a third of a coarse strip in phi' and a fifth of the coarse z pitch: a coarse
    PMT owns 3 x 5 cells; the centre block (4 strips x 3 z positions) holds the 6 x 5 dense
    lattice (phi' pitch 2/3, z pitch 3/5 of the coarse one), each of its PMTs owning 2 x 3.
    Which PMT sits where is found from the computed positions.
    """
    g = get_geometry()
    ids = g.face_ids("outer")
    phi, z = g.phi_prime[ids], g.positions[ids, 2]
    r0, c0 = CENTRE_STRIPS[0], CENTRE_ZCOLS[0]
    ph_top = OUTER_PHI0 + OUTER_DPHI * (r0 - 0.5)  # upper phi' edge of the centre block
    z_low = -OUTER_ZMAX + OUTER_DZ * (c0 - 0.5)
    cdphi = OUTER_DPHI * len(CENTRE_STRIPS) / len(CENTRE_PHI)
    cdz = OUTER_DZ * len(CENTRE_ZCOLS) / len(CENTRE_Z)
    in_centre = (
        ((phi - ph_top) / OUTER_DPHI < len(CENTRE_STRIPS))
        & (phi < ph_top)
        & (z > z_low)
        & (z < z_low + OUTER_DZ * len(CENTRE_ZCOLS))
    )
    coarse = np.full((OUTER_STRIPS, OUTER_NZ), -1, np.int64)
    cid = ids[~in_centre]
    coarse[
        _bin(phi[~in_centre], OUTER_PHI0, OUTER_DPHI, OUTER_STRIPS, "outer phi'"),
        _bin(z[~in_centre], -OUTER_ZMAX, OUTER_DZ, OUTER_NZ, "outer z"),
    ] = cid
    centre = np.full((len(CENTRE_PHI), len(CENTRE_Z)), -1, np.int64)
    centre[
        _bin(phi[in_centre], ph_top + cdphi / 2, cdphi, len(CENTRE_PHI), "centre phi'"),
        _bin(z[in_centre], z_low + cdz / 2, cdz, len(CENTRE_Z), "centre z"),
    ] = ids[in_centre]
    blocked = coarse[np.ix_(CENTRE_STRIPS, CENTRE_ZCOLS)]
    if np.any(blocked != -1) or np.any(centre < 0) or np.sum(coarse < 0) != blocked.size:
        raise AssertionError("geometry: outer face does not tile into coarse + centre lattice")
    fr, fc = OUTER_FINE
    owner = np.repeat(np.repeat(coarse, fr, axis=0), fc, axis=1)
    cr, cc = (len(CENTRE_STRIPS) * fr) // len(CENTRE_PHI), (len(CENTRE_ZCOLS) * fc) // len(CENTRE_Z)
    owner[r0 * fr : (r0 + len(CENTRE_STRIPS)) * fr, c0 * fc : (c0 + len(CENTRE_ZCOLS)) * fc] = np.repeat(
        np.repeat(centre, cr, axis=0), cc, axis=1
    )
    if np.unique(owner).size != ids.size or np.any(owner < 0):
        raise AssertionError("geometry: outer fine grid does not cover every outer sensor once")
    return _freeze(owner)


@functools.cache
def _outer_grid_cached(pool: tuple[int, int]) -> RectGrid:
    owner = _outer_fine_owner()
    H, W = owner.shape
    pr, pc = pool
    if pr < 1 or pc < 1 or H % pr or W % pc:
        raise ValueError(f"outer_grid pool must divide the fine grid {owner.shape}, got {pool}")
    ncell = np.bincount(owner.ravel(), minlength=N_SENSORS)
    h, w = H // pr, W // pc
    fine_pooled = (np.arange(H)[:, None] // pr) * w + np.arange(W)[None, :] // pc
    # one entry per (pooled cell, sensor): sum the fine cells of that sensor in the cell
    key = fine_pooled.ravel().astype(np.int64) * N_SENSORS + owner.ravel()
    uniq, counts = np.unique(key, return_counts=True)
    cell, sensor = np.divmod(uniq, N_SENSORS)
    share = (counts / ncell[sensor]).astype(np.float32)
    area = (counts / (pr * pc)).astype(np.float32)
    # dominant sensor of each pooled cell (largest area, then lowest id)
    order = np.lexsort((sensor, -area, cell))
    first = order[np.r_[True, np.diff(cell[order]) != 0]]
    index = np.empty(h * w, np.int64)
    weight = np.empty(h * w, np.float32)
    index[cell[first]] = sensor[first]
    weight[cell[first]] = share[first]
    return RectGrid(
        index=_freeze(index.reshape(h, w)),
        weight=_freeze(weight.reshape(h, w)),
        entry_cell=_freeze(cell),
        entry_sensor=_freeze(sensor),
        entry_share=_freeze(share),
        entry_area=_freeze(area),
        sensor_ids=_freeze(np.unique(owner)),
        cells_per_sensor=_freeze(ncell),
        pool=pool,
    )


# ---- hex faces ----------------------------------------------------------------------------
@functools.cache
def _hex_face(g: Geometry, name: str) -> HexFace:
    ids = g.face_ids(name)
    r = np.hypot(g.positions[ids, 0], g.positions[ids, 1])
    xy = np.stack([g.positions[ids, 2], r], axis=1)
    row = _bin(r, HEX_R0, HEX_DR, len(HEX_ROW_COUNTS), f"{name} r")
    off = xy[None, :, :] - xy[:, None, :]  # off[i, j] = xy[j] - xy[i]
    dist = np.hypot(off[..., 0], off[..., 1])
    lo, hi = HEX_NEIGHBOR_RANGE
    adj = (dist > lo) & (dist < hi)
    ang = np.degrees(np.arctan2(off[..., 1], off[..., 0]))
    direction = (np.rint(ang / 60.0).astype(np.int64) % 6) + 1
    nb = np.full((len(ids), 7), -1, np.int64)
    nb[:, 0] = np.arange(len(ids))
    for i, j in zip(*np.nonzero(adj)):
        d = direction[i, j]
        if nb[i, d] != -1:
            raise AssertionError(f"geometry: two {name} neighbours of PMT {ids[i]} in direction {d}")
        nb[i, d] = j
    return HexFace(name=name, ids=ids, xy=_freeze(xy), row=_freeze(row), neighbors=_freeze(nb))


# ---- face tensors <-> flat ----------------------------------------------------------------
def faces_from_flat(values: np.ndarray, kind: GridKind = "npho", outer_pool: int = 1) -> dict[str, np.ndarray]:
    """(..., 4760) -> {"inner": (..., 93, 44), "outer": (..., 72/p, 27/p), "us"/"ds": (..., 24, 6),
    "top"/"bottom": (..., 73)} (hex faces in ``hex_face(name).ids`` order)."""
    g = get_geometry()
    values = np.asarray(values)
    if values.shape[-1] != N_SENSORS:
        raise ValueError(f"faces_from_flat expects (..., {N_SENSORS}) values, got {values.shape}")
    return {
        "inner": values[..., g.inner_index],
        "outer": g.outer_grid(outer_pool).to_grid(values, kind),
        "us": values[..., g.us_index],
        "ds": values[..., g.ds_index],
        "top": values[..., g.hex_face("top").ids],
        "bottom": values[..., g.hex_face("bottom").ids],
    }


def flat_from_faces(faces: Mapping[str, np.ndarray], kind: GridKind = "npho") -> np.ndarray:
    """Inverse of ``faces_from_flat`` (outer grid with pool=1): (..., 4760)."""
    g = get_geometry()
    inner = np.asarray(faces["inner"])
    out = np.zeros(inner.shape[:-2] + (N_SENSORS,), np.result_type(*[np.asarray(v) for v in faces.values()]))
    out[..., g.inner_index] = inner
    out[..., g.us_index] = faces["us"]
    out[..., g.ds_index] = faces["ds"]
    out[..., g.hex_face("top").ids] = faces["top"]
    out[..., g.hex_face("bottom").ids] = faces["bottom"]
    g.outer_grid(1).to_flat(np.asarray(faces["outer"]), kind, out=out)
    return out


# ---- neighbourhoods ----------------------------------------------------------------------
def nearest_same_face(positions: np.ndarray, face: np.ndarray, k: int) -> np.ndarray:
    """(S, k) ids of the k nearest sensors of the same face (itself excluded)."""
    from scipy.spatial import cKDTree

    out = np.zeros((len(face), k), np.int64)
    for f in np.unique(face):
        ids = np.flatnonzero(face == f)
        _, near = cKDTree(positions[ids]).query(positions[ids], k=min(k + 1, len(ids)))
        near = ids[near[:, 1:]]
        out[ids] = np.pad(near, ((0, 0), (0, k - near.shape[1])), mode="edge")
    return out


# ---- coordinate conversions ---------------------------------------------------------------
def xyz_to_uvw(xyz: np.ndarray) -> np.ndarray:
    """(..., 3) MEG II xyz (cm) -> inner-face (u, v, w): u = z, v = R phi', w = r - R."""
    xyz = np.asarray(xyz, dtype=float)
    phi = np.arctan2(xyz[..., 1], -xyz[..., 0])
    return np.stack([xyz[..., 2], INNER_RADIUS * phi, np.hypot(xyz[..., 0], xyz[..., 1]) - INNER_RADIUS], axis=-1)


def uvw_to_xyz(uvw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`xyz_to_uvw`."""
    uvw = np.asarray(uvw, dtype=float)
    phi = uvw[..., 1] / INNER_RADIUS
    r = uvw[..., 2] + INNER_RADIUS
    return np.stack([-r * np.cos(phi), r * np.sin(phi), uvw[..., 0]], axis=-1)


def angles_to_direction(theta_deg: np.ndarray, phi_deg: np.ndarray) -> np.ndarray:
    """MEG II emission angles (deg) -> (..., 3) unit vector
    (x = -sin(theta) cos(phi), y = sin(theta) sin(phi), z = cos(theta))."""
    t = np.radians(np.asarray(theta_deg, dtype=float))
    p = np.radians(np.asarray(phi_deg, dtype=float))
    t, p = np.broadcast_arrays(t, p)
    return np.stack([-np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1)


def direction_to_angles(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) direction (any length > 0) -> (theta, phi) in degrees,
    theta in [0, 180], phi in (-180, 180]."""
    v = np.asarray(vec, dtype=float)
    n = np.linalg.norm(v, axis=-1)
    theta = np.degrees(np.arccos(np.clip(v[..., 2] / n, -1.0, 1.0)))
    phi = np.degrees(np.arctan2(v[..., 1], -v[..., 0]))
    return theta, phi
