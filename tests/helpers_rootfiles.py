"""Small synthetic ROOT files in the MEG II input format (docs/architecture.md), for tests that
must not wait for the simulation: random npho/time with some 1e10 dead values and truth branches
of the right shapes.

    from helpers_rootfiles import write_root_file
    path = write_root_file(tmp_path / "a.root", n_events=300, seed=1)

Usable by every test module (tests/ is on sys.path under pytest's rootdir conftest).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xec.geometry import N_SENSORS
from xec.rootio import tree_writer

DEAD = np.float32(1e10)


def make_events(
    n_events: int, seed: int = 0, dead_fraction: float = 0.01, first_event: int = 0, run: int = 1
) -> dict[str, np.ndarray]:
    """A dict of branch arrays for ``n_events`` random events (every input-format branch)."""
    rng = np.random.default_rng(seed)
    npho = rng.exponential(300.0, size=(n_events, N_SENSORS)).astype(np.float32)
    time = rng.normal(20e-9, 5e-9, size=(n_events, N_SENSORS)).astype(np.float32)
    dead = rng.random((n_events, N_SENSORS)) < dead_fraction
    npho[dead] = DEAD
    time[dead] = DEAD
    no_time = (~dead) & (rng.random((n_events, N_SENSORS)) < 0.05)
    time[no_time] = DEAD
    theta = rng.uniform(60.0, 120.0, n_events)
    phi = rng.uniform(-30.0, 30.0, n_events)
    th, ph = np.radians(theta), np.radians(phi)
    emivec = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], axis=1)
    uvw = np.stack(
        [rng.uniform(-30, 30, n_events), rng.uniform(-80, 80, n_events), rng.exponential(8.0, n_events)], axis=1
    )
    valid_npho = np.where(npho > 9e9, 0.0, npho)
    return {
        "npho": npho,
        "relative_npho": (valid_npho / np.maximum(valid_npho.max(axis=1, keepdims=True), 1.0)).astype(np.float32),
        "time": np.where(time > 9e9, DEAD, time + 1e-6).astype(np.float32),
        "relative_time": time,
        "energyTruth": rng.uniform(0.015, 0.060, n_events).astype(np.float32),
        "timeTruth": rng.normal(0.0, 0.1, n_events).astype(np.float32),
        "uvwTruth": uvw.astype(np.float32),
        "xyzTruth": rng.normal(0.0, 10.0, (n_events, 3)).astype(np.float32),
        "emiAng": np.stack([theta, phi], axis=1).astype(np.float32),
        "emiVec": emivec.astype(np.float32),
        "xyzVTX": rng.normal(0.0, 1.0, (n_events, 3)).astype(np.float32),
        "run": np.full(n_events, run, dtype=np.int32),
        "event": np.arange(first_event, first_event + n_events, dtype=np.int32),
    }


def write_root_file(
    path: str | Path,
    n_events: int = 200,
    seed: int = 0,
    chunk: int = 100,
    tree: str = "tree",
    drop: Sequence[str] = (),
    overrides: dict | None = None,
    dead_fraction: float = 0.01,
    run: int = 1,
) -> Path:
    """Write ``n_events`` random events to ``path`` (branches in ``drop`` left out; arrays in
    ``overrides`` replace the generated ones, e.g. a sensor branch of the wrong length)."""
    path = Path(path)
    events = make_events(n_events, seed=seed, dead_fraction=dead_fraction, run=run)
    events.update(overrides or {})
    for name in drop:
        events.pop(name)
    with tree_writer(path, tree) as w:
        for start in range(0, n_events, chunk):
            w.extend({k: v[start : start + chunk] for k, v in events.items()})
    return path


_SAMPLE: dict | None = None


def shared_sample() -> dict:
    """Three small files (uneven sizes, distinct run numbers) and their shards (events_per_shard
    100, block_size 32: uneven shards and blocks), built once per test process and removed at exit.
    Returns {"dir", "files", "shards" (manifest path), "settings"}."""
    global _SAMPLE
    if _SAMPLE is None:
        import atexit
        import shutil
        import tempfile

        from xec.data.shards import ShardSettings, write_shards
        from xec.normalization import get_normalizer

        root = Path(tempfile.mkdtemp(prefix="xec-data-sample-"))
        atexit.register(shutil.rmtree, root, True)
        files = [
            write_root_file(root / f"in{i}.root", n, seed=10 + i, run=i + 1, chunk=64)
            for i, n in enumerate((150, 101, 47))
        ]
        settings = ShardSettings(normalizer=get_normalizer("meg2"), events_per_shard=100, block_size=32)
        write_shards([str(f) for f in files], root / "shards", "train", settings, workers=1)
        _SAMPLE = {"dir": root, "files": files, "shards": root / "shards" / "manifest.json", "settings": settings}
    return _SAMPLE
