"""`xec shards`: ROOT files -> normalized WebDataset tar shards + manifest.json.

Layout (measured in benchmarks/loader.py, see docs/performance.md): each tar sample is a BLOCK
of up to ``block_size`` consecutive events (``x.npy`` float32 (n, 4760, 2) normalized, one
``<task>.npy`` float32 (n, dim) per task in physical units, ``run.npy``/``event.npy`` int64),
written uncompressed so that the loader can read any event range of a block with one pread.
One event per sample (block_size 1) is supported for comparison but is many times slower to
load. Time stays float32 (float16 steps of ~60 ps near 0.5 would eat into the timing
resolution).

Determinism: the input is cut into tasks of ``events_per_shard`` consecutive entries of one
file; each task becomes exactly one shard whose bytes depend only on that task (tar mtime 0,
fixed owner, sorted members, sample keys from the file's index in the split and the entry
range), so parallel workers give the same shards byte for byte. Shards are renamed
shard-NNNNNN.tar in task order. Everything is written into a temporary directory that replaces
``--out`` only after manifest.json is written: a failed or killed run leaves no manifest and
never touches a previous good output.

Scatter: ``--part --first-file K`` converts one group of consecutive files (file K onwards) into
a part directory, and `xec shards-merge` puts the parts together into exactly the directory the
one-job conversion writes (xec.data.shard_parts, which also holds the one manifest assembly).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import io
import logging
import multiprocessing
import os
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import xec
from xec.config import add_config_argument, load_config, schema_defaults
from xec.data.manifest import MANIFEST_NAME
from xec.data.shard_parts import build_manifest, new_tmp_dir, publish, save_part, task_stem
from xec.errors import XecError
from xec.geometry import N_SENSORS
from xec.normalization import Normalizer, get_normalizer, normalizer_from_config
from xec.rootio import check_branches, expand_inputs, iterate_events, open_tree
from xec.targets import get_task, targets_from_branches
from xec.utils import progress_enabled, setup_logging

log = logging.getLogger("xec.shards")

ID_BRANCHES = ("run", "event")


# The field defaults below are the schema's (validation fills in every default): ShardSettings()
# writes what the default config writes, and the schema stays the one source of config defaults.
_DEFAULT = schema_defaults()


@dataclass(frozen=True)
class ShardSettings:
    """Everything that determines the bytes of a shard (so it travels to worker processes)."""

    normalizer: Normalizer
    tree: str = _DEFAULT["data"]["tree"]
    npho_branch: str = _DEFAULT["data"]["npho_branch"]
    time_branch: str = _DEFAULT["data"]["time_branch"]
    tasks: tuple[str, ...] = tuple(_DEFAULT["shards"]["tasks"])
    truth_branches: dict[str, str] = field(default_factory=dict)  # task -> branch override (schema default: none)
    events_per_shard: int = _DEFAULT["shards"]["events_per_shard"]
    block_size: int = _DEFAULT["shards"]["block_size"]
    fiducial: dict[str, Any] | None = None  # {"u": [lo, hi], "v": [lo, hi], "w": [lo, hi]} on uvwTruth; None: off

    def branch_of(self, task: str) -> str:
        return self.truth_branches.get(task) or get_task(task).truth_branch

    @property
    def event_branches(self) -> list[str]:
        names = [self.branch_of(t) for t in self.tasks]
        if self.fiducial and self.branch_of("uvwFI") not in names:
            names.append(self.branch_of("uvwFI"))
        return names


@dataclass(frozen=True)
class ShardTask:
    index: int
    file_index: int
    path: str
    entry_start: int
    entry_stop: int


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _fiducial_mask(uvw: np.ndarray, cut: dict[str, Any]) -> np.ndarray:
    mask = np.ones(len(uvw), dtype=bool)
    for axis, name in enumerate("uvw"):
        lo, hi = cut[name]
        mask &= (uvw[:, axis] >= lo) & (uvw[:, axis] <= hi)
    return mask


def _check_finite_truth(arrays: dict[str, np.ndarray], path: str, first_entry: int) -> None:
    for name, values in arrays.items():
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            entries = (np.flatnonzero(bad)[:5] + first_entry).tolist()
            raise XecError(
                f"{path}: truth branch {name} has non-finite values at entries {entries}"
                f" ({int(bad.sum())} events in this chunk)"
            )


class ShardTarWriter:
    """A WebDataset tar written with tarfile: one member ``<key>.<name>`` per array of a sample,
    byte for byte what ``webdataset.TarWriter(f, user="xec", group="xec", mode=0o444,
    encoder=False, mtime=0.0)`` writes (tests/test_data_shards.py compares them; importing
    webdataset imports torch, ~2 s of every shard job)."""

    def __init__(self, fileobj: Any):
        self.tar = tarfile.open(fileobj=fileobj, mode="w|")

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = len(data), 0.0, 0o444
            info.uname = info.gname = "xec"
            self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self.tar.close()


def convert_task(task: ShardTask, settings: ShardSettings, out_dir: str) -> dict[str, Any]:
    """Convert one task (an entry range of one file) into ``out_dir/<task_stem>.tar``."""
    s = settings
    target_path = Path(out_dir) / f"{task_stem(task.file_index, task.entry_start)}.tar"
    std_names = {s.branch_of(t): get_task(t).truth_branch for t in s.tasks}  # configured -> standard
    uvw_branch = s.branch_of("uvwFI")
    pending: list[dict[str, np.ndarray]] = []
    n_pending = 0
    units: list[int] = []
    collected: dict[str, list[np.ndarray]] = {t: [] for t in s.tasks}
    stats = dict(read=0, kept=0, dead_npho=0, nonfinite_sensor=0)
    entry = task.entry_start

    with open(target_path, "wb") as f:
        writer = ShardTarWriter(f)

        def flush(n: int) -> None:
            nonlocal pending, n_pending
            block = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            take = {k: v[:n] for k, v in block.items()}
            rest = {k: v[n:] for k, v in block.items()}
            key = f"f{task.file_index:04d}e{task.entry_start:010d}b{len(units):05d}"
            writer.write(key, {f"{k}.npy": _npy_bytes(v) for k, v in take.items()})
            units.append(n)
            pending = [rest] if len(rest["x"]) else []
            n_pending -= n

        for _, arrays in iterate_events(
            [task.path],
            s.tree,
            (s.npho_branch, s.time_branch),
            s.event_branches,
            optional_branches=ID_BRANCHES,
            step_size=s.block_size,
            entry_start=task.entry_start,
            entry_stop=task.entry_stop,
        ):
            n = len(arrays[s.npho_branch])
            truth = {b: arrays[b] for b in s.event_branches}
            _check_finite_truth(truth, task.path, entry)
            npho, time = arrays[s.npho_branch], arrays[s.time_branch]
            stats["read"] += n
            stats["nonfinite_sensor"] += int((~np.isfinite(npho)).sum() + (~np.isfinite(time)).sum())
            keep = np.ones(n, dtype=bool)
            if s.fiducial:
                keep = _fiducial_mask(arrays[uvw_branch], s.fiducial)
            ids = {b: (arrays[b].astype(np.int64) if b in arrays else np.full(n, -1, np.int64)) for b in ID_BRANCHES}
            if "event" not in arrays:  # no event numbers in the file: the entry number identifies it
                ids["event"] = np.arange(entry, entry + n, dtype=np.int64)
            entry += n
            if not keep.all():
                npho, time = npho[keep], time[keep]
                truth = {k: v[keep] for k, v in truth.items()}
                ids = {k: v[keep] for k, v in ids.items()}
            if len(npho) == 0:
                continue
            stats["dead_npho"] += int(((npho > 9e9) | np.isnan(npho)).sum())
            x = s.normalizer.normalize_events(npho, time)
            targets = targets_from_branches({std_names[k]: v for k, v in truth.items() if k in std_names}, s.tasks)
            block = {"x": x, **{t: targets[t] for t in s.tasks}, **ids}
            for t in s.tasks:
                collected[t].append(targets[t])
            pending.append(block)
            n_pending += len(x)
            stats["kept"] += len(x)
            while n_pending >= s.block_size:
                flush(s.block_size)
        if n_pending:
            flush(n_pending)
        writer.close()

    result: dict[str, Any] = {
        "index": task.index,
        "file_index": task.file_index,
        "entry_start": task.entry_start,
        "entry_stop": task.entry_stop,
        "events": int(sum(units)),
        "units": units,
        "stats": stats,
        "targets": {
            t: (np.concatenate(v) if v else np.zeros((0, get_task(t).dim), np.float32)) for t, v in collected.items()
        },
    }
    if not units:
        target_path.unlink()
        result["tar"] = None
    else:
        result["tar"] = str(target_path)
        result["bytes"] = target_path.stat().st_size
        result["sha256"] = _sha256(target_path)
    return result


def _sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def plan_tasks(
    files: Sequence[str],
    tree: str,
    events_per_shard: int,
    sensor_branches: Sequence[str] = (),
    event_branches: Sequence[str] = (),
    first_file: int = 0,
) -> tuple[list[ShardTask], list[int]]:
    """Cut every file into entry ranges of ``events_per_shard``; opens each file and checks its
    branches first, so a bad file fails the run before anything is converted. ``first_file``:
    the split-wide index of ``files[0]`` (a part of a scattered conversion), which the shards'
    sample keys carry."""
    tasks: list[ShardTask] = []
    entries: list[int] = []
    for file_index, path in enumerate(files, start=first_file):
        t = open_tree(path, tree)
        check_branches(t, path, sensor_branches, event_branches)  # fail before converting anything
        n = int(t.num_entries)
        if n == 0:
            log.warning("%s: no events in tree %r", path, tree)
        entries.append(n)
        for start in range(0, n, events_per_shard):
            tasks.append(ShardTask(len(tasks), file_index, path, start, min(n, start + events_per_shard)))
    return tasks, entries


def _pool(workers: int):
    # fork: workers start in milliseconds and inherit the imported modules; spawn elsewhere.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def _check_settings(settings: ShardSettings) -> None:
    if settings.events_per_shard < 1 or settings.block_size < 1:
        raise XecError(
            f"events_per_shard ({settings.events_per_shard}) and block_size ({settings.block_size}) must be >= 1"
        )
    for t in settings.tasks:
        get_task(t)


def _convert(
    tasks: Sequence[ShardTask],
    files: Sequence[str],
    entries: Sequence[int],
    settings: ShardSettings,
    tmp: Path,
    split: str,
    workers: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Convert ``tasks`` into tars in ``tmp``; returns their results in task order and the
    sources (path, size, sha256, entries) of ``files``."""
    log.info(
        "converting %d file(s), %d entries, into shards of <= %d events with %d worker(s)",
        len(files),
        sum(entries),
        settings.events_per_shard,
        workers,
    )
    bar = tqdm(total=sum(entries), unit="ev", desc=f"shards {split}", disable=not progress_enabled())
    results = []
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            results.append(convert_task(task, settings, str(tmp)))
            bar.update(task.entry_stop - task.entry_start)
        checksums = [_sha256(p) for p in files]
    else:
        with _pool(min(workers, len(tasks))) as pool:
            futures = [pool.submit(convert_task, task, settings, str(tmp)) for task in tasks]
            sums = [pool.submit(_sha256, p) for p in files]
            try:
                for task, fut in zip(tasks, futures):
                    results.append(fut.result())  # in task order: deterministic assembly
                    bar.update(task.entry_stop - task.entry_start)
                checksums = [s.result() for s in sums]
            except BaseException:
                for fut in (*futures, *sums):  # do not convert the rest of a failed run
                    fut.cancel()
                raise
    bar.close()
    sources = [
        {"path": str(p), "size": os.path.getsize(p), "sha256": c, "entries": n}
        for p, c, n in zip(files, checksums, entries)
    ]
    return results, sources


def _plan(files: list[str], settings: ShardSettings, first_file: int = 0) -> tuple[list[ShardTask], list[int]]:
    s = settings
    return plan_tasks(
        files, s.tree, s.events_per_shard, (s.npho_branch, s.time_branch), s.event_branches, first_file=first_file
    )


def write_shards(
    inputs: Sequence[str], out: str | Path, split: str, settings: ShardSettings, workers: int = 1
) -> dict[str, Any]:
    """Convert ``inputs`` (paths or globs) into shards + manifest in ``out``; returns the manifest."""
    _check_settings(settings)
    files = expand_inputs(inputs)
    tasks, entries = _plan(files, settings)
    if not tasks:
        raise XecError(f"{', '.join(files)}: empty input (0 events in tree {settings.tree!r})")
    out = Path(out)
    tmp = new_tmp_dir(out)
    try:
        results, sources = _convert(tasks, files, entries, settings, tmp, split, workers)
        # the same assembly as the merge of parts (xec.data.shard_parts); here the tars are
        # already in place and only get their final names
        manifest = build_manifest(
            settings_record(settings), split, results, sources, lambda tar, name: os.replace(tar, tmp / name)
        )
        publish(tmp, out, MANIFEST_NAME, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "wrote %d events in %d shards to %s (%.1f KB/event on disk)",
        manifest["events"],
        len(manifest["shards"]),
        out,
        manifest["bytes"] / max(manifest["events"], 1) / 1e3,
    )
    return manifest


def write_part(
    inputs: Sequence[str],
    out: str | Path,
    split: str,
    settings: ShardSettings,
    first_file: int = 0,
    workers: int = 1,
) -> dict[str, Any]:
    """Convert one group of a split's files, the first being file ``first_file`` of the split,
    into the part directory ``out`` (xec.data.shard_parts); returns part.json's content. A part
    of only empty files is no error: the merge decides whether the whole split is empty."""
    _check_settings(settings)
    if first_file < 0:
        raise XecError(f"--first-file must be >= 0, not {first_file}")
    files = expand_inputs(inputs)
    tasks, entries = _plan(files, settings, first_file)
    out = Path(out)
    tmp = new_tmp_dir(out)
    try:
        results, sources = _convert(tasks, files, entries, settings, tmp, split, workers)
        part = save_part(tmp, out, split, settings_record(settings), first_file, results, sources)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "wrote part %s: files %d..%d, %d events in %d tars",
        out,
        first_file,
        first_file + len(files) - 1,
        sum(r["events"] for r in results),
        sum(r["tar"] is not None for r in results),
    )
    return part


def settings_record(settings: ShardSettings) -> dict[str, Any]:
    """What the settings (and the xec version) contribute to the manifest, in JSON types: the
    parts of one split must agree on all of it."""
    s = settings
    return {
        "normalization": s.normalizer.to_dict(),
        "branches": {
            "tree": s.tree,
            "npho": s.npho_branch,
            "time": s.time_branch,
            "truth": {t: s.branch_of(t) for t in s.tasks},
        },
        "tasks": list(s.tasks),
        "units": {t: get_task(t).unit for t in s.tasks},
        "fiducial": s.fiducial,
        "layout": {
            "kind": "blocks",
            "block_size": s.block_size,
            "events_per_shard": s.events_per_shard,
            "x": {
                "member": "x.npy",
                "dtype": "float32",
                "shape": [N_SENSORS, 2],
                "channels": ["npho_norm", "time_norm"],
            },
            "targets": {t: {"member": f"{t}.npy", "dtype": "float32", "dim": get_task(t).dim} for t in s.tasks},
            "ids": {b: {"member": f"{b}.npy", "dtype": "int64"} for b in ID_BRANCHES},
        },
        "xec_version": xec.__version__,
    }


def settings_from_config(
    cfg: Mapping[str, Any],
    preset: str | None = None,
    events_per_shard: int | None = None,
    block_size: int | None = None,
) -> ShardSettings:
    data, sec = cfg["data"], cfg["shards"]
    normalizer = get_normalizer(preset) if preset else normalizer_from_config(cfg)
    fid = sec["fiducial"]
    fiducial = {k: list(fid[k]) for k in "uvw"} if fid["enabled"] else None
    return ShardSettings(
        normalizer=normalizer,
        tree=data["tree"],
        npho_branch=data["npho_branch"],
        time_branch=data["time_branch"],
        tasks=tuple(sec["tasks"]),
        truth_branches=dict(sec["truth_branches"]),
        events_per_shard=events_per_shard or sec["events_per_shard"],
        block_size=block_size or sec["block_size"],
        fiducial=fiducial,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB", help="input ROOT files")
    parser.add_argument("--split", required=True, help="split name recorded in the manifest (train, val, bench)")
    parser.add_argument(
        "--out",
        required=True,
        help="output shard directory (gets shard-NNNNNN.tar + manifest.json), or with --part the part directory",
    )
    parser.add_argument(
        "--part",
        action="store_true",
        help="convert only this group of the split's files into a part directory, for `xec shards-merge`",
    )
    parser.add_argument(
        "--first-file", type=int, default=None, help="with --part: the index of the first input file in the split"
    )
    add_config_argument(parser)
    parser.add_argument("--preset", default=None, help="normalization preset (default: the config's)")
    parser.add_argument("--events-per-shard", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None, help="events per tar sample (1 = one event per sample)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: config shards.workers)")
    parser.add_argument("--log", default=None, help="log file")


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config, command="shards")
    settings = settings_from_config(cfg, args.preset, args.events_per_shard, args.block_size)
    workers = max(1, args.workers if args.workers is not None else cfg["shards"]["workers"])
    if args.part:
        write_part(args.input, args.out, args.split, settings, args.first_file or 0, workers=workers)
    elif args.first_file is not None:
        raise XecError("--first-file needs --part")
    else:
        write_shards(args.input, args.out, args.split, settings, workers=workers)
    return 0
