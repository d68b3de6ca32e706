"""Physics of the fast detector simulation (numbers: docs/architecture.md, "Physics the code relies on").

A parametric stand-in for the experiment's Geant4 simulation, vectorized over events, shower
spots and sensors (never a Python loop over sensors or events):

1. kinematics: vertex near the target, direction uniform in solid angle over the inner-face
   acceptance plus a margin, energy monochromatic or uniform in a range;
2. first interaction: entry on the inner face (r = 64.97 cm, where the xenon starts), depth
   ~ Exp(conversion length) along the gamma direction. Events whose conversion point is not
   inside the active xenon (crossed the whole depth, or left through a side) are inefficiencies
   and are redrawn, so every written event converts inside the xenon;
3. shower: ``spots`` deposit spots per event, longitudinal Gamma profile (b, t_max = ln(E/Ec) -
   0.5, a = b t_max + 1, with an event-by-event fluctuation of a), lateral core + tail (about
   90 % inside one Moliere radius), Dirichlet energy shares; spots outside the active volume
   leak (their energy gives no light);
4. light: per (spot, sensor) the solid angle of the active area with the incidence angle,
   Omega/4pi = (1 - 1/sqrt(1 + A cos / (pi d^2))) / 2 (exact on the axis of a disc of area A,
   A cos / (4 pi d^2) far away, so close spots never exceed 2 pi), transmission exp(-d/L_abs -
   d/L_Rayleigh); the Rayleigh-scattered light leaves the direct term and comes back as a
   diffuse component shared by all sensors in proportion to their active area;
5. response: efficiency, Poisson photoelectrons, npho = pe / efficiency (times a per-sensor gain
   miscalibration for data-like samples); time = light-weighted arrival time (gamma time of
   flight + optical path / group velocity) + first-photon delay Exp(tau / pe) + jitter, per
   light group (direct, diffuse, pile-up), the earliest group wins.

Known simplifications: the redraw of step 2 thins the edges of the direction distribution
(beyond the top/bottom planes, |phi'| > 62.76 deg, nothing converts inside, so the v margin is
effectively zero); the diffuse light suffers no extra absorption and arrives at one time per
event; the Gamma profile (b = 0.5) puts only ~19 % of the energy in the first X0 after the
conversion, fewer than the e+e- pair's ionization really leaves there at 50 MeV, so the light
is less peaked than a point source (numbers: docs/performance.md, "Simulation").
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from xec import geometry as geo
from xec.config import schema_defaults
from xec.errors import XecError

C_CM_PER_NS = 29.9792458
NO_TIME = np.float32(1e10)  # sentinel of the MEG II files: dead sensor / no time


# The field defaults are the schema's (simulation.physics; validation fills in every default), so
# PhysicsParams() and the default config simulate the same events: the schema is the one source.
_DEFAULT = schema_defaults()["simulation"]["physics"]
_TUPLE_FIELDS = ("vertex_sigma_cm", "pileup_energy_mev", "pileup_window_ns")


def _default(name: str) -> Any:
    value = _DEFAULT[name]
    return tuple(float(x) for x in value) if name in _TUPLE_FIELDS else value  # frozen: no list defaults


@dataclass(frozen=True)
class PhysicsParams:
    """Tunable constants (config ``simulation.physics``, documented in the schema; physics:
    docs/architecture.md). Defaults: the schema's."""

    conversion_length_cm: float = _default("conversion_length_cm")
    radiation_length_cm: float = _default("radiation_length_cm")
    moliere_radius_cm: float = _default("moliere_radius_cm")
    critical_energy_mev: float = _default("critical_energy_mev")
    profile_b: float = _default("profile_b")
    profile_a_spread: float = _default("profile_a_spread")  # relative (log-normal) event-by-event spread of a
    spots: int = _default("spots")  # deposit spots per shower
    spot_share_shape: float = _default("spot_share_shape")  # Gamma shape of the Dirichlet energy shares
    track_dedx_mev_per_cm: float = _default("track_dedx_mev_per_cm")  # ionisation of the e+e- pair (2 x 3.7)
    track_length_cm: float = _default("track_length_cm")  # ... on this first stretch, before it showers
    track_spots: int = _default("track_spots")  # spots along that stretch (0: no track part)
    track_max_fraction: float = _default("track_max_fraction")  # at most this share (keeps npho linear in E)
    lateral_core_fraction: float = _default("lateral_core_fraction")
    lateral_core_radius: float = _default("lateral_core_radius")  # in Moliere radii (r^2/(r^2+R^2) CDF)
    lateral_tail_radius: float = _default("lateral_tail_radius")  # in Moliere radii
    photons_per_mev: float = _default("photons_per_mev")
    yield_spread: float = _default("yield_spread")  # relative event-by-event spread of the yield
    absorption_length_cm: float = _default("absorption_length_cm")
    rayleigh_length_cm: float = _default("rayleigh_length_cm")
    group_velocity_cm_per_ns: float = _default("group_velocity_cm_per_ns")
    decay_time_ns: float = _default("decay_time_ns")
    efficiency_mppc: float = _default("efficiency_mppc")
    efficiency_pmt: float = _default("efficiency_pmt")
    jitter_mppc_ns: float = _default("jitter_mppc_ns")
    jitter_pmt_ns: float = _default("jitter_pmt_ns")
    time_threshold_pe: float = _default("time_threshold_pe")  # fewer photoelectrons: no time (1e10)
    reference_threshold_pe: float = _default("reference_threshold_pe")  # relative_time reference threshold
    diffuse_delay_ns: float = _default("diffuse_delay_ns")  # extra delay of the scattered light
    vertex_sigma_cm: tuple[float, float, float] = _default("vertex_sigma_cm")
    acceptance_margin_cm: float = _default("acceptance_margin_cm")
    trigger_window_ns: float = _default("trigger_window_ns")  # absolute gamma emission time ~ U(0, window)
    pileup_energy_mev: tuple[float, float] = _default("pileup_energy_mev")
    pileup_window_ns: tuple[float, float] = _default("pileup_window_ns")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PhysicsParams:
        """From a validated ``simulation.physics`` section (every key filled in by the schema)."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(names))  # the schema and this class must list the same keys
        if unknown:
            raise XecError(f"simulation.physics: unknown parameter(s) {unknown}")
        values = {name: cfg[name] for name in names}
        for key in _TUPLE_FIELDS:
            values[key] = tuple(float(x) for x in values[key])
        p = cls(**values)
        p.check()
        return p

    def check(self) -> None:
        positive = (
            "conversion_length_cm",
            "radiation_length_cm",
            "moliere_radius_cm",
            "critical_energy_mev",
            "profile_b",
            "spot_share_shape",
            "lateral_core_radius",
            "lateral_tail_radius",
            "photons_per_mev",
            "absorption_length_cm",
            "rayleigh_length_cm",
            "group_velocity_cm_per_ns",
            "decay_time_ns",
            "efficiency_mppc",
            "efficiency_pmt",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise XecError(f"simulation.physics.{name}: must be > 0, got {getattr(self, name)}")
        if not 1 <= self.spots <= 256:
            raise XecError(f"simulation.physics.spots: must be in 1..256, got {self.spots}")
        if (
            not 0 <= self.track_spots <= 16
            or self.track_length_cm < 0
            or self.track_dedx_mev_per_cm < 0
            or not 0 <= self.track_max_fraction <= 1
        ):
            raise XecError(
                "simulation.physics: track_spots must be in 0..16, track_length_cm and "
                "track_dedx_mev_per_cm >= 0, track_max_fraction in [0, 1]"
            )
        if not 0 <= self.lateral_core_fraction <= 1:
            raise XecError("simulation.physics.lateral_core_fraction: must be in [0, 1]")
        if self.efficiency_mppc > 1 or self.efficiency_pmt > 1:
            raise XecError("simulation.physics: efficiencies must be <= 1")
        if len(self.vertex_sigma_cm) != 3 or min(self.vertex_sigma_cm) < 0:
            raise XecError("simulation.physics.vertex_sigma_cm: three values >= 0 expected")
        lo, hi = self.pileup_energy_mev
        if not 0 < lo <= hi:
            raise XecError("simulation.physics.pileup_energy_mev: expected 0 < min <= max")


# ---- detector description -----------------------------------------------------------------
@dataclass(frozen=True)
class SensorArrays:
    """Per-sensor constants precomputed once (float32 where it feeds the big tensors)."""

    pos: np.ndarray  # (S, 3) float64 cm
    normals32: np.ndarray  # (S, 3) float32
    area_over_pi: np.ndarray  # (S,) float32, A / pi
    area_share: np.ndarray  # (S,) float64, A / sum(A): share of the diffuse light
    efficiency: np.ndarray  # (S,) float64
    efficiency32: np.ndarray
    jitter32: np.ndarray
    u_max: float  # |u| edge of the inner face (cm)
    phi_max_deg: float  # |phi'| edge of the inner face


@functools.lru_cache(maxsize=8)
def sensor_arrays(params: PhysicsParams) -> SensorArrays:
    g = geo.get_geometry()
    area = np.asarray(g.active_area, dtype=np.float64)
    mppc = np.asarray(g.is_mppc, dtype=bool)
    uvw = geo.xyz_to_uvw(g.positions[mppc])
    u_max = float(np.abs(uvw[:, 0]).max() + geo.MPPC_SIDE / 2)
    # phi' edge: outermost row centre + half a row pitch
    phi_max = float(np.degrees(np.abs(uvw[:, 1]).max() / geo.INNER_RADIUS) + abs(geo.INNER_DPHI) / 2)
    return SensorArrays(
        pos=np.ascontiguousarray(g.positions, dtype=np.float64),
        normals32=np.ascontiguousarray(g.normals, dtype=np.float32),
        area_over_pi=(area / np.pi).astype(np.float32),
        area_share=area / area.sum(),
        efficiency=np.where(mppc, params.efficiency_mppc, params.efficiency_pmt),
        efficiency32=np.where(mppc, params.efficiency_mppc, params.efficiency_pmt).astype(np.float32),
        jitter32=np.where(mppc, params.jitter_mppc_ns, params.jitter_pmt_ns).astype(np.float32),
        u_max=u_max,
        phi_max_deg=phi_max,
    )


def face_coverage() -> np.ndarray:
    """(6,) fraction of each face's wall area covered by active sensor area (inner ~0.62,
    outer ~0.17, us/ds ~0.29, top/bottom ~0.38), from the published layout constants.
    1/coverage is the per-face weight that turns a sum of npho into an estimate of all the
    photons reaching the walls, nearly independent of where the shower sits."""
    g = geo.get_geometry()
    face = np.asarray(g.face)
    active = np.array([np.asarray(g.active_area)[face == f].sum() for f in range(len(geo.FACE_NAMES))])
    dphi_in = np.radians(abs(geo.INNER_DPHI)) * geo.INNER_ROWS
    dphi_out = np.radians(abs(geo.OUTER_DPHI)) * geo.OUTER_STRIPS
    slant_pitch = np.hypot(geo.SLANT_R[1] - geo.SLANT_R[0], geo.SLANT_Z[1] - geo.SLANT_Z[0]) / (geo.SLANT_RINGS - 1)
    slant = geo.SLANT_RINGS * slant_pitch * dphi_out * 0.5 * (geo.SLANT_R[0] + geo.SLANT_R[1])
    hexa = len(geo.HEX_ROW_COUNTS) * geo.HEX_DR * geo.HEX_DZ * np.mean(geo.HEX_ROW_COUNTS)
    wall = np.array(
        [
            geo.INNER_COLS * abs(geo.INNER_DZ) * dphi_in * geo.INNER_RADIUS,
            geo.OUTER_NZ * geo.OUTER_DZ * dphi_out * geo.OUTER_RADIUS,
            slant,
            slant,
            hexa,
            hexa,
        ]
    )
    return active / wall


def coverage_weights() -> np.ndarray:
    """(4760,) per-sensor weight 1/coverage of its face (see :func:`face_coverage`)."""
    return (1.0 / face_coverage())[np.asarray(geo.get_geometry().face)]


_SLANT_SLOPE = (geo.SLANT_Z[1] - geo.SLANT_Z[0]) / (geo.SLANT_R[1] - geo.SLANT_R[0])
ACTIVE_DEPTH_CM = geo.OUTER_RADIUS - geo.INNER_RADIUS  # 41.3 cm between the sensor planes


def inside_active(xyz: np.ndarray) -> np.ndarray:
    """True where a point (..., 3) is inside the active xenon: between the inner (MPPC) and
    outer (PMT) sensor cylinders, between the top/bottom planes (|phi'| <= 62.76 deg) and inside
    the slanted upstream/downstream faces (|z| <= z(r), linear through the PMT rings)."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    r = np.hypot(x, y)
    phi = np.degrees(np.arctan2(y, -x))
    zmax = geo.SLANT_Z[0] + _SLANT_SLOPE * (r - geo.SLANT_R[0])
    return (r >= geo.INNER_RADIUS) & (r <= geo.OUTER_RADIUS) & (np.abs(phi) <= geo.HEX_PHI) & (np.abs(z) <= zmax)


# ---- kinematics and first interaction ------------------------------------------------------
def entry_distance(vertex: np.ndarray, direction: np.ndarray, radius: float = geo.INNER_RADIUS) -> np.ndarray:
    """Path length from ``vertex`` (inside the cylinder) to the cylinder of ``radius``."""
    a = direction[:, 0] ** 2 + direction[:, 1] ** 2
    b = vertex[:, 0] * direction[:, 0] + vertex[:, 1] * direction[:, 1]
    c = vertex[:, 0] ** 2 + vertex[:, 1] ** 2 - radius**2
    return (-b + np.sqrt(b * b - a * c)) / a


def sample_gammas(
    rng: np.random.Generator, vertex: np.ndarray, params: PhysicsParams, sensors: SensorArrays, max_rounds: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directions (uniform in solid angle over the acceptance + margin) and conversion points
    for gammas from ``vertex`` (n, 3). Returns (direction (n,3), entry point (n,3), conversion
    point (n,3)). Events not converting inside the active xenon are redrawn (direction and
    depth), in rounds over the failing subset, so the draw order is fixed by the generator."""
    n = len(vertex)
    margin = params.acceptance_margin_cm
    u_edge = sensors.u_max + margin
    cos_max = u_edge / np.hypot(geo.INNER_RADIUS, u_edge)
    phi_max = sensors.phi_max_deg + np.degrees(margin / geo.INNER_RADIUS)
    direction = np.empty((n, 3))
    entry = np.empty((n, 3))
    conv = np.empty((n, 3))
    todo = np.arange(n)
    for _ in range(max_rounds):
        m = len(todo)
        cos_t = rng.uniform(-cos_max, cos_max, m)
        phi = rng.uniform(-phi_max, phi_max, m)
        depth = rng.exponential(params.conversion_length_cm, m)
        d = geo.angles_to_direction(np.degrees(np.arccos(cos_t)), phi)
        v = vertex[todo]
        e = v + entry_distance(v, d)[:, None] * d
        p = e + depth[:, None] * d
        ok = inside_active(p)
        direction[todo[ok]], entry[todo[ok]], conv[todo[ok]] = d[ok], e[ok], p[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            return direction, entry, conv
    raise XecError(
        "simulation: could not place conversion points inside the xenon "
        f"({len(todo)} events left after {max_rounds} rounds); check acceptance_margin_cm"
    )


def orthonormal_frame(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to the unit vectors ``d`` (n, 3) and to each other."""
    helper = np.where(np.abs(d[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(d, e1)
    return e1, e2


def sample_shower(
    rng: np.random.Generator, energy_mev: np.ndarray, direction: np.ndarray, params: PhysicsParams
) -> tuple[np.ndarray, np.ndarray]:
    """Deposit spots of a shower starting at the conversion point: returns (offsets (n, K, 3)
    from the conversion point in cm, energy shares (n, K) summing to 1), K = spots + track_spots.

    The Gamma profile vanishes at the conversion point (dE/dt ~ t^(a-1), a ~ 1.5 at 50 MeV), but
    the e+e- pair ionises from its first millimetre on (2 x 3.7 MeV/cm in LXe): the first
    ``track_spots`` spots sit evenly on the first ``track_length_cm`` along the gamma direction
    with that energy (at most track_max_fraction of it), so the light pattern carries the conversion
    point and not only the shower's centre of gravity (which fluctuates by centimetres)."""
    n, k = len(energy_mev), params.spots
    b = params.profile_b
    t_max = np.maximum(np.log(energy_mev / params.critical_energy_mev) - 0.5, 0.05)
    a = (b * t_max + 1.0) * np.exp(params.profile_a_spread * rng.standard_normal(n))
    t = rng.gamma(np.broadcast_to(a[:, None], (n, k)), 1.0 / b)  # depth after conversion, X0
    core = rng.random((n, k)) < params.lateral_core_fraction
    radius_rm = np.where(core, params.lateral_core_radius, params.lateral_tail_radius)
    q = rng.random((n, k))
    q = np.minimum(q, 0.999)  # cut the far tail of r^2/(r^2+R^2) at 31 R
    r = params.moliere_radius_cm * radius_rm * np.sqrt(q / (1.0 - q))
    az = rng.uniform(0.0, 2 * np.pi, (n, k))
    share = rng.gamma(params.spot_share_shape, 1.0, (n, k))
    share /= share.sum(axis=1, keepdims=True)
    e1, e2 = orthonormal_frame(direction)
    offsets = (
        (t * params.radiation_length_cm)[..., None] * direction[:, None, :]
        + (r * np.cos(az))[..., None] * e1[:, None, :]
        + (r * np.sin(az))[..., None] * e2[:, None, :]
    )
    if params.track_spots > 0:
        m = params.track_spots
        frac = np.minimum(params.track_dedx_mev_per_cm * params.track_length_cm / energy_mev, params.track_max_fraction)
        depth = (np.arange(m) + 0.5) / m * params.track_length_cm
        offsets = np.concatenate([depth[None, :, None] * direction[:, None, :], offsets], axis=1)
        share = np.concatenate([np.repeat((frac / m)[:, None], m, axis=1), share * (1.0 - frac)[:, None]], axis=1)
    return offsets, share


# ---- light transport: the (events x spots x sensors) tensor --------------------------------
@dataclass(frozen=True)
class _SensorMatrices:
    """Event-independent parts of the light tensor's augmented matmuls (see light_tensor)."""

    pos_t: np.ndarray  # (3, S) float64 sensor positions, transposed (contiguous)
    pos2: np.ndarray  # (S,) |pos|^2
    normals_t: np.ndarray  # (3, S) float64 normals, transposed (contiguous)
    pos_n: np.ndarray  # (S,) pos.n
    area: np.ndarray  # (S,) A/pi
    cols_d: np.ndarray  # (4, S) float32: [pos; 1]
    cols_h: np.ndarray  # (3, S) float32: (A/pi) n


@functools.lru_cache(maxsize=8)
def _sensor_matrices(params: PhysicsParams) -> _SensorMatrices:
    s = sensor_arrays(params)
    pos, normals = s.pos, s.normals32.astype(np.float64)
    area = s.area_over_pi.astype(np.float64)
    pos_t = np.ascontiguousarray(pos.T)
    cols_d = np.ones((4, len(pos)), np.float32)
    cols_d[:3] = pos_t
    return _SensorMatrices(
        pos_t=pos_t,
        pos2=np.einsum("sc,sc->s", pos, pos),
        normals_t=np.ascontiguousarray(normals.T),
        pos_n=np.einsum("sc,sc->s", pos, normals),
        area=area,
        cols_d=cols_d,
        cols_h=(normals * area[:, None]).T.astype(np.float32),
    )


def light_tensor(
    anchor: np.ndarray,
    offsets: np.ndarray,
    photons: np.ndarray,
    spot_time_ns: np.ndarray,
    params: PhysicsParams,
    sub_block: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected photons reaching each sensor's active area directly, their summed arrival
    times and the Rayleigh-scattered photons.

    anchor (n, 3) float64: a point of each shower (the conversion point); offsets (n, K, 3)
    spot positions relative to it; photons (n, K) emitted photons per spot (0 for leaked
    spots); spot_time_ns (n, K) time of each spot.
    Returns direct (n, S) float32, time_sum (n, S) float32 = sum_k photons_k * t_arrival,
    scattered (n,) float64 photons removed from the direct term by Rayleigh scattering.

    Each sub-block of events needs two small batched matmuls that give d^2 and A/pi x height
    directly (the event-dependent parts are folded into augmented rows/columns, computed in
    float64 so that nothing cancels against the 65 cm radius), then ~20 float32 passes over an
    (events x spots x sensors) tensor small enough to stay in cache (``sub_block`` events at a
    time). The augmented columns live in one sub-block-sized buffer whose event-independent rows
    are filled once. d^2 is clamped at 0.01 cm^2.
    """
    n, k = photons.shape
    m = _sensor_matrices(params)
    s = m.pos2.size
    direct = np.empty((n, s), np.float32)
    time_sum = np.empty((n, s), np.float32)
    scattered = np.empty(n)
    inv_abs = np.float32(1.0 / params.absorption_length_cm)
    inv_ray = np.float32(1.0 / params.rayleigh_length_cm)
    inv_v = 1.0 / params.group_velocity_cm_per_ns
    # d^2 = [-2o, |o|^2 + 2 o.a, 1] . [pos; 1; |pos - a|^2]
    # (A/pi) h = (A/pi) (o.n + a.n - pos.n) = [o, 1] . [(A/pi) n; (A/pi)(a.n - pos.n)]
    rows_d = np.empty((n, k, 5), np.float32)
    rows_d[..., :3] = -2.0 * offsets
    rows_d[..., 3] = np.einsum("nkc,nkc->nk", offsets, offsets) + 2.0 * np.einsum("nkc,nc->nk", offsets, anchor)
    rows_d[..., 4] = 1.0
    rows_h = np.empty((n, k, 4), np.float32)
    rows_h[..., :3] = offsets
    rows_h[..., 3] = 1.0
    # the event-dependent last rows of the augmented columns, (n, S)
    last_d = (m.pos2[None, :] - 2.0 * anchor @ m.pos_t + np.einsum("nc,nc->n", anchor, anchor)[:, None]).astype(
        np.float32
    )
    last_h = (m.area[None, :] * (anchor @ m.normals_t - m.pos_n[None, :])).astype(np.float32)
    cols_d = np.empty((min(sub_block, n), 5, s), np.float32)
    cols_d[:, :4] = m.cols_d
    cols_h = np.empty((min(sub_block, n), 4, s), np.float32)
    cols_h[:, :3] = m.cols_h
    w_all = (0.5 * photons).astype(np.float32)[:, None, :]  # 0.5: Omega/4pi = x / (2 q (1+q))
    wt_all = (0.5 * photons * spot_time_ns).astype(np.float32)[:, None, :]
    # four work tensors for all sub-blocks (no allocation per pass)
    work = np.empty((4, min(sub_block, n), k, s), np.float32)
    for lo in range(0, n, sub_block):
        hi = min(lo + sub_block, n)
        e = hi - lo
        w = w_all[lo:hi]
        d2, x, d, qq = work[:, :e]
        cols_d[:e, 4] = last_d[lo:hi]
        cols_h[:e, 3] = last_h[lo:hi]
        np.matmul(rows_d[lo:hi], cols_d[:e], out=d2)  # (e, K, S)
        np.maximum(d2, np.float32(0.01), out=d2)
        np.matmul(rows_h[lo:hi], cols_h[:e], out=x)  # (A/pi) x height
        np.maximum(x, 0.0, out=x)  # behind the sensor: no light
        np.sqrt(d2, out=d)
        d2 *= d  # d^3
        x /= d2  # x = A cos / (pi d^2)
        q = np.add(x, 1.0, out=d2)
        np.sqrt(q, out=q)
        np.add(q, 1.0, out=qq)
        qq *= q
        omega = np.divide(x, qq, out=x)  # 2 Omega / 4pi
        ta = np.multiply(d, -inv_abs, out=qq)
        np.exp(ta, out=ta)
        omega *= ta  # absorption
        no_ray = np.matmul(w, omega)[:, 0, :]
        tr = np.multiply(d, -inv_ray, out=q)
        np.exp(tr, out=tr)
        omega *= tr  # Rayleigh scattering out of the direct light
        direct_e = np.matmul(w, omega)[:, 0, :]
        direct[lo:hi] = direct_e
        scattered[lo:hi] = (no_ray - direct_e).sum(axis=1, dtype=np.float64)
        d *= omega  # optical path, light-weighted
        time_sum[lo:hi] = np.matmul(wt_all[lo:hi], omega)[:, 0, :] + inv_v * np.matmul(w, d)[:, 0, :]
    return direct, time_sum, scattered


def fast_poisson(rng: np.random.Generator, mean: np.ndarray, switch: float = 30.0) -> np.ndarray:
    """Poisson counts (float32) for an array of means: exact (numpy) below ``switch``, a rounded
    Gaussian above it (indistinguishable at these counts, and much faster than numpy's sampler)."""
    flat_mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    big = flat_mean >= switch
    # numpy draws no random number for a mean of 0: zeroing the big means keeps the stream of a
    # draw over the small ones only, without a boolean gather and scatter
    out = rng.poisson(np.where(big, 0.0, flat_mean.astype(np.float64))).astype(np.float32)
    mb = flat_mean[big]
    g = rng.standard_normal(mb.size, dtype=np.float32)
    g *= np.sqrt(mb)
    g += mb
    out[big] = np.maximum(np.rint(g), 0.0)
    return out.reshape(np.shape(mean))
