"""Dead sensors as a training augmentation (regressor and inpainter stages): whole readout boards
(xec.inpainting.boards, the boards of `xec deadsweep`'s clustered pattern) or random sensors.

Per training event, independently: with probability ``events`` the event gets dead sensors (the
others stay as they are); such an event draws its dead fraction f uniformly in
[0, ``max_fraction``] and is ``clustered`` (with probability ``clustered``: each readout board
dies with probability f, all of its sensors at once) or random (each sensor dies with
probability f). Every sensor thus dies with probability f, and the expected dead fraction over
events is ``events`` x ``max_fraction`` / 2. The draws come from the training loop's seeded
generator, so a run is reproducible.

What a dead sensor becomes is the stage's business: the regressor hides its time, or its npho
and time, behind the normalization's sentinel (``regressor.dead_fill``: time, sentinel,
inpainter), the inpainter hides (and scores) the dead sensors that have a reading.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from xec.errors import XecError
from xec.geometry import N_SENSORS
from xec.inpainting.boards import readout_boards


@functools.lru_cache(maxsize=8)
def board_of_sensor(board_size: int = 16) -> np.ndarray:
    """(4760,) int64: the index of each sensor's board in ``readout_boards(board_size)``."""
    out = np.full(N_SENSORS, -1, np.int64)
    for i, ids in enumerate(readout_boards(board_size)):
        out[ids] = i
    return out


class DeadSensorAugment:
    """Seeded dead-sensor masks for training batches (module docstring)."""

    def __init__(self, events: float, max_fraction: float, clustered: float, board_size: int = 16, key: str = ""):
        for name, v in (("events", events), ("max_fraction", max_fraction), ("clustered", clustered)):
            if not 0.0 <= float(v) <= 1.0:
                raise XecError(f"config {key}.{name} = {v}: must be in [0, 1]")
        self.events = float(events)
        self.max_fraction = float(max_fraction)
        self.clustered = float(clustered)
        self.board_size = int(board_size)
        self.board_index = torch.from_numpy(board_of_sensor(self.board_size))
        self.n_boards = int(self.board_index.max()) + 1

    @classmethod
    def from_config(cls, sec: Mapping[str, Any], board_size: int, key: str) -> DeadSensorAugment | None:
        """The augmentation of a config section (``<stage>.dead_sensors``), or None when it
        kills nothing (events or max_fraction 0)."""
        aug = cls(sec["events"], sec["max_fraction"], sec["clustered"], board_size, key)
        return aug if aug.events > 0 and aug.max_fraction > 0 else None

    @property
    def expected_fraction(self) -> float:
        """Expected fraction of dead sensors over events."""
        return self.events * self.max_fraction / 2.0

    def mask(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch, 4760) bool on the generator's device: the sensors dead in each event."""
        dev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(batch, 3, generator=generator, device=dev)
        hit = u[:, 0] < self.events
        frac = u[:, 1] * self.max_fraction
        clustered = u[:, 2] < self.clustered
        out = torch.zeros(batch, N_SENSORS, dtype=torch.bool, device=dev)
        # draws for the affected events only (the cost follows `events`)
        rows = torch.nonzero(hit & clustered).squeeze(1)
        if len(rows):
            board_u = torch.rand(len(rows), self.n_boards, generator=generator, device=dev)
            board_dead = board_u < frac[rows, None]
            out[rows] = board_dead.index_select(1, self.board_index.to(dev))  # a board's sensors die with it
        rows = torch.nonzero(hit & ~clustered).squeeze(1)
        if len(rows):
            out[rows] = torch.rand(len(rows), N_SENSORS, generator=generator, device=dev) < frac[rows, None]
        return out
