"""Inpainter stage: predicts hidden (dead) sensors from the rest, encoder from the MAE.

Training masks a realistic dead-channel density (``inpainter.mask_ratio``, default 5 %) of the
sensors that have a reading (xec.models.mae.random_mask, maskable="npho_valid": low-light
sensors can die too; their time is not scored). Loss on the hidden sensors only: npho always,
time where the true time is valid and the true npho is above the normalizer's threshold.
Encoder frozen by default (``freeze_encoder``), initialized from ``--mae`` (or random with
``--mae none``).

Metrics: loss, and MAE/RMSE of npho and time on the hidden sensors, overall and per face, in
normalized and physical units (photons, ns). With ``predictions_root`` the val predictions of
every hidden sensor are streamed batch by batch to OUT/predictions.root (tree ``inpaint``:
run, event, sensor, face, truth/prediction/error of npho (photons) and time (ns)) — never
accumulated in memory.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from xec.normalization import Normalizer
from xec.train.distributed import DistContext, all_reduce_sum
from xec.train.stages import SensorErrorSums, load_encoder_from, model_config_of, model_meta, sensor_faces

log = logging.getLogger("xec.train")


def build_inpainter_model(spec: Mapping[str, Any]) -> nn.Module:
    from xec.models import XECInpainter

    norm = Normalizer.from_dict(dict(spec["normalization"]))
    freeze = bool((spec.get("model_args") or {}).get("freeze_encoder", False))
    return XECInpainter(model_config_of(spec["model"]), normalizer=norm, freeze_encoder=freeze)


class _Predict(nn.Module):
    """Training view of the inpainter: forward = raw per-sensor predictions (``predict``), not the
    filled input (whose clamping / time-threshold replacement would cut the gradients)."""

    def __init__(self, inpainter: nn.Module):
        super().__init__()
        self.inpainter = inpainter

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.inpainter.predict(x, mask)


class InpainterStage:
    name = "inpainter"
    best_metric = "loss"
    headline = ("val_mae_npho", "val_mae_npho_phot", "val_rmse_npho_phot", "val_mae_time_ns", "val_rmse_time_ns")

    def __init__(self, cfg: Mapping[str, Any], normalizer: Normalizer, mae_checkpoint: str | None):
        from xec.models.mae import npho_threshold_normalized

        self.cfg = cfg
        self.sec = cfg.get("inpainter", {})
        self.normalizer = normalizer
        self.meta = model_meta(cfg)
        self.mask_ratio = float(self.sec.get("mask_ratio", 0.05))
        self.loss_kind = self.sec.get("loss", "smooth_l1")
        self.freeze = bool(self.sec.get("freeze_encoder", True))
        self.time_thr = npho_threshold_normalized(normalizer)
        self.mae_checkpoint = mae_checkpoint
        self.mae_ckpt = None
        if mae_checkpoint is not None:
            from xec.train.checkpoint import check_model_compatible, load_checkpoint

            self.mae_ckpt = load_checkpoint(mae_checkpoint, expected_stage="mae", expected_normalizer=normalizer)
            check_model_compatible(self.mae_ckpt, self.meta, where=f"{mae_checkpoint} (--mae)", encoder_only=True)
        elif self.freeze:
            log.warning("inpainter: --mae none with freeze_encoder: the encoder stays at its random initialization")
        self.val_manifest: str | None = None

    def attach_data(self, train_loader, val_loader) -> None:
        self.val_manifest = val_loader.manifest["_path"]
        self.val_batch = val_loader.batch_size

    def payload(self) -> dict[str, Any]:
        return {"stage": self.name, "model": self.meta, "normalization": self.normalizer.to_dict(), "tasks": [],
                "target_standardization": None,
                "model_args": {"mask_ratio": self.mask_ratio, "freeze_encoder": self.freeze},
                "init_checkpoint": self.mae_checkpoint}

    def build_model(self) -> nn.Module:
        return build_inpainter_model(self.payload())

    def prepare_model(self, model: nn.Module) -> None:
        if self.mae_ckpt is not None:
            n = load_encoder_from(self.mae_ckpt, model, self.mae_checkpoint)
            log.info("inpainter: encoder initialized from %s (%d tensors)", self.mae_checkpoint, n)

    def train_module(self, model: nn.Module) -> nn.Module:
        return _Predict(model)

    # ------------------------------------------------------------------ masks and loss
    def make_mask(self, x: torch.Tensor, generator) -> torch.Tensor:
        from xec.models.mae import random_mask

        mask, _ = random_mask(x, self.mask_ratio, self.normalizer.sentinel, "npho_valid", 0.0, generator)
        return mask

    def _scored(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.normalizer.sentinel
        time_ok = mask & ((x[..., 1] - s).abs() > 1e-4) & (x[..., 0] > self.time_thr)
        return mask, time_ok

    def _loss(self, pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        from xec.models.mae import elementwise_loss

        sel_n, sel_t = self._scored(x, mask)
        mn, mt = sel_n.to(pred.dtype), sel_t.to(pred.dtype)
        tgt = torch.where(torch.stack([mn, mt], -1) > 0, x, pred.detach())  # sentinel targets never enter
        el = elementwise_loss(pred.float(), tgt.float(), self.loss_kind)
        l_n = (el[..., 0] * mn).sum() / mn.sum().clamp_min(1.0)
        l_t = (el[..., 1] * mt).sum() / mt.sum().clamp_min(1.0)
        return l_n + l_t, {"loss_npho": l_n.detach(), "loss_time": l_t.detach()}

    def training_step(self, model, x, targets, weights, generator):
        mask = self.make_mask(x, generator)
        pred = model(x, mask)  # the _Predict view (possibly DDP-wrapped)
        return self._loss(pred, x, mask)

    @torch.no_grad()
    def evaluate(self, model, loader, ctx: DistContext, generator) -> dict[str, float]:
        acc = SensorErrorSums(self.normalizer, tuple(model.encoder.face_names))
        s: dict[str, float] = {}
        for x, _, _ in loader:
            x = x.to(ctx.device)
            mask = self.make_mask(x, generator)
            pred = model.predict(x, mask)
            loss, logs = self._loss(pred, x, mask)
            b = float(x.shape[0])
            s["loss"] = s.get("loss", 0.0) + float(loss) * b
            for k, v in logs.items():
                s[k] = s.get(k, 0.0) + float(v) * b
            s["_n"] = s.get("_n", 0.0) + b
            s["mask_frac"] = s.get("mask_frac", 0.0) + float(mask.float().mean()) * b
            acc.add(pred, x, *self._scored(x, mask))
        tot = all_reduce_sum({**s, **{f"_acc_{k}": v for k, v in acc.s.items()}}, ctx)
        n = max(tot.pop("_n", 0.0), 1.0)
        out = {k: v / n for k, v in tot.items() if not k.startswith("_acc_")}
        out.update(acc.metrics({k[5:]: v for k, v in tot.items() if k.startswith("_acc_")}))
        return out

    def finalize(self, model, val_loader, out_dir: Path, ctx: DistContext) -> dict[str, float]:
        if not (ctx.is_main and self.sec.get("predictions_root", False)):
            return {}
        n = write_root_predictions(model, self, Path(out_dir) / "predictions.root", ctx.device)
        return {"predictions_root_rows": float(n)}


def write_root_predictions(model, stage: InpainterStage, path: Path, device, seed: int = 12345) -> int:
    """Stream per-sensor predictions of the hidden val sensors to ROOT, one batch at a time."""
    from xec.data.loader import ShardLoader
    from xec.rootio import tree_writer

    loader = ShardLoader(stage.val_manifest, stage.val_batch, tasks=(), shuffle=False, with_ids=True)
    faces = sensor_faces()
    norm = stage.normalizer
    gen = torch.Generator().manual_seed(seed)
    rows = 0
    with torch.no_grad(), tree_writer(path, "inpaint") as w:
        for x, _, _, ids in loader:
            mask = stage.make_mask(x, gen)
            pred = model(x.to(device), mask.to(device)).float().cpu()  # filled output, as deployed
            ev, sensor = torch.nonzero(mask, as_tuple=True)
            if len(ev) == 0:
                continue
            ev, sensor = ev.numpy(), sensor.numpy()
            t_n, p_n = x[ev, sensor, 0].numpy(), pred[ev, sensor, 0].numpy()
            t_t, p_t = x[ev, sensor, 1].numpy(), pred[ev, sensor, 1].numpy()
            truth_npho = norm.denormalize_npho(t_n)
            pred_npho = norm.denormalize_npho(p_n)
            truth_time = norm.denormalize_time(t_t) * 1e9  # sentinel (no time) -> NaN
            pred_time = norm.denormalize_time(p_t) * 1e9
            w.extend({
                "run": ids["run"].numpy()[ev].astype(np.int64), "event": ids["event"].numpy()[ev].astype(np.int64),
                "sensor": sensor.astype(np.int32), "face": faces[sensor].astype(np.int32),
                "truth_npho": truth_npho.astype(np.float32), "pred_npho": pred_npho.astype(np.float32),
                "error_npho": (pred_npho - truth_npho).astype(np.float32),
                "truth_time_ns": truth_time.astype(np.float32), "pred_time_ns": pred_time.astype(np.float32),
                "error_time_ns": (pred_time - truth_time).astype(np.float32),
            })
            rows += len(ev)
    return rows
