"""ShardLoader: normalized tar shards -> torch batches (x, targets, weights).

Contract (docs/architecture.md):
    loader = ShardLoader(manifest, batch_size, tasks=DEFAULT_TASKS, shuffle=True, seed=0,
                         num_workers=0, rank=0, world_size=1, weights=None,
                         expected_normalizer=None, drop_last=False, max_events=None)
    loader.set_epoch(epoch); len(loader)
    for x, targets, weights in loader: ...   # x (B, 4760, 2) float32; {task: (B, dim)}; {task: (B,)}

How an epoch is planned (identically in every rank and worker, from (seed, epoch) alone):
1. The blocks (tar samples of up to block_size events) of all shards are put in one order: a
   random permutation seeded by (seed, epoch) when shuffling (this shuffles the shards and the
   blocks within them), the manifest order otherwise.
2. This event sequence is cut into world_size contiguous ranges whose sizes differ by at most
   one: ranks are disjoint and together hold every event exactly once.
3. Every rank makes the SAME number of batches, ceil(ceil(N / world_size) / batch_size): batch
   sizes are batch_size except at the tail, where a rank with one event fewer gets a smaller last
   batch, so DDP never hangs on uneven shards (drop_last: floor(min events / batch_size) full batches).
4. DataLoader worker w makes the rank's batches w, w+K, w+2K, ... from the event ranges of exactly
   those batches; torch hands them out round-robin, so the batch order is deterministic (and,
   without shuffling, the manifest order for any number of workers).
5. Within a worker, events are read a window (``shuffle_buffer`` events) at a time, with one pread
   per block range straight into the window array, and permuted inside it (the sample shuffle
   buffer).

Shards are read with plain file I/O by xec.data.reader.ShardReader (tar members are uncompressed
.npy, located once per worker from the tar headers); the shards remain ordinary WebDataset tars.
``weights`` is a weights.npz of `xec reweight`, loaded as xec.data.weights.HistogramWeights;
without it every event has weight 1.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from xec.data.manifest import manifest_normalizer, manifest_standardizer, read_manifest
from xec.data.reader import ShardReader
from xec.data.weights import HistogramWeights
from xec.errors import XecError
from xec.normalization import Normalizer
from xec.targets import DEFAULT_TASKS, get_task

__all__ = ["ShardLoader", "read_manifest", "epoch_plan", "batch_sizes"]

ID_MEMBERS = ("run", "event")


# ---------------------------------------------------------------------------- epoch plan
def batch_sizes(n_events: int, n_batches: int, batch_size: int) -> list[int]:
    """Split ``n_events`` into exactly ``n_batches`` non-empty batches of at most batch_size."""
    sizes, left = [], n_events
    for i in range(n_batches):
        size = min(batch_size, left - (n_batches - i - 1))
        sizes.append(size)
        left -= size
    return sizes


def epoch_plan(
    units: Sequence[tuple[int, int, int]],
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    drop_last: bool,
) -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """This rank's event segments [(shard, unit, start, stop)] in order, and its batch sizes.

    ``units`` are (shard, unit, n_events) in manifest order."""
    order = np.random.default_rng([seed, epoch]).permutation(len(units)) if shuffle else np.arange(len(units))
    total = sum(u[2] for u in units)
    counts = [(r + 1) * total // world_size - r * total // world_size for r in range(world_size)]
    if drop_last:
        n_batches = min(counts) // batch_size
        n_use = n_batches * batch_size
        sizes = [batch_size] * n_batches
    else:
        n_batches = math.ceil(max(counts) / batch_size)
        if min(counts) < n_batches:
            raise XecError(
                f"{total} events cannot give each of {world_size} ranks the same number of "
                f"non-empty batches of batch_size {batch_size}; use drop_last or fewer ranks"
            )
        n_use = counts[rank]
        sizes = batch_sizes(n_use, n_batches, batch_size)
    start = rank * total // world_size
    stop = start + n_use
    segments, pos = [], 0
    for i in order:
        shard, unit, n = units[i]
        a, b = max(start, pos), min(stop, pos + n)
        if a < b:
            segments.append((shard, unit, a - pos, b - pos))
        pos += n
        if pos >= stop:
            break
    return segments, sizes


def _slice_segments(
    segments: Sequence[tuple[int, int, int, int]], first: int, count: int, starts: Sequence[int] | None = None
) -> list[tuple[int, int, int, int]]:
    """Events [first, first + count) of a segment list, as segments (``starts``: the cumulative
    event position of each segment, to find the first one by bisection)."""
    if starts is None:
        starts = np.cumsum([0] + [b - a for _, _, a, b in segments[:-1]]).tolist()
    out = []
    i = max(0, bisect.bisect_right(starts, first) - 1)
    while i < len(segments) and starts[i] < first + count:
        shard, unit, a, b = segments[i]
        pos = starts[i]
        lo, hi = max(first, pos), min(first + count, pos + b - a)
        if lo < hi:
            out.append((shard, unit, a + lo - pos, a + hi - pos))
        i += 1
    return out


# ---------------------------------------------------------------------------- batches
class _RingBatch:
    """A batch left by worker ``worker`` in its shared-memory ring slot ``slot`` (``size`` events)."""

    def __init__(self, worker: int, slot: int, size: int):
        self.worker, self.slot, self.size = worker, slot, size


class _WorkerError:
    """An XecError raised in a worker, carried to the main process as a value so that the user
    sees the one-line message (naming the shard) instead of a wrapped worker traceback."""

    def __init__(self, message: str):
        self.message = message


class ShardDataset(IterableDataset):
    """Yields ready batches (batch_size=None in the DataLoader): see the module docstring."""

    def __init__(
        self,
        manifest: dict[str, Any],
        batch_size: int,
        tasks: Sequence[str],
        shuffle: bool,
        seed: int,
        rank: int,
        world_size: int,
        drop_last: bool,
        max_events: int | None,
        shuffle_buffer: int,
        weights: HistogramWeights | None,
        with_ids: bool,
    ):
        self.manifest = manifest
        self.batch_size = batch_size
        self.tasks = tuple(tasks)
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.window = max(shuffle_buffer, batch_size)
        self.weights = weights
        self.with_ids = with_ids
        self.epoch = 0
        self.ring: list[list[dict[str, torch.Tensor]]] | None = None  # per worker, per slot
        self.ring_free: list[Any] | None = None  # per worker: semaphore counting free slots
        units, left = [], max_events if max_events is not None else manifest["events"]
        for s, shard in enumerate(manifest["shards"]):
            for u, n in enumerate(shard["units"]):
                if left <= 0:
                    break
                units.append((s, u, min(n, left)))
                left -= min(n, left)
        self.units = units
        self.events = sum(u[2] for u in units)
        self.members = ("x", *self.tasks, *(ID_MEMBERS if with_ids else ()))
        layout = manifest["layout"]
        self.shapes = {"x": (tuple(layout["x"]["shape"]), np.float32)}
        for t in self.tasks:
            self.shapes[t] = ((get_task(t).dim,), np.float32)
        for b in ID_MEMBERS:
            self.shapes[b] = ((), np.int64)

    def plan(self, epoch: int | None = None):
        return epoch_plan(
            self.units,
            self.shuffle,
            self.seed,
            self.epoch if epoch is None else epoch,
            self.rank,
            self.world_size,
            self.batch_size,
            self.drop_last,
        )

    def __len__(self) -> int:
        return len(self.plan()[1])

    def _alloc(self, n: int) -> dict[str, np.ndarray]:
        return {m: np.empty((n, *self.shapes[m][0]), dtype=self.shapes[m][1]) for m in self.members}

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        try:
            yield from self._iterate(n_workers, worker)
        except XecError as exc:
            if info is None:
                raise
            yield _WorkerError(str(exc))

    def _iterate(self, n_workers: int, worker: int) -> Iterator[Any]:
        segments, sizes = self.plan()
        mine = sizes[worker::n_workers]
        if not mine:
            return
        # this worker makes batches worker, worker + K, ...: it reads exactly their event ranges,
        # so without shuffling the round-robin output is the manifest order for any K
        offsets = np.cumsum([0] + sizes).tolist()
        starts = np.cumsum([0] + [b - a for _, _, a, b in segments[:-1]]).tolist()
        my_segments = [
            seg
            for i in range(worker, len(sizes), n_workers)
            for seg in _slice_segments(segments, offsets[i], sizes[i], starts)
        ]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 7])
        reader = ShardReader(self.manifest["_dir"], self.manifest["shards"], self.members)
        try:
            window_iter = self._windows(reader, my_segments, rng)
            buf, perm, pos = None, np.zeros(0, np.int64), 0
            ring = self.ring[worker] if (self.ring is not None and get_worker_info() is not None) else None
            for i, size in enumerate(mine):
                if ring is not None:  # fill a recycled shared-memory slot (see ShardLoader.__iter__)
                    self.ring_free[worker].acquire()
                    slot = i % len(ring)
                    batch = {m: ring[slot][m].numpy()[:size] for m in self.members}
                else:
                    batch = self._alloc(size)
                filled = 0
                while filled < size:
                    if pos == len(perm):
                        buf, perm = next(window_iter)
                        pos = 0
                    take = min(size - filled, len(perm) - pos)
                    idx = perm[pos : pos + take]
                    for m in self.members:  # gather straight into the (shared-memory) batch tensors
                        np.take(buf[m], idx, axis=0, out=batch[m][filled : filled + take])
                    pos += take
                    filled += take
                yield _RingBatch(worker, slot, size) if ring is not None else self._to_torch(batch)
        finally:
            reader.close()

    def _windows(self, reader: ShardReader, segments, rng) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        total = sum(b - a for _, _, a, b in segments)
        starts = np.cumsum([0] + [b - a for _, _, a, b in segments[:-1]]).tolist()
        window = self._alloc(min(self.window, total))  # reused: no page faults after the first window
        for first in range(0, total, self.window):
            n = min(self.window, total - first)
            buf = {m: v[:n] for m, v in window.items()}
            reader.read_into(buf, 0, _slice_segments(segments, first, n, starts))
            yield buf, (rng.permutation(n) if self.shuffle else np.arange(n))

    def alloc_shared(self, n: int) -> dict[str, torch.Tensor]:
        out = {}
        for m in self.members:
            shape, dtype = self.shapes[m]
            out[m] = torch.from_numpy(np.empty((n, *shape), dtype=dtype)).share_memory_()
        return out

    def _to_torch(self, batch: dict[str, np.ndarray]):
        x = torch.from_numpy(batch["x"])
        targets = {t: torch.from_numpy(batch[t]) for t in self.tasks}
        n = len(batch["x"])
        if self.weights is None:
            weights = {t: torch.ones(n, dtype=torch.float32) for t in self.tasks}
        else:
            weights = {t: torch.from_numpy(self.weights.event_weights(t, batch[t])) for t in self.tasks}
        if self.with_ids:
            return x, targets, weights, {b: torch.from_numpy(batch[b]) for b in ID_MEMBERS}
        return x, targets, weights


class ShardLoader:
    """See the module docstring; iterating yields (x, targets, weights) torch tensors
    (plus an ids dict {"run", "event"} with ``with_ids=True``)."""

    def __init__(
        self,
        manifest: str | Path,
        batch_size: int,
        tasks: Sequence[str] = DEFAULT_TASKS,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        weights: str | Path | None = None,
        expected_normalizer: Normalizer | None = None,
        drop_last: bool = False,
        max_events: int | None = None,
        shuffle_buffer: int = 1024,
        pin_memory: bool | None = None,
        with_ids: bool = False,
        prefetch_factor: int = 2,
    ):
        # the arguments but the sharding, for whole_split (first line: locals() holds them only)
        self._init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "rank", "world_size")}
        self.world_size = world_size
        self.manifest = read_manifest(manifest)
        path = self.manifest["_path"]
        if batch_size < 1:
            raise XecError(f"batch_size must be >= 1, got {batch_size}")
        if not (0 <= rank < world_size):
            raise XecError(f"rank {rank} is not in [0, world_size={world_size})")
        if max_events is not None and max_events < 1:
            raise XecError(f"max_events must be >= 1, got {max_events}")
        self.tasks = tuple(tasks)
        missing = [t for t in self.tasks if t not in self.manifest["tasks"]]
        if missing:
            raise XecError(f"{path}: shards have no targets for task(s) {missing} (they hold {self.manifest['tasks']})")
        self.normalizer = manifest_normalizer(self.manifest)
        if expected_normalizer is not None:
            expected_normalizer.check_compatible(self.normalizer, where=f"shard manifest {path}")
        self.standardizer = manifest_standardizer(self.manifest)
        for shard in self.manifest["shards"]:  # cheap early check: missing or truncated shard files
            p = Path(self.manifest["_dir"]) / shard["file"]
            if not p.exists():
                raise XecError(f"{p}: shard listed in {path} is missing")
            if p.stat().st_size != shard["bytes"]:
                raise XecError(f"{p}: corrupt shard: {p.stat().st_size} bytes, the manifest says {shard['bytes']}")
        self.weights = None
        if weights is not None:
            self.weights = HistogramWeights.load(weights)
        self.dataset = ShardDataset(
            self.manifest,
            batch_size,
            self.tasks,
            shuffle,
            seed,
            rank,
            world_size,
            drop_last,
            max_events,
            shuffle_buffer,
            self.weights,
            with_ids,
        )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        # Worker batches travel through a ring of shared-memory slots allocated once and reused
        # (allocating fresh shared memory for each 10 MB batch measured ~20 ms, the refill ~2 ms);
        # the main process copies each batch out (into pinned memory on CUDA machines) and frees
        # the slot, so workers never overwrite a batch the caller still holds.
        self._loader_kwargs: dict[str, Any] = dict(
            batch_size=None, num_workers=num_workers, pin_memory=self.pin_memory and num_workers == 0
        )
        if num_workers > 0:
            self._loader_kwargs["prefetch_factor"] = prefetch_factor
        self._ring_slots = prefetch_factor + 2
        self.events = self.dataset.events

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = int(epoch)

    def whole_split(self) -> ShardLoader:
        """This loader over the events of every rank, in the order a one-process run reads them
        (itself when it is not sharded): for what rank 0 does alone after a DDP training, such as
        the regressor's head refit, which would otherwise see 1 / world_size of its events and
        depend on the number of GPUs."""
        if self.world_size == 1:
            return self
        return ShardLoader(**self._init_kwargs)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Any]:
        ds = self.dataset
        if self.num_workers > 0:
            if ds.ring is None:
                ds.ring = [
                    [ds.alloc_shared(self.batch_size) for _ in range(self._ring_slots)] for _ in range(self.num_workers)
                ]
            ctx = torch.multiprocessing.get_context(self._loader_kwargs.get("multiprocessing_context") or None)
            ds.ring_free = [ctx.Semaphore(self._ring_slots) for _ in range(self.num_workers)]
        for item in DataLoader(ds, **self._loader_kwargs):
            if isinstance(item, _WorkerError):
                raise XecError(item.message)
            if isinstance(item, _RingBatch):
                slot = ds.ring[item.worker][item.slot]
                batch = {}
                for m in ds.members:
                    src = slot[m][: item.size]
                    dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=self.pin_memory)
                    dst.copy_(src)
                    batch[m] = dst.numpy()
                ds.ring_free[item.worker].release()
                item = ds._to_torch(batch)
            yield item
