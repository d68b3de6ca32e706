"""DDP plumbing: torchrun environment, process group (NCCL on GPU, gloo on CPU), reductions."""

from __future__ import annotations

import datetime
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("xec.train")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    launched: bool = False  # started by torchrun (a process group exists even for one rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """DDP on: several ranks, or one rank under torchrun. The one-rank case keeps the whole
        DDP path (process group, NCCL, gradient all-reduce) running on a one-GPU machine, so a
        multi-GPU job is never its first run."""
        return self.world_size > 1 or self.launched


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from xec.errors import XecError

        raise XecError("train.device is 'cuda' but no CUDA device is available")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; start a process group (NCCL on GPU, gloo on
    CPU) when launched by torchrun, also for a single rank, or when world_size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    launched = under_torchrun()
    dev = resolve_device(device, local)
    if (world > 1 or launched) and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    group = f", process group {dist.get_backend()}" if dist.is_initialized() else ""
    log.info("rank %d of %d on %s%s", rank, world, dev, group)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, launched=launched)


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ  # set by torchrun for its workers


def launch_torchrun(nproc: int, module: str, args: list[str]) -> int:
    """Run ``python -m module *args`` as ``nproc`` torchrun workers on this node and wait.

    The worker arguments are handed to torchrun without passing through its command-line
    parser: that parser takes an abbreviation such as ``--log`` for its own ``--log-dir`` /
    ``--logs-specs`` and stops with "ambiguous option", even after the module name."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    targs = get_args_parser().parse_args(["--standalone", "--nproc_per_node", str(int(nproc)), "-m", module])
    targs.training_script_args = list(args)
    log.info("launching %d torchrun workers: python -m %s %s", nproc, module, " ".join(args))
    try:
        run(targs)
    except ChildFailedError as exc:
        from xec.errors import XecError

        raise XecError(f"torchrun worker failed: {exc}") from exc
    return 0


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Sum scalar values across ranks (float64 on the communication device)."""
    if not ctx.enabled or not values:
        return dict(values)
    keys = sorted(values)
    dev = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t.cpu().tolist())}


def any_flag(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not ctx.enabled:
        return bool(flag)
    return all_reduce_sum({"f": 1.0 if flag else 0.0}, ctx)["f"] > 0


def gather_arrays(arrays: dict[str, np.ndarray], ctx: DistContext) -> dict[str, np.ndarray]:
    """Concatenate per-rank arrays (e.g. val predictions) on every rank, rank order."""
    if not ctx.enabled:
        return arrays
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, pickle.dumps(arrays))
    loaded = [pickle.loads(p) for p in parts]
    return {k: np.concatenate([d[k] for d in loaded]) for k in arrays}


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
