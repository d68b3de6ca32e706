"""Shard parts and `xec shards-merge`: the conversion of a split scattered over groups of files.

`xec shards --part` converts one group of consecutive files of a split into a part directory;
`xec shards-merge` puts the parts together into the split directory that the one-job
`xec shards` writes for the same files, byte for byte (shards and manifest.json). That holds
because a shard's bytes depend only on its task (an entry range of one file, keyed by the
file's index in the whole split, which the part is told with ``--first-file``), and because a
part keeps everything the manifest is computed from: per task its event and unit counts, bytes,
sha256, counters and the kept target values (float32, exactly as converted), per file its size,
sha256 and entries. The merge concatenates them in (file, entry) order and hands them to
:func:`build_manifest`, which the one-job conversion calls too: the manifest has one home.

A part directory::

    part.json                       settings, sources, one entry per task (written last)
    f00002-e0000000100.tar          the shard of task (file 2, entries from 100)
    f00002-e0000000100.targets.npz  its kept target values, one array per target task

The merge hard-links the part tars into the split directory (a copy only where the file system
refuses links), so a kept part costs no second copy of the data and a later merge or the
removal of the parts never touches the split's files. This module imports neither torch nor
uproot (a merge job starts in a fraction of a second).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xec.data.manifest import FORMAT_VERSION, MANIFEST_NAME
from xec.errors import XecError
from xec.inputs import expand_inputs
from xec.utils import current_umask, link_or_copy, replace_dir, setup_logging, write_json

log = logging.getLogger("xec.shards")

PART_NAME = "part.json"
PART_FORMAT = 1
PERCENTILES = (1, 5, 50, 95, 99)


def task_stem(file_index: int, entry_start: int) -> str:
    """The file name (without suffix) of a task's outputs: its place in the whole split."""
    return f"f{file_index:05d}-e{entry_start:010d}"


def target_stats(targets: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per task and component: mean, std (for TargetStandardizer), min, max and percentiles."""
    out = {}
    for task, values in targets.items():
        v = np.asarray(values, dtype=np.float64)
        stats = {
            "mean": v.mean(axis=0).tolist(),
            "std": v.std(axis=0).tolist(),
            "min": v.min(axis=0).tolist(),
            "max": v.max(axis=0).tolist(),
            "count": int(len(v)),
        }
        for q in PERCENTILES:
            stats[f"p{q:02d}"] = np.percentile(v, q, axis=0).tolist()
        out[task] = stats
    return out


def build_manifest(
    record: Mapping[str, Any],
    split: str,
    results: Sequence[Mapping[str, Any]],
    sources: Sequence[Mapping[str, Any]],
    place: Callable[[Path, str], None],
) -> dict[str, Any]:
    """The manifest of a split from its task results in (file, entry) order; ``place(tar, name)``
    puts each non-empty task's tar into the output directory as shard-NNNNNN.tar.

    ``record`` is what the settings contribute (xec.data.shards.settings_record); a result holds
    "events", "units", "stats", "targets" {task: array} and, for a task that kept events, "tar",
    "bytes" and "sha256". ``sources``: {"path", "size", "sha256", "entries"} per file."""
    shards = []
    stats_total: dict[str, int] = {}
    for r in results:
        for k, v in r["stats"].items():
            stats_total[k] = stats_total.get(k, 0) + v
    for r in results:
        if r.get("tar") is None:
            continue
        name = f"shard-{len(shards):06d}.tar"
        place(Path(r["tar"]), name)
        shards.append(
            {"file": name, "events": r["events"], "units": r["units"], "bytes": r["bytes"], "sha256": r["sha256"]}
        )
    total = sum(s["events"] for s in shards)
    if total == 0:
        paths = ", ".join(s["path"] for s in sources)
        raise XecError(f"{paths}: no events left after the fiducial cut {record['fiducial']}")
    tasks = record["tasks"]
    targets = {t: np.concatenate([r["targets"][t] for r in results]) for t in tasks}
    return {
        "format_version": FORMAT_VERSION,
        "split": split,
        "events": total,
        "bytes": int(sum(sh["bytes"] for sh in shards)),
        "shards": shards,
        "normalization": record["normalization"],
        "branches": record["branches"],
        "tasks": list(tasks),
        "units": record["units"],
        "sources": [{k: s[k] for k in ("path", "size", "sha256", "entries")} for s in sources],
        "selection": {
            "fiducial": record["fiducial"],
            "events_read": stats_total.get("read", 0),
            "events_kept": total,
        },
        "invalid_values": {
            "dead_npho": stats_total.get("dead_npho", 0),
            "nonfinite_sensor": stats_total.get("nonfinite_sensor", 0),
        },
        "target_stats": target_stats(targets),
        "layout": record["layout"],
        "xec_version": record["xec_version"],
    }


# ---- output directories: built in a temporary directory, swapped in whole ------------------------


def new_tmp_dir(out: Path) -> Path:
    """A private temporary directory next to ``out`` (same file system: the swap is a rename);
    what a killed earlier run left there is removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def publish(tmp: Path, out: Path, index_name: str, index: Mapping[str, Any]) -> None:
    """Write the index file (manifest.json or part.json) last, then swap ``tmp`` in for ``out``:
    a directory without its index file is never trusted."""
    write_json(tmp / index_name, index)
    umask = current_umask()
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp/mkstemp made them private
    os.chmod(tmp / index_name, 0o666 & ~umask)
    replace_dir(tmp, out)


def remove_stale(out: Path) -> None:
    """Remove what a killed earlier run left next to ``out`` (never trusted: no index there)."""
    for stale in sorted(out.parent.glob(f".{out.name}.tmp-*")) + sorted(out.parent.glob(f".{out.name}.old-*")):
        if stale.is_dir():
            log.warning("removing %s left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)


# ---- parts -------------------------------------------------------------------------------------


def save_part(
    tmp: Path,
    out: Path,
    split: str,
    record: Mapping[str, Any],
    first_file: int,
    results: Sequence[Mapping[str, Any]],
    sources: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Write the task results converted into ``tmp`` (tars named by task_stem) as a part
    directory and swap it in for ``out``; returns part.json's content."""
    tasks = []
    for r in results:
        stem = task_stem(r["file_index"], r["entry_start"])
        np.savez(tmp / f"{stem}.targets.npz", **r["targets"])  # uncompressed: exact and fast
        entry = {k: r[k] for k in ("file_index", "entry_start", "entry_stop", "events", "units", "stats")}
        entry["targets"] = f"{stem}.targets.npz"
        entry["tar"] = None if r.get("tar") is None else Path(r["tar"]).name
        if entry["tar"] is not None:
            entry.update(bytes=r["bytes"], sha256=r["sha256"])
        tasks.append(entry)
    part = {
        "part_format": PART_FORMAT,
        "split": split,
        "settings": dict(record),
        "first_file": first_file,
        "sources": [{"index": first_file + i, **s} for i, s in enumerate(sources)],
        "tasks": tasks,
    }
    publish(tmp, out, PART_NAME, part)
    return part


def read_part(path: str | Path) -> dict[str, Any]:
    """Read a part (its directory or part.json); every problem is one XecError naming it."""
    path = Path(path)
    if path.is_dir() or path.name != PART_NAME:
        path = path / PART_NAME
    if not path.exists():
        raise XecError(f"{path}: no such shard part (a missing part: run `xec shards --part` for its files first)")
    try:
        part = json.loads(path.read_text())
        if part.get("part_format") != PART_FORMAT:
            raise XecError(f"{path}: part_format {part.get('part_format')!r}, this xec reads {PART_FORMAT}")
        for t in part["tasks"]:
            if t["tar"] is not None and (path.parent / t["tar"]).stat().st_size != t["bytes"]:
                raise XecError(f"{path}: {t['tar']} is not the size the part recorded; re-run this part")
        _ = part["settings"]["tasks"], part["first_file"], part["sources"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise XecError(f"{path}: not a readable shard part ({type(exc).__name__}: {exc}); re-run this part") from exc
    part["_path"] = str(path)
    return part


def _check_parts(parts: Sequence[dict[str, Any]], split: str, inputs: Sequence[str] | None) -> None:
    """Refuse parts that would not add up to one conversion of the split's files."""
    ref = parts[0]
    holder: dict[str, str] = {}  # file -> the part holding it
    expected = 0  # index of the next file
    for p in parts:
        name = p["_path"]
        if p["split"] != split:
            raise XecError(f"{name}: a part of split {p['split']!r}, not {split!r}")
        keys = sorted(k for k in {*p["settings"], *ref["settings"]} if p["settings"].get(k) != ref["settings"].get(k))
        if keys:
            raise XecError(
                f"{name}: converted with other settings ({', '.join(keys)}) than {ref['_path']};"
                " convert every part with one config and xec version"
            )
        for s in p["sources"]:
            if s["path"] in holder:
                raise XecError(f"{name}: overlapping files: {s['path']} is also in {holder[s['path']]}")
            holder[s["path"]] = name
        first = p["first_file"]
        if first < expected:
            raise XecError(
                f"{name}: overlapping files: it starts at file {first}, the parts before it hold files"
                f" 0..{expected - 1} (give each group of files once, in file order)"
            )
        if first > expected:
            raise XecError(
                f"{name}: starts at file {first}, the parts before it end at file {expected - 1}:"
                f" the part of files {expected}..{first - 1} is missing"
            )
        expected += len(p["sources"])
    if inputs is not None:
        files = expand_inputs(inputs)
        have = [s["path"] for p in parts for s in p["sources"]]
        for i, f in enumerate(files):
            if f not in holder:
                raise XecError(f"{f} (file {i} of --input) is in no part: a missing part")
            if i >= len(have) or have[i] != f:
                raise XecError(f"{holder[f]}: holds {f} as file {have.index(f)}, --input has it as file {i}")
        if len(have) > len(files):
            extra = have[len(files)]
            raise XecError(f"{holder[extra]}: holds {extra}, which is not among the --input files")


def merge_parts(
    parts: Sequence[str | Path], out: str | Path, split: str, inputs: Sequence[str] | None = None
) -> dict[str, Any]:
    """Merge part directories (in file order) into the split directory ``out``; with ``inputs``
    (the split's files) the parts must hold exactly those files. Returns the manifest."""
    if not parts:
        raise XecError("no parts to merge")
    loaded = [read_part(p) for p in parts]
    _check_parts(loaded, split, inputs)
    record = loaded[0]["settings"]
    sources = [s for p in loaded for s in p["sources"]]
    if not any(p["tasks"] for p in loaded):
        paths = ", ".join(s["path"] for s in sources)
        raise XecError(f"{paths}: empty input (0 events in tree {record['branches']['tree']!r})")
    results = []
    for p in loaded:
        part_dir = Path(p["_path"]).parent
        for t in p["tasks"]:
            try:
                with np.load(part_dir / t["targets"], allow_pickle=False) as npz:
                    targets = {k: npz[k] for k in record["tasks"]}
            except (OSError, ValueError, KeyError) as exc:
                raise XecError(f"{p['_path']}: unreadable {t['targets']} ({exc}); re-run this part") from exc
            tar = None if t["tar"] is None else part_dir / t["tar"]
            results.append({**t, "tar": tar, "targets": targets})
    out = Path(out)
    tmp = new_tmp_dir(out)
    try:
        manifest = build_manifest(record, split, results, sources, lambda tar, name: link_or_copy(tar, tmp / name))
        publish(tmp, out, MANIFEST_NAME, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "merged %d part(s): %d events in %d shards in %s", len(loaded), manifest["events"], len(manifest["shards"]), out
    )
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--parts", nargs="+", required=True, metavar="PART", help="part directories (or their part.json), in file order"
    )
    parser.add_argument("--split", required=True, help="split name recorded in the manifest (train, val, bench)")
    parser.add_argument("--out", required=True, help="output shard directory (gets shard-NNNNNN.tar + manifest.json)")
    parser.add_argument(
        "--input",
        nargs="+",
        default=None,
        metavar="FILE_OR_GLOB",
        help="the split's input files: the parts must hold exactly these, in this order (recommended)",
    )
    parser.add_argument("--log", default=None, help="log file")


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    merge_parts(args.parts, args.out, args.split, args.input)
    return 0
