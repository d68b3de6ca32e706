"""Per-file scatter of the per-event stages over a run period, and the merged view.

A run period is thousands of ROOT files arriving over weeks, so ``xec infer`` and
``xec baseline`` run one job per input file (``results/inference/<name>/<stem>.parquet``,
``results/baseline/<sample>/<stem>.parquet``) and a merge step makes the per-file parquet files
one dataset: a directory that pandas and pyarrow read as one table
(``pd.read_parquet("results/inference/realdata.parquet")``), holding a hard link per file plus
``_xec_merge.json`` (files, events per file and run, failed files). Nothing is concatenated:
re-merging after new runs arrive costs one link and one metadata read per file.

A bad input file (xec.errors.InputFileError: truncated, unreadable, wrong branches) fails its
own job, which leaves a *failure record* ``<stem>.failed.json`` next to where its output would
be. While the record matches the file (same size and mtime), the workflow leaves the file out of
the merge and the summary lists it; replacing the file (or deleting the record) retries it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xec.errors import XecError
from xec.utils import current_umask, link_or_copy, replace_dir, write_json

log = logging.getLogger("xec.scatter")

FAILURE_SUFFIX = ".failed.json"
MERGE_MANIFEST = "_xec_merge.json"  # leading "_": pyarrow and pandas skip it when reading the dataset
MERGE_FORMAT = 1


def add_failure_record_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--failure-record",
        default=None,
        metavar="JSON",
        help="if the input file itself is bad (truncated, unreadable, missing branches), record the error "
        "here (besides failing): the workflow then leaves the file out of the merge and lists it",
    )


def _stamp(path: str | os.PathLike) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def write_failure_record(record: str | os.PathLike, input_file: str, error: str, command: str) -> None:
    """Record that ``input_file`` (as it is now: size and mtime) failed ``command``."""
    stamp = _stamp(input_file) if os.path.exists(input_file) else None
    write_json(record, {"input": str(input_file), "stamp": stamp, "command": command, "error": error})


def read_failure_record(record: str | os.PathLike, input_file: str) -> dict[str, Any] | None:
    """The failure record of ``input_file`` if there is one and it still describes the file
    (same size and mtime: a replaced file is retried), else None."""
    try:
        data = json.loads(Path(record).read_text())
    except (OSError, ValueError):
        return None
    current = _stamp(input_file) if os.path.exists(input_file) else None
    if data.get("input") != str(input_file) or data.get("stamp") != current:
        return None
    return data


def clear_failure_record(record: str | os.PathLike | None) -> None:
    """A successful job removes the record an earlier failure of its file left."""
    if record:
        Path(record).unlink(missing_ok=True)


@dataclass(frozen=True)
class Part:
    """One input file's per-file output (``parquet``) in a merge."""

    stem: str
    input: str
    parquet: str


def _run_ranges(parquet: str) -> tuple[int, list[list[int]]]:
    """(events, [[run, first event, last event, events], ...]) of one per-file parquet, reading
    only its run and event columns; duplicate (run, event) pairs inside the file are an error."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(parquet, columns=["run", "event"])
    run = table.column("run").to_numpy()
    event = table.column("event").to_numpy()
    order = np.lexsort((event, run))
    run, event = run[order], event[order]
    same = (run[1:] == run[:-1]) & (event[1:] == event[:-1])
    if same.any():
        i = int(np.flatnonzero(same)[0])
        raise XecError(f"{parquet}: run {run[i]} event {event[i]} appears more than once")
    ranges = []
    for r in np.unique(run):
        sel = event[run == r]
        ranges.append([int(r), int(sel.min()), int(sel.max()), int(len(sel))])
    return int(len(run)), ranges


def _check_overlaps(files: Sequence[dict[str, Any]]) -> None:
    """Two files holding events of one run in overlapping event ranges are (almost surely) the
    same events twice: the merged view would count them twice."""
    seen: dict[int, list[tuple[int, int, str]]] = {}
    for f in files:
        for run, lo, hi, _n in f["runs"]:
            for other_lo, other_hi, other in seen.get(run, []):
                if lo <= other_hi and other_lo <= hi and run == -1:
                    raise XecError(
                        f"{f['input']} and {other} have no run/event branches (run -1): the events of "
                        "different files cannot be told apart; write run and event into the files"
                    )
                if lo <= other_hi and other_lo <= hi:
                    raise XecError(
                        f"{f['input']} and {other} both hold run {run} events in [{max(lo, other_lo)}, "
                        f"{min(hi, other_hi)}]: the same events twice? Remove one from the inputs"
                    )
            seen.setdefault(run, []).append((lo, hi, f["input"]))


def merge_parts(parts: Iterable[Part], out: str | os.PathLike, failed: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """Make ``out`` a parquet dataset directory of the per-file ``parts`` (hard links, in order)
    with the merge manifest; ``failed``: failure records (read_failure_record) of left-out
    files. All parts must share one schema. Atomic: ``out`` is swapped in complete."""
    import pyarrow.parquet as pq

    parts = list(parts)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files, schema, first = [], None, None
        for part in parts:
            if not os.path.exists(part.parquet):
                raise XecError(f"{part.parquet}: no such per-file output (of {part.input})")
            this = pq.read_schema(part.parquet)
            if schema is None:
                schema, first = this, part.parquet
            elif not this.equals(schema, check_metadata=False):
                raise XecError(f"{part.parquet}: columns differ from {first}'s; was it made by another model/version?")
            events, runs = _run_ranges(part.parquet)
            files.append(
                {
                    "stem": part.stem,
                    "input": part.input,
                    "parquet": f"{part.stem}.parquet",
                    "events": events,
                    "runs": runs,
                }
            )
            link_or_copy(part.parquet, tmp / f"{part.stem}.parquet")
        _check_overlaps(files)
        failed = [{"input": f["input"], "command": f.get("command"), "error": f.get("error")} for f in failed]
        if not files:
            raise XecError(f"{out}: nothing to merge: every input file failed ({len(failed)} failure records)")
        manifest = {
            "format": MERGE_FORMAT,
            "events": sum(f["events"] for f in files),
            "files": files,
            "failed": failed,
        }
        write_json(tmp / MERGE_MANIFEST, manifest)
        os.chmod(tmp, 0o777 & ~current_umask())
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "merged %d file(s), %d events into %s; %d failed file(s) left out",
        len(files),
        manifest["events"],
        out,
        len(failed),
    )
    return manifest


def read_merge_manifest(dataset: str | os.PathLike) -> dict[str, Any] | None:
    """The merge manifest of a dataset directory, or None for a plain parquet file."""
    path = Path(dataset) / MERGE_MANIFEST
    if not Path(dataset).is_dir():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise XecError(f"{dataset}: a directory without a readable {MERGE_MANIFEST} ({exc})") from exc


def dataset_files(dataset: str | os.PathLike) -> list[Path]:
    """The parquet files of an input in order: itself for a file; for a merged dataset
    directory the per-file parts in the manifest's (input) order."""
    dataset = Path(dataset)
    manifest = read_merge_manifest(dataset)
    if manifest is None:
        return [dataset]
    return [dataset / f["parquet"] for f in manifest["files"]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--part",
        nargs=3,
        action="append",
        default=[],
        metavar=("STEM", "INPUT", "PARQUET"),
        help="one per-file output: the input file's stem, the input ROOT file and its parquet (repeat, in order)",
    )
    parser.add_argument(
        "--failed",
        nargs=2,
        action="append",
        default=[],
        metavar=("INPUT", "RECORD"),
        help="an input file left out, with its failure record (repeat)",
    )
    parser.add_argument(
        "--out", required=True, help="merged dataset directory (e.g. results/inference/realdata.parquet)"
    )
    parser.add_argument("--log", default=None, help="log file")


def main(args: argparse.Namespace) -> int:
    from xec.utils import setup_logging

    setup_logging(args.log)
    failed = []
    for input_file, record in args.failed:
        data = read_failure_record(record, input_file)
        if data is None:
            raise XecError(f"{record}: no current failure record of {input_file}")
        failed.append(data)
    merge_parts([Part(*p) for p in args.part], args.out, failed)
    return 0
