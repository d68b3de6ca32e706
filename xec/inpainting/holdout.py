"""The deterministic split of the realdata events into a fine-tuning part and a held-out part
(issue 14 part 4: `xec finetune` trains the inpainter on the first, `xec inpainting` scores the
simulation-only and the fine-tuned inpainter on the second).

An event is held out when a hash of its (run, event) numbers, mapped to [0, 1), is below the
held-out fraction (``finetune.holdout_fraction``). The split is a property of the event alone:
the same whatever the order, chunking, file grouping or number of events read, and nested
(a larger fraction holds out a superset). Files without run/event branches identify events as
the shards do (xec.data.shards): run -1, event = entry number in the file.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from xec.errors import XecError

ID_BRANCHES = ("run", "event")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def check_fraction(fraction: float, key: str = "finetune.holdout_fraction") -> float:
    """The held-out fraction, or an XecError naming the config key when it is not in (0, 1)."""
    f = float(fraction)
    if not 0.0 < f < 1.0:
        raise XecError(f"config {key} = {fraction}: the held-out fraction must be in (0, 1)")
    return f


def event_ids(arrays: Mapping[str, np.ndarray], first_entry: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(run, event) int64 of ``n`` events read from a file starting at entry ``first_entry``
    (missing branches: run -1, event = entry number)."""
    run = np.asarray(arrays["run"], np.int64).reshape(n) if "run" in arrays else np.full(n, -1, np.int64)
    if "event" in arrays:
        event = np.asarray(arrays["event"], np.int64).reshape(n)
    else:
        event = np.arange(first_entry, first_entry + n, dtype=np.int64)
    return run, event


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def event_uniform(run: np.ndarray, event: np.ndarray) -> np.ndarray:
    """A uniform [0, 1) number per event, a fixed function of (run, event)."""
    with np.errstate(over="ignore"):
        r = np.asarray(run, np.int64).astype(np.uint64)
        e = np.asarray(event, np.int64).astype(np.uint64)
        h = _splitmix64(_splitmix64(_splitmix64(r) + e))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def holdout_flags(run: np.ndarray, event: np.ndarray, fraction: float) -> np.ndarray:
    """(N,) bool: the events held out from the fine-tuning (for its evaluation)."""
    return event_uniform(run, event) < check_fraction(fraction)
