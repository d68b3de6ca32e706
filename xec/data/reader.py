"""ShardReader: random access to event ranges of normalized tar shards, with plain file I/O (numpy only, no torch).

Format read (written by `xec shards`, listed in the manifest; see docs/architecture.md):
    Each shard is an ordinary uncompressed WebDataset tar. A tar sample ("block", key ``<key>``)
    holds one uncompressed C-order ``<key>.<member>.npy`` per member (x, the task targets, run,
    event), every one with the block's events on axis 0. The manifest lists per shard
    ``{"file", "bytes", "units": [events per block, in tar order], ...}``.

Contract:
    reader = ShardReader(shard_dir, manifest["shards"], members)
    reader.read_into(out, offset, segments)  # segments [(shard, block, start, stop)], events [start, stop)
    reader.close()
``read_into`` fills ``out[member][offset:offset + total events]`` in segment order with one pread
per (segment, member) straight into the destination array, which must already have the member's
dtype and per-event shape. Each shard's .npy members are located once, lazily, from its tar headers;
file descriptors are opened lazily and kept until ``close()``. Before any data of a shard is read,
its size must equal the manifest's ``bytes``, its sample count the manifest's block count, and every
needed member's header must give the block's events in C order; any mismatch, a missing member, a
wrong dtype/shape or a short read raises XecError naming the shard file. One reader per process or
DataLoader worker: it holds open file descriptors, so it is made where it is used, not inherited.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xec.errors import XecError

__all__ = ["ShardReader", "MemberEntry"]

# where a member's array data starts in the shard file, its dtype and full shape (events first)
MemberEntry = tuple[int, np.dtype, tuple[int, ...]]


class ShardReader:
    """Random access to event ranges of the blocks of one shard directory (one per worker)."""

    def __init__(self, shard_dir: str | Path, shards: list[dict[str, Any]], members: Sequence[str]):
        self.dir = Path(shard_dir)
        self.shards = shards
        self.members = tuple(members)
        self._fds: dict[int, int] = {}
        self._index: dict[int, list[dict[str, MemberEntry]]] = {}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()

    def _path(self, shard: int) -> Path:
        return self.dir / self.shards[shard]["file"]

    def _load_index(self, shard: int) -> list[dict[str, MemberEntry]]:
        """Locate every needed .npy member of every block from the tar headers (validated)."""
        path = self._path(shard)
        info = self.shards[shard]
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise XecError(f"{path}: cannot read shard ({exc})") from exc
        if size != info["bytes"]:
            raise XecError(f"{path}: corrupt shard: {size} bytes, the manifest says {info['bytes']}")
        units: dict[str, dict[str, int]] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    key, _, ext = m.name.partition(".")
                    units.setdefault(key, {})[ext] = m.offset_data
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise XecError(f"{path}: corrupt shard: not a readable tar file ({exc})") from exc
        if len(units) != len(info["units"]):
            raise XecError(f"{path}: corrupt shard: {len(units)} samples, the manifest says {len(info['units'])}")
        fd = self._fd(shard)
        index = []
        for (key, offsets), n in zip(units.items(), info["units"]):
            entry = {}
            for member in self.members:
                if f"{member}.npy" not in offsets:
                    raise XecError(f"{path}: corrupt shard: sample {key} lacks {member}.npy")
                entry[member] = self._npy_header(path, fd, offsets[f"{member}.npy"], n, key, member)
            index.append(entry)
        return index

    @staticmethod
    def _npy_header(path: Path, fd: int, offset: int, n: int, key: str, member: str) -> MemberEntry:
        f = io.BytesIO(os.pread(fd, 4096, offset))
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except Exception as exc:
            raise XecError(f"{path}: corrupt shard: {key}.{member}.npy is not a .npy array ({exc})") from exc
        if fortran or not shape or shape[0] != n:
            raise XecError(f"{path}: corrupt shard: {key}.{member}.npy has shape {shape}, expected {n} events")
        return offset + f.tell(), dtype, tuple(shape)

    def _fd(self, shard: int) -> int:
        if shard not in self._fds:
            try:
                self._fds[shard] = os.open(self._path(shard), os.O_RDONLY)
            except OSError as exc:
                raise XecError(f"{self._path(shard)}: cannot open shard ({exc})") from exc
        return self._fds[shard]

    def entry(self, shard: int, unit: int, member: str) -> MemberEntry:
        """Where ``member`` of block ``unit`` of shard ``shard`` lies (the shard's index is built on first use)."""
        if shard not in self._index:
            self._index[shard] = self._load_index(shard)
        return self._index[shard][unit][member]

    def read_into(self, out: dict[str, np.ndarray], offset: int, segments: Sequence[tuple[int, int, int, int]]) -> None:
        """Read the events of ``segments`` into ``out[member][offset:...]`` (one pread per range)."""
        for shard, unit, a, b in segments:
            for member in self.members:
                data_offset, dtype, shape = self.entry(shard, unit, member)
                row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                dest = out[member][offset : offset + b - a]
                if dest.dtype != dtype or dest.shape[1:] != shape[1:]:
                    raise XecError(
                        f"{self._path(shard)}: corrupt shard: {member}.npy is {dtype}{shape[1:]}, "
                        f"expected {dest.dtype}{dest.shape[1:]}"
                    )
                got = os.preadv(self._fd(shard), [memoryview(dest).cast("B")], data_offset + a * row)
                if got != dest.nbytes:
                    raise XecError(f"{self._path(shard)}: corrupt shard: truncated {member}.npy")
            offset += b - a
