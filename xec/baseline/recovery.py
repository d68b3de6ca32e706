"""Classical recovery of dead (or artificially hidden) sensors from their live neighbours: the
one home of the rules the classical reconstruction (xec.baseline.reco) fills dead sensors with
and the inpainting evaluation (xec.inpainting) compares the inpainter against.

For a sensor s to recover, its neighbours are the live sensors of the same face within
``radius`` cm (default 20, config ``baseline.dead_radius_cm``):

- neighbour average: mean npho of the neighbours (0 without any);
- solid-angle rule (the experiment's, docs/architecture.md): sum(npho_n) x Omega_s / sum(Omega_n),
  solid angles (xec.baseline.solid_angles) seen from the reconstructed position; when the
  neighbours hold sum(npho_n) <= ``fallback_npho`` photons (default 50) the light pattern is too
  faint for the solid-angle scaling and the neighbour average is used instead (also when no
  neighbour sees the position: every solid angle zero);
- time: the experiment's dead-channel time rule is not documented publicly, so this is our
  choice: each neighbour's time is brought back to the emission, t_n - |x_n - x| / v_group -
  tau / npe_n (light path from the reconstructed position and expected delay of the earliest of
  npe_n photons, the model of the baseline time fit), the inverse-variance weighted mean of
  those (weights 1 / ((tau/npe_n)^2 + jitter^2), neighbours with >= ``min_npe``
  photoelectrons and a time) is moved forward to the recovered sensor with its own path and the
  delay of its solid-angle npho estimate. A plain npho-weighted mean of the neighbour times
  would be off by the light-path spread inside 20 cm (up to ~2 ns at 8.5 cm/ns).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xec.baseline.solid_angles import sensor_solid_angles
from xec.geometry import N_SENSORS, get_geometry

DEFAULT_RADIUS_CM = 20.0
DEFAULT_FALLBACK_NPHO = 50.0


def first_photon_delay(npe: np.ndarray, decay_time_ns: float) -> np.ndarray:
    """Expected delay (ns) of the earliest of ``npe`` photoelectrons of an exponential decay."""
    return decay_time_ns / np.maximum(npe, 1.0)


@dataclass(frozen=True)
class TimeModel:
    """Parameters of the sensor-time model (the ``baseline`` config section's keys)."""

    light_velocity_cm_ns: float = 8.5
    decay_time_ns: float = 45.0
    time_jitter_ns: float = 0.2
    mppc_efficiency: float = 0.12
    pmt_efficiency: float = 0.16
    time_min_npe: float = 10.0

    @classmethod
    def from_config(cls, cfg: Any) -> TimeModel:
        """From a BaselineConfig or a validated ``baseline`` section (mapping)."""
        get = cfg.__getitem__ if isinstance(cfg, Mapping) else lambda k: getattr(cfg, k)
        return cls(**{k: float(get(k)) for k in cls.__dataclass_fields__})

    def efficiency(self, ids: np.ndarray) -> np.ndarray:
        return np.where(get_geometry().is_mppc[ids], self.mppc_efficiency, self.pmt_efficiency)


# ---------------------------------------------------------------- neighbour tables
_NEIGHBOURS: dict[float, tuple[np.ndarray, np.ndarray]] = {}


def neighbour_table(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(4760, M) ids of the sensors of the same face within ``radius`` cm (padded with -1,
    excluding the sensor itself) and the (4760, M) validity mask."""
    if radius not in _NEIGHBOURS:
        from scipy.spatial import cKDTree

        g = get_geometry()
        lists: list[tuple[int, np.ndarray]] = []
        for face in range(6):
            ids = np.flatnonzero(g.face == face)
            tree = cKDTree(g.positions[ids])
            for k, near in enumerate(tree.query_ball_point(g.positions[ids], r=radius)):
                sel = ids[np.asarray(near, dtype=np.int64)]
                lists.append((int(ids[k]), sel[sel != ids[k]]))
        m = max(len(s) for _, s in lists)
        table = np.full((N_SENSORS, m), -1, np.int64)
        for i, sel in lists:
            table[i, : len(sel)] = sel
        _NEIGHBOURS[radius] = (table, table >= 0)
    return _NEIGHBOURS[radius]


_MATRICES: dict[float, Any] = {}


def neighbour_matrix(radius: float):
    """(4760, 4760) CSR 0/1 matrix: row i marks the sensors of i's face within ``radius``."""
    if radius not in _MATRICES:
        from scipy.sparse import csr_matrix

        table, valid = neighbour_table(radius)
        r, c = np.nonzero(valid)
        _MATRICES[radius] = csr_matrix((np.ones(len(r)), (r, table[r, c])), shape=(N_SENSORS, N_SENSORS))
    return _MATRICES[radius]


class _NeighbourSums:
    """Sums over the live neighbours of the sensors ``(ev, sid)`` to recover, every per-sensor
    quantity evaluated only on the needed sensors (C columns: the targets and their
    neighbours), two ways with the same result (~550 MPPCs lie within 20 cm of an MPPC):

    - by sensor: one sparse product (distinct target sensors x their neighbours) @ (events),
      cheap when few distinct sensors are dead in many events (a run's dead channels);
    - by target: each target gathers its own event's values at its padded neighbour list, cheap
      when the targets are spread over many sensors (randomly hidden ones)."""

    def __init__(self, dead: np.ndarray, ev: np.ndarray, sid: np.ndarray, radius: float):
        self.rows, self.inv = np.unique(ev, return_inverse=True)  # events with a target
        udead, self.uinv = np.unique(sid, return_inverse=True)
        # a gathered element costs a few times a sparse multiply-add: compare the work
        self.by_sensor = len(udead) * len(self.rows) < 4 * len(sid)
        if self.by_sensor:
            sub = neighbour_matrix(float(radius))[udead]  # (U, 4760)
            self.cols = np.union1d(sub.indices, udead)
            self.sub = sub[:, self.cols]
            self.pos = np.searchsorted(self.cols, sid)  # each target's own column
        else:
            table, valid = neighbour_table(float(radius))
            # the needed sensors: the distinct targets and their neighbours, marked (linear in
            # the distinct targets, where a union/searchsorted over every target's list sorts
            # K x M entries: with thousands of dead sensors per chunk that dominated)
            needed = np.zeros(N_SENSORS, bool)
            needed[table[udead][valid[udead]]] = True
            needed[udead] = True
            self.cols = np.flatnonzero(needed)
            col_of = np.zeros(N_SENSORS, np.intp)
            col_of[self.cols] = np.arange(len(self.cols))
            self.valid = valid[sid]
            self.nb = col_of[np.where(self.valid, table[sid], udead[0])]  # (K, M) column indices
            self.pos = col_of[sid]  # each target's own column
        self.dead_rc = self.gather(dead)
        if not self.by_sensor:
            # flat (K, M) positions in an (R, C) array, the neighbours that are not live pointing
            # one past its end (a zero appended by total()): one take and one sum per total
            size = self.dead_rc.size
            flat = self.inv[:, None] * len(self.cols) + self.nb
            self.live = self.valid & ~np.take(self.dead_rc, flat)
            self.flat = np.where(self.live, flat, size)

    def gather(self, values: np.ndarray) -> np.ndarray:
        """(R, C) slice of a (N, 4760) per-sensor array: events with a target, needed sensors."""
        return values[np.ix_(self.rows, self.cols)]

    def own(self, values_rc: np.ndarray) -> np.ndarray:
        """(K,) the targets' own entries of an (R, C) array."""
        return values_rc[self.inv, self.pos]

    def total(self, values_rc: np.ndarray | None = None) -> np.ndarray:
        """(K,) sum over each target's live neighbours of an (R, C) array (None: their count)."""
        if values_rc is None:
            values_rc = np.ones(self.dead_rc.shape)
        if self.by_sensor:
            s = np.asarray(self.sub @ np.where(self.dead_rc, 0.0, values_rc).T)  # (U, R)
            return s[self.uinv, self.inv]
        return np.take(np.append(np.asarray(values_rc, dtype=np.float64).ravel(), 0.0), self.flat).sum(axis=1)


def recover(
    npho: np.ndarray,
    dead: np.ndarray,
    ev: np.ndarray,
    sid: np.ndarray,
    xyz: np.ndarray | None = None,
    radius: float = DEFAULT_RADIUS_CM,
    fallback_npho: float = DEFAULT_FALLBACK_NPHO,
    time_ns: np.ndarray | None = None,
    time_valid: np.ndarray | None = None,
    time_model: TimeModel | None = None,
) -> dict[str, np.ndarray]:
    """Estimates for the sensors ``(ev[k], sid[k])`` (each must be marked in ``dead``).

    npho (N, 4760) photons (dead entries are ignored), dead (N, 4760) bool: the sensors that
    are unavailable (dead or hidden). xyz (N, 3) reconstructed positions (cm): needed for the
    solid-angle rule and the time. time_ns (N, 4760) with time_valid (N, 4760; default: finite):
    sensor times.

    Returns (K,) arrays: ``average``, ``n_live`` (neighbours used), ``sum_npho``, and with xyz
    ``solid_angle`` and ``fallback`` (True where the neighbour average was used), and with
    times ``time`` (ns; NaN where no neighbour has a usable time)."""
    ev = np.asarray(ev, dtype=np.int64)
    sid = np.asarray(sid, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    if ev.size == 0:
        empty = np.zeros(0)
        return {k: empty for k in ("average", "n_live", "sum_npho", "solid_angle", "time")} | {
            "fallback": np.zeros(0, bool)
        }
    npho = np.where(dead, 0.0, np.asarray(npho, dtype=np.float64))
    ns = _NeighbourSums(dead, ev, sid, radius)
    n_live = ns.total()
    npho_r = ns.gather(npho)
    sum_n = ns.total(npho_r)
    average = np.where(n_live > 0, sum_n / np.maximum(n_live, 1.0), 0.0)
    out.update(average=average, n_live=n_live, sum_npho=sum_n)
    if xyz is None:
        return out
    xyz = np.asarray(xyz, dtype=np.float64)
    om = sensor_solid_angles(xyz[ns.rows], ns.cols)
    sum_om = ns.total(om)
    use_om = (sum_n > fallback_npho) & (sum_om > 0)
    solid = np.where(use_om, sum_n * ns.own(om) / np.maximum(sum_om, 1e-300), average)
    out.update(solid_angle=solid, fallback=~use_om)
    if time_ns is None:
        return out
    tm = time_model or TimeModel()
    time_valid = np.isfinite(time_ns) if time_valid is None else np.asarray(time_valid, bool)
    g = get_geometry()
    path = np.linalg.norm(g.positions[ns.cols][None, :, :] - xyz[ns.rows][:, None, :], axis=-1)  # (R, C)
    npe = npho_r * tm.efficiency(ns.cols)[None, :]
    first = first_photon_delay(npe, tm.decay_time_ns)
    valid = ns.gather(time_valid) & (npe >= tm.time_min_npe)
    t_emit = ns.gather(np.where(time_valid, time_ns, 0.0)) - path / tm.light_velocity_cm_ns - first
    w = np.where(valid, 1.0 / (first**2 + tm.time_jitter_ns**2), 0.0)
    sw = ns.total(w)
    mean = ns.total(w * t_emit) / np.maximum(sw, 1e-300)
    own_first = first_photon_delay(solid * tm.efficiency(sid), tm.decay_time_ns)
    out["time"] = np.where(sw > 0, mean + ns.own(path) / tm.light_velocity_cm_ns + own_first, np.nan)
    return out


# dead sensors recovered per call of recover() by the chunk-level helpers: its neighbour sums
# hold (targets x ~550 neighbours) arrays, so a chunk with many dead sensors (a 10 % dead-fraction
# sweep, 2000 events of a run) goes in slices of events (the same numbers, bounded memory)
MAX_TARGETS = 12_000


def event_slices(dead: np.ndarray, max_targets: int = MAX_TARGETS) -> list[slice]:
    """Consecutive row slices of ``dead`` (N, 4760) holding at most ``max_targets`` dead sensors
    each (an event with more is a slice of its own)."""
    per_event = np.asarray(dead).sum(axis=1)
    out, start, held = [], 0, 0
    for i, k in enumerate(per_event):
        if held and held + k > max_targets:
            out.append(slice(start, i))
            start, held = i, 0
        held += int(k)
    out.append(slice(start, len(per_event)))
    return out


def estimate_dead(
    npho: np.ndarray,
    dead: np.ndarray,
    xyz: np.ndarray,
    radius: float = DEFAULT_RADIUS_CM,
    fallback_npho: float = DEFAULT_FALLBACK_NPHO,
) -> np.ndarray:
    """npho (N, 4760) with every dead sensor replaced by the solid-angle rule (seen from ``xyz``
    (N, 3)); a dead sensor without live neighbours gets 0."""
    out = np.where(dead, 0.0, npho).astype(np.float64)
    for sl in event_slices(dead):
        ev, sid = np.nonzero(dead[sl])
        if ev.size:
            part = out[sl]
            part[ev, sid] = recover(part, dead[sl], ev, sid, xyz[sl], radius, fallback_npho)["solid_angle"]
    return out
