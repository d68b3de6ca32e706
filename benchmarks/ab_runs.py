"""Alternating A/B runs for the benchmarks: each (repeat, variant) in a fresh spawned process, the
variants taking turns, so that a drift of a shared machine's speed hits them alike."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import Any


def alternate(target: Callable[..., None], variants: Sequence[Any], repeats: int, *args: Any) -> list[dict]:
    """Run ``target(variant, *args, queue)`` in a new process for every repeat and variant; the
    dict it puts on the queue comes back with ``variant``, ``repeat`` and the load average before
    the run, printed as one JSON line each."""
    ctx = mp.get_context("spawn")
    rows = []
    for r in range(repeats):
        for variant in variants:
            q = ctx.Queue()
            p = ctx.Process(target=_as_xec_command, args=(target, variant, *args, q))
            load = os.getloadavg()[0]
            p.start()
            res = q.get()
            p.join()
            res.update(variant=variant, repeat=r, load=load)
            rows.append(res)
            print(json.dumps(res))
    return rows


def _as_xec_command(target: Callable[..., None], *args: Any) -> None:
    """The child process: its memory handled as every `xec` command handles it."""
    from xec.cli import retain_freed_memory

    retain_freed_memory()
    target(*args)
