"""Toy stage + in-memory loader for the trainer tests (same batch contract as ShardLoader).

Also a small command line used by the multi-process tests:
    python tests/helpers_train.py --out DIR [--epochs N] [--resume] [--record FILE] [--epoch-sleep S]
(run under torchrun for DDP)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xec.train.base import Stage  # noqa: E402  (after the path set-up: also run as a script)


class ToyLoader:
    """(x, {"y": (B,1)}, {"y": (B,)}) batches of a fixed random linear problem; shards by rank
    (strided after the per-epoch shuffle) so ranks see disjoint events; records event ids."""

    def __init__(self, n=256, dim=8, batch_size=32, seed=0, shuffle=True, rank=0, world_size=1, nan_batches=()):
        w = np.random.default_rng(99).normal(size=(dim, 1)).astype(np.float32)  # same problem for train/val
        g = np.random.default_rng(1234 + seed)
        self.x = g.normal(size=(n, dim)).astype(np.float32)
        self.y = (self.x @ w + 0.1 * g.normal(size=(n, 1))).astype(np.float32)
        self.ids = np.arange(n)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.nan_batches = set(nan_batches)
        self.seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        order = np.arange(len(self.x))
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(order)
        per_rank = len(order) // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def __len__(self) -> int:
        return math.ceil(len(self._order()) / self.batch_size)

    def __iter__(self):
        order = self._order()
        for b, i in enumerate(range(0, len(order), self.batch_size)):
            idx = order[i : i + self.batch_size]
            self.seen.extend(int(v) for v in self.ids[idx])
            x = torch.from_numpy(self.x[idx].copy())
            if b in self.nan_batches:
                x[0, 0] = float("nan")
            yield x, {"y": torch.from_numpy(self.y[idx])}, {"y": torch.ones(len(idx))}


# Every Trainer hyperparameter (xec.train.base.HPARAM_KEYS), at the schema's `train` defaults.
TOY_HP = dict(
    epochs=1,
    lr=1e-3,
    weight_decay=0.05,
    betas=[0.9, 0.999],
    schedule="cosine",
    warmup_epochs=0.5,
    min_lr_ratio=0.01,
    grad_accum=1,
    grad_clip=1.0,
    ema_decay=0.99,
    precision="auto",
    compile=False,
    max_nonfinite_steps=20,
    seed=0,
    find_unused_parameters=False,
    log_every=0,
)


def toy_hp(**overrides) -> dict:
    return {**TOY_HP, **overrides}


class ToyStage(Stage):
    """A linear-regression stage: only the hooks the Trainer needs, on in-memory data."""

    name = "regressor"
    seed_offset = 0

    def __init__(self):  # no config, model meta or init checkpoint: nothing to read
        self.tasks = ("y",)

    def payload(self):
        return {
            "model": {"preset": "toy", "dim": 8},
            "normalization": None,
            "tasks": ["y"],
            "target_standardization": None,
        }

    def training_step(self, model, x, targets, weights, generator):
        noise = torch.randn(x.shape, generator=generator) * 0.01  # exercises the per-epoch generator
        pred = model(x + noise)
        loss = (weights["y"] * (pred - targets["y"]).pow(2).mean(-1)).mean()
        return loss, {"mse": loss.detach()}

    def evaluate(self, model, loader, ctx, generator):
        from xec.train.distributed import all_reduce_sum

        s = {"se": 0.0, "n": 0.0}
        for x, t, _ in loader:
            x = x.detach()
            s["se"] += float((model(x) - t["y"]).pow(2).sum().detach())
            s["n"] += x.shape[0]
        s = all_reduce_sum(s, ctx)
        return {"loss": s["se"] / max(s["n"], 1)}


def toy_model(dim=8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim, 16), nn.LayerNorm(16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 1))


def run(out, epochs=3, resume=False, ctx=None, record=None, epoch_sleep=0.0, hp=None, nan_batches=(), n=256):
    from xec.train.loop import Trainer

    rank, world = (ctx.rank, ctx.world_size) if ctx else (0, 1)
    train = ToyLoader(n=n, rank=rank, world_size=world, nan_batches=nan_batches)
    val = ToyLoader(n=64, seed=1, shuffle=False, rank=rank, world_size=world)
    stage = ToyStage()
    model = toy_model()
    hparams = toy_hp(epochs=epochs, lr=2e-2, warmup_epochs=0.5, ema_decay=0.9, seed=5, **(hp or {}))
    trainer = Trainer(
        stage, model, train, val, hparams, out, config={"toy": {"epochs": epochs}}, ctx=ctx, resume=resume
    )
    if epoch_sleep:
        orig = trainer.train_epoch

        def slow_epoch():
            if trainer.epoch > 0:
                time.sleep(epoch_sleep)
            return orig()

        trainer.train_epoch = slow_epoch
    summary = trainer.fit()
    if record:
        torch.save({"seen": train.seen, "state": trainer.model.state_dict()}, f"{record}.rank{rank}")
    return summary, trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--record")
    ap.add_argument("--epoch-sleep", type=float, default=0.0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from xec.utils import setup_logging

    setup_logging()
    from xec.train.distributed import init_distributed, shutdown

    ctx = init_distributed("cpu")
    summary, _ = run(a.out, a.epochs, a.resume, ctx, a.record, a.epoch_sleep)
    if ctx.is_main:
        print(json.dumps(summary["val"]))
    shutdown(ctx)


if __name__ == "__main__":
    main()
