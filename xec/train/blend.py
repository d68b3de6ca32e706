"""Fitting the gate of the position blend (``regressor.fit_blend``, xec.models.blend) on val.

Why val: the network's training events are the ones its heads were fitted on, so there it looks
better than it is and a gate fitted there trusts it too much; val is the sample the sigma
calibration is fitted on too. Why cross-fitted: the val predictions (predictions.parquet, the
summary's val section, the scans' ranking) must not be those of a gate that saw their own
residuals, so each of ``folds`` parts of val gets the prediction of a gate fitted on the others
(parts by a hash of run and event), and the model keeps the gate fitted on all of val.

The loss is the L1 of the blended (u, v) in cm: the gate has ~250 parameters and sees ~4,000
events; full-batch Adam, a fixed number of steps, seeded: deterministic and ~1 s per gate on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from xec.inpainting.holdout import event_uniform
from xec.metrics import width68
from xec.models.blend import COORDS, FitBlend

log = logging.getLogger("xec.train")


def fit_gate(
    inputs: np.ndarray,
    net_uvw: np.ndarray,
    fit_uvw: np.ndarray,
    true_uvw: np.ndarray,
    hidden: int,
    steps: int,
    lr: float,
    seed: int,
) -> FitBlend:
    """A FitBlend whose gate minimizes the mean |blended (u, v) - true| over the given events."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        blend = FitBlend(hidden)
    x, net, fit, true = (torch.as_tensor(np.asarray(a, np.float32)) for a in (inputs, net_uvw, fit_uvw, true_uvw))
    opt = torch.optim.Adam(blend.parameters(), lr=lr, weight_decay=1e-4)
    with torch.enable_grad(), torch.autocast("cpu", enabled=False):
        for _ in range(steps):
            loss = (blend(net, fit, x)[:, :COORDS] - true[:, :COORDS]).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return blend.eval()


def fold_of(run: np.ndarray, event: np.ndarray, folds: int) -> np.ndarray:
    """Part (0 .. folds - 1) of each event, from the project's per-event hash of (run, event)
    (xec.inpainting.holdout.event_uniform, as the fine-tuning's held-out events): stable across
    loaders."""
    return np.minimum((event_uniform(run, event) * folds).astype(np.int64), folds - 1)


def cross_fit(
    cols: Mapping[str, np.ndarray], spec: Mapping, seed: int
) -> tuple[FitBlend, np.ndarray, dict[str, float]]:
    """From the val columns (``blend_inputs``, ``net_uvw``, ``fit_uvw``, ``true_uvw``, ``run``,
    ``event``): the gate fitted on all of them, the cross-fitted blended uvw (n, 3) and metrics
    (the mean fit weight in u, v; the val 68 % widths of u, v before and after, in mm)."""
    args = dict(hidden=int(spec["hidden"]), steps=int(spec["steps"]), lr=float(spec["lr"]))
    x, net, fit, true = (np.asarray(cols[k], np.float32) for k in ("blend_inputs", "net_uvw", "fit_uvw", "true_uvw"))
    folds = int(spec["folds"])
    part = fold_of(cols["run"], cols["event"], folds)
    blended = net.copy()
    for k in range(folds):
        held = part == k
        if held.all() or not held.any():
            continue
        gate = fit_gate(x[~held], net[~held], fit[~held], true[~held], seed=seed + 1 + k, **args)
        with torch.no_grad():
            blended[held] = gate(*(torch.from_numpy(a[held]) for a in (net, fit, x))).numpy()
    full = fit_gate(x, net, fit, true, seed=seed, **args)
    with torch.no_grad():
        weight = full.weight(torch.from_numpy(x)).numpy()
    metrics = {f"val_fit_blend_weight_{c}": float(weight[:, i].mean()) for i, c in enumerate("uv")}
    for i, c in enumerate("uv"):
        for name, p in (("net", net), ("blend", blended)):
            metrics[f"val_fit_blend_{c}_mm_{name}"] = 10.0 * width68(p[:, i] - true[:, i])
    log.info(
        "regressor: position blend with the classical fit (cross-fitted on val, %d parts): mean weight u %.3f, "
        "v %.3f; val u %.3f -> %.3f mm, v %.3f -> %.3f mm (68 %% half-widths)",
        folds,
        *(metrics[f"val_fit_blend_weight_{c}"] for c in "uv"),
        *(metrics[f"val_fit_blend_{c}_mm_{n}"] for c in "uv" for n in ("net", "blend")),
    )
    return full, blended, metrics
