"""The training stages by name, and rebuilding a stage's model from its checkpoint.

``STAGES`` is the one name -> stage lookup: the `xec train` subcommands, checkpoint rebuilding
and the ONNX export all go through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from xec.errors import XecError
from xec.train.base import Stage
from xec.train.inpainter import InpainterStage
from xec.train.mae import MAEStage
from xec.train.regressor import RegressorStage

STAGES: dict[str, type[Stage]] = {s.name: s for s in (MAEStage, InpainterStage, RegressorStage)}


def get_stage(name: str) -> type[Stage]:
    if name not in STAGES:
        raise XecError(f"unknown stage {name!r}; choose one of {list(STAGES)}")
    return STAGES[name]


def stage_hparams(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The Trainer hyperparameters of stage ``name`` (``Stage.hparams``)."""
    return get_stage(name).hparams(cfg)


def build_stage_model(spec: Mapping[str, Any]) -> nn.Module:
    """The (untrained) model of a checkpoint-like ``spec`` (keys stage, model, normalization,
    tasks, target_standardization, model_args)."""
    return get_stage(spec["stage"]).build(spec)


def build_model_from_checkpoint(ckpt: Mapping[str, Any], use_ema: bool = True) -> nn.Module:
    """Rebuild the stage's model from a loaded checkpoint (EMA weights by default), in eval mode."""
    model = build_stage_model(ckpt)
    state = ckpt.get("ema_state") if use_ema and ckpt.get("ema_state") else ckpt["model_state"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise XecError(
            f"checkpoint of stage {ckpt['stage']!r} does not match its model: missing "
            f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return model.eval()
