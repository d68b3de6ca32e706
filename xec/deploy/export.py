"""`xec export`: a regressor or inpainter checkpoint -> a self-describing ONNX model.

    xec export --checkpoint results/regressor/checkpoint.pt --out results/regressor/model.onnx
               [--val-shards results/shards/val/manifest.json] [--config CFG] [--log LOG]

* EMA weights (``build_model_from_checkpoint(use_ema=True)``).
* Regressor graph: input ``input`` float32 (B, 4760, 2), normalized with the checkpoint's preset;
  one output ``output_<task>`` per task, in physical units (angle deg (theta, phi), energy GeV,
  timing ns, uvwFI cm): the target de-standardization is part of the graph. A checkpoint with
  uncertainty heads adds ``output_<task>_sigma`` (B, dim) per sigma task after them: the
  per-event 1-sigma uncertainty in the same units, its val calibration scale in the graph.
* Inpainter graph: inputs ``input`` (B, 4760, 2) and ``mask`` float32 (B, 4760), 1 = sensor to
  fill (dead or masked), 0 = keep; output ``output`` (B, 4760, 2) = the input with the masked
  sensors replaced by the inpainter's prediction.
* Raw-unit inpainter (``--raw-units``, inpainter checkpoints only): the preset's normalization
  (xec.normalization, the same expressions as the shards) inside the graph; inputs ``npho``
  (photons; dead = 1e10 or NaN) and ``relative_time`` (s; none = 1e10) float32 (B, 4760) plus
  ``mask``; outputs ``output_npho`` (photons) and ``output_relative_time`` (s; 1e10 where the
  filled npho is below the time threshold). Masked and dead sensors are filled, every other
  sensor is passed through bit-exactly (checked in the parity step); metadata ``io_units`` "raw",
  so that the experiment's C++ code can call it without reimplementing the normalization.
* Dynamic batch axis; opset >= 17; ``metadata_props`` as in xec.deploy.onnx_meta.
* Parity: ONNX Runtime (CPU) vs PyTorch on real val-shard events, at the configured batch size
  and at batch size 1. Any element with |onnx - torch| > atol + rtol * |torch| is an error and
  no model is written. Regressor outputs are judged in the standardized units the network
  computes in, (y - mean) / std of the checkpoint's target standardization (sigma outputs as
  sigma / std): float32 rounding of a 60 cm position is ~1e-5 cm, which an atol in cm would
  call a failure. An inpainter's filled npho at the time threshold may get a time on one side
  and none on the other from rounding alone: those are counted (``time_threshold_flips``), not
  failed. Likewise a regressor event on a discontinuity of the network (the peak window's
  argmax between two equally bright sensors) moves as much in PyTorch alone when its input is
  rounded differently (relative 1e-6): such events are counted (``unstable_events``, at most
  ``MAX_UNSTABLE_FRACTION`` of them, their own worst ratio reported) and left out of the verdict.
  And a regressor event whose ONNX output is within the tolerance of the graph evaluated in
  float64 passes: there PyTorch's own float32 rounding is the deviation (a light sum over 4,760
  sensors in another order; seen: PyTorch 1.7e-4 standardized from float64, ONNX 1.4e-5),
  counted as ``float32_reference_events``.
  Max abs / max
  relative errors in physical units (relative: over elements with |torch| >= atol / rtol,
  where the relative tolerance binds) go to the log and to the sidecar
  ``<out stem>.parity.json`` (e.g. results/regressor/model.parity.json).
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xec.config import add_config_argument, load_config
from xec.deploy.onnx_meta import (
    ModelMetadata,
    inpainter_metadata,
    raw_inpainter_metadata,
    regressor_metadata,
    set_metadata,
    software_versions,
)
from xec.errors import XecError
from xec.normalization import Normalizer
from xec.targets import TargetStandardizer
from xec.train.checkpoint import load_checkpoint
from xec.train.stages import build_model_from_checkpoint
from xec.utils import atomic_path, setup_logging, write_json

log = logging.getLogger("xec.export")

MASK_FRACTION = 0.1  # share of live sensors masked (besides the dead ones) in the inpainter parity check
PARITY_DEAD_FRACTION = 0.02  # dead sensors in every other event of the regressor parity check
_TINY = 1e-6  # |reference| below which a relative error is not meaningful (and not reported)


class RegressorGraph(nn.Module):
    """The exported regressor: a tuple of physical-unit outputs, the predictions in task order,
    then the sigmas of the sigma tasks (xec.deploy.onnx_meta.regressor_outputs). The target
    de-standardization (the model's mean/std buffers, ``forward_physical``) is part of the graph."""

    def __init__(self, model: nn.Module, tasks: Sequence[str], sigma_tasks: Sequence[str] = ()):
        super().__init__()
        self.model = model
        self.keys = (*tasks, *(f"{t}_sigma" for t in sigma_tasks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.forward_physical(x)
        return tuple(out[k] for k in self.keys)


class InpainterGraph(nn.Module):
    """The exported inpainter: a float mask (1 = fill) instead of a bool one, for portability."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(x, mask > 0.5)


NO_VALUE = 1e10  # the MEG II files' marker of a dead sensor / missing time


class RawInpainterGraph(nn.Module):
    """The inpainter in raw units: normalization, inpainting and the inverse in one graph;
    sensors neither masked nor dead come out as they went in (a select, no arithmetic)."""

    def __init__(self, model: nn.Module, normalizer: Normalizer):
        super().__init__()
        self.model = model
        self.norm = normalizer

    def forward(self, npho: torch.Tensor, time: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t = self.norm.apply(npho, time)
        fill = (mask > 0.5) | (n == self.norm.sentinel)
        out = self.model(torch.stack([n, t], dim=-1), fill)
        est_npho = self.norm.npho_inverse(out[..., 0])
        has_time = out[..., 1] != self.norm.sentinel
        est_time = torch.where(has_time, self.norm.time_inverse(out[..., 1]), torch.full_like(time, NO_VALUE))
        return torch.where(fill, est_npho, npho), torch.where(fill, est_time, time)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="regressor or inpainter checkpoint.pt")
    parser.add_argument("--out", required=True, help="output ONNX file")
    parser.add_argument(
        "--val-shards",
        default=None,
        help="val shard manifest.json: events for the parity check "
        "(without it: seeded synthetic inputs, with a warning)",
    )
    parser.add_argument(
        "--rtol", type=float, default=None, help="parity relative tolerance (default: config export.rtol)"
    )
    parser.add_argument(
        "--atol", type=float, default=None, help="parity absolute tolerance (default: config export.atol)"
    )
    parser.add_argument(
        "--raw-units",
        action="store_true",
        help="inpainter only: normalization inside the graph (inputs npho, relative_time, mask in raw units)",
    )
    parser.add_argument("--log", default=None, help="log file")
    add_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config, command="export")["export"]  # validated: the schema fills in every default
    report = export_checkpoint(
        args.checkpoint,
        args.out,
        val_shards=args.val_shards,
        opset=cfg["opset"],
        parity_events=cfg["parity_events"],
        parity_batch_size=cfg["parity_batch_size"],
        exporter=cfg["exporter"],
        rtol=cfg["rtol"] if args.rtol is None else args.rtol,
        atol=cfg["atol"] if args.atol is None else args.atol,
        raw_units=args.raw_units,
    )
    print(
        f"{args.out}: {report['stage']} exported; parity max abs {report['max_abs']:.3g}, "
        f"max rel {report['max_rel']:.3g} on {report['events']} events"
    )
    return 0


def parity_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".parity.json")


def _regressor_graph(
    ckpt: dict[str, Any], model: nn.Module, normalizer: Normalizer, versions: dict[str, str]
) -> tuple[nn.Module, ModelMetadata]:
    tasks = list(ckpt.get("tasks") or [])
    if not tasks:
        raise XecError("regressor checkpoint lists no tasks")
    ts = ckpt.get("target_standardization")
    if not ts:
        raise XecError("regressor checkpoint has no target standardization")
    _check_standardization(model, TargetStandardizer.from_dict(ts), tasks)
    sigma_tasks = list(getattr(model, "sigma_tasks", ()))
    calibration = model.sigma_calibration() if sigma_tasks else None
    meta = regressor_metadata(normalizer, tasks, ts, versions, sigma_tasks, calibration)
    return RegressorGraph(model, tasks, sigma_tasks).eval(), meta


def _inpainter_graph(
    ckpt: dict[str, Any], model: nn.Module, normalizer: Normalizer, versions: dict[str, str]
) -> tuple[nn.Module, ModelMetadata]:
    return InpainterGraph(model).eval(), inpainter_metadata(normalizer, versions)


# (checkpoint, its EMA model, normalizer, software versions) -> (graph to export, its metadata)
GraphBuilder = Callable[[dict[str, Any], nn.Module, Normalizer, dict[str, str]], tuple[nn.Module, ModelMetadata]]

# The exportable checkpoint stages.
GRAPHS: dict[str, GraphBuilder] = {
    "regressor": _regressor_graph,
    "inpainter": _inpainter_graph,
}


def _raw_inpainter_graph(
    ckpt: dict[str, Any], model: nn.Module, normalizer: Normalizer, versions: dict[str, str]
) -> tuple[nn.Module, ModelMetadata]:
    return RawInpainterGraph(model, normalizer).eval(), raw_inpainter_metadata(normalizer, versions)


def build_graph(ckpt: dict[str, Any], raw_units: bool = False) -> tuple[nn.Module, ModelMetadata, nn.Module]:
    """(graph module to export, its metadata, the PyTorch reference model) for a checkpoint;
    ``raw_units``: the raw-unit inpainter."""
    stage = ckpt["stage"]
    if stage not in GRAPHS:
        raise XecError(f"cannot export a checkpoint of stage {stage!r} (only {' and '.join(GRAPHS)})")
    if raw_units and stage != "inpainter":
        raise XecError(f"--raw-units exports an inpainter; this is a {stage} checkpoint")
    if not ckpt.get("normalization"):
        raise XecError("checkpoint has no normalization preset; cannot write the ONNX metadata")
    normalizer = Normalizer.from_dict(ckpt["normalization"])
    model = build_model_from_checkpoint(ckpt, use_ema=True)
    versions = software_versions(0)  # opset filled in after export
    graph, meta = (_raw_inpainter_graph if raw_units else GRAPHS[stage])(ckpt, model, normalizer, versions)
    return graph, meta, model


def _check_standardization(model: nn.Module, expected: TargetStandardizer, tasks: Sequence[str]) -> None:
    """The model's mean/std buffers (what the graph applies) must be the checkpoint's
    target standardization (what the metadata records)."""
    if not hasattr(model, "standardization"):
        return
    have = model.standardization()
    for t in tasks:
        if t not in expected.mean:
            raise XecError(f"regressor checkpoint has no target standardization for task {t!r}")
        if not (
            np.allclose(have.mean[t], expected.mean[t], rtol=1e-6, atol=0)
            and np.allclose(have.std[t], expected.std[t], rtol=1e-6, atol=0)
        ):
            raise XecError(
                f"task {t!r}: the model's target mean/std {have.mean[t]}/{have.std[t]} differ from "
                f"the checkpoint's target_standardization {expected.mean[t]}/{expected.std[t]}"
            )


EXPORTERS = ("torchscript", "dynamo")


def _check_options(opset: int, exporter: str) -> None:
    if opset < 17:
        raise XecError(f"ONNX opset must be >= 17, got {opset}")
    if exporter not in EXPORTERS:
        raise XecError(f"unknown ONNX exporter {exporter!r}; choose one of {EXPORTERS}")


def export_graph(
    graph: nn.Module,
    meta: ModelMetadata,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    opset: int = 17,
    exporter: str = "torchscript",
) -> None:
    """torch.onnx.export of ``graph`` to ``path`` with the input/output names of ``meta`` and a
    dynamic batch axis (axis 0 of every input and output). ``exporter``: "torchscript" (the
    default, fast for these models) or "dynamo" (torch.export based, opset >= 18). Writes
    ``path`` directly (no metadata, no parity check): ``export_checkpoint`` is the atomic,
    checked entry point. XecError for an opset < 17 or an unknown exporter, before writing."""
    _check_options(opset, exporter)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {name: {0: "batch"} for name in (*meta.inputs, *meta.outputs)}
            torch.onnx.export(
                graph,
                example,
                str(path),
                input_names=list(meta.inputs),
                output_names=list(meta.outputs),
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
        else:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                graph,
                example,
                str(path),
                input_names=list(meta.inputs),
                output_names=list(meta.outputs),
                dynamic_shapes=tuple({0: batch} for _ in example),
                opset_version=max(opset, 18),
                dynamo=True,
                external_data=False,
                verbose=False,
            )


def parity_batches(
    val_shards: str | None, normalizer: Normalizer, n_events: int, batch_size: int, seed: int = 0
) -> Iterator[np.ndarray]:
    """Normalized (B, 4760, 2) float32 inputs for the parity check: real val-shard events, or
    (without shards) seeded synthetic events in the normalized domain with dead sensors."""
    if val_shards:
        from xec.data.loader import ShardLoader

        loader = ShardLoader(
            val_shards,
            batch_size=batch_size,
            tasks=(),
            shuffle=False,
            seed=seed,
            expected_normalizer=normalizer,
            max_events=n_events,
        )
        for x, _targets, _weights in loader:
            yield x.numpy().astype(np.float32, copy=False)
        return
    from xec.geometry import N_SENSORS

    rng = np.random.default_rng(seed)
    for start in range(0, n_events, batch_size):
        n = min(batch_size, n_events - start)
        npho = rng.exponential(300.0, (n, N_SENSORS)) * rng.uniform(0.2, 3.0, (n, 1))
        npho[rng.random((n, N_SENSORS)) < 0.01] = 1e10
        t = rng.normal(3e-8, 1e-8, (n, N_SENSORS))
        yield normalizer.normalize_events(npho, t)


def _inpaint_mask(x: np.ndarray, sentinel: float, rng: np.random.Generator) -> np.ndarray:
    return ((x[..., 0] == np.float32(sentinel)) | (rng.random(x.shape[:2]) < MASK_FRACTION)).astype(np.float32)


def _feeds(meta: ModelMetadata, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The graph's inputs for normalized events ``x``: as they are, with a mask for an
    inpainter, or back in raw units (dead / no time = 1e10) for the raw-unit inpainter."""
    if meta.stage == "regressor":
        # every other event with dead sensors, as real data has: the graph's dead-sensor fill
        # (xec.models.aggregates, sparse in the export) is compared too, not only clean events
        dead = rng.random(x.shape[:2]) < PARITY_DEAD_FRACTION
        dead[0::2] = False
        x = x.copy()
        x[dead] = np.float32(meta.normalizer.sentinel)
        return {"input": x}
    mask = _inpaint_mask(x, meta.normalizer.sentinel, rng)
    if meta.io_units != "raw":
        return {"input": x, "mask": mask}
    with np.errstate(over="ignore"):
        npho = np.nan_to_num(meta.normalizer.denormalize_npho(x[..., 0]), nan=NO_VALUE)
        time = np.nan_to_num(meta.normalizer.denormalize_time(x[..., 1]), nan=NO_VALUE)
    return {"npho": npho.astype(np.float32), "relative_time": time.astype(np.float32), "mask": mask}


def _threshold_flips(
    meta: ModelMetadata, got: list[np.ndarray], ref: list[np.ndarray], rtol: float, atol: float
) -> int:
    """Inpainter outputs: a filled npho at the time threshold gets a time on one side and none
    (the no-time marker) on the other from float32 rounding alone. Such sensors are counted and
    their time taken from the reference (in ``got``, in place); a flip whose npho is not at the
    threshold within the tolerance stays and fails the comparison."""
    if meta.stage != "inpainter":
        return 0
    norm = meta.normalizer
    thr = float(norm.npho_forward(np.float64(norm.npho_threshold)))
    if meta.io_units == "raw":
        g_t, (r_n, r_t), none = got[1], ref, np.float32(NO_VALUE)
        npho_n = norm.npho_forward(np.maximum(r_n.astype(np.float64), 0.0))
    else:
        g_t, r_t, none = got[0][..., 1], ref[0][..., 1], np.float32(norm.sentinel)
        npho_n = ref[0][..., 0].astype(np.float64)
    flip = ((g_t == none) != (r_t == none)) & (np.abs(npho_n - thr) <= atol + rtol * abs(thr))
    if meta.io_units == "raw":
        got[1] = np.where(flip, r_t, g_t)
    else:
        got[0] = got[0].copy()
        got[0][..., 1] = np.where(flip, r_t, g_t)
    return int(flip.sum())


def _check_passthrough(feeds: dict[str, np.ndarray], got: Sequence[np.ndarray]) -> bool:
    """Raw-unit inpainter: every sensor neither masked nor dead comes out bit-exactly."""
    npho = feeds["npho"]
    keep = (feeds["mask"] <= 0.5) & ~(np.isnan(npho) | (npho > 9e9))
    return bool(np.array_equal(got[0][keep], npho[keep]) and np.array_equal(got[1][keep], feeds["relative_time"][keep]))


# Ill-conditioned regressor events may be excluded from the verdict up to this fraction of the
# parity events; more means a real export error or a pathological model, and fails.
MAX_UNSTABLE_FRACTION = 0.02
INPUT_ROUNDING = 1e-6  # relative input perturbation of the stability probe (float32 reassociation)


def _event_diffs(
    got: Sequence[np.ndarray], ref: Sequence[np.ndarray], names: Sequence[str], std, rtol: float, atol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per event, over all outputs in judged units: the worst |diff| / (atol + rtol |ref|) and the
    largest standardized |diff| (both (B,))."""
    ratio, z_max = np.zeros(len(ref[0])), np.zeros(len(ref[0]))
    for name, o, r in zip(names, got, ref):
        mean, sd = std.get(name, (0.0, 1.0))
        z_diff = (np.abs(o.astype(np.float64) - r.astype(np.float64)) / sd).reshape(len(r), -1)
        z_ref = np.abs((r.astype(np.float64) - mean) / sd).reshape(len(r), -1)
        ratio = np.maximum(ratio, (z_diff / (atol + rtol * z_ref)).max(1))
        z_max = np.maximum(z_max, z_diff.max(1))
    return ratio, z_max


def _float64_reference(graph64: nn.Module, x: np.ndarray) -> list[np.ndarray] | None:
    """``graph64`` (a float64 copy of the graph) on ``x``, or None where the graph does not run
    in float64."""
    try:
        with torch.no_grad():
            out = graph64(torch.from_numpy(x.astype(np.float64)))
    except (RuntimeError, TypeError) as err:  # an op with a fixed float32 dtype
        log.debug("parity: no float64 reference (%s)", err)
        return None
    out = [out] if isinstance(out, torch.Tensor) else list(out)
    return [o.numpy() for o in out]


def _unstable(
    graph: nn.Module,
    x: np.ndarray,
    ref: Sequence[np.ndarray],
    deviation: np.ndarray,
    names,
    std,
    sentinel: float,
    rng: np.random.Generator,
    draws: int = 4,
) -> np.ndarray:
    """(B,) events whose PyTorch output moves under a relative INPUT_ROUNDING perturbation of the
    live inputs by at least half their ONNX deviation (``deviation``: (B,) max standardized
    |diff| over the outputs): the network is discontinuous there, not the export wrong."""
    moved = np.zeros(len(x))
    live = x != np.float32(sentinel)
    for _ in range(draws):
        noise = (1.0 + INPUT_ROUNDING * rng.standard_normal(x.shape)).astype(np.float32)
        with torch.no_grad():
            out = graph(torch.from_numpy(np.where(live, x * noise, x)))
        out = [out] if isinstance(out, torch.Tensor) else list(out)
        moved = np.maximum(moved, _event_diffs([o.numpy() for o in out], ref, names, std, 0.0, 1.0)[1])
    return moved >= 0.5 * deviation


class _Errors:
    """Running max abs / max rel / worst tolerance ratio per output."""

    def __init__(
        self,
        names: Sequence[str],
        rtol: float,
        atol: float,
        standardization: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ):
        """``standardization``: output name -> (mean, std); those outputs are compared as
        (y - mean) / std."""
        self.rtol, self.atol = rtol, atol
        self.standardization = standardization or {}
        self.stats = {n: {"max_abs": 0.0, "max_rel": 0.0, "worst_ratio": 0.0} for n in names}

    def add(self, name: str, onnx_out: np.ndarray, ref: np.ndarray) -> None:
        if onnx_out.shape != ref.shape:
            raise XecError(f"output {name}: ONNX shape {onnx_out.shape} != PyTorch shape {ref.shape}")
        if not np.isfinite(onnx_out).all() or not np.isfinite(ref).all():
            raise XecError(
                f"output {name}: non-finite values (ONNX finite: {np.isfinite(onnx_out).all()}, "
                f"PyTorch finite: {np.isfinite(ref).all()})"
            )
        ref64 = ref.astype(np.float64)
        diff = np.abs(onnx_out.astype(np.float64) - ref64)
        s = self.stats[name]
        # max abs / rel in the output's own units; relative errors only where the relative
        # tolerance binds (|ref| >= atol/rtol): near zero the absolute tolerance decides
        big = np.abs(ref64) >= (self.atol / self.rtol if self.rtol > 0 else _TINY)
        s["max_abs"] = max(s["max_abs"], float(diff.max(initial=0.0)))
        s["max_rel"] = max(s["max_rel"], float((diff[big] / np.abs(ref64[big])).max(initial=0.0)))
        mean, std = self.standardization.get(name, (0.0, 1.0))
        z_diff, z_ref = diff / std, np.abs((ref64 - mean) / std)
        s["worst_ratio"] = max(s["worst_ratio"], float((z_diff / (self.atol + self.rtol * z_ref)).max(initial=0.0)))

    @property
    def ok(self) -> bool:
        return all(s["worst_ratio"] <= 1.0 for s in self.stats.values())


def check_parity(
    onnx_path: Path,
    graph: nn.Module,
    meta: ModelMetadata,
    batches: Iterator[np.ndarray],
    rtol: float,
    atol: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare ONNX Runtime (CPU) with PyTorch on every batch, and on the first two events one
    at a time (a second batch size exercises the dynamic batch axis)."""
    from xec.deploy.runtime import make_session

    session = make_session(onnx_path, device="cpu")
    std = {}
    if meta.io_units == "raw":  # judged in (linearized) normalized units: photons / npho_scale, time_n
        norm = meta.normalizer
        std = {
            "output_npho": (np.float64(0.0), np.float64(norm.npho_scale)),
            "output_relative_time": (np.float64(norm.time_shift * norm.time_scale), np.float64(norm.time_scale)),
        }
    if meta.stage == "regressor" and meta.target_standardization:
        for task, stats in meta.target_standardization.items():
            mean, sd = np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["std"], dtype=np.float64)
            std[f"output_{task}"] = (mean, sd)
            if task in meta.sigma_tasks:  # a sigma in units of the target spread
                std[meta.sigma_output_name(task)] = (np.zeros_like(mean), sd)
    errors = _Errors(meta.outputs, rtol, atol, std)
    rng = np.random.default_rng(seed)
    n_events, batch_sizes = 0, set()
    passthrough, flips, unstable, unstable_ratio, rounding = True, 0, 0, 0.0, 0
    graph64 = None
    for i, x in enumerate(batches):
        feeds = _feeds(meta, x, rng)
        splits = [feeds] + (
            [{k: v[j : j + 1] for k, v in feeds.items()} for j in range(min(2, len(x)))] if i == 0 else []
        )
        for f in splits:
            with torch.no_grad():
                ref = graph(*(torch.from_numpy(f[name]) for name in meta.inputs))
            ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
            got = session.run(list(meta.outputs), f)
            ref = [r.numpy() for r in ref]
            flips += _threshold_flips(meta, got, ref, rtol, atol)
            keep = slice(None)
            if meta.stage == "regressor":
                ratio, deviation = _event_diffs(got, ref, meta.outputs, std, rtol, atol)
                bad = np.flatnonzero(ratio > 1.0)
                if bad.size and graph64 is None:  # one float64 copy, made only when needed
                    graph64 = copy.deepcopy(graph).double()
                precise = _float64_reference(graph64, f["input"][bad]) if bad.size else None
                if precise is not None:  # ONNX right, PyTorch's float32 off: not an export error
                    ratio64, _ = _event_diffs([o[bad] for o in got], precise, meta.outputs, std, rtol, atol)
                    rounding += int((ratio64 <= 1.0).sum())
                    passed64, bad = bad[ratio64 <= 1.0], bad[ratio64 > 1.0]
                else:
                    passed64 = bad[:0]
                if bad.size:
                    ill = _unstable(
                        graph,
                        f["input"][bad],
                        [r[bad] for r in ref],
                        deviation[bad],
                        meta.outputs,
                        std,
                        meta.normalizer.sentinel,
                        rng,
                    )
                    unstable += int(ill.sum())
                    unstable_ratio = max(unstable_ratio, float(ratio[bad][ill].max(initial=0.0)))
                    passed64 = np.concatenate([passed64, bad[ill]])
                keep = np.setdiff1d(np.arange(len(ratio)), passed64)
            for name, o, r in zip(meta.outputs, got, ref):
                errors.add(name, o[keep], r[keep])
            if meta.io_units == "raw":
                passthrough &= _check_passthrough(f, got)
            batch_sizes.add(len(f[meta.inputs[0]]))
        n_events += len(x)
    if n_events == 0:
        raise XecError("parity check: no events to compare (empty val shards?)")
    too_unstable = unstable > MAX_UNSTABLE_FRACTION * n_events
    if too_unstable:
        log.error(
            "parity: %d of %d events are ill-conditioned (more than %.0f %% allowed)",
            unstable,
            n_events,
            100 * MAX_UNSTABLE_FRACTION,
        )
    report = {
        "events": n_events,
        "batch_sizes": sorted(batch_sizes),
        "rtol": rtol,
        "atol": atol,
        "outputs": errors.stats,
        "passed": errors.ok and passthrough and not too_unstable,
        "max_abs": max(s["max_abs"] for s in errors.stats.values()),
        "max_rel": max(s["max_rel"] for s in errors.stats.values()),
        "io_units": meta.io_units,
    }
    if meta.stage == "inpainter":
        report["time_threshold_flips"] = flips
    if meta.stage == "regressor":
        # events on a discontinuity of the network (see the module docstring), left out of "outputs"
        report["unstable_events"] = unstable
        report["unstable_worst_ratio"] = unstable_ratio
        report["float32_reference_events"] = rounding
    if meta.io_units == "raw":
        report["passthrough_exact"] = passthrough
    return report


def export_checkpoint(
    checkpoint: str,
    out: str,
    val_shards: str | None = None,
    opset: int = 17,
    parity_events: int = 256,
    parity_batch_size: int = 64,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    seed: int = 0,
    exporter: str = "torchscript",
    raw_units: bool = False,
) -> dict[str, Any]:
    """Export, check parity, and only then write ``out`` and its parity sidecar (atomically).
    ``raw_units``: the raw-unit inpainter (RawInpainterGraph)."""
    import onnx

    _check_options(opset, exporter)  # before the (slow) checkpoint load
    t0 = time.perf_counter()
    ckpt = load_checkpoint(checkpoint, expected_stage=tuple(GRAPHS))
    try:
        graph, meta, _ = build_graph(ckpt, raw_units)
    except XecError as exc:
        raise XecError(f"{checkpoint}: {exc}") from exc
    if not val_shards:
        log.warning("no --val-shards given: parity is checked on seeded synthetic events only")
    if meta.io_units == "raw":
        example = (torch.full((2, 4760), 500.0), torch.full((2, 4760), 3e-8), torch.zeros(2, 4760))
    elif meta.stage == "regressor":
        example = (torch.zeros(2, 4760, 2),)
    else:
        example = (torch.zeros(2, 4760, 2), torch.zeros(2, 4760))
    out_path = Path(out)
    with atomic_path(out_path, suffix=".onnx") as tmp:
        export_graph(graph, meta, example, tmp, opset, exporter)
        model = onnx.load(str(tmp))
        actual_opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        meta = ModelMetadata(**{**meta.__dict__, "versions": {**meta.versions, "opset": str(actual_opset)}})
        set_metadata(model, meta)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        batches = parity_batches(val_shards, meta.normalizer, parity_events, parity_batch_size, seed)
        report = check_parity(tmp, graph, meta, batches, rtol, atol, seed)
        for name, s in report["outputs"].items():
            log.info(
                "parity %s: max abs %.3g, max rel %.3g, worst |diff|/(atol+rtol|ref|) %.3g",
                name,
                s["max_abs"],
                s["max_rel"],
                s["worst_ratio"],
            )
        report.update(
            checkpoint=str(checkpoint),
            model=str(out_path),
            stage=meta.stage,
            val_shards=val_shards,
            opset=actual_opset,
            exporter=exporter,
            seconds=time.perf_counter() - t0,
            versions=meta.versions,
            normalization_preset=meta.normalizer.preset,
        )
        if not report.get("passthrough_exact", True):
            raise XecError(
                f"{checkpoint}: the raw-unit inpainter changed sensors it must pass through; {out} not written"
            )
        if not report["passed"]:
            bad = {n: s for n, s in report["outputs"].items() if s["worst_ratio"] > 1.0}
            raise XecError(
                f"{checkpoint}: ONNX vs PyTorch parity failed (rtol {rtol}, atol {atol}) for "
                + "; ".join(f"{n}: max abs {s['max_abs']:.3g}, max rel {s['max_rel']:.3g}" for n, s in bad.items())
                + (
                    f"; {report['unstable_events']} of {report['events']} events ill-conditioned (more than "
                    f"{100 * MAX_UNSTABLE_FRACTION:.0f} % allowed)"
                    if report.get("unstable_events", 0) > MAX_UNSTABLE_FRACTION * report["events"]
                    else ""
                )
                + f"; {out} not written"
            )
        write_json(parity_path(out_path), report)
    log.info(
        "%s: %s exported (opset %d, %.1f s); parity max abs %.3g, max rel %.3g on %d events",
        out,
        meta.stage,
        actual_opset,
        report["seconds"],
        report["max_abs"],
        report["max_rel"],
        report["events"],
    )
    return report
