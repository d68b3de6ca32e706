"""Stratified, seeded hiding of live sensors: per event and face, ``counts[face]`` sensors drawn
among the live ones with at least ``min_npho`` photons (the ones whose recovery matters and is
scored).

Each event draws from its own generator, seeded with (seed, index of the event in the sample),
so the hidden sensors do not depend on how the sample is read in chunks.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from xec.errors import XecError
from xec.geometry import FACE_NAMES, get_geometry


def check_counts(counts: Mapping[str, int], key: str = "inpainting.hide") -> dict[str, int]:
    """The per-face counts, validated against the detector: XecError naming the key when a
    face is unknown or a count exceeds the face's sensors."""
    g = get_geometry()
    out = {}
    for face, k in counts.items():
        if face not in FACE_NAMES:
            raise XecError(f"config {key}.{face}: unknown face; faces are {list(FACE_NAMES)}")
        n = int(np.sum(g.face == FACE_NAMES.index(face)))
        if not 0 <= int(k) <= n:
            raise XecError(f"config {key}.{face} = {k}: the {face} face has only {n} sensors")
        out[face] = int(k)
    return out


def hide_sensors(
    npho: np.ndarray,
    dead: np.ndarray,
    counts: Mapping[str, int],
    min_npho: float,
    seed: int,
    first_event: int,
    where: str = "input",
) -> np.ndarray:
    """(N, 4760) bool: the sensors to hide in events ``first_event ... first_event + N - 1`` of a
    sample. Per face, ``counts[face]`` live sensors (not ``dead``) with npho >= ``min_npho``,
    uniformly at random; fewer when the event has fewer such sensors. An event without any live
    sensor on a face that should be hidden from is an XecError naming ``where`` (a broken
    sample: every recovery needs live neighbours)."""
    g = get_geometry()
    n = len(npho)
    # per-event generators: the same hidden sensors whatever the chunking of the sample
    keys = np.stack([np.random.default_rng([seed, first_event + i]).random(g.face.size) for i in range(n)])
    live = ~dead
    candidate = live & (npho >= min_npho)
    hidden = np.zeros(npho.shape, bool)
    for face, k in counts.items():
        if k <= 0:
            continue
        ids = np.flatnonzero(g.face == FACE_NAMES.index(face))
        empty = ~live[:, ids].any(axis=1)
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise XecError(
                f"{where}: event {first_event + i} has no live sensor on the {face} face "
                f"(config inpainting.hide.{face} = {k}); {int(empty.sum())} such events in this chunk"
            )
        fk = np.where(candidate[:, ids], keys[:, ids], np.inf)
        pick = np.argsort(fk, axis=1)[:, :k]  # the k smallest keys among the candidates
        ok = np.isfinite(np.take_along_axis(fk, pick, axis=1))
        rows = np.repeat(np.arange(n), pick.shape[1]).reshape(pick.shape)
        hidden[rows[ok], ids[pick[ok]]] = True
    return hidden
