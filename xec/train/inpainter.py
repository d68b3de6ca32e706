"""Inpainter stage: predicts hidden (dead) sensors from the rest (encoder from the MAE with
model.inpaint_context).

Training masks a realistic dead-channel density (``inpainter.mask_ratio``, default 5 %) of the
sensors that have a reading (xec.models.mae.random_mask, maskable="npho_valid": low-light
sensors can die too; their time is not scored). With ``inpainter.dead_sensors`` a share of the
training events also has whole readout boards (or random sensors) hidden
(xec.inpainting.deadaug): a dead board leaves no live neighbour next to most of its sensors,
which the random mask never shows. Validation keeps the random mask alone (its metrics stay
comparable between runs and with the real-data fine-tuning). Loss on the hidden sensors only:
npho always, time where the true time is valid and the true npho is above the normalizer's
threshold.
With ``relative_loss_weight`` w > 0 the loss adds w x the mean relative error |pred - true| / true
of npho in photons over the hidden sensors with true npho >= the normalizer's npho_threshold: in
normalized (log1p) units a 2,500-photon sensor predicted as 600 costs about as much as a few
dark sensors off by 30 photons, so the bright sensors whose recovery matters (and that
`xec inpainting` scores) hardly steer the training otherwise.
With ``log_loss_weight`` w > 0 it adds w x the mean |log(1 + pred) - log(1 + true)| (photons)
over all hidden sensors. With the sensor-level correction (``model.inpaint_local_neighbours``,
xec.models.local_fill) these terms score the corrected output, and the heads under it keep the
plain normalized-unit loss: scored only through the correction, they drifted to values it had to
undo (one face ended 0.38 relative MAE instead of 0.19).
Encoder frozen by default (``freeze_encoder``), initialized from ``--init`` (an MAE checkpoint;
random with ``--init none``).

Metrics: loss, and MAE/RMSE of npho and time on the hidden sensors, overall and per face, in
normalized and physical units (photons, ns). With ``predictions_root`` the val predictions of
every hidden sensor are streamed batch by batch to OUT/predictions.root (tree ``inpaint``:
run, event, sensor, face, truth/prediction/error of npho (photons) and time (ns)) — never
accumulated in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xec.data.loader import ShardLoader
from xec.geometry import FACE_NAMES
from xec.inpainting.deadaug import DeadSensorAugment
from xec.models import XECInpainter
from xec.models.local_fill import npho_cap
from xec.models.mae import elementwise_loss, npho_threshold_normalized, random_mask
from xec.normalization import Normalizer
from xec.rootio import tree_writer
from xec.train.base import SensorErrorSums, Stage, model_config_of, sensor_faces
from xec.train.distributed import DistContext, all_reduce_sum

log = logging.getLogger("xec.train")


def face_balance_weights(balance: float) -> torch.Tensor:
    """(4760,) loss weights of hidden sensors (``inpainter.face_balance``): the share of the
    sensor's face among all sensors ^ -balance, mean 1 over the sensors. The random mask hides
    sensors in proportion to their face, so at 0 the inner face (86 % of the sensors) is 86 % of
    the loss; at 1 every face weighs alike."""
    faces = torch.as_tensor(sensor_faces())
    share = torch.bincount(faces).double()[faces] / len(faces)
    w = share**-balance
    return (w / w.mean()).float()


class _Predict(nn.Module):
    """Training view of the inpainter: forward = raw per-sensor predictions (``predict``), not the
    filled input (whose clamping / time-threshold replacement would cut the gradients)."""

    def __init__(self, inpainter: nn.Module):
        super().__init__()
        self.inpainter = inpainter

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.inpainter.predict(x, mask, with_heads=True)


class InpainterStage(Stage):
    name = "inpainter"
    help = "dead-channel inpainter (from the nearest live sensors; with model.inpaint_context the MAE encoder, frozen)"
    seed_offset = 2
    takes_init = True
    headline = ("val_mae_npho", "val_mae_npho_phot", "val_rmse_npho_phot", "val_mae_time_ns", "val_rmse_time_ns")

    def __init__(self, cfg: Mapping[str, Any], normalizer: Normalizer, init_checkpoint: str | None = None):
        super().__init__(cfg, normalizer, init_checkpoint)
        self.mask_ratio = float(self.sec["mask_ratio"])
        self.dead_aug = DeadSensorAugment.from_config(
            self.sec["dead_sensors"], int(cfg["deadsweep"]["board_size"]), "inpainter.dead_sensors"
        )
        self.loss_kind = self.sec["loss"]
        self.freeze = bool(self.sec["freeze_encoder"])
        self.time_thr = npho_threshold_normalized(normalizer)
        self.rel_weight = float(self.sec["relative_loss_weight"])
        self.log_weight = float(self.sec["log_loss_weight"])
        self.sensor_weight = face_balance_weights(float(self.sec["face_balance"]))
        # predictions clamped to MAX_PHOTONS (1e6) before the relative term: expm1 of a wild early
        # prediction would otherwise overflow the gradient
        self.npho_cap = npho_cap(normalizer)
        if init_checkpoint is None and self.freeze and self.meta.get("inpaint_context", True):
            log.warning("inpainter: --init none with freeze_encoder: the encoder stays at its random initialization")
        self.val_manifest: str | None = None

    @classmethod
    def build(cls, spec: Mapping[str, Any]) -> nn.Module:
        norm = Normalizer.from_dict(dict(spec["normalization"]))
        return XECInpainter(
            model_config_of(spec["model"]), normalizer=norm, freeze_encoder=bool(spec["model_args"]["freeze_encoder"])
        )

    def model_args(self) -> dict[str, Any]:
        return {"mask_ratio": self.mask_ratio, "freeze_encoder": self.freeze}

    def attach_data(self, train_loader, val_loader) -> None:
        self.val_manifest = val_loader.manifest["_path"]
        self.val_batch = val_loader.batch_size

    def prepare_model(self, model: nn.Module) -> int:
        if model.encoder is None:
            if self.init_checkpoint:
                log.info("inpainter: no encoder (model.inpaint_context false): %s is not used", self.init_checkpoint)
            return 0
        n = super().prepare_model(model)
        if n:
            log.info("inpainter: encoder initialized from %s (%d tensors)", self.init_checkpoint, n)
        return n

    def train_module(self, model: nn.Module) -> nn.Module:
        return _Predict(model)

    # ------------------------------------------------------------------ masks and loss
    def make_mask(self, x: torch.Tensor, generator) -> torch.Tensor:
        mask, _ = random_mask(x, self.mask_ratio, self.normalizer.sentinel, "npho_valid", 0.0, generator)
        return mask

    def _scored(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.normalizer.sentinel
        time_ok = mask & ((x[..., 1] - s).abs() > 1e-4) & (x[..., 0] > self.time_thr)
        return mask, time_ok

    def _base_loss(
        self, pred: torch.Tensor, x: torch.Tensor, sel_n: torch.Tensor, sel_t: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``inpainter.loss`` in normalized units on the scored sensors (``_scored``): (npho, time)
        terms, the npho one weighted by ``weight`` (M,)."""
        mn, mt = sel_n.to(pred.dtype) * weight, sel_t.to(pred.dtype)
        tgt = torch.where(torch.stack([mn, mt], -1) > 0, x, pred.detach())  # sentinel targets never enter
        el = elementwise_loss(pred.float(), tgt.float(), self.loss_kind)
        # weights, not counts: an empty selection (0 / eps = 0) is the only case the clamp serves
        l_n = (el[..., 0] * mn).sum() / mn.sum().clamp_min(1e-6)
        l_t = (el[..., 1] * mt).sum() / mt.sum().clamp_min(1.0)
        return l_n, l_t

    def _loss(self, pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Training loss of (B, S, C) predictions on the ``mask`` (hidden) sensors."""
        # every term scores the hidden sensors only (~5 % of B x 4760): gathered once, the loss
        # costs a few ms per batch instead of 2/3 of the model's forward and backward
        ev, sensor = torch.nonzero(mask, as_tuple=True)
        if self.sensor_weight.device != x.device:  # once, not a copy per step
            self.sensor_weight = self.sensor_weight.to(x.device)
        return self._hidden_loss(pred[ev, sensor], x[ev, sensor], self.sensor_weight[sensor])

    def _hidden_loss(self, pred: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``_loss`` on the hidden sensors' (M, C) predictions and (M, 2) inputs; ``weight`` (M,):
        each sensor's weight in the npho terms (``face_balance_weights``). The time term stays
        unweighted: weighted too, the inner face's filled times got 10-14 % worse (val)."""
        sel_n, sel_t = self._scored(x, torch.ones(len(x), dtype=torch.bool, device=x.device))
        heads_loss = None
        if pred.shape[-1] == 4:
            # the local correction's output + the heads' own (XECInpainter.predict): the heads keep
            # the plain loss (a smooth estimate for the correction to start from), the output all terms
            heads_loss = sum(self._base_loss(pred[:, 2:], x, sel_n, sel_t, weight))
            pred = pred[:, :2]
        l_n, l_t = self._base_loss(pred, x, sel_n, sel_t, weight)
        # relative npho error (photons) of the bright hidden sensors: the quantity that matters
        bright = (x[:, 0] >= self.time_thr).to(pred.dtype) * weight
        photons = self.normalizer.npho_inverse(x[:, 0].float().clamp_min(0.0))  # sentinels -> 0
        true = photons.clamp_min(1.0)
        est = self.normalizer.npho_inverse(pred[:, 0].float().clamp(0.0, self.npho_cap))
        l_r = (((est - true) / true).abs() * bright).sum() / bright.sum().clamp_min(1e-6)
        # log(1 + photons) of every hidden sensor, dim ones too: relative where it is bright,
        # absolute (photons) where it is dark, so the dim sensors' sum stays unbiased
        l_log = ((torch.log1p(est) - torch.log1p(photons)).abs() * weight).sum() / weight.sum().clamp_min(1e-6)
        loss = l_n + l_t
        if self.rel_weight > 0:
            loss = loss + self.rel_weight * l_r
        if self.log_weight > 0:
            loss = loss + self.log_weight * l_log
        logs = {"loss_npho": l_n.detach(), "loss_time": l_t.detach(), "rel_mae_npho_bright": l_r.detach()}
        logs["mae_log_npho"] = l_log.detach()
        if heads_loss is not None:
            loss = loss + heads_loss
            logs["loss_heads"] = heads_loss.detach()
        return loss, logs

    def masks(self, x: torch.Tensor, targets, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden, fill): the sensors the loss scores, and those the model is told to fill.
        Here both are the random mask; the real-data fine-tuning (xec.train.finetune) adds the
        sample's own dead sensors to ``fill`` only."""
        mask = self.make_mask(x, generator)
        return mask, mask

    def training_step(self, model, x, targets, weights, generator):
        hidden, fill = self.masks(x, targets, generator)
        if self.dead_aug is not None:
            # training only: also hide whole readout boards / random sensors (those with a reading)
            dead = self.dead_aug.mask(x.shape[0], generator).to(x.device) & (x[..., 0] != self.normalizer.sentinel)
            hidden, fill = hidden | dead, fill | dead
        pred = model(x, fill)  # the _Predict view (possibly DDP-wrapped)
        return self._loss(pred, x, hidden)

    @torch.no_grad()
    def evaluate(self, model, loader, ctx: DistContext, generator) -> dict[str, float]:
        acc = SensorErrorSums(self.normalizer, FACE_NAMES)
        s: dict[str, float] = {}
        for x, targets, _ in loader:
            x = x.to(ctx.device)
            targets = {k: v.to(ctx.device) for k, v in targets.items()}
            mask, fill = self.masks(x, targets, generator)
            pred = model.predict(x, fill)
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
        if not (ctx.is_main and self.sec["predictions_root"]):
            return {}
        n = write_root_predictions(model, self, Path(out_dir) / "predictions.root", ctx.device)
        return {"predictions_root_rows": float(n)}


def write_root_predictions(model, stage: InpainterStage, path: Path, device, seed: int = 12345) -> int:
    """Stream per-sensor predictions of the hidden val sensors to ROOT, one batch at a time."""
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
            w.extend(
                {
                    "run": ids["run"].numpy()[ev].astype(np.int64),
                    "event": ids["event"].numpy()[ev].astype(np.int64),
                    "sensor": sensor.astype(np.int32),
                    "face": faces[sensor].astype(np.int32),
                    "truth_npho": truth_npho.astype(np.float32),
                    "pred_npho": pred_npho.astype(np.float32),
                    "error_npho": (pred_npho - truth_npho).astype(np.float32),
                    "truth_time_ns": truth_time.astype(np.float32),
                    "pred_time_ns": pred_time.astype(np.float32),
                    "error_time_ns": (pred_time - truth_time).astype(np.float32),
                }
            )
            rows += len(ev)
    return rows
