"""Regressor fine-tuning stage: multi-task loss on standardized targets, reweighting weights,
channel-dropout augmentation, encoder initialized from the MAE, metrics in physical units.

Dead-sensor augmentation (``regressor.dead_sensors``, xec.inpainting.deadaug): a share of the
training events gets dead sensors, whole readout boards (the boards of `xec deadsweep`,
``deadsweep.board_size``) or random ones, set to the normalization's sentinel as a dead channel
arrives, or, with ``dead_fill: inpainter``, then filled by the frozen inpainter (``--inpainter``
checkpoint) as `xec infer` fills them, or, with ``dead_fill: time`` (the default config), only
their time hidden (their light kept): what the live-time pass of `xec infer`
(``inference.time_from_live_sensors``) hands the regressor once the dead sensors' light is
filled; ``channel_dropout`` (independent sensors, every event) is the older, simpler form.
Validation always sees the events as they are.

Loss per task (standardized units, mean over the task's components, then a weighted mean over
events with the reweighting weights): smooth_l1 (beta), l1, mse, huber (delta = beta) or
gaussian_nll. Gaussian NLL needs a variance: the model's ``<task>_logvar`` output when it has
one, else a learned per-component log-variance held by the stage's loss module (saved with the
model as ``loss_logvar.<task>``); ``beta`` > 0 gives the beta-NLL of Seitzer et al. (each
event's NLL scaled by the detached variance^beta). The total is sum_task weight_task * loss_task.

Per-event uncertainties (``regressor.sigma``): the tasks of ``sigma.tasks`` get a log-variance
head (xec.models.regressor) that reads detached features. For a gaussian_nll task its output is
the variance of the task's own NLL (mean and sigma trained jointly); for any other loss it is
trained by an extra term sigma.weight * NLL(detached prediction, target, log-variance) with
sigma.beta, so the point estimates and their loss are exactly those of a model without it (its
parameters are also gradient-clipped on their own: ``Stage.separate_clip_prefixes``). The NLL's
optimum is sigma^2(x) = E[(pred - true)^2 | x], the conditional RMS, which tails make wider than
the 68 % width physicists quote, and by a factor that changes with the sigma itself; so after
training the stage fits, on the val split, a monotone map per component
(xec.models.sigma_calibration: the 68 % half-width of the val pulls in ``sigma.calibration_bins``
quantile bins of the raw sigma; 1 bin = one scale), stores it in the checkpoint
(``sigma_calibration``) and applies it to every sigma it writes (predictions.parquet
``sigma_<col>``, the exported ``output_<task>_sigma``). The map is fitted on the val events with
the true energy in ``sigma.calibration_energy_mev`` (the signal region by default): a sigma cannot
be calibrated at every fixed true energy of a flat spectrum at once, because the L1 estimate of a
poorly measured event is pulled towards the middle of the spectrum, and 52.8 MeV is near its top.

Validation metrics (physical units, via xec.metrics): theta/phi bias, RMS, skewness, width68
(deg) and the 68 % quantile of the opening angle (deg); energy bias and resolution (68 % width
of (pred-true)/true, %); timing bias and resolution (ps); u, v, w bias and resolution (mm); the
val loss per task; and for each resolution the same quantity for "predict the train mean" and
the ratio (``*_gain`` = mean-predictor width / model width); for the uncertainty tasks the 68 %
half-width of the uncalibrated pulls per component (``pull68_<col>_uncal``) and, at the end,
the calibration scales (``sigma_scale_<col>``) and the calibrated val pull widths.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xec import metrics as M
from xec.data.loader import ShardLoader
from xec.errors import XecError
from xec.geometry import direction_to_angles, uvw_to_xyz
from xec.inpainting.deadaug import DeadSensorAugment
from xec.models import XECRegressor
from xec.models import sigma_calibration as SC
from xec.models.blend import FitBlend
from xec.models.regressor import LOGVAR_RANGE
from xec.normalization import Normalizer
from xec.targets import TargetStandardizer, get_task
from xec.train import blend as B
from xec.train.base import Stage, model_config_of, model_meta
from xec.train.distributed import DistContext, all_reduce_sum, gather_arrays
from xec.train.refit import refit_heads, refit_spec
from xec.utils import atomic_path

log = logging.getLogger("xec.train")
LOSS_TYPES = ("smooth_l1", "l1", "mse", "huber", "gaussian_nll")
# The loss of a task that regressor.losses does not list (the schema fills the keys of listed ones).
DEFAULT_TASK_LOSS = {"type": "l1", "weight": 1.0, "beta": 1.0}


def task_losses(sec: Mapping[str, Any], tasks) -> dict[str, dict[str, Any]]:
    """The loss spec of each task from the `regressor` section."""
    given = dict(sec["losses"])
    unknown = set(given) - set(tasks)
    if unknown:
        raise XecError(f"config regressor.losses names task(s) {sorted(unknown)} not in regressor.tasks {list(tasks)}")
    out = {}
    for t in tasks:
        spec = {**DEFAULT_TASK_LOSS, **dict(given.get(t) or {})}
        if spec["type"] not in LOSS_TYPES:
            raise XecError(
                f"config regressor.losses.{t}.type: unknown loss {spec['type']!r}; choose one of {LOSS_TYPES}"
            )
        out[t] = spec
    return out


def elementwise(
    kind: str, pred: torch.Tensor, target: torch.Tensor, beta: float, logvar: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, dim) per-component loss."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    if kind == "l1":
        return F.l1_loss(pred, target, reduction="none")
    if kind == "mse":
        return F.mse_loss(pred, target, reduction="none")
    if kind == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=beta)
    if kind == "gaussian_nll":
        if logvar is None:
            raise XecError("gaussian_nll needs a log-variance")
        logvar = logvar.expand_as(pred).clamp(*LOGVAR_RANGE)
        nll = 0.5 * ((pred - target) ** 2 * torch.exp(-logvar) + logvar)
        if beta > 0:
            nll = nll * torch.exp(logvar.detach() * beta)  # beta-NLL: var^beta, no gradient through it
        return nll
    raise XecError(f"unknown loss {kind!r}; choose one of {LOSS_TYPES}")


def sigma_spec(sec: Mapping[str, Any], tasks) -> dict[str, Any]:
    """The `regressor.sigma` section, its tasks checked against regressor.tasks."""
    spec = dict(sec["sigma"])
    spec["tasks"] = list(spec["tasks"])
    window = spec.get("calibration_energy_mev")
    if window is not None and not float(window[0]) < float(window[1]):
        # checked here, at the stage's construction: the window is used only after training
        raise XecError(f"config regressor.sigma.calibration_energy_mev: {list(window)} is not an interval (lo < hi)")
    unknown = [t for t in spec["tasks"] if t not in tasks]
    if unknown:
        raise XecError(
            f"config regressor.sigma.tasks: uncertainties asked for {unknown}, which regressor.tasks "
            f"{list(tasks)} does not train (no prediction to attach a sigma to)"
        )
    # a sigma head learns only from an NLL: the task's own gaussian_nll, else the sigma term
    for t, loss in task_losses(sec, tasks).items():
        if t not in spec["tasks"]:
            continue
        if loss["type"] == "gaussian_nll" and float(loss["weight"]) == 0:
            raise XecError(
                f"config regressor.losses.{t}.weight is 0: the gaussian_nll that would train the sigma of "
                f"{t!r} (regressor.sigma.tasks) has no weight; give it a weight or drop {t!r} from sigma.tasks"
            )
        if loss["type"] != "gaussian_nll" and float(spec["weight"]) == 0:
            raise XecError(
                f"config regressor.sigma.weight is 0: the sigma of {t!r} (loss {loss['type']}, which gives no "
                f"variance) would never be trained; set a weight > 0 or regressor.sigma.tasks: []"
            )
    return spec


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a DDP and/or torch.compile wrapper."""
    core = getattr(model, "module", model)
    return getattr(core, "_orig_mod", core)


def _standardize(std: TargetStandardizer, task: str, y: torch.Tensor) -> torch.Tensor:
    mean = torch.as_tensor(std.mean[task], device=y.device, dtype=y.dtype)
    sd = torch.as_tensor(std.std[task], device=y.device, dtype=y.dtype)
    return (y - mean) / sd


class RegressorStage(Stage):
    name = "regressor"
    help = "multi-task regressor (angle, energy, timing, uvwFI) fine-tuned from the MAE"
    seed_offset = 3
    takes_init = True
    takes_weights = True
    takes_inpainter = True
    finish_keys = (
        "head_refit",
        "fit_blend",
        "sigma.calibrate",
        "sigma.calibration_bins",
        "sigma.calibration_energy_mev",
    )
    headline = (
        "val_theta_deg_res",
        "val_phi_deg_res",
        "val_opening_angle_q68_deg",
        "val_energy_pct_res",
        "val_energy_pct_gain",
        "val_time_ps_res",
        "val_u_mm_res",
        "val_u_mm_gain",
        "val_v_mm_res",
        "val_v_mm_gain",
        "val_w_mm_res",
        "val_w_mm_gain",
    )

    def __init__(self, cfg: Mapping[str, Any], normalizer: Normalizer, init_checkpoint: str | None = None):
        super().__init__(cfg, normalizer, init_checkpoint)
        self.tasks = tuple(self.sec["tasks"])
        for t in self.tasks:
            get_task(t)
        self.losses = task_losses(self.sec, self.tasks)
        self.sigma = sigma_spec(self.sec, self.tasks)
        self.sigma_tasks = tuple(t for t in self.tasks if t in self.sigma["tasks"])
        self.sigma_calibration: dict[str, dict] | None = None  # fitted on val by finalize()
        self.head_refit = refit_spec(
            self.sec["head_refit"], self.tasks, self.losses, bool(model_meta(cfg)["angle_from_position"])
        )
        self.head_hidden: dict[str, int] = {}  # widths of the heads refitted by finalize()
        self.peak_refit_tasks: list[str] = []  # heads that read the peak window through a refitted MLP
        self.solid_fit_tasks: list[str] = []  # refitted heads that read the in-graph solid-angle fit
        self.fit_blend = fit_blend_spec(self.sec["fit_blend"], self.tasks, int(model_meta(cfg)["peak_window"]))
        self.fit_blend_hidden = 0  # the gate's width once finalize() has fitted it
        self.train_loader = None
        self.channel_dropout = float(self.sec["channel_dropout"])
        self.dead_aug = DeadSensorAugment.from_config(
            self.sec["dead_sensors"], int(cfg["deadsweep"]["board_size"]), "regressor.dead_sensors"
        )
        self.dead_fill = str(self.sec["dead_fill"])
        self.fill_model: nn.Module | None = None  # the inpainter of dead_fill: inpainter (attach_inpainter)
        self.standardizer: TargetStandardizer | None = None
        self.val_manifest: str | None = None
        # the light-sum scale is checked on the first step only: reading the model's flag every
        # step would be a device-to-host sync per step on a GPU
        self.light_sum_checked = False

    @classmethod
    def build(cls, spec: Mapping[str, Any]) -> nn.Module:
        norm = Normalizer.from_dict(dict(spec["normalization"]))
        std = TargetStandardizer.from_dict(spec["target_standardization"])
        args = spec["model_args"]
        model = XECRegressor(
            model_config_of(spec["model"]),
            list(spec["tasks"]),
            std,
            normalizer=norm,
            sigma_tasks=list(args.get("sigma_tasks", ())),  # absent in checkpoints older than the heads
            head_hidden=args.get("head_hidden"),  # heads refitted after training (xec.train.refit)
            peak_refit_tasks=args.get("peak_refit_tasks", ()),  # and their own peak-window MLP
            solid_fit_tasks=args.get("solid_fit_tasks", ()),  # and the in-graph solid-angle fit
            fit_blend_hidden=int(args.get("fit_blend_hidden", 0)),  # u, v blended with that fit's
        )
        model.set_sigma_calibration(spec.get("sigma_calibration"))
        nll = list(args["nll_tasks"])
        if nll:
            # Learned per-component log-variances for gaussian_nll tasks (unused by forward / ONNX).
            model.loss_logvar = nn.ParameterDict({t: nn.Parameter(torch.zeros(get_task(t).dim)) for t in nll})
        return model

    def model_args(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            # gaussian_nll tasks without a per-event head learn one global log-variance
            "nll_tasks": [
                t for t, s in self.losses.items() if s["type"] == "gaussian_nll" and t not in self.sigma_tasks
            ],
            "sigma_tasks": list(self.sigma_tasks),
            "head_hidden": dict(self.head_hidden),
            "peak_refit_tasks": list(self.peak_refit_tasks),
            "solid_fit_tasks": list(self.solid_fit_tasks),
            "fit_blend_hidden": self.fit_blend_hidden,
        }

    def attach_inpainter(self, path: str | None, device) -> None:
        """With ``dead_fill: inpainter``, the inpainter checkpoint (its EMA weights, frozen, in
        eval mode: the model `xec export` exports) that fills the augmentation's dead sensors."""
        if self.dead_fill != "inpainter":
            if path is not None:
                raise XecError(
                    f"--inpainter {path} is used only with config regressor.dead_fill: inpainter "
                    f"(it is {self.dead_fill!r})"
                )
            return
        if path is None:
            raise XecError(
                "config regressor.dead_fill is 'inpainter': give --inpainter CKPT (the inpainter checkpoint)"
            )
        from xec.train.checkpoint import load_checkpoint
        from xec.train.inpainter import InpainterStage

        ckpt = load_checkpoint(path, expected_stage="inpainter", expected_normalizer=self.normalizer)
        model = InpainterStage.build(ckpt)
        model.load_state_dict(ckpt.get("ema_state") or ckpt["model_state"])
        self.fill_model = model.to(device).eval().requires_grad_(False)
        log.info("regressor: the dead sensors of the augmentation are filled by the inpainter %s", path)

    def attach_data(self, train_loader, val_loader) -> None:
        std = train_loader.standardizer  # from the train manifest's target_stats
        self.standardizer = TargetStandardizer(
            {t: std.mean[t] for t in self.tasks}, {t: std.std[t] for t in self.tasks}
        )
        self.val_manifest = val_loader.manifest["_path"]
        self.train_loader = train_loader  # read again by the head refit
        self.val_batch = val_loader.batch_size

    def payload(self) -> dict[str, Any]:
        return {
            **super().payload(),
            "tasks": list(self.tasks),
            "target_standardization": self.standardizer.to_dict() if self.standardizer else None,
            "sigma_calibration": self.sigma_calibration,
        }

    def build_model(self) -> nn.Module:
        if self.standardizer is None:
            raise RuntimeError("attach_data() first: the standardizer comes from the train manifest")
        return super().build_model()

    def prepare_model(self, model: nn.Module) -> int:
        n = super().prepare_model(model)
        if n:
            log.info("regressor: encoder initialized from %s (%d tensors)", self.init_checkpoint, n)
        return n

    def lr_scales(self) -> list[tuple[str, float]]:
        scale = float(self.sec["encoder_lr_scale"])
        return [("encoder.", scale)] if scale != 1.0 else []

    def separate_clip_prefixes(self) -> tuple[str, ...]:
        # the sigma heads see detached inputs: clipped together with the rest, their gradients
        # would change how much the point-estimate weights are clipped
        return ("sigma_heads.",)

    # ------------------------------------------------------------------ loss
    def _loss(self, model, out: Mapping[str, torch.Tensor], targets, weights) -> tuple[torch.Tensor, dict]:
        total = 0.0
        logs = {}
        core = _unwrapped(model)
        for t in self.tasks:
            spec = self.losses[t]
            z = _standardize(self.standardizer, t, targets[t].float())
            # a task whose prediction is derived (the angle from the position): its head trains
            pred = out.get(f"{t}_head", out[t]).float()
            logvar = out.get(f"{t}_logvar")
            if spec["type"] == "gaussian_nll" and logvar is None:
                logvar = core.loss_logvar[t][None, :]
            el = elementwise(spec["type"], pred, z, float(spec["beta"]), logvar).mean(dim=-1)  # (B,)
            w = weights[t].float() if t in weights else torch.ones_like(el)
            lt = (el * w).sum() / w.sum().clamp_min(1e-12)
            logs[f"loss_{t}"] = lt.detach()
            total = total + float(spec["weight"]) * lt
            if logvar is not None and spec["type"] != "gaussian_nll":
                # the sigma head of a non-NLL task: its own NLL on the detached prediction
                beta = float(self.sigma["beta"])
                es = elementwise("gaussian_nll", pred.detach(), z, beta, logvar.float()).mean(dim=-1)
                ls = (es * w).sum() / w.sum().clamp_min(1e-12)
                logs[f"loss_{t}_sigma"] = ls.detach()
                total = total + float(self.sigma["weight"]) * ls
        return total, logs

    def _kill(self, x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """x with the (B, S) ``dead`` sensors as a dead channel arrives: npho and time at the sentinel."""
        return torch.where(dead.unsqueeze(-1), torch.full_like(x, self.normalizer.sentinel), x)

    def _hide_time(self, x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """x with the time of the (B, S) ``dead`` sensors at the sentinel, their npho kept."""
        time = torch.where(dead, torch.full_like(x[..., 1], self.normalizer.sentinel), x[..., 1])
        return torch.stack([x[..., 0], time], dim=-1)

    def training_step(self, model, x, targets, weights, generator):
        core = _unwrapped(model)
        first, self.light_sum_checked = not self.light_sum_checked, True
        if first and "energy" in targets and core.init_energy_scale(x, targets["energy"]):
            agg = core.aggregates
            log.info(
                "regressor: light sum calibrated on the first batch: face weights %s, log scale %.4f",
                [round(float(w), 3) for w in torch.nn.functional.softplus(agg.face_weight.detach())],
                float(agg.energy_log_scale.detach()),
            )
        if self.channel_dropout > 0:
            drop = torch.rand(x.shape[:2], generator=generator).to(x.device) < self.channel_dropout
            x = self._kill(x, drop)
        if self.dead_aug is not None:
            # whole readout boards or random sensors dead
            dead = self.dead_aug.mask(x.shape[0], generator).to(x.device)
            x = self._hide_time(x, dead) if self.dead_fill == "time" else self._kill(x, dead)
            if self.fill_model is not None:
                # dead_fill inpainter: what inference (xec infer --fill inpainter) hands the regressor
                rows = torch.nonzero(dead.any(dim=1)).squeeze(1)
                if len(rows):
                    with torch.no_grad():
                        x[rows] = self.fill_model(x[rows], dead[rows]).to(x.dtype)
        out = model(x)
        return self._loss(model, out, targets, weights)

    # ------------------------------------------------------------------ metrics
    def sigma_physical(self, t: str, out: Mapping[str, torch.Tensor]) -> np.ndarray:
        """(B, dim) uncalibrated sigma of task ``t`` in physical units from the model output."""
        logvar = out[f"{t}_logvar"].float().clamp(*LOGVAR_RANGE).cpu().numpy()
        return np.exp(0.5 * logvar) * self.standardizer.std[t]

    @torch.no_grad()
    def evaluate(self, model, loader, ctx: DistContext, generator) -> dict[str, float]:
        sums: dict[str, float] = {}
        preds: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        trues: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        sigmas: dict[str, list[np.ndarray]] = {t: [] for t in self.sigma_tasks}
        for x, targets, _ in loader:
            x = x.to(ctx.device)
            out = model(x)
            ones = {t: torch.ones(x.shape[0], device=x.device) for t in self.tasks}
            total, logs = self._loss(model, out, {t: v.to(x.device) for t, v in targets.items()}, ones)
            b = float(x.shape[0])
            sums["loss"] = sums.get("loss", 0.0) + float(total) * b
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
            sums["_n"] = sums.get("_n", 0.0) + b
            for t in self.tasks:
                preds[t].append(self.standardizer.destandardize(t, out[t].float().cpu().numpy()))
                trues[t].append(targets[t].float().numpy())
            for t in self.sigma_tasks:
                sigmas[t].append(self.sigma_physical(t, out))
        red = all_reduce_sum(sums, ctx)
        n = max(red.pop("_n", 0.0), 1.0)
        metrics = {k: v / n for k, v in red.items()}
        arrays = {f"p_{t}": np.concatenate(preds[t]) for t in self.tasks}
        arrays.update({f"t_{t}": np.concatenate(trues[t]) for t in self.tasks})
        arrays.update({f"s_{t}": np.concatenate(sigmas[t]) for t in self.sigma_tasks})
        arrays = gather_arrays(arrays, ctx)
        metrics.update(
            physics_metrics(
                {t: arrays[f"p_{t}"] for t in self.tasks}, {t: arrays[f"t_{t}"] for t in self.tasks}, self.standardizer
            )
        )
        for t in self.sigma_tasks:
            width = pull_widths(arrays[f"p_{t}"], arrays[f"t_{t}"], arrays[f"s_{t}"])
            metrics.update({f"pull68_{col}_uncal": float(w) for col, w in zip(get_task(t).columns, width)})
        return metrics

    def calibration_rows(self, cols: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The val rows the sigma calibration is fitted on: those with the true energy in
        sigma.calibration_energy_mev (None: every event, also when there is no energy truth)."""
        window = self.sigma.get("calibration_energy_mev")
        if window is None:
            return None
        if "true_energy" not in cols:
            log.warning(
                "regressor: sigma.calibration_energy_mev is set but energy is not a task (no energy truth "
                "in the val shards): the sigma calibration uses every val event"
            )
            return None
        rows = energy_window_rows(cols["true_energy"], window)
        if rows is None:
            return None
        log.info(
            "regressor: sigma calibration on the %d of %d val events with true energy in [%g, %g] MeV",
            int(rows.sum()),
            rows.size,
            *window,
        )
        return rows

    def finalize(self, model, val_loader, out_dir: Path, ctx: DistContext) -> dict[str, float]:
        """Fit the sigma calibration on val and write predictions.parquet of the whole val split
        with calibrated sigmas (rank 0; the checkpoint saved afterwards carries the calibration)."""
        if not ctx.is_main:
            return {}
        metrics: dict[str, float] = {}
        if self.head_refit["tasks"]:
            self.refit(_unwrapped(model), ctx.device)
        if self.fit_blend["enabled"]:
            _unwrapped(model).set_fit_blend(FitBlend(int(self.fit_blend["hidden"])))
        cols = val_predictions(model, self, ctx.device)
        if self.fit_blend["enabled"]:
            metrics.update(self.blend(_unwrapped(model), cols))
        if self.head_hidden:
            # the val resolutions of the model as it is saved and exported (the last epoch's
            # numbers, before the refit, stay in the history)
            p, y = {}, {}
            for t in self.tasks:
                names = get_task(t).columns
                p[t] = np.stack([cols[f"pred_{c}"] for c in names], 1)
                y[t] = np.stack([cols[f"true_{c}"] for c in names], 1)
            metrics.update({f"val_{k}": v for k, v in physics_metrics(p, y, self.standardizer).items()})
        calibration = {}
        bins = int(self.sigma["calibration_bins"]) if self.sigma["calibrate"] else 0
        fit_rows = self.calibration_rows(cols) if bins else None
        fit_sel = slice(None) if fit_rows is None else fit_rows
        if fit_rows is not None:
            metrics["val_sigma_calibration_events"] = float(fit_rows.sum())
        for t in self.sigma_tasks:
            names = get_task(t).columns
            p = np.stack([cols[f"pred_{c}"] for c in names], 1)
            y = np.stack([cols[f"true_{c}"] for c in names], 1)
            s = np.stack([cols[f"sigma_{c}"] for c in names], 1)
            calibration[t] = (
                SC.fit(p[fit_sel], y[fit_sel], s[fit_sel], bins) if bins else SC.normalize(None, len(names), t)
            )
            s_cal = SC.apply_numpy(calibration[t], s)
            median = np.median(s, axis=0, keepdims=True)
            at_median = SC.apply_numpy(calibration[t], median)[0] / median[0]  # the one scale of bins = 1
            for i, c in enumerate(names):
                cols[f"sigma_{c}"] = s_cal[:, i].astype(np.float32)
                metrics[f"val_sigma_scale_{c}"] = float(at_median[i])
            for c, w in zip(names, pull_widths(p, y, s_cal)):
                metrics[f"val_pull68_{c}"] = float(w)
            if fit_rows is not None:
                for c, w in zip(names, pull_widths(p[fit_rows], y[fit_rows], s_cal[fit_rows])):
                    metrics[f"val_pull68_{c}_calibration_window"] = float(w)
        if self.sigma_tasks:
            self.sigma_calibration = calibration
            getattr(model, "module", model).set_sigma_calibration(calibration)
            log.info(
                "regressor: sigma calibration on val (68 %% width of the raw pulls): %s",
                ", ".join(f"{k[len('val_sigma_scale_') :]} {v:.3f}" for k, v in metrics.items() if "scale" in k),
            )
        write_parquet(cols, Path(out_dir) / "predictions.parquet")
        return metrics

    def blend(self, model: XECRegressor, cols: dict[str, np.ndarray]) -> dict[str, float]:
        """Fit the position blend's gate on val (xec.train.blend): the model keeps the gate of all
        of val, ``cols`` get the cross-fitted u, v (and the angles that follow them)."""
        inputs = {k: cols.pop(k) for k in ("blend_inputs", "net_uvw", "fit_uvw")}
        inputs["true_uvw"] = np.stack([cols[f"true_{c}"] for c in "uvw"], 1)
        gate, blended, metrics = B.cross_fit(
            {**inputs, "run": cols["run"], "event": cols["event"]}, self.fit_blend, int(self.hparams(self.cfg)["seed"])
        )
        model.fit_blend.load_state_dict(gate.state_dict())
        self.fit_blend_hidden = int(self.fit_blend["hidden"])
        for i, c in enumerate("uvw"):
            cols[f"pred_{c}"] = blended[:, i]
        if model.angles_from_position:
            theta, phi = direction_to_angles(uvw_to_xyz(blended.astype(np.float64)))
            cols["pred_theta"], cols["pred_phi"] = theta.astype(np.float32), phi.astype(np.float32)
        return metrics

    def refit(self, model: XECRegressor, device) -> None:
        """Replace the heads of regressor.head_refit.tasks by heads refitted on the trained trunk."""
        losses = {
            t: (lambda pred, z, s=self.losses[t]: elementwise(s["type"], pred, z, float(s["beta"])))
            for t in self.head_refit["tasks"]
        }
        # rank 0 alone after a DDP training: the whole train split, as one process reads it
        loader = self.train_loader.whole_split() if hasattr(self.train_loader, "whole_split") else self.train_loader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)
        widths = refit_heads(
            model,
            loader,
            self.head_refit,
            losses,
            lambda t, y: _standardize(self.standardizer, t, y),
            int(self.hparams(self.cfg)["seed"]),  # the stage seed (Stage.hparams)
            device,
        )
        self.head_hidden.update(widths)
        if self.head_refit.get("peak"):
            self.peak_refit_tasks = list(widths)
        if self.head_refit.get("solid_fit"):
            self.solid_fit_tasks = list(widths)

    def sync_replaced(self, raw: nn.Module, evaluated: nn.Module) -> None:
        raw, evaluated = _unwrapped(raw), _unwrapped(evaluated)
        for t in self.head_hidden:
            raw.heads[t] = copy.deepcopy(evaluated.heads[t])
            raw.head_hidden[t] = self.head_hidden[t]
        if self.peak_refit_tasks:
            raw.set_peak_mlp(copy.deepcopy(evaluated.peak_mlp), self.peak_refit_tasks)
        if self.solid_fit_tasks:
            raw.set_solid_fit_tasks(self.solid_fit_tasks)
        if evaluated.fit_blend is not None:
            raw.set_fit_blend(copy.deepcopy(evaluated.fit_blend))


def fit_blend_spec(sec: Mapping[str, Any], tasks, peak_window: int) -> dict[str, Any]:
    """regressor.fit_blend, checked against the tasks and the model (XecError naming the key)."""
    spec = dict(sec)
    if spec["enabled"]:
        if "uvwFI" not in tasks:
            raise XecError(
                "config regressor.fit_blend.enabled: blends the uvwFI task's position, which is not among "
                f"regressor.tasks {list(tasks)}"
            )
        if peak_window <= 0:
            raise XecError(
                "config regressor.fit_blend.enabled: the classical fit runs on the peak window (model.peak_window is 0)"
            )
    return spec


def energy_window_rows(true_energy_gev: np.ndarray, window_mev: Any) -> np.ndarray | None:
    """Boolean rows of the val events whose true energy lies in ``window_mev`` = [lo, hi] MeV
    (regressor.sigma.calibration_energy_mev); None, with a warning, when fewer than one quantile
    bin's minimum lie in it (a small test sample): the calibration then uses every val event."""
    lo, hi = (float(v) for v in window_mev)
    e = 1e3 * np.asarray(true_energy_gev, dtype=np.float64)
    rows = (e >= lo) & (e <= hi)
    if rows.sum() < SC.MIN_EVENTS_PER_BIN:
        log.warning(
            "regressor: only %d of %d val events have their true energy in sigma.calibration_energy_mev "
            "[%g, %g] MeV (a calibration bin needs %d): the sigma calibration uses every val event",
            int(rows.sum()),
            rows.size,
            lo,
            hi,
            SC.MIN_EVENTS_PER_BIN,
        )
        return None
    return rows


def pull_widths(pred: np.ndarray, true: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(dim,) 68 % half-width of the pulls (pred - true) / sigma per component."""
    pulls = M.pulls(pred, true, sigma).reshape(len(pred), -1)
    return np.array([M.width68(pulls[:, i]) for i in range(pulls.shape[1])])


def physics_metrics(
    pred: Mapping[str, np.ndarray], true: Mapping[str, np.ndarray], std: TargetStandardizer | None = None
) -> dict[str, float]:
    """Resolutions in physical units (see the module docstring); with ``std`` also the
    "predict the train mean" reference and the gain over it."""
    out: dict[str, float] = {}

    def add(name: str, resid: np.ndarray, scale: float, ref_resid: np.ndarray | None) -> None:
        out[f"{name}_bias"] = M.bias(resid) * scale
        out[f"{name}_res"] = M.width68(resid) * scale
        if ref_resid is not None:
            ref = M.width68(ref_resid) * scale
            out[f"{name}_res_mean_predictor"] = ref
            out[f"{name}_gain"] = ref / max(out[f"{name}_res"], 1e-12)

    def mean_of(task: str, y: np.ndarray) -> np.ndarray | None:
        return None if std is None else np.broadcast_to(std.mean[task], y.shape)

    if "angle" in pred:
        p, y = pred["angle"].astype(np.float64), true["angle"].astype(np.float64)
        m = mean_of("angle", y)
        for i, col in enumerate(("theta", "phi")):
            d = p[:, i] - y[:, i]
            add(f"{col}_deg", d, 1.0, None if m is None else m[:, i] - y[:, i])
            out[f"{col}_rms_deg"] = M.rms(d)
            out[f"{col}_skewness"] = M.skewness(d)
        oa = M.opening_angle_deg(p[:, 0], p[:, 1], y[:, 0], y[:, 1])
        out["opening_angle_q68_deg"] = (
            float(np.quantile(oa[np.isfinite(oa)], 0.68)) if np.isfinite(oa).any() else float("nan")
        )
        if m is not None:
            oa0 = M.opening_angle_deg(m[:, 0], m[:, 1], y[:, 0], y[:, 1])
            out["opening_angle_q68_deg_mean_predictor"] = float(np.quantile(oa0, 0.68))
    if "energy" in pred:
        p, y = pred["energy"][:, 0].astype(np.float64), true["energy"][:, 0].astype(np.float64)
        m = mean_of("energy", true["energy"])
        add("energy_pct", (p - y) / y, 100.0, None if m is None else (m[:, 0] - y) / y)
    if "timing" in pred:
        p, y = pred["timing"][:, 0].astype(np.float64), true["timing"][:, 0].astype(np.float64)
        m = mean_of("timing", true["timing"])
        add("time_ps", p - y, 1000.0, None if m is None else m[:, 0] - y)  # ns -> ps
    if "uvwFI" in pred:
        p, y = pred["uvwFI"].astype(np.float64), true["uvwFI"].astype(np.float64)
        m = mean_of("uvwFI", y)
        for i, col in enumerate(("u", "v", "w")):
            add(f"{col}_mm", p[:, i] - y[:, i], 10.0, None if m is None else m[:, i] - y[:, i])  # cm -> mm
    if "angleVec" in pred:
        p, y = pred["angleVec"].astype(np.float64), true["angleVec"].astype(np.float64)
        pn = p / np.linalg.norm(p, axis=1, keepdims=True).clip(1e-12)
        yn = y / np.linalg.norm(y, axis=1, keepdims=True).clip(1e-12)
        ang = np.degrees(np.arccos(np.clip((pn * yn).sum(1), -1.0, 1.0)))
        out["angleVec_q68_deg"] = float(np.quantile(ang, 0.68))
    return out


def val_predictions(model, stage: RegressorStage, device) -> dict[str, np.ndarray]:
    """run, event, true_<col>, pred_<col> and (uncalibrated) sigma_<col> of the whole val split,
    physical units (a few floats per event: held in memory)."""
    loader = ShardLoader(stage.val_manifest, stage.val_batch, tasks=stage.tasks, shuffle=False, with_ids=True)
    parts: dict[str, list[np.ndarray]] = {}
    for x, targets, _, ids in loader:
        out = model(x.to(device))
        cols: dict[str, np.ndarray] = {"run": ids["run"].numpy(), "event": ids["event"].numpy()}
        if "blend_inputs" in out:  # what the position blend's gate is fitted on (RegressorStage.blend)
            cols["blend_inputs"] = out["blend_inputs"].float().cpu().numpy()
            cols["net_uvw"] = stage.standardizer.destandardize("uvwFI", out["uvwFI_net"].float().cpu().numpy())
            cols["fit_uvw"] = out["uvwFI_fit"].float().cpu().numpy()
        for t in stage.tasks:
            p = stage.standardizer.destandardize(t, out[t].float().cpu().numpy())
            y = targets[t].numpy()
            s = stage.sigma_physical(t, out) if t in stage.sigma_tasks else None
            for i, col in enumerate(get_task(t).columns):
                cols[f"true_{col}"] = y[:, i]
                cols[f"pred_{col}"] = p[:, i]
                if s is not None:
                    cols[f"sigma_{col}"] = s[:, i].astype(np.float32)
        for k, v in cols.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def write_parquet(cols: Mapping[str, np.ndarray], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(pa.table(dict(cols)), tmp)
