"""Input file lists: ROOT paths, globs and run lists, expanded into one ordered list of files.

A run period is thousands of ROOT files, so a ``data.<sample>`` entry (or a command's
``--input``) may also be a **run list**: a text file (``.txt`` or ``.list``) with one path or
glob per line; ``#`` starts a comment, blank lines are skipped, relative paths are relative to
the list's own folder. Every problem is one XecError naming the list and the line: a missing
file, an empty list, a file named twice (in one list or across entries).

No ROOT import here: the Snakefile expands the inputs while it builds the DAG.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from xec.errors import XecError

RUN_LIST_SUFFIXES = (".txt", ".list")


def is_run_list(entry: str) -> bool:
    return Path(entry).suffix in RUN_LIST_SUFFIXES


def _matches(pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.expanduser(pattern)))


def read_run_list(path: str | os.PathLike) -> list[tuple[str, str]]:
    """[(file, "LIST:LINE"), ...] of a run list, in its order; globs expanded in place."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise XecError(f"{path}: cannot read the run list ({exc.strerror or exc})") from exc
    out: list[tuple[str, str]] = []
    for number, raw in enumerate(lines, start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        where = f"{path}:{number}"
        if is_run_list(entry):
            raise XecError(f"{where}: {entry!r} is a run list; a run list names ROOT files only")
        target = entry if os.path.isabs(os.path.expanduser(entry)) else str(path.parent / entry)
        matched = _matches(target)
        if not matched:
            raise XecError(f"{where}: {entry!r}: no such file")
        out.extend((m, where) for m in matched)
    if not out:
        raise XecError(f"{path}: the run list names no files")
    return out


def expand_input_entries(entries: Iterable[str]) -> list[tuple[str, str]]:
    """Paths, globs and run lists -> [(file, where)], in the given order (a glob's matches
    sorted); ``where`` is the entry or "LIST:LINE" that named the file, for error messages.
    An entry matching nothing, an empty run list and a file named twice are errors."""
    out: list[tuple[str, str]] = []
    origin: dict[str, str] = {}
    for entry in entries:
        entry = str(entry)
        if is_run_list(entry):
            if not Path(entry).is_file():
                raise XecError(f"{entry}: no such run list")
            found = read_run_list(entry)
        else:
            found = [(m, entry) for m in _matches(entry)]
            if not found:
                raise XecError(f"{entry}: no such file")
        for f, where in found:
            key = os.path.abspath(f)
            if key in origin:
                if where == origin[key] == f:
                    raise XecError(f"{f}: named twice in the inputs")
                raise XecError(f"{where}: {f} is named twice (also at {origin[key]})")
            origin[key] = where
            out.append((f, where))
    if not out:
        raise XecError("no input files given")
    return out


def expand_inputs(entries: Iterable[str]) -> list[str]:
    """The files of :func:`expand_input_entries`, without their origins."""
    return [f for f, _ in expand_input_entries(entries)]


def file_stem(path: str) -> str:
    """The name a per-file output takes from its input: ``/data/run012345.root`` -> ``run012345``."""
    return Path(path).name.removesuffix(".root")


def stems_of(entries: Iterable[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """{stem: (file, where)} of expanded inputs, in order. Per-file outputs are named by stem,
    so two inputs with the same file name (in different folders) are an error naming both."""
    stems: dict[str, tuple[str, str]] = {}
    for f, where in entries:
        stem = file_stem(f)
        if stem in stems:
            other, other_where = stems[stem]
            raise XecError(
                f"{where}: {f} and {other} (at {other_where}) share the file name {stem!r}; "
                "per-file outputs are named by it: rename or link one of them"
            )
        stems[stem] = (f, where)
    return stems
