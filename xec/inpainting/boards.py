"""Dead-sensor patterns for the dead-fraction sweep (xec.inpainting.deadsweep): sensors dead at
random, or whole readout boards of adjacent sensors.

Boards: the channel map of the experiment's readout is not part of this project, so a board is
defined from the geometry as a compact group of at most ``board_size`` (default 16, the channels
of one WaveDREAM digitizer board) adjacent sensors of one face: each face's sensors are halved
along the longer extent of their layout (face-local coordinates z, rho and phi' x the face's
mean rho, cm), at the
median (ties broken by the other coordinates), until a part holds at most ``board_size``. On the
inner face that gives 256 boards of 15-16 MPPCs (blocks of about 4 x 4), on the PMT faces boards
of 9-15 PMTs (the outer face's centre patch goes with its coarse neighbours).

Masks: each event draws its own dead sensors from a generator seeded with (seed, pattern,
index of the event in the sample), so a mask does not depend on how the sample is read in chunks,
and the draws are nested: one random order of the sensors (random) or of the boards (clustered)
per event, the first ones dead. ``random`` kills round(fraction x 4760) sensors; ``clustered``
kills whole boards in that order until at least that many sensors are dead (so the count
exceeds the request by less than one board).
"""

from __future__ import annotations

import functools

import numpy as np

from xec.errors import XecError
from xec.geometry import N_SENSORS, get_geometry

PATTERNS = ("random", "clustered")
_PATTERN_CODE = {"random": 1, "clustered": 2}


def _face_coordinates(ids: np.ndarray) -> np.ndarray:
    """(K, 3) face-local coordinates of one face's sensors (cm): z, rho and the arc phi' x (mean
    rho of the face), so that a strip of PMTs at one phi' (US/DS) shares its arc coordinate;
    rounded to 1e-4 cm so that sensors of one grid row or column tie exactly."""
    g = get_geometry()
    pos = g.positions[ids]
    rho = np.hypot(pos[:, 0], pos[:, 1])
    arc = rho.mean() * np.radians(g.phi_prime[ids])
    return np.round(np.stack([pos[:, 2], rho, arc], axis=1), 4)


def _halve(ids: np.ndarray, coords: np.ndarray, size: int) -> list[np.ndarray]:
    if len(ids) <= size:
        return [ids]
    axis = int(np.argmax(np.ptp(coords, axis=0)))
    others = [a for a in range(coords.shape[1]) if a != axis]
    order = np.lexsort((ids, *(coords[:, a] for a in reversed(others)), coords[:, axis]))
    half = len(ids) // 2
    lo, hi = order[:half], order[half:]
    return _halve(ids[lo], coords[lo], size) + _halve(ids[hi], coords[hi], size)


@functools.lru_cache(maxsize=8)
def readout_boards(board_size: int = 16) -> tuple[np.ndarray, ...]:
    """The boards (module docstring): sorted sensor-id arrays, face by face; every sensor is on
    exactly one board."""
    if int(board_size) < 1:
        raise XecError(f"config deadsweep.board_size = {board_size}: must be >= 1")
    g = get_geometry()
    boards: list[np.ndarray] = []
    for face in range(int(g.face.max()) + 1):
        ids = np.flatnonzero(g.face == face)
        boards += [np.sort(b) for b in _halve(ids, _face_coordinates(ids), int(board_size))]
    return tuple(boards)


def check_sweep(fractions, patterns) -> tuple[list[float], list[str]]:
    """Sorted fractions and the patterns, validated: XecError naming the config key."""
    out = []
    for i, f in enumerate(fractions):
        f = float(f)
        if not (0.0 <= f < 1.0):
            raise XecError(f"config deadsweep.fractions[{i}] = {f}: a dead fraction must be in [0, 1)")
        out.append(f)
    if len(set(out)) != len(out):
        raise XecError(f"config deadsweep.fractions = {list(fractions)}: a fraction is given twice")
    for p in patterns:
        if p not in PATTERNS:
            raise XecError(f"config deadsweep.patterns: unknown pattern {p!r}; choose from {list(PATTERNS)}")
    return sorted(out), list(patterns)


def dead_masks(fractions: list[float], pattern: str, events: np.ndarray, seed: int, board_size: int = 16) -> np.ndarray:
    """(F, N, 4760) bool: the sensors dead at each of ``fractions`` in the events with sample
    indices ``events`` (N,), for ``pattern`` (module docstring)."""
    if pattern not in PATTERNS:
        raise XecError(f"config deadsweep.patterns: unknown pattern {pattern!r}; choose from {list(PATTERNS)}")
    check_sweep(fractions, [pattern])
    fr = [float(f) for f in fractions]  # the caller's order
    targets = [int(round(f * N_SENSORS)) for f in fr]
    events = np.asarray(events, dtype=np.int64)
    out = np.zeros((len(fr), len(events), N_SENSORS), bool)
    boards = readout_boards(board_size) if pattern == "clustered" else ()
    for i, ev in enumerate(events):
        rng = np.random.default_rng([int(seed), _PATTERN_CODE[pattern], int(ev)])
        if pattern == "random":
            order = rng.permutation(N_SENSORS)
            for j, k in enumerate(targets):
                out[j, i, order[:k]] = True
        else:
            perm = rng.permutation(len(boards))
            sizes = np.cumsum([len(boards[b]) for b in perm])
            for j, k in enumerate(targets):
                if k == 0:
                    continue
                n_boards = int(np.searchsorted(sizes, k)) + 1  # the first boards reaching k sensors
                out[j, i, np.concatenate([boards[b] for b in perm[:n_boards]])] = True
    return out
