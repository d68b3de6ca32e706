"""Saliency of the regressor per detector face and per task: which faces, and which input (light
or time), each output relies on.

For each task t of the regressor (angle, energy, timing, uvwFI) and each output component c of
it (theta, phi; energy; time; u, v, w), the gradient of the standardized prediction y_tc (units
of the target's spread in training) with respect to the normalized inputs (npho_norm and
time_norm per sensor, xec.normalization) is taken event by event (one backward pass per
component over the batch: the model is in eval mode, events do not interact). Per face and per
input, the saliency of the task is

    S(t, face, input) = mean over events, over components c and over the face's sensors whose
                        input is valid (not the sentinel) of |d y_tc / d input|

(the mean |d output / d input| per sensor). Sentinel inputs (dead sensors, sensors without a time)
are left out: the model reads them as "no reading", not as a value. ``share`` normalizes per task
so that the 12 numbers (6 faces x npho/time) sum to 1, so a bar reads "this face's light carries
this share of the per-sensor sensitivity"; ``total`` is the same sum over the face's sensors
instead of the mean (a face with more sensors weighs more), also normalized per task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xec.geometry import FACE_NAMES, get_geometry
from xec.plots.common import DEFAULT_FORMATS, plt, save_figure

INPUTS = ("npho", "time")


def saliency_per_face(model, x, sentinel: float, batch_size: int = 64) -> dict[str, Any]:
    """Saliency of ``model`` (an XECRegressor in eval mode) on the normalized events ``x``
    (torch (N, 4760, 2)), per task, face and input (see the module docstring). Returns
    {"tasks": {task: {"mean": {input: {face: value}}, "share": ..., "total": ..., "total_share":
    ...}}, "events": N, "components": {task: dim}, "seconds": wall time}."""
    import torch

    t0 = time.perf_counter()
    face = np.asarray(get_geometry().face)
    n_faces = len(FACE_NAMES)
    tasks = list(model.tasks)
    # sums of |grad| per (task, input, face), over events and components; counts of valid inputs
    grad_sum = {t: np.zeros((2, n_faces)) for t in tasks}
    valid_count = np.zeros((2, n_faces))
    dims: dict[str, int] = {}
    face_t = torch.from_numpy(face.astype(np.int64))
    for lo in range(0, len(x), batch_size):
        xb = x[lo : lo + batch_size].detach().clone().float().requires_grad_(True)
        valid = (xb.detach() != sentinel).to(torch.float64)  # (B, S, 2)
        for k in range(2):
            valid_count[k] += np.bincount(face, weights=valid[..., k].sum(0).numpy(), minlength=n_faces)
        out = model(xb)
        for t in tasks:
            y = out[t]
            dims[t] = int(y.shape[1])
            for c in range(y.shape[1]):
                (g,) = torch.autograd.grad(y[:, c].sum(), xb, retain_graph=True)
                a = (g.detach().abs().to(torch.float64) * valid).sum(0)  # (S, 2)
                for k in range(2):
                    grad_sum[t][k] += torch.zeros(n_faces, dtype=torch.float64).index_add_(0, face_t, a[:, k]).numpy()
        del out
    result: dict[str, Any] = {"events": int(len(x)), "components": dims, "faces": list(FACE_NAMES), "tasks": {}}
    for t in tasks:
        total = grad_sum[t] / (len(x) * dims[t])  # per event and component, summed over a face's sensors
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(valid_count > 0, grad_sum[t] / np.maximum(valid_count, 1) / dims[t], 0.0)
        entry = {}
        for name, arr in (("mean", mean), ("total", total)):
            s = arr.sum()
            entry[name] = _table(arr)
            entry[f"{name}_share" if name == "total" else "share"] = _table(arr / s if s > 0 else arr * np.nan)
        result["tasks"][t] = entry
    result["seconds"] = time.perf_counter() - t0
    return result


def _table(arr: np.ndarray) -> dict[str, dict[str, float]]:
    return {inp: {f: float(arr[k, i]) for i, f in enumerate(FACE_NAMES)} for k, inp in enumerate(INPUTS)}


def run_saliency(checkpoint_path: str, val_manifest: str, n_events: int = 256, threads: int | None = None):
    """Load the regressor checkpoint (EMA weights), read its first ``n_events`` val events from
    the shards and compute :func:`saliency_per_face`."""
    import torch

    from xec.data.loader import ShardLoader
    from xec.normalization import Normalizer
    from xec.train.checkpoint import load_checkpoint
    from xec.train.stages import build_model_from_checkpoint

    if threads:
        torch.set_num_threads(int(threads))
    ck = load_checkpoint(checkpoint_path, expected_stage="regressor")
    model = build_model_from_checkpoint(ck)
    norm = Normalizer.from_dict(dict(ck["normalization"]))
    loader = ShardLoader(val_manifest, n_events, tasks=(), shuffle=False, expected_normalizer=norm, max_events=n_events)
    x = next(iter(loader))[0]
    result = saliency_per_face(model, x, float(norm.sentinel))
    result["checkpoint"] = str(checkpoint_path)
    result["units"] = (
        "|d y / d x|: y the standardized prediction (units of the training target's spread), "
        f"x the normalized input (normalization preset {norm.preset})"
    )
    return result


ROWS = (
    ("share", "per sensor: mean |d out / d in|"),
    ("total_share", "whole face: sum over its sensors"),
)


def saliency_bars(
    result: Mapping[str, Any],
    out: str | os.PathLike,
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 110,
) -> list[Path]:
    """One column per task, per face the share of the task's saliency from npho and from time;
    top row: mean |d output / d input| per valid sensor (``share``), bottom row: summed over the
    face's sensors (``total_share``); each normalized per task so that its 12 bars (6 faces x
    npho/time) sum to 1. The raw numbers are in ``out``.json."""
    tasks = list(result["tasks"])
    if not tasks:
        raise ValueError("no tasks in the saliency result")
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.4 * len(tasks), 6.2), squeeze=False, sharey="row")
    xs = np.arange(len(FACE_NAMES))
    for row, (key, label) in enumerate(ROWS):
        for ax, t in zip(axes[row], tasks):
            share = result["tasks"][t][key]
            for k, (inp, c) in enumerate(zip(INPUTS, ("C2", "C4"))):
                ax.bar(xs + (k - 0.5) * 0.4, [share[inp][f] for f in FACE_NAMES], width=0.4, color=c, label=inp)
            ax.set_xticks(xs, FACE_NAMES, rotation=45, fontsize=8)
            n = result["components"][t]
            ax.set_title(f"{t} ({n} output{'s' if n > 1 else ''})", fontsize=9)
            ax.legend(fontsize=7)
        axes[row, 0].set_ylabel(f"share, {label}", fontsize=8)
    fig.suptitle(
        f"regressor saliency per face and input ({result['events']} val events; per task and row the 12 bars sum to 1)",
        fontsize=10,
    )
    fig.tight_layout()
    files = save_figure(fig, out, formats, dpi)
    from xec.utils import finite_or_none, write_json

    path = Path(out)
    write_json(path.with_name(path.name + ".json"), finite_or_none(dict(result)))
    return files
