"""ROOT I/O in the MEG II format: the schema, a validated chunked reader and an atomic chunked
writer (uproot TTree, not RNTuple). Every ROOT read or write in xec goes through here so that a
bad file always gets the same clear error naming the file and the problem."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import uproot

from xec.errors import InputFileError, XecError
from xec.geometry import N_SENSORS
from xec.inputs import expand_inputs  # noqa: F401  (the commands' --input expansion, re-exported)
from xec.utils import atomic_path

# Per-sensor float32[4760] branches.
SENSOR_BRANCHES = ("npho", "relative_npho", "time", "relative_time")
# Per-event branches and their per-event shape; dtype float32 unless listed in INT_BRANCHES.
TRUTH_BRANCHES: dict[str, tuple[int, ...]] = {
    "energyTruth": (),
    "timeTruth": (),
    "uvwTruth": (3,),
    "xyzTruth": (3,),
    "emiAng": (2,),
    "emiVec": (3,),
    "xyzVTX": (3,),
    "run": (),
    "event": (),
}
RECO_BRANCHES: dict[str, tuple[int, ...]] = {
    "energyReco": (),
    "timeReco": (),
    "uvwRecoFI": (3,),
    "xyzRecoFI": (3,),
}
# Written by the simulation for samples with pile-up only: the second gamma's energy (GeV, 0 =
# none) and its time relative to the main gamma's (ns).
PILEUP_BRANCHES: dict[str, tuple[int, ...]] = {"pileupEnergyTruth": (), "pileupTimeTruth": ()}
INT_BRANCHES = ("run", "event")
EVENT_BRANCHES = {**TRUTH_BRANCHES, **RECO_BRANCHES, **PILEUP_BRANCHES}


def open_tree(path: str | os.PathLike, tree: str = "tree"):
    """Open ``path`` and return its TTree, turning every failure into one clear XecError."""
    path = str(path)
    if not os.path.exists(path):
        raise InputFileError(path, f"{path}: no such file")
    try:
        f = uproot.open(path)
    except Exception as exc:  # uproot raises ValueError/OSError/DeserializationError
        raise InputFileError(path, f"{path}: not a readable ROOT file ({type(exc).__name__}: {exc})") from exc
    try:
        obj = f[tree]
    except Exception as exc:
        keys = ", ".join(sorted({k.split(";")[0] for k in f.keys()})) or "none"
        raise InputFileError(path, f"{path}: no TTree {tree!r} (keys: {keys})") from exc
    if not isinstance(obj, uproot.behaviors.TTree.TTree):
        raise InputFileError(path, f"{path}: {tree!r} is a {type(obj).__name__}, not a TTree")
    return obj


def check_branches(tree, path: str, sensor_branches: Sequence[str], event_branches: Sequence[str] = ()) -> None:
    """Raise XecError if a required branch is missing."""
    missing = [b for b in (*sensor_branches, *event_branches) if b not in tree.keys()]
    if missing:
        raise InputFileError(path, f"{path}: missing branch(es) {missing} in tree {tree.name!r}")


def _as_sensor_array(values: Any, branch: str, path: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == object:  # jagged (std::vector) branch: every event must have 4760 entries
        lengths = {len(v) for v in arr}
        if lengths != {N_SENSORS}:
            raise InputFileError(
                path, f"{path}: branch {branch} has {sorted(lengths)[:5]} values per event, expected {N_SENSORS}"
            )
        arr = np.stack(arr)
    if arr.ndim != 2 or arr.shape[1] != N_SENSORS:
        raise InputFileError(
            path, f"{path}: branch {branch} has shape {arr.shape[1:]} per event, expected ({N_SENSORS},)"
        )
    return arr.astype(np.float32, copy=False)


def _as_event_array(values: Any, branch: str, path: str) -> np.ndarray:
    arr = np.asarray(values)
    expected = EVENT_BRANCHES.get(branch)
    if arr.dtype == object:
        arr = np.stack(arr)
    if expected is not None and arr.shape[1:] != expected:
        raise InputFileError(path, f"{path}: branch {branch} has shape {arr.shape[1:]} per event, expected {expected}")
    return arr


def iterate_events(
    files: Sequence[str],
    tree: str = "tree",
    sensor_branches: Sequence[str] = ("npho", "relative_time"),
    event_branches: Sequence[str] = (),
    optional_branches: Sequence[str] = (),
    step_size: int = 1000,
    entry_start: int | None = None,
    entry_stop: int | None = None,
    first_step: int | None = None,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Stream (path, arrays) chunks of at most ``step_size`` events, file after file. Sensor
    branches come back as float32 (n, 4760); event branches as (n, *shape). Optional branches
    are read where present. Memory is bounded by the chunk, not by the file. ``first_step``
    (smaller than ``step_size``): the stream's first chunk is split into ``first_step`` events
    and the rest, so that a consumer waiting for it (``xec infer``'s models) starts sooner; the
    later chunks keep their boundaries."""
    first = first_step if first_step is not None and 0 < first_step < step_size else None
    for path in files:
        t = open_tree(path, tree)
        check_branches(t, path, sensor_branches, event_branches)
        present_optional = [b for b in optional_branches if b in t.keys() and b not in event_branches]
        names = [*sensor_branches, *event_branches, *present_optional]
        start, stop = entry_start or 0, t.num_entries if entry_stop is None else min(entry_stop, t.num_entries)
        steps = []
        if first is not None and start < stop:
            # the first chunk split in two, the rest on the usual boundaries (the same batches
            # downstream)
            mid, end = min(start + first, stop), min(start + step_size, stop)
            steps = [(start, mid)] + ([(mid, end)] if mid < end else [])
            start, first = end, None
        try:
            chunks = (t.arrays(names, library="np", entry_start=a, entry_stop=b) for a, b in steps)
            if start < stop:
                chunks = itertools.chain(
                    chunks, t.iterate(names, step_size=step_size, library="np", entry_start=start, entry_stop=stop)
                )
            for chunk in chunks:
                out = {b: _as_sensor_array(chunk[b], b, path) for b in sensor_branches}
                out.update({b: _as_event_array(chunk[b], b, path) for b in (*event_branches, *present_optional)})
                yield path, out
        except XecError:
            raise
        except Exception as exc:
            raise InputFileError(
                path, f"{path}: cannot read tree {tree!r} ({type(exc).__name__}: {exc}); is the file truncated?"
            ) from exc


def check_input_layout(
    entries: Sequence[tuple[str, str]],
    tree: str,
    sensor_branches: Sequence[str],
    cache: str | os.PathLike | None = None,
) -> dict[str, int | None]:
    """Before any job of a run period starts: every input that opens must have ``tree`` and the
    sensor branches, else one XecError naming the file and the run-list line (``entries``:
    [(file, where)] of xec.inputs.expand_input_entries). A file that does not open at all
    (corrupt, truncated) is not an error here: its own job fails and the merge lists it.
    Returns {file: number of events, None where it does not open}. ``cache`` (JSON) remembers
    the files already checked, by size and mtime, so re-planning a run period of thousands of
    files costs one stat per file."""
    import json

    key = f"{tree}|{','.join(sensor_branches)}"
    known: dict[str, list] = {}
    if cache is not None and os.path.exists(cache):
        with contextlib.suppress(ValueError, OSError):
            known = json.loads(Path(cache).read_text()).get(key, {})
    counts: dict[str, int | None] = {}
    changed = False
    for path, where in entries:
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns]
        record = known.get(os.path.abspath(path))
        if record is not None and record[:2] == stamp and len(record) == 3:
            counts[path] = record[2]
            continue
        try:
            with uproot.open(path):
                pass
        except Exception:
            counts[path] = None
        else:
            try:
                t = open_tree(path, tree)
                check_branches(t, path, sensor_branches)
            except XecError as exc:
                raise XecError(f"{where}: {exc}") from None
            counts[path] = int(t.num_entries)
        known[os.path.abspath(path)] = [*stamp, counts[path]]
        changed = True
    if cache is not None and changed:
        with contextlib.suppress(OSError):
            data = {}
            with contextlib.suppress(ValueError, OSError):
                data = json.loads(Path(cache).read_text())
            data[key] = known
            with atomic_path(Path(cache)) as tmp:
                tmp.write_text(json.dumps(data))
    return counts


def count_events(files: Sequence[str], tree: str = "tree") -> int:
    return sum(int(open_tree(p, tree).num_entries) for p in files)


# Basket compression by name, all at level 1 (ROOT reads every one of them): lz4 is the fastest
# to write and read, zstd and zlib give the smallest files (measurements: docs/performance.md).
COMPRESSIONS: dict[str, Any] = {"lz4": uproot.LZ4(1), "zstd": uproot.ZSTD(1), "zlib": uproot.ZLIB(1), "none": None}


@contextlib.contextmanager
def tree_writer(
    path: str | os.PathLike, tree: str = "tree", title: str = "", compression: str | None = None
) -> Iterator[TreeWriter]:
    """Write a TTree chunk by chunk to a temporary file that replaces ``path`` only on success.
    ``compression``: a name of :data:`COMPRESSIONS`; None keeps uproot's default (zlib)."""
    if compression is not None and compression not in COMPRESSIONS:
        raise XecError(f"{path}: unknown compression {compression!r}; choose one of {sorted(COMPRESSIONS)}")
    with atomic_path(Path(path), suffix=".root") as tmp:
        with (
            uproot.recreate(tmp) if compression is None else uproot.recreate(tmp, compression=COMPRESSIONS[compression])
        ) as f:
            writer = TreeWriter(f, tree, title)
            yield writer
        if writer.entries == 0:
            raise XecError(f"{path}: nothing to write (no events)")


class TreeWriter:
    """Creates the tree from the first chunk's dtypes/shapes (mktree) and extends it."""

    def __init__(self, file, name: str, title: str = ""):
        self._file, self._name, self._title = file, name, title
        self._tree = None
        self.entries = 0

    def extend(self, arrays: Mapping[str, np.ndarray]) -> None:
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        if self._tree is None:
            types = {k: np.dtype((v.dtype, v.shape[1:])) if v.ndim > 1 else v.dtype for k, v in arrays.items()}
            self._tree = self._file.mktree(self._name, types, title=self._title)
        self._tree.extend(arrays)
        self.entries += len(next(iter(arrays.values())))
