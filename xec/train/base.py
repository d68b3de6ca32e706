"""The training-stage interface and the helpers the three stages share.

A stage (``xec.train.mae``, ``xec.train.inpainter``, ``xec.train.regressor``) subclasses
:class:`Stage` and supplies only what differs between stages; the one trainer
(``xec.train.loop.Trainer``) calls every hook declared here and nothing else. The registry of
stages by name is ``xec.train.stages.STAGES``. This module imports no stage (it is the leaf the
stages build on).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from xec.errors import XecError
from xec.geometry import get_geometry
from xec.models.presets import model_config, model_config_from_dict
from xec.models.regressor import load_encoder_weights
from xec.normalization import Normalizer
from xec.train.checkpoint import check_model_compatible, load_checkpoint

# Keys of the `train` section a stage section may override (schema: opt_* definitions).
OVERRIDABLE = (
    "weight_decay",
    "betas",
    "schedule",
    "warmup_epochs",
    "min_lr_ratio",
    "grad_accum",
    "grad_clip",
    "ema_decay",
    "max_nonfinite_steps",
    "precision",
    "compile",
    "log_every",
)
# Every hyperparameter the Trainer reads: OVERRIDABLE plus the stage's own epochs/lr, the seed and
# the stage's DDP setting.
HPARAM_KEYS = (*OVERRIDABLE, "epochs", "lr", "seed", "find_unused_parameters")


class Stage:
    """One training stage. Subclasses set the class attributes and implement ``build``,
    ``training_step`` and ``evaluate``; the other hooks have no-op defaults.

    Trainer contract:
      ``training_step(model, x, targets, weights, generator)`` -> (loss tensor, {name: detached scalar})
      ``evaluate(model, loader, ctx, generator)`` -> {name: float}, reduced over ranks, on the EMA model
      ``payload()`` -> the checkpoint entries of the stage (model, normalization, tasks,
          target_standardization, model_args, init_checkpoint)
      ``train_module(model)`` -> the module whose forward the loss calls (DDP wraps this one)
      ``lr_scales()`` -> [(parameter-name prefix, lr factor)]
      ``separate_clip_prefixes()`` -> parameter-name prefixes whose gradients are norm-clipped
          on their own (modules trained on detached inputs, e.g. the regressor's sigma heads)
      ``finalize(model, val_loader, out_dir, ctx)`` -> extra final metrics (e.g. after writing
          predictions); it may replace modules of the evaluated model (the regressor's head refit)
      ``sync_replaced(raw, evaluated)`` -> copies those modules into the raw (non-EMA) model, so
          that the checkpoint's model_state and ema_state keep the same shapes
    """

    name: ClassVar[str]
    help: ClassVar[str]
    seed_offset: ClassVar[int]  # stage seed = 10 * config seed + seed_offset
    best_metric: ClassVar[str] = "loss"  # val metric (lower is better) that selects checkpoint_best.pt
    headline: ClassVar[tuple[str, ...]] = ()  # val metrics logged after each epoch
    takes_init: ClassVar[bool] = False  # accepts --init: start from an MAE checkpoint's encoder
    takes_weights: ClassVar[bool] = False  # accepts --weights: per-event reweighting weights
    takes_inpainter: ClassVar[bool] = False  # accepts --inpainter: an inpainter checkpoint (attach_inpainter)
    find_unused_parameters: ClassVar[bool] = False  # DDP setting
    # keys of the stage section (dotted) that only ``finalize`` reads: not in the resume
    # fingerprint, so changing one finishes the trained epochs again instead of retraining them
    finish_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Mapping[str, Any], normalizer: Normalizer, init_checkpoint: str | None = None):
        self.cfg = cfg
        self.sec = cfg[self.name]
        self.normalizer = normalizer
        self.meta = model_meta(cfg)
        self.tasks: tuple[str, ...] = ()  # regression targets the loaders must provide
        if init_checkpoint is not None and not self.takes_init:
            raise XecError(f"stage {self.name} does not start from another checkpoint (--init)")
        self.init_checkpoint = init_checkpoint
        self.init_ckpt = None
        if init_checkpoint is not None:
            self.init_ckpt = load_checkpoint(init_checkpoint, expected_stage="mae", expected_normalizer=normalizer)
            check_model_compatible(self.init_ckpt, self.meta, where=f"{init_checkpoint} (--init)", encoder_only=True)

    # ------------------------------------------------------------------ model
    @classmethod
    def build(cls, spec: Mapping[str, Any]) -> nn.Module:
        """The untrained model of a checkpoint-like ``spec`` (the keys of ``payload()``)."""
        raise NotImplementedError

    def model_args(self) -> dict[str, Any]:
        """Constructor options beyond the model config that ``build`` needs (saved in checkpoints)."""
        return {}

    def payload(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "model": self.meta,
            "normalization": self.normalizer.to_dict(),
            "tasks": [],
            "target_standardization": None,
            "model_args": self.model_args(),
            "init_checkpoint": self.init_checkpoint,
        }

    def build_model(self) -> nn.Module:
        return self.build(self.payload())

    def prepare_model(self, model: nn.Module) -> int:
        """Copy the init checkpoint's encoder into ``model``; returns the number of tensors copied."""
        if self.init_ckpt is None:
            return 0
        return load_encoder_from(self.init_ckpt, model, self.init_checkpoint)

    # ------------------------------------------------------------------ trainer hooks
    @classmethod
    def hparams(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The Trainer hyperparameters: `train` defaults, then the stage section's own keys."""
        # a stage may take its hyperparameters from another section than its name (the
        # real-data fine-tuning of the inpainter: `finetune`)
        train, sec = cfg["train"], cfg[getattr(cls, "hparams_section", None) or cls.name]
        hp = {k: train[k] for k in OVERRIDABLE}
        hp.update({k: sec[k] for k in OVERRIDABLE if k in sec and sec[k] is not None})
        hp.update(
            epochs=int(sec["epochs"]),
            lr=float(sec["lr"]),
            seed=int(cfg["seed"]) * 10 + cls.seed_offset,
            find_unused_parameters=cls.find_unused_parameters,
        )
        return hp

    def attach_data(self, train_loader: Any, val_loader: Any) -> None:
        """Called once the loaders exist, before ``build_model`` (e.g. target standardization)."""

    def train_module(self, model: nn.Module) -> nn.Module:
        return model

    def lr_scales(self) -> list[tuple[str, float]]:
        return []

    def separate_clip_prefixes(self) -> tuple[str, ...]:
        return ()

    def training_step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        weights: Mapping[str, torch.Tensor],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: Any, ctx: Any, generator: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    def finalize(self, model: nn.Module, val_loader: Any, out_dir: Path, ctx: Any) -> dict[str, float]:
        return {}

    def sync_replaced(self, raw: nn.Module, evaluated: nn.Module) -> None:
        """Copy the modules ``finalize`` replaced in ``evaluated`` into ``raw`` (none here)."""


def model_meta(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``model`` entry: preset name + the full resolved ModelConfig."""
    section = dict(cfg["model"])
    return {"preset": section["preset"], **model_config(section).to_dict()}


def model_config_of(meta: Mapping[str, Any]):
    return model_config_from_dict({k: v for k, v in meta.items() if k != "preset"})


def load_encoder_from(ckpt: Mapping[str, Any], model: nn.Module, where: str) -> int:
    """Copy the ``encoder.*`` weights of a checkpoint (its EMA weights when present: those are
    what the stage validated and exports) into ``model.encoder``; returns the tensor count."""
    state = ckpt.get("ema_state") or ckpt["model_state"]
    load_encoder_weights(model, state, source=where)
    return sum(1 for k in state if k.startswith("encoder."))


def sensor_faces() -> np.ndarray:
    return np.asarray(get_geometry().face, dtype=np.int64)


class SensorErrorSums:
    """Accumulates abs / squared errors of (npho, time) on selected sensors, overall and per face,
    in normalized and physical (photons, ns) units; reduced over ranks with plain sums."""

    def __init__(self, normalizer: Normalizer, face_names: tuple[str, ...]):
        self.norm = normalizer
        self.faces = torch.as_tensor(sensor_faces())
        self.face_names = face_names
        self.s: dict[str, float] = {}

    def _add(self, key: str, value: float) -> None:
        self.s[key] = self.s.get(key, 0.0) + float(value)

    @torch.no_grad()
    def add(self, pred: torch.Tensor, target: torch.Tensor, sel_npho: torch.Tensor, sel_time: torch.Tensor) -> None:
        """pred/target (B, N, 2) normalized; sel_* (B, N) bool: sensors scored per channel."""
        pred = pred.float().cpu()
        target = target.float().cpu()
        for ch, name, sel in ((0, "npho", sel_npho.cpu()), (1, "time", sel_time.cpu())):
            p, t = pred[..., ch][sel], target[..., ch][sel]
            err = (p - t).double()
            if ch == 0:
                phys = self.norm.denormalize_npho(p.numpy()) - self.norm.denormalize_npho(t.numpy())
            else:
                phys = (self.norm.denormalize_time(p.numpy()) - self.norm.denormalize_time(t.numpy())) * 1e9
            phys = np.nan_to_num(phys, nan=0.0, posinf=0.0, neginf=0.0)
            face = self.faces.expand_as(sel)[sel]
            self._add(f"n_{name}", err.numel())
            self._add(f"abs_{name}", err.abs().sum())
            self._add(f"sq_{name}", (err**2).sum())
            self._add(f"absphys_{name}", np.abs(phys).sum())
            self._add(f"sqphys_{name}", (phys**2).sum())
            cnt = torch.bincount(face, minlength=len(self.face_names)).double()
            a = torch.bincount(face, weights=err.abs(), minlength=len(self.face_names))
            q = torch.bincount(face, weights=err**2, minlength=len(self.face_names))
            for i, fname in enumerate(self.face_names):
                self._add(f"n_{name}_{fname}", cnt[i])
                self._add(f"abs_{name}_{fname}", a[i])
                self._add(f"sq_{name}_{fname}", q[i])

    def metrics(self, sums: Mapping[str, float], per_face: bool = True) -> dict[str, float]:
        out: dict[str, float] = {}
        unit = {"npho": "phot", "time": "ns"}
        for name in ("npho", "time"):
            n = max(sums.get(f"n_{name}", 0.0), 1.0)
            out[f"mae_{name}"] = sums.get(f"abs_{name}", 0.0) / n
            out[f"rmse_{name}"] = (sums.get(f"sq_{name}", 0.0) / n) ** 0.5
            out[f"mae_{name}_{unit[name]}"] = sums.get(f"absphys_{name}", 0.0) / n
            out[f"rmse_{name}_{unit[name]}"] = (sums.get(f"sqphys_{name}", 0.0) / n) ** 0.5
            if per_face:
                for fname in self.face_names:
                    nf = sums.get(f"n_{name}_{fname}", 0.0)
                    if nf > 0:
                        out[f"mae_{name}_{fname}"] = sums[f"abs_{name}_{fname}"] / nf
                        out[f"rmse_{name}_{fname}"] = (sums[f"sq_{name}_{fname}"] / nf) ** 0.5
        return out
