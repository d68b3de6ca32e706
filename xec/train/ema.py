"""Exponential moving average of model weights; validation and export use the EMA copy."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """Keeps ``module`` = a frozen copy of the model whose floating-point parameters and buffers
    follow shadow = d * shadow + (1 - d) * live after each optimizer step.

    The effective decay warms up as min(decay, (1 + n) / (10 + n)) so that short runs (a few
    hundred steps on a CPU) are not dominated by the random initialization."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        self._key: tuple | None = None  # _pairs' cache key
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.num_updates += 1
        shadows, live, others = self._pairs(model)
        if shadows:
            # one multi-tensor lerp: the per-tensor loop over two state dicts took 2.4 ms per
            # step for the tiny regressor, 0.77 ms this way (the same numbers)
            torch._foreach_lerp_(shadows, live, 1.0 - d)
        for shadow, src in others:
            shadow.copy_(src)

    def _pairs(self, model: nn.Module) -> tuple[list, list, list]:
        """The floating-point shadow and live tensors (two matched lists) and the other (shadow,
        live) pairs, by state-dict name; rebuilt when a live tensor was replaced (e.g. a buffer
        re-assigned after a resume)."""
        live = model.state_dict()
        key = tuple((name, t.data_ptr()) for name, t in live.items())
        if self._key != key:
            shadows, srcs, others = [], [], []
            for name, shadow in self.module.state_dict().items():
                src = live[name].detach()
                if shadow.dtype.is_floating_point:
                    if src.dtype != shadow.dtype or src.device != shadow.device:
                        raise ValueError(f"EMA: {name} is {src.dtype} on {src.device}, its copy {shadow.dtype}")
                    shadows.append(shadow)
                    srcs.append(src)
                else:
                    others.append((shadow, src))
            self._key, self._cache = key, (shadows, srcs, others)
        return self._cache

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any], num_updates: int) -> None:
        self.module.load_state_dict(state)
        self.num_updates = int(num_updates)
