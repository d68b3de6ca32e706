"""MAE pretraining stage: model, loss (from XECMAE) and validation metrics.

Validation metrics (on the EMA model, fixed masks from a fixed generator so epochs compare):
loss, loss_npho, loss_time, loss_<face>, MAE/RMSE on the hidden sensors in normalized units
(mae_npho, rmse_time, ...) and physical units (mae_npho_phot, rmse_time_ns, via the
normalizer's denormalize_*), per face, and actual_mask_ratio.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xec.models.mae import XECMAE, npho_threshold_normalized
from xec.normalization import Normalizer
from xec.train.base import SensorErrorSums, Stage, model_config_of
from xec.train.distributed import DistContext, all_reduce_sum


class MAEStage(Stage):
    name = "mae"
    help = "masked-autoencoder pretraining of the encoder"
    seed_offset = 1
    headline = ("val_loss_npho", "val_loss_time", "val_mae_npho_phot", "val_mae_time_ns", "val_actual_mask_ratio")

    @classmethod
    def build(cls, spec: Mapping[str, Any]) -> nn.Module:
        norm = Normalizer.from_dict(dict(spec["normalization"]))
        return XECMAE(
            model_config_of(spec["model"]),
            sentinel=norm.sentinel,
            time_npho_threshold=npho_threshold_normalized(norm),
            **spec["model_args"],
        )

    def model_args(self) -> dict[str, Any]:
        return {
            "mask_ratio": float(self.sec["mask_ratio"]),
            "loss": self.sec["loss"],
            "npho_loss_weight": float(self.sec["npho_loss_weight"]),
            "time_loss_weight": float(self.sec["time_loss_weight"]),
        }

    def training_step(self, model, x, targets, weights, generator):
        out = model(x, generator=generator)
        return out["loss"], {
            "loss_npho": out["loss_npho"],
            "loss_time": out["loss_time"],
            "actual_mask_ratio": out["actual_mask_ratio"].detach(),
        }

    @torch.no_grad()
    def evaluate(self, model, loader, ctx: DistContext, generator) -> dict[str, float]:
        faces = tuple(model.encoder.face_names)
        acc = SensorErrorSums(self.normalizer, faces)
        s: dict[str, float] = {}
        for x, _, _ in loader:
            x = x.to(ctx.device)
            out = model(x, generator=generator)
            b = float(x.shape[0])
            for k in ("loss", "loss_npho", "loss_time", "actual_mask_ratio"):
                s[k] = s.get(k, 0.0) + float(out[k]) * b
            for i, f in enumerate(faces):
                s[f"loss_{f}"] = s.get(f"loss_{f}", 0.0) + float(out["loss_face"][i]) * b
            s["_n"] = s.get("_n", 0.0) + b
            mask = out["mask"]
            sentinel = self.normalizer.sentinel
            thr = model.time_npho_threshold
            time_ok = mask & ((x[..., 1] - sentinel).abs() > 1e-4) & (x[..., 0] > thr)
            acc.add(out["pred"], x, mask, time_ok)
        tot = all_reduce_sum({**s, **{f"_acc_{k}": v for k, v in acc.s.items()}}, ctx)
        n = max(tot.pop("_n", 0.0), 1.0)
        sums = {k[5:]: v for k, v in tot.items() if k.startswith("_acc_")}
        out = {k: v / n for k, v in tot.items() if not k.startswith("_acc_")}
        out.update(acc.metrics(sums))
        return out
