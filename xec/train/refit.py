"""Head refit: after the regressor's training, new heads for some tasks trained on the finished
trunk (``regressor.head_refit``).

Why: a head trained jointly with the encoder chases features that move under it until the last
epoch. Wider heads trained afterwards on the converged, frozen features made u, v, w 6-12 % and
phi 2-5 % better on freshly simulated events (the default: 11 epochs + refit against 12 epochs),
while the same width trained jointly was not better (docs/performance.md, "Head refit").

How: the evaluated model (the EMA weights) runs once, without gradients, over the first
``max_events`` training events and keeps what every head reads (fused tokens z and peak-window /
aggregate features loc, ``XECRegressor.head_inputs``), the standardized targets and the
reweighting weights: (in_dim + loc_dim) floats per event, 56 MB for 40,000 events with the tiny
preset. A fresh ``TaskHead`` of width ``hidden`` per task is trained on that cache (all tasks in
one loop; the task's loss, AdamW, cosine decay, seeded) and replaces the model's head; the stage records the width in
the checkpoint's model_args, so everything after it (sigma calibration, predictions.parquet,
export) uses the new head. Only tasks whose head output is the prediction can be refitted: the
energy and time heads are corrections on top of the physics aggregates.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from xec.errors import XecError
from xec.models.regressor import TaskHead, XECRegressor
from xec.utils import progress_enabled

log = logging.getLogger("xec.train")

REFIT_TASKS = ("angle", "uvwFI", "angleVec")  # heads whose output is the prediction itself

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pred, target) -> (B, dim)


@torch.no_grad()
def cache_head_inputs(
    model: XECRegressor,
    batches: Iterable,
    tasks: Iterable[str],
    standardize: Callable[[str, torch.Tensor], torch.Tensor],
    max_events: int | None,
    device: torch.device,
    peak: bool = False,
) -> dict[str, torch.Tensor]:
    """z, loc (absent without peak/aggregate features), and per task ``y_<t>`` (standardized)
    and ``w_<t>`` (weights, 1 when the loader has none) of the events in ``batches`` ((x,
    targets, weights) as the training loader yields them), on the CPU. With ``peak``, instead of
    loc the peak MLP's input ``window``, ``passed`` and ``extra`` (XECRegressor.head_features).
    With the model's solid-angle fit attached, its features ``fit`` too (after loc / extra)."""
    tasks = list(tasks)
    parts: dict[str, list[torch.Tensor]] = {}
    n = 0
    for x, targets, weights in batches:
        if max_events is not None and n >= max_events:
            break
        keep = x.shape[0] if max_events is None else min(x.shape[0], max_events - n)
        if peak:
            feats = model.head_features(x[:keep].to(device))
            row = {k: feats[k].float().cpu() for k in ("z", "window", "passed", "extra", "fit") if k in feats}
        else:
            z, loc = model.head_inputs(x[:keep].to(device))
            row = {"z": z.float().cpu()}
            if loc is not None:
                row["loc"] = loc.float().cpu()
        for t in tasks:
            row[f"y_{t}"] = standardize(t, targets[t][:keep].float())
            w = weights.get(t) if weights else None
            row[f"w_{t}"] = w[:keep].float() if w is not None else torch.ones(keep)
        for k, v in row.items():
            parts.setdefault(k, []).append(v)
        n += keep
    return {k: torch.cat(v) for k, v in parts.items()}


def fit_heads(
    cache: Mapping[str, torch.Tensor],
    losses: Mapping[str, Loss],
    hidden: int,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    weight_decay: float = 0.01,
    peak_mlp: nn.Module | None = None,
    mlp_bf16: bool = False,
) -> dict[str, tuple[TaskHead, float]]:
    """A new TaskHead (width ``hidden``) per task of ``losses`` trained on ``cache``; returns
    {task: (head in eval mode on ``device``, its weighted loss over the cache in the last epoch)}.

    The heads share nothing but the batches: one loop, one summed loss and one optimizer step
    for all of them (Adam normalizes each parameter on its own, so this is the same as training
    each alone on that batch order, at a shared per-step cost).

    ``peak_mlp`` (a copy of the trained ``peak.mlp``, cache from ``cache_head_inputs(peak=True)``):
    trained with the heads, which read loc = [peak_mlp(window), passed, extra, fit] (left in eval
    mode; ``fit``: the solid-angle fit's features, when cached). ``mlp_bf16``: that MLP's matrix
    products in bfloat16 (autocast; its weights, the heads and the loss stay float32)."""
    tasks = list(losses)
    z = cache["z"].to(device)
    loc = cache["loc"].to(device) if "loc" in cache else None
    if peak_mlp is not None:
        # loc = [peak_mlp(window), fixed]: only the MLP's part moves, so it is built per batch
        peak_mlp.to(device).requires_grad_(True)
        window = cache["window"].to(device)
        fixed = torch.cat([cache[k] for k in ("passed", "extra", "fit") if k in cache], dim=1).to(device)
        with torch.no_grad():
            loc = torch.cat([peak_mlp(window[:1]), fixed[:1]], dim=1)  # its width, for the heads
    ys = {t: cache[f"y_{t}"].to(device) for t in tasks}
    ws = {t: cache[f"w_{t}"].to(device) for t in tasks}
    heads = {}
    for i, t in enumerate(tasks):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            heads[t] = TaskHead(z.shape[1], 0 if loc is None else loc.shape[1], hidden, ys[t].shape[1]).to(device)
        # The LayerNorm's affine map stays the identity (an affine map before fc1 adds nothing
        # fc1 cannot learn), so its output is computed once below: 1.7x fewer ops per step, and
        # AdamW's fused kernel another 1.3x (hidden 256, batch 64, 2 CPU cores: 1.08 -> 0.48 s
        # per 40,000-event epoch).
        heads[t].norm.requires_grad_(False)
    h = F.layer_norm(z, z.shape[1:], eps=heads[tasks[0]].norm.eps)
    if peak_mlp is None and loc is not None:
        h = torch.cat([h, loc], dim=1)
    n = z.shape[0]
    params = [p for t in tasks for p in heads[t].parameters() if p.requires_grad]
    params += [] if peak_mlp is None else list(peak_mlp.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s / steps, 1.0))))
    gen = torch.Generator().manual_seed(seed)
    last = {t: torch.zeros(()) for t in tasks}
    # finalize runs under no_grad (and autocast on a GPU): the heads train with gradients, in float32
    with torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for head in heads.values():
            head.train()
        if peak_mlp is not None:
            peak_mlp.train()
        for _ in tqdm(
            range(epochs), desc=f"head refit {'+'.join(tasks)}", unit="epoch", disable=not progress_enabled()
        ):
            order = torch.randperm(n, generator=gen).to(device)
            totals = {t: torch.zeros((), device=device) for t in tasks}
            for i in range(0, n, batch_size):
                rows = order[i : i + batch_size]
                if peak_mlp is None:
                    hb, lb_loc = h[rows], None if loc is None else loc[rows]
                else:
                    # no cast cache: inside the enclosing autocast region it would outlive the
                    # step and feed the MLP its first step's weights from then on
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mlp_bf16, cache_enabled=False):
                        learned = peak_mlp(window[rows])
                    lb_loc = torch.cat([learned.float(), fixed[rows]], dim=1)
                    hb = torch.cat([h[rows], lb_loc], dim=1)
                total_loss = 0.0
                for t in tasks:
                    wb = ws[t][rows]
                    per_event = losses[t](heads[t].from_normed(hb, lb_loc), ys[t][rows]).mean(dim=-1)
                    lt = (per_event * wb).sum() / wb.sum().clamp_min(1e-12)
                    totals[t] += lt.detach() * wb.sum()  # no host sync per step
                    total_loss = total_loss + lt
                opt.zero_grad(set_to_none=True)
                total_loss.backward()
                opt.step()
                sched.step()
            last = {t: totals[t] / ws[t].sum().clamp_min(1e-12) for t in tasks}
    out = {}
    for t in tasks:
        heads[t].requires_grad_(True)
        out[t] = (heads[t].eval(), float(last[t]))
    if peak_mlp is not None:
        peak_mlp.eval()
    return out


def refit_heads(
    model: XECRegressor,
    batches: Iterable,
    spec: Mapping,
    losses: Mapping[str, Loss],
    standardize: Callable[[str, torch.Tensor], torch.Tensor],
    seed: int,
    device: torch.device,
) -> dict[str, int]:
    """Replace ``model.heads[t]`` for every task of ``spec["tasks"]`` (regressor.head_refit) by
    a head refitted on the cached trunk features; returns {task: hidden width}."""
    tasks = list(spec["tasks"])
    if not tasks:
        return {}
    peak = bool(spec.get("peak", False))
    if peak and model.peak is None:
        raise XecError(
            "config regressor.head_refit.peak: the model has no peak window to refit (model.peak_window is 0)"
        )
    solid = bool(spec.get("solid_fit", False))
    if solid:
        model.attach_solid_fit()  # XecError without the peak window
    was_training = model.training
    model.eval()
    cache = cache_head_inputs(model, batches, tasks, standardize, spec["max_events"], device, peak=peak)
    n = int(cache["z"].shape[0])
    log.info(
        "regressor: head refit of %s on the trunk features of %d training events (%.0f MB cached)",
        tasks,
        n,
        sum(v.numel() * v.element_size() for v in cache.values()) / 1e6,
    )
    # the refitted heads' own copy of the trained peak-window MLP, trained with them
    peak_mlp = copy.deepcopy(model.peak.mlp).float() if peak else None
    mlp_bf16 = peak and refit_bf16(str(spec.get("precision", "fp32")), device)
    if mlp_bf16:
        log.info("regressor: head refit: the peak-window MLP's matrix products in bf16 (head_refit.precision)")
    fitted = fit_heads(
        cache,
        {t: losses[t] for t in tasks},
        int(spec["hidden"]),
        int(spec["epochs"]),
        float(spec["lr"]),
        int(spec["batch_size"]),
        seed,
        device,
        peak_mlp=peak_mlp,
        mlp_bf16=mlp_bf16,
    )
    widths = {}
    for t, (head, last) in fitted.items():
        old: nn.Module = model.heads[t]
        model.heads[t] = head.to(next(old.parameters()).dtype)
        model.head_hidden[t] = widths[t] = int(spec["hidden"])
        log.info("regressor: head refit of %s: hidden %d, final training loss %.5g", t, widths[t], last)
    if peak_mlp is not None:
        model.set_peak_mlp(peak_mlp.to(next(model.peak.mlp.parameters()).dtype), tasks)
        log.info("regressor: the refitted heads read the peak window through their own refitted MLP")
    if solid:
        model.set_solid_fit_tasks(tasks)
        log.info("regressor: the refitted heads of %s read the in-graph solid-angle position fit", tasks)
    model.train(was_training)
    return widths


def refit_bf16(precision: str, device: torch.device) -> bool:
    """regressor.head_refit.precision -> whether the refit's peak MLP runs its products in bf16.
    auto: on CUDA, and on CPUs with native bf16 products (AVX512-BF16 or AMX), where they run
    ~3x faster than float32 (2 cores, the refit's shapes); elsewhere bf16 is emulated and slower."""
    if precision == "auto":
        if device.type == "cuda":
            return True
        return device.type == "cpu" and bool(
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        )
    return precision == "bf16"


def refit_spec(
    sec: Mapping, tasks: Iterable[str], losses: Mapping[str, Mapping], angle_from_position: bool = False
) -> dict:
    """regressor.head_refit, checked against the regressor's tasks and losses (XecError naming
    the key). ``angle_from_position``: model.angle_from_position (the angle is then the direction
    to the predicted first interaction: its head is no longer the prediction)."""
    spec = dict(sec)
    tasks = list(tasks)
    for t in spec["tasks"]:
        if t not in tasks:
            raise XecError(f"config regressor.head_refit.tasks: {t!r} is not among regressor.tasks {tasks}")
        if t == "angle" and angle_from_position and "uvwFI" in tasks:
            raise XecError(
                "config regressor.head_refit.tasks: 'angle' is not refitted with model.angle_from_position "
                "(the angle is then the direction to the predicted first interaction, not its head's output): "
                "it follows the refitted uvwFI head; drop 'angle' from the list"
            )
        if t not in REFIT_TASKS:
            raise XecError(
                f"config regressor.head_refit.tasks: {t!r} cannot be refitted (only {list(REFIT_TASKS)}: "
                "the energy and time heads are corrections on top of the physics aggregates)"
            )
        if losses[t]["type"] == "gaussian_nll":
            raise XecError(
                f"config regressor.head_refit.tasks: {t!r} is trained with gaussian_nll, which needs the "
                "joint training's log-variance; refit only tasks with another loss"
            )
    return spec
