"""Dead sensors filled by the classical recoveries, for the ML regressor (`xec infer --fill
neighbour|solid_angle`): the raw npho (photons) and time (s) of each dead sensor (npho > 9e9 or
NaN) are replaced by xec.baseline.recovery's estimates before the event is normalized, so that
the regressor sees the same input contract as for a live sensor.

- position: the classical position fit of the same event with its dead sensors masked
  (xec.baseline.reco.fit_position, the light centroid the baseline itself fills dead sensors
  from);
- npho: ``neighbour``: the neighbour average; ``solid_angle``: the experiment's solid-angle rule
  (with its fallback to the neighbour average), both from xec.baseline.recovery.recover;
- time: the recovery's time rule (emission times of the neighbours moved to the recovered
  sensor, xec.baseline.recovery) for both, the dead-file marker 1e10 where no neighbour has a
  usable time. The normalization then drops the time of a sensor filled below the preset's
  npho threshold, as for a live one.

Events without a dead sensor are returned unchanged (no fit).

Holes: the inpainter fills isolated dead sensors better than the rule does (results/inpainting),
but its guess of a whole dead readout board is worse than the rule's, which scales the board's
live surroundings by solid angles from a position fitted to every live sensor. On the default
pipeline's bench events with 10 % of the sensors dead in whole boards, the regressor's u, w and
energy widths grew x1.35 / 1.39 / 1.41 with the inpainter's fill against x1.10 / 1.15 / 1.20
with the rule's, while with random dead sensors the two fills were equal (docs/performance.md,
"Dead boards: the rule fills the holes"). So `xec infer --fill inpainter` fills the dead sensors
inside a hole (:func:`hole_mask`) by the rule first (config ``inference.hole_fill``).
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from xec.baseline.reco import DEAD_NPHO, BaselineConfig, fit_position
from xec.baseline.recovery import TimeModel, event_slices, recover
from xec.geometry import get_geometry, nearest_same_face, uvw_to_xyz

CLASSICAL_FILLS = ("neighbour", "solid_angle")
NO_VALUE = 1e10  # the MEG II files' marker of a dead sensor / missing time
# a dead sensor is inside a hole when at least HOLE_MIN_DEAD of its HOLE_NEIGHBOURS nearest
# sensors of the same face are dead too: every sensor of a dead board of >= 2 x 2 sensors (or a
# 2 x 8 strip: its ends have 3 dead of 8), few isolated ones (with 10 % random dead sensors, 4 %
# of them); the same "a quarter of the neighbours unknown" as the inpainter's local correction
# (xec.models.local_fill.TIME_MIN_KNOWN) uses for "inside a dead board"
HOLE_NEIGHBOURS = 8
HOLE_MIN_DEAD = 3


def dead_mask(npho: np.ndarray) -> np.ndarray:
    """(N, 4760) bool: the dead sensors (npho > 9e9 or NaN), as the normalization sees them."""
    npho = np.asarray(npho)
    return np.isnan(npho) | (npho > DEAD_NPHO)


_HOLES_LOCK = threading.Lock()  # one build of the table, also when warm_up_holes' thread runs


def _hole_neighbours() -> np.ndarray:
    with _HOLES_LOCK:
        return _hole_neighbour_table()


@functools.lru_cache(maxsize=1)
def _hole_neighbour_table() -> np.ndarray:
    g = get_geometry()
    return nearest_same_face(np.asarray(g.positions), np.asarray(g.face), HOLE_NEIGHBOURS)


def warm_up_holes() -> None:
    """Build :func:`hole_mask`'s neighbour table in a background thread (a hole_mask call
    meanwhile waits for it)."""
    threading.Thread(target=_hole_neighbours, name="xec-holes", daemon=True).start()


def hole_mask(dead: np.ndarray) -> np.ndarray:
    """(N, 4760) bool: the dead sensors of ``dead`` (N, 4760) inside a hole (HOLE_MIN_DEAD of
    their HOLE_NEIGHBOURS nearest same-face sensors dead too)."""
    dead = np.asarray(dead, dtype=bool)
    ev, sid = np.nonzero(dead)
    n_dead = dead[ev[:, None], _hole_neighbours()[sid]].sum(axis=1)
    out = np.zeros_like(dead)
    keep = n_dead >= HOLE_MIN_DEAD
    out[ev[keep], sid[keep]] = True
    return out


def fill_dead(
    npho: np.ndarray, time_s: np.ndarray, method: str, cfg: BaselineConfig, only: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(npho, time, dead): float32 copies of ``npho`` (N, 4760, photons) and ``time_s`` (N, 4760,
    seconds) with the dead sensors filled by ``method`` (module docstring), and the dead mask.
    ``only`` (N, 4760) bool: fill just these dead sensors (e.g. :func:`hole_mask`); the others
    keep the files' marker, and the position fit skips every dead sensor either way.
    Live sensors are returned bit-identical."""
    if method not in CLASSICAL_FILLS:
        raise ValueError(f"unknown classical fill {method!r}; choose one of {CLASSICAL_FILLS}")
    npho_out = np.array(npho, dtype=np.float32, copy=True)
    time_out = np.array(time_s, dtype=np.float32, copy=True)
    dead = dead_mask(npho_out)
    targets = dead if only is None else dead & np.asarray(only, dtype=bool)
    rows = np.flatnonzero(targets.any(axis=1))
    for sl in event_slices(dead[rows]) if rows.size else ():  # bounded memory (recovery.MAX_TARGETS)
        _fill_rows(npho_out, time_out, dead, targets, rows[sl], method, cfg)
    return npho_out, time_out, dead


def _fill_rows(
    npho_out: np.ndarray,
    time_out: np.ndarray,
    dead: np.ndarray,
    targets: np.ndarray,
    rows: np.ndarray,
    method: str,
    cfg: BaselineConfig,
) -> None:
    """Fill the ``targets`` among the dead sensors of the events ``rows`` in place."""
    d = dead[rows]
    raw = np.asarray(npho_out[rows], dtype=np.float64)
    clean = np.where(d, 0.0, np.maximum(np.nan_to_num(raw), 0.0))
    xyz = uvw_to_xyz(fit_position(clean, d, cfg)["uvw"])
    t = np.asarray(time_out[rows], dtype=np.float64)
    tvalid = ~d & np.isfinite(t) & (np.abs(t) < DEAD_NPHO)
    ev, sid = np.nonzero(targets[rows])
    rec = recover(
        clean,
        d,
        ev,
        sid,
        xyz,
        cfg.dead_radius_cm,
        cfg.dead_fallback_npho,
        np.where(tvalid, t, 0.0) * 1e9,
        tvalid,
        TimeModel.from_config(cfg),
    )
    est = rec["average"] if method == "neighbour" else rec["solid_angle"]
    npho_out[rows[ev], sid] = est.astype(np.float32)
    time_out[rows[ev], sid] = np.where(np.isfinite(rec["time"]), rec["time"] * 1e-9, NO_VALUE).astype(np.float32)
