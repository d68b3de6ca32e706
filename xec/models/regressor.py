"""XECRegressor: XECEncoder + one MLP head per active task.

Heads read the concatenated fused face tokens and predict STANDARDIZED targets
(z = (y - mean) / std, xec.targets.TargetStandardizer). The model carries mean/std as buffers
(saved in its state dict), so ``forward_physical`` returns physical units (angle deg, energy
GeV, timing ns, uvwFI cm, angleVec unit-less) and an exported model needs nothing else. Only
the heads of the active tasks are built.

With ``model.angle_from_position`` the ``angle`` output is the direction from the target centre
to the predicted first interaction (uvwFI), as the classical reconstruction quotes it; the angle
head's own prediction is the ``angle_head`` output, which the training loss reads (an auxiliary
task of the trunk; as the prediction it was 1-3 % worse in theta, docs/performance.md).

Per-event uncertainties: for each task of ``sigma_tasks`` a second head of the same shape
predicts log(sigma^2) of the standardized target per event and component (output key
``<task>_logvar``). It reads the fused tokens and the peak-window features DETACHED, so its
loss (a Gaussian NLL, xec.train.regressor) cannot move the encoder or the point estimates;
``forward_physical`` adds ``<task>_sigma`` = calibrated(exp(logvar / 2) * target std),
in the task's physical units, through the post-hoc monotone calibration that the regressor stage
fits on the val split (xec.models.sigma_calibration; identity until set). It is not part of the
state dict: it travels in the checkpoint as ``sigma_calibration`` and is baked into the exported
graph.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from xec.config import schema_defaults
from xec.errors import XecError
from xec.models import sigma_calibration as SC
from xec.models.aggregates import PhysicsAggregates, direction_to_angles_torch, uvw_to_xyz_torch
from xec.models.blend import FitBlend, gate_inputs
from xec.models.blocks import at_least_float32, fill_sensors, float32_region
from xec.models.encoder import XECEncoder
from xec.models.peakfit import COORD_SCALE_CM, PeakWindowFit
from xec.models.presets import ModelConfig
from xec.models.solidfit import N_FEATURES as SOLID_FIT_FEATURES
from xec.models.solidfit import SolidAngleFit
from xec.targets import TASKS, TargetStandardizer, get_task

# Bounds of a predicted log(sigma^2) in standardized units: sigma from 4.5e-5 to 150 target
# spreads (a u resolution of 2 mm is ~1e-2 spreads; the lower bound never binds in practice).
LOGVAR_RANGE = (-20.0, 10.0)


class TaskHead(nn.Module):
    """MLP on the fused tokens and the peak-window features (xec.models.peakfit), plus a
    linear path from those (position = window anchor + a learned offset)."""

    def __init__(self, in_dim: int, loc_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim + loc_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)
        self.skip = nn.Linear(loc_dim, out_dim) if loc_dim else None

    def forward(self, z: torch.Tensor, loc: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(z) if loc is None else torch.cat([self.norm(z), loc], dim=1)
        return self.from_normed(h, loc)

    def from_normed(self, h: torch.Tensor, loc: torch.Tensor | None) -> torch.Tensor:
        """The head after its LayerNorm: h = [norm(z), loc] (the head refit trains on a cached h)."""
        y = self.fc2(self.act(self.fc1(h)))
        return y if self.skip is None else y + self.skip(loc)


def _start_near_zero(head: TaskHead) -> TaskHead:
    """A correction head that starts near zero: output layer x 0.01 (small, not zero, so that
    gradients reach its first layer), biases and linear path zero."""
    with torch.no_grad():
        head.fc2.weight.mul_(0.01)
    nn.init.zeros_(head.fc2.bias)
    if head.skip is not None:
        nn.init.zeros_(head.skip.weight)
        nn.init.zeros_(head.skip.bias)
    return head


class XECRegressor(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        tasks: Sequence[str],
        standardizer: TargetStandardizer | None = None,
        sentinel: float = -1.0,
        geometry=None,
        normalizer=None,
        sigma_tasks: Sequence[str] = (),
        head_hidden: Mapping[str, int] | None = None,
        peak_refit_tasks: Sequence[str] = (),
        solid_fit_tasks: Sequence[str] = (),
        fit_blend_hidden: int = 0,
    ):
        """``normalizer`` (xec.normalization.Normalizer), when given, sets ``sentinel``;
        ``sigma_tasks``: tasks that also get a per-event uncertainty head; ``head_hidden``: the
        hidden width of some tasks' heads instead of ``cfg.head_hidden`` (the heads replaced by
        the regressor's head refit, xec.train.refit); ``peak_refit_tasks``: tasks whose heads
        read the peak window through their own MLP (``peak_mlp``, refitted with them);
        ``solid_fit_tasks``: tasks whose (refitted) heads also read the in-graph solid-angle fit
        (``solid_fit``, xec.models.solidfit); ``fit_blend_hidden`` > 0: the uvwFI output's u, v
        are blended per event with that fit's (``fit_blend``, xec.models.blend; a gate of that
        hidden width, fitted after training by xec.train.blend)."""
        super().__init__()
        if normalizer is not None:
            sentinel = float(normalizer.sentinel)
        tasks = list(tasks)
        if not tasks:
            raise XecError("the regressor needs at least one task")
        for t in tasks:
            get_task(t)  # XecError on an unknown task
        if len(set(tasks)) != len(tasks):
            raise XecError(f"duplicate tasks in {tasks}")
        self.tasks = tuple(tasks)
        self.encoder = XECEncoder(cfg, sentinel=sentinel, geometry=geometry)
        in_dim = cfg.token_dim * self.encoder.num_tokens
        if cfg.peak_window > 0:
            if geometry is None:
                from xec.geometry import get_geometry

                geometry = get_geometry()
            self.peak = PeakWindowFit(
                geometry, cfg.peak_window, cfg.peak_hidden, sentinel=self.encoder.sentinel, coarse=cfg.peak_coarse
            )
        else:
            self.peak = None
        loc_dim = self.peak.out_dim if self.peak is not None else 0
        self.aggregates = None
        self.times_from_sensors = False
        if cfg.physics_aggregates:
            if geometry is None:
                from xec.geometry import get_geometry

                geometry = get_geometry()
            if normalizer is None:
                from xec.normalization import get_normalizer

                normalizer = get_normalizer()
            self.aggregates = PhysicsAggregates(geometry, normalizer)
            loc_dim += PhysicsAggregates.out_dim
            # the TOF-corrected time needs the position: without the uvwFI task the timing head
            # predicts the time on its own
            self.times_from_sensors = "timing" in self.tasks and "uvwFI" in self.tasks
            if self.times_from_sensors:
                # per-event offset (cm) of the light centroid from the shifted first interaction,
                # learned through the time loss alone; starts near zero
                self.centroid_head = _start_near_zero(TaskHead(in_dim, loc_dim, cfg.head_hidden, 3))
        self.head_hidden = {t: int((head_hidden or {}).get(t, cfg.head_hidden)) for t in self.tasks}
        self.normalizer = normalizer
        self.solid_fit: SolidAngleFit | None = None
        self.solid_fit_tasks: tuple[str, ...] = ()
        if solid_fit_tasks:
            self.attach_solid_fit()
            self.solid_fit_tasks = tuple(t for t in self.tasks if t in set(solid_fit_tasks))
        self.heads = nn.ModuleDict(
            {t: TaskHead(in_dim, loc_dim + self._fit_dim(t), self.head_hidden[t], TASKS[t].dim) for t in self.tasks}
        )
        # angle = direction from the target centre to the predicted first interaction, as the
        # classical reconstruction quotes it; the angle head still trains (the ``angle_head``
        # output, an auxiliary task of the trunk) but is not the prediction
        self.angles_from_position = bool(cfg.angle_from_position) and {"angle", "uvwFI"} <= set(self.tasks)
        for t in self.tasks:
            self.register_buffer(f"target_mean_{t}", torch.zeros(TASKS[t].dim))
            self.register_buffer(f"target_std_{t}", torch.ones(TASKS[t].dim))
        if standardizer is not None:
            self.set_standardization(standardizer)
        # Built last, so that the other modules draw the same initial weights with or without them.
        unknown = [t for t in sigma_tasks if t not in self.tasks]
        if unknown:
            raise XecError(f"uncertainty heads requested for {unknown}, which are not among the tasks {list(tasks)}")
        self.sigma_tasks = tuple(t for t in self.tasks if t in set(sigma_tasks))
        if self.angles_from_position and "angle" in self.sigma_tasks:
            raise XecError("model.angle_from_position: the angle, the direction to uvwFI, has no uncertainty head")
        self.sigma_heads = nn.ModuleDict(
            {t: TaskHead(in_dim, loc_dim, cfg.head_hidden, TASKS[t].dim) for t in self.sigma_tasks}
        )
        self._sigma_calibration: dict[str, dict] = {}
        self.set_sigma_calibration(None)
        self.peak_mlp: nn.Module | None = None
        self.peak_refit_tasks: tuple[str, ...] = ()
        if peak_refit_tasks:
            self.set_peak_mlp(copy.deepcopy(self.peak.mlp) if self.peak is not None else None, peak_refit_tasks)
        self.fit_blend: FitBlend | None = None
        if fit_blend_hidden:
            self.set_fit_blend(FitBlend(int(fit_blend_hidden)))

    def _fit_dim(self, task: str) -> int:
        return SOLID_FIT_FEATURES if task in self.solid_fit_tasks else 0

    def attach_solid_fit(self) -> None:
        """Add the in-graph solid-angle position fit (no parameters) on the peak window: its
        features enter ``head_features`` as ``fit``; the heads of ``solid_fit_tasks`` read them."""
        if self.peak is None:
            raise XecError("the solid-angle fit runs on the peak window: it needs model.peak_window > 0")
        if self.solid_fit is None:
            from xec.normalization import get_normalizer

            base = schema_defaults()["baseline"]
            self.solid_fit = SolidAngleFit(
                self.normalizer if self.normalizer is not None else get_normalizer(),
                efficiency=base["mppc_efficiency"],
                sys_fraction=base["sys_fraction"],
                w_max=base["w_max"],
                coord_scale_cm=COORD_SCALE_CM,
            )

    def set_solid_fit_tasks(self, tasks: Sequence[str]) -> None:
        """The heads of ``tasks`` (already built for it: refitted on the cached ``fit``) read the fit."""
        self.attach_solid_fit()
        self.solid_fit_tasks = tuple(t for t in self.tasks if t in set(tasks))

    def set_fit_blend(self, blend: FitBlend | None) -> None:
        """Blend the uvwFI output's u, v with the in-graph solid-angle fit's through ``blend``
        (None: the network's position alone)."""
        if blend is not None:
            if "uvwFI" not in self.tasks:
                raise XecError("the position blend with the classical fit needs the uvwFI task")
            self.attach_solid_fit()  # XecError without the peak window
        self.fit_blend = blend

    def set_peak_mlp(self, mlp: nn.Module | None, tasks: Sequence[str]) -> None:
        """Let the heads of ``tasks`` read the peak window through ``mlp`` (same input and
        output as ``peak.mlp``; the head refit trains it, xec.train.refit) instead of the
        shared one."""
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise XecError(f"peak-window refit for {unknown}, which are not among the tasks {list(self.tasks)}")
        if self.peak is None or mlp is None:
            raise XecError("a refitted peak-window MLP needs the peak window (model.peak_window > 0)")
        self.peak_mlp = mlp
        self.peak_refit_tasks = tuple(t for t in self.tasks if t in set(tasks))

    def set_standardization(self, standardizer: TargetStandardizer | Mapping) -> None:
        """Copy per-task mean/std into the buffers (a TargetStandardizer or its to_dict())."""
        if not isinstance(standardizer, TargetStandardizer):
            standardizer = TargetStandardizer.from_dict(standardizer)
        for t in self.tasks:
            if t not in standardizer.mean:
                raise XecError(
                    f"target standardization has no entry for task {t!r} (it has {sorted(standardizer.mean)})"
                )
            mean = np.asarray(standardizer.mean[t], dtype=np.float32).reshape(-1)
            std = np.asarray(standardizer.std[t], dtype=np.float32).reshape(-1)
            if mean.size != TASKS[t].dim or std.size != TASKS[t].dim:
                raise XecError(f"target standardization of {t!r} has {mean.size} components, expected {TASKS[t].dim}")
            getattr(self, f"target_mean_{t}").copy_(torch.from_numpy(mean))
            getattr(self, f"target_std_{t}").copy_(torch.from_numpy(std))

    def standardization(self) -> TargetStandardizer:
        return TargetStandardizer(
            mean={t: getattr(self, f"target_mean_{t}").cpu().numpy().copy() for t in self.tasks},
            std={t: getattr(self, f"target_std_{t}").cpu().numpy().copy() for t in self.tasks},
        )

    def set_sigma_calibration(self, calibration: Mapping[str, object] | None) -> None:
        """Per-task calibration of the predicted sigma (xec.models.sigma_calibration: the JSON
        form, or the older one scale per column; None or a missing task: identity)."""
        for t in self.sigma_tasks:
            entry = SC.normalize((calibration or {}).get(t), TASKS[t].dim, t)
            knots, log_factor = SC.as_tensors(entry)
            old = getattr(self, f"sigma_knots_{t}", None)
            device = old.device if old is not None else None
            # not in the state dict: the calibration travels in the checkpoint as sigma_calibration
            self.register_buffer(f"sigma_knots_{t}", knots.to(device), persistent=False)
            self.register_buffer(f"sigma_log_factor_{t}", log_factor.to(device), persistent=False)
            self._sigma_calibration[t] = entry

    def sigma_calibration(self) -> dict[str, dict]:
        return {t: self._sigma_calibration[t] for t in self.sigma_tasks}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x (B, 4760, 2) normalized -> {task: (B, dim) standardized prediction} plus
        {<task>_logvar: (B, dim)} for the uncertainty tasks."""
        if mask is not None:  # hidden sensors read as "no reading" by the encoder and the peak fit
            x = fill_sensors(x, mask.bool(), self.encoder.sentinel)
        z, loc, photons, log_light, refit_loc, fit = self._trunk(x)
        # the heads and what follows them in float32 under bf16 autocast (float32_region)
        with float32_region(x):
            z, loc, refit_loc = at_least_float32(z), at_least_float32(loc), at_least_float32(refit_loc)
            out = {t: self.heads[t](z, self._head_loc(t, loc, refit_loc, fit)) for t in self.tasks}
            # the predicted first interaction (cm), read by the time correction (detached there)
            # and the angle
            fi = None
            if self.angles_from_position or self.times_from_sensors:
                fi = uvw_to_xyz_torch(self._physical("uvwFI", out["uvwFI"]))
            if self.aggregates is not None:
                self._apply_aggregates(out, x, photons, log_light, z, loc, fi)
            if self.fit_blend is not None:
                # after the time correction, which was trained with the network's position
                fi = uvw_to_xyz_torch(self._blend_position(out, fit))
            if self.angles_from_position:
                # not detached: nothing trains through it (the loss reads angle_head), and the
                # angle's saliency is then that of the position it comes from
                out["angle_head"] = out["angle"]
                out["angle"] = self._standardized("angle", direction_to_angles_torch(fi))
            if self.sigma_tasks:
                zd, locd = z.detach(), None if loc is None else loc.detach()
                out.update({f"{t}_logvar": self.sigma_heads[t](zd, locd) for t in self.sigma_tasks})
        return out

    def _blend_position(self, out: dict, fit: torch.Tensor) -> torch.Tensor:
        """uvwFI = the blend of the network's and the fit's (physical, returned); the network's
        (``uvwFI_net``, standardized), the fit's (``uvwFI_fit``, cm) and the gate's inputs
        (``blend_inputs``) join the outputs, for fitting the gate (xec.train.blend)."""
        net = self._physical("uvwFI", out["uvwFI"])
        scale = self.solid_fit.scale
        ok = torch.isfinite(fit).all(dim=1, keepdim=True)
        fit = torch.where(ok, fit, torch.cat([net / scale, torch.zeros_like(fit[:, 3:])], dim=1))
        inputs = gate_inputs(net, fit, scale)
        fit_uvw = fit[:, :3] * scale
        blended = self.fit_blend(net, fit_uvw, inputs)
        out.update(uvwFI_net=out["uvwFI"], uvwFI_fit=fit_uvw, blend_inputs=inputs)
        out["uvwFI"] = self._standardized("uvwFI", blended)
        return blended

    def _trunk(self, x: torch.Tensor):
        """The heads' inputs: fused tokens z (B, in_dim), peak-window and aggregate features loc
        (B, loc_dim) or None, the aggregates' photons and log light sum (None without them), and
        loc with the refitted peak MLP's features (None without ``peak_mlp``), and the solid-angle
        fit's features (None without ``solid_fit``)."""
        feats = self.head_features(x)
        z, loc, refit_loc = feats["z"], None, None
        if self.peak is not None:
            loc = torch.cat([self.peak.mlp(feats["window"]), feats["passed"]], dim=1)
            if self.peak_mlp is not None:
                refit_loc = torch.cat([self.peak_mlp(feats["window"]), feats["passed"]], dim=1)
        if self.aggregates is not None:
            loc = feats["extra"] if loc is None else torch.cat([loc, feats["extra"]], dim=1)
            refit_loc = None if refit_loc is None else torch.cat([refit_loc, feats["extra"]], dim=1)
        return z, loc, feats.get("photons"), feats.get("log_light"), refit_loc, feats.get("fit")

    def _head_loc(self, task: str, loc, refit_loc, fit):
        """What the head of ``task`` reads beside z: loc, or loc with the refitted peak MLP's
        features (``peak_refit_tasks``), plus the solid-angle fit (``solid_fit_tasks``)."""
        out = refit_loc if task in self.peak_refit_tasks else loc
        return torch.cat([out, fit], dim=1) if task in self.solid_fit_tasks else out

    def head_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the heads are computed from, for the normalized events x (B, 4760, 2): fused
        tokens ``z``; with the peak window its MLP's input ``window`` and the features it passes
        on as they are ``passed``; with the aggregates their features ``extra`` and ``photons``,
        ``log_light``; with the solid-angle fit its features ``fit``. loc = [peak.mlp(window),
        passed, extra] (xec.train.refit caches these)."""
        out = {"z": self.encoder(x).flatten(1)}
        # the window's centroids, the light sums and the fit are measurements: float32 under
        # bf16 autocast (the peak MLP that reads the window stays in the autocast dtype)
        with float32_region(x):
            if self.peak is not None:
                out["window"], out["passed"] = self.peak.window_features(x)
            if self.aggregates is not None:
                out["photons"], sums = self.aggregates.photons(x)
                out["log_light"] = self.aggregates.light(sums)
                out["extra"] = self.aggregates.features(sums, out["log_light"])
            if self.solid_fit is not None:
                out["fit"] = self.solid_fit(x, self.peak.window_sensors(self.peak.peak_index(x))[0])
        return out

    def head_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(z, loc): what a task head without a refitted peak MLP reads for the normalized events
        x (B, 4760, 2), loc followed by the solid-angle fit's features when it is attached."""
        z, loc, _, _, _, fit = self._trunk(x)
        if fit is not None:
            loc = fit if loc is None else torch.cat([loc, fit], dim=1)
        return z, loc

    def _standardized(self, task: str, y: torch.Tensor) -> torch.Tensor:
        return (y - getattr(self, f"target_mean_{task}")) / getattr(self, f"target_std_{task}")

    def _physical(self, task: str, z: torch.Tensor) -> torch.Tensor:
        return z * getattr(self, f"target_std_{task}") + getattr(self, f"target_mean_{task}")

    def _apply_aggregates(
        self, out: dict, x: torch.Tensor, photons: torch.Tensor, log_light: torch.Tensor, z: torch.Tensor, loc, fi
    ) -> None:
        """Energy = light sum x exp(correction); time = TOF-corrected sensor time + correction,
        seen from the predicted first interaction (detached: time does not pull on position)
        moved to the event's light centroid by a learned offset."""
        if "energy" in out:
            out["energy"] = self._standardized("energy", self.aggregates.energy(log_light, out["energy"]))
        if self.times_from_sensors:
            fi = fi.detach()
            centroid = self.aggregates.light_centroid(fi, self.centroid_head(z, loc))
            time = self.aggregates.time(x, photons, fi, centroid)
            out["timing"] = out["timing"] + self._standardized("timing", time)

    @torch.no_grad()
    def init_energy_scale(self, x: torch.Tensor, energy: torch.Tensor) -> bool:
        """Fit the light-sum scale on a first training batch (x normalized, energy (B,) or (B, 1)
        in the target's unit) unless it is already set (a resumed or fine-tuned model); True
        when it was set now."""
        agg = self.aggregates
        if agg is None or "energy" not in self.tasks or bool(agg.energy_scale_set):
            return False
        with float32_region(x):
            _, sums = agg.photons(x)
        agg.calibrate_light_sum(sums, energy.reshape(-1).to(sums.dtype))
        return True

    def to_physical(self, preds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Physical units of every task in ``preds``, and ``<task>_sigma`` for every
        ``<task>_logvar`` in it (calibration applied)."""
        out = {t: self._physical(t, preds[t]) for t in self.tasks}
        for t in self.sigma_tasks:
            if f"{t}_logvar" in preds:
                sigma_z = torch.exp(0.5 * preds[f"{t}_logvar"].clamp(*LOGVAR_RANGE))
                out[f"{t}_sigma"] = SC.apply_torch(
                    sigma_z * getattr(self, f"target_std_{t}"),
                    getattr(self, f"sigma_knots_{t}"),
                    getattr(self, f"sigma_log_factor_{t}"),
                )
        return out

    def forward_physical(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x (B, 4760, 2) normalized -> {task: (B, dim)} and {<task>_sigma: (B, dim)} in physical units."""
        return self.to_physical(self.forward(x, mask))


def encoder_state_from(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` entries of a model state dict (MAE, inpainter or regressor), prefix
    removed. Accepts a checkpoint's model state with or without a DDP/compile prefix."""
    out = {}
    for key, value in state_dict.items():
        k = key
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        if k.startswith("encoder."):
            out[k[len("encoder.") :]] = value
    return out


def load_encoder_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load the encoder of ``state_dict`` (e.g. an MAE checkpoint's model state) into
    ``model.encoder``; XecError naming ``source`` when it has no encoder or another shape
    (different preset)."""
    enc = encoder_state_from(state_dict)
    if not enc:
        raise XecError(f"{source}: no encoder weights (no 'encoder.*' keys) in the model state")
    try:
        missing, unexpected = model.encoder.load_state_dict(enc, strict=False)
    except RuntimeError as exc:
        raise XecError(
            f"{source}: encoder weights do not fit this model (different preset?): {str(exc).splitlines()[0]}"
        ) from None
    if missing or unexpected:
        raise XecError(
            f"{source}: encoder weights do not fit this model (different preset?): "
            f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
        )
