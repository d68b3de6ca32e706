"""What the three stages share: model-config plumbing, the stage -> model builder used by
``build_model_from_checkpoint``, sensor-level metric accumulators, and the stage hyperparameters
(``train`` defaults overridden by the stage section)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from xec.errors import XecError

# Keys of the `train` section a stage section may override (schema: opt_* definitions).
OVERRIDABLE = ("weight_decay", "betas", "schedule", "warmup_epochs", "min_lr_ratio", "grad_accum", "grad_clip",
               "ema_decay", "max_nonfinite_steps", "precision", "compile", "log_every")
STAGE_SEED_OFFSET = {"mae": 1, "inpainter": 2, "regressor": 3}


def stage_hparams(cfg: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The Trainer hyperparameters of ``stage``: `train` defaults, then the stage's own keys."""
    train = dict(cfg.get("train", {}))
    sec = dict(cfg.get(stage, {}))
    hp = {k: train[k] for k in OVERRIDABLE if k in train}
    hp.update({k: sec[k] for k in OVERRIDABLE if sec.get(k) is not None})
    hp.update(epochs=int(sec["epochs"]), lr=float(sec["lr"]),
              seed=int(cfg.get("seed", 0)) * 10 + STAGE_SEED_OFFSET[stage])
    return hp


def model_meta(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``model`` entry: preset name + the full resolved ModelConfig."""
    from xec.models.presets import model_config

    section = dict(cfg.get("model") or {})
    mc = model_config(section)
    return {"preset": section.get("preset", "tiny"), **mc.to_dict()}


def model_config_of(meta: Mapping[str, Any]):
    from xec.models.presets import model_config_from_dict

    return model_config_from_dict({k: v for k, v in meta.items() if k != "preset"})


def build_stage_model(spec: Mapping[str, Any]) -> nn.Module:
    """Build the (untrained) model of a checkpoint-like ``spec`` (keys stage, model, normalization,
    tasks, target_standardization, model_args)."""
    stage = spec.get("stage")
    if stage == "mae":
        from xec.train.mae import build_mae_model

        return build_mae_model(spec)
    if stage == "inpainter":
        from xec.train.inpainter import build_inpainter_model

        return build_inpainter_model(spec)
    if stage == "regressor":
        from xec.train.regressor import build_regressor_model

        return build_regressor_model(spec)
    raise XecError(f"unknown stage {stage!r} in checkpoint")


def load_encoder_from(ckpt: Mapping[str, Any], model: nn.Module, where: str) -> int:
    """Copy the ``encoder.*`` weights of a checkpoint (its EMA weights when present: those are
    what the stage validated and exports) into ``model.encoder``; returns the tensor count."""
    from xec.models import load_encoder_weights

    state = ckpt.get("ema_state") or ckpt["model_state"]
    load_encoder_weights(model, state, source=where)
    return sum(1 for k in state if k.startswith("encoder."))


def sensor_faces() -> np.ndarray:
    from xec.geometry import get_geometry

    return np.asarray(get_geometry().face, dtype=np.int64)


class SensorErrorSums:
    """Accumulates abs / squared errors of (npho, time) on selected sensors, overall and per face,
    in normalized and physical (photons, ns) units; reduced over ranks with plain sums."""

    def __init__(self, normalizer, face_names: tuple[str, ...]):
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
