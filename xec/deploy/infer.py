"""`xec infer`: run exported ONNX models on MEG II ROOT files, streaming chunk by chunk.

    xec infer --model results/regressor/model.onnx [--inpainter results/inpainter/model.onnx]
              [--fill {sentinel,neighbour,solid_angle,inpainter}]
              --input FILE.root [FILE2.root ...] --out results/inference/realdata.root
              [--parquet results/inference/realdata.parquet] [--batch-size N] [--preset NAME]
              [--config CFG] [--log LOG]

The normalization comes from the model's ONNX metadata (xec.deploy.onnx_meta); a ``--preset``
that disagrees with it is an error, never an override. With ``--inpainter`` the dead sensors of
each event (npho > 9e9 or NaN, i.e. the normalized npho equals the preset's sentinel) are filled
by the inpainter before the regressor sees the event. ``--fill`` chooses the dead-sensor treatment
(xec.deploy.infer.Predictor): ``sentinel`` (left as the preset's sentinel; the default without
``--inpainter``), ``neighbour`` or ``solid_angle`` (the classical recoveries of xec.baseline,
solid angles seen from the classical position fit of the same event: xec.baseline.fill; config
section ``baseline``) or ``inpainter`` (the default with ``--inpainter``; the dead sensors inside a
hole, e.g. a dead readout board, are filled by the solid-angle rule first, config
``inference.hole_fill``: xec.baseline.fill). Memory is bounded by one chunk
(``inference.chunk_size`` events), whatever the size of the input files.

Output columns (the same in the ROOT TTree ``tree`` of ``--out`` and in the parquet file; the
parquet defaults to ``--out`` with the suffix ``.parquet``), one row per event, in input order:

====================  =======================================================================
column                meaning
====================  =======================================================================
run, event            int64, from the file's ``run``/``event`` branches (absent: run -1 and
                      the event's index over all input files)
n_dead                int32, number of dead sensors (normalized npho == sentinel)
pred_<task>_<col>     float32 prediction in physical units, e.g. pred_angle_theta (deg),
                      pred_angle_phi (deg), pred_energy_energy (GeV), pred_timing_time (ns),
                      pred_uvwFI_u / _v / _w (cm); tasks and columns from xec.targets
sigma_<task>_<col>    float32 per-event 1-sigma uncertainty of pred_<task>_<col>, same unit
                      (e.g. sigma_energy_energy GeV, sigma_timing_time ns, sigma_uvwFI_u cm),
                      for the model's sigma tasks (output_<task>_sigma; calibrated on val)
true_<task>_<col>     MC truth of the same quantity, when the file has the truth branch
reco_<task>_<col>     classical reconstruction (energyReco, timeReco, uvwRecoFI), when present
opening_angle_deg     angle (deg) between the predicted and the true emission direction
                      (needs the angle task and ``emiAng``), via xec.metrics.opening_angle_deg
pileup_energy_truth,  the simulated pile-up gamma's energy (GeV, 0 = none) and time relative
pileup_time_truth     to the main gamma (ns), when the file has pileupEnergyTruth/TimeTruth
====================  =======================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xec.commands import INFER_FILL_COMMANDS, infer_command
from xec.config import add_config_argument, load_config
from xec.deploy.onnx_meta import ModelMetadata, read_metadata
from xec.deploy.runtime import add_threads_argument, make_session, run_batched, threads_from
from xec.errors import InputFileError, XecError
from xec.normalization import Normalizer
from xec.scatter import add_failure_record_argument
from xec.utils import arrow_table, atomic_path, progress_enabled, setup_logging

log = logging.getLogger("xec.infer")

# dead-sensor treatments (--fill; xec.deploy.infer.Predictor): sentinel, inpainter, neighbour, solid_angle
FILLS = tuple(INFER_FILL_COMMANDS)
HOLE_FILLS = ("solid_angle", "inpainter")  # inference.hole_fill: what fills a dead board (Predictor)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported regressor (model.onnx)")
    parser.add_argument("--inpainter", default=None, help="exported inpainter: fill dead sensors first")
    parser.add_argument(
        "--fill",
        choices=FILLS,
        default=None,
        help="dead sensors: left as the sentinel, filled by the neighbour average, by the solid-angle rule "
        "(xec.baseline) or by the inpainter (default: inpainter with --inpainter, else sentinel)",
    )
    parser.add_argument("--input", required=True, nargs="+", help="ROOT files or globs")
    parser.add_argument("--out", required=True, help="output ROOT file (TTree 'tree')")
    parser.add_argument("--parquet", default=None, help="output parquet (default: --out with suffix .parquet)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="events per ONNX Runtime call (default: config inference.batch_size)",
    )
    parser.add_argument("--preset", default=None, help="expected normalization preset; must match the model's")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="ONNX Runtime device (default: config inference.device)",
    )
    add_threads_argument(parser)
    parser.add_argument("--log", default=None, help="log file")
    add_failure_record_argument(parser)
    add_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    # onnxruntime's import (~0.1 s) in a thread while the config is read and checked; the
    # sessions' threads (Predictor) then find it done
    threading.Thread(target=importlib.import_module, args=("onnxruntime",), name="xec-import-ort").start()
    setup_logging(args.log)
    fill = resolve_fill(args.fill, args.inpainter)
    cfg = load_config(args.config, command=infer_command(fill))
    icfg = cfg["inference"]
    data = cfg["data"]
    baseline = None
    if uses_rule(fill, icfg["hole_fill"]):
        from xec.baseline.reco import BaselineConfig
        from xec.config import plain

        baseline = BaselineConfig.from_dict(plain(cfg["baseline"]))
    stats = run_inference(
        model=args.model,
        inputs=args.input,
        out=args.out,
        parquet=args.parquet,
        inpainter=args.inpainter,
        fill=fill,
        baseline=baseline,
        preset=args.preset,
        batch_size=args.batch_size or icfg["batch_size"],
        chunk_size=icfg["chunk_size"],
        device=args.device or icfg["device"],
        intra_op_threads=threads_from(args, icfg),
        optimization=icfg["graph_optimization"],
        allow_spinning=icfg["allow_spinning"],
        time_from_live=icfg["time_from_live_sensors"],
        hole_fill=icfg["hole_fill"],
        tree=data["tree"],
        npho_branch=data["npho_branch"],
        time_branch=data["time_branch"],
    )
    log.info(
        "wrote %d events to %s and %s in %.1f s: %.0f events/s",
        stats["events"],
        args.out,
        stats["parquet"],
        stats["seconds"],
        stats["events_per_s"],
    )
    print(f"{stats['events']} events, {stats['events_per_s']:.0f} events/s")
    return 0


def load_models(
    model: str, inpainter: str | None, preset: str | None
) -> tuple[ModelMetadata, ModelMetadata | None, Normalizer]:
    """Read and cross-check the metadata of the regressor (and inpainter)."""
    meta = read_metadata(model, expected_stage="regressor")
    normalizer = meta.normalizer
    if preset is not None and preset != normalizer.preset:
        raise XecError(
            f"{model}: model was trained with normalization preset {normalizer.preset!r}, "
            f"but --preset {preset!r} was given (the model's preset cannot be overridden)"
        )
    inp_meta = None
    if inpainter is not None:
        inp_meta = read_metadata(inpainter, expected_stage="inpainter")
        if inp_meta.io_units != "normalized":
            raise XecError(
                f"{inpainter}: a {inp_meta.io_units}-unit inpainter (xec export --raw-units); "
                "xec infer takes the normalized export"
            )
        normalizer.check_compatible(inp_meta.normalizer, where=f"the inpainter {inpainter} (regressor {model})")
    return meta, inp_meta, normalizer


def _validate_inputs(files: list[str], tree: str, sensor_branches: tuple[str, ...]) -> int:
    """Check every input before writing anything: readable, branches present, not empty."""
    from xec.rootio import check_branches, open_tree

    total = 0
    for path in files:
        t = open_tree(path, tree)
        check_branches(t, path, sensor_branches)
        n = int(t.num_entries)
        if n == 0:
            raise InputFileError(path, f"{path}: tree {tree!r} has no events")
        total += n
    return total


def _event_columns(arrays: dict[str, np.ndarray], first_index: int) -> dict[str, np.ndarray]:
    n = len(next(iter(arrays.values())))
    run = arrays.get("run")
    event = arrays.get("event")
    return {
        "run": np.full(n, -1, np.int64) if run is None else np.asarray(run).astype(np.int64).reshape(n),
        "event": (
            np.arange(first_index, first_index + n, dtype=np.int64)
            if event is None
            else np.asarray(event).astype(np.int64).reshape(n)
        ),
    }


def prediction_columns(
    meta: ModelMetadata, preds: dict[str, np.ndarray], arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """pred_/sigma_/true_/reco_ columns and the opening angle for one chunk (names: module
    docstring); ``preds`` maps output names without ``output_`` (``energy``, ``energy_sigma``)."""
    from xec.metrics import opening_angle_deg
    from xec.targets import get_task, pileup_columns, targets_from_branches

    cols: dict[str, np.ndarray] = pileup_columns(arrays)
    truth = targets_from_branches(arrays, meta.tasks)
    reco = targets_from_branches(arrays, meta.tasks, reco=True)
    for task in meta.tasks:
        names = get_task(task).columns
        sigma = {task: preds[f"{task}_sigma"]} if task in meta.sigma_tasks else {}
        for prefix, source in (("pred", preds), ("sigma", sigma), ("true", truth), ("reco", reco)):
            if task in source:
                values = np.asarray(source[task], dtype=np.float32).reshape(len(source[task]), -1)
                for j, col in enumerate(names):
                    cols[f"{prefix}_{task}_{col}"] = values[:, j]
    if "angle" in preds and "angle" in truth:
        p, t = preds["angle"], truth["angle"]
        cols["opening_angle_deg"] = opening_angle_deg(p[:, 0], p[:, 1], t[:, 0], t[:, 1]).astype(np.float32)
    return cols


class StageTimes:
    """Wall seconds per inference stage (read, normalize, inpaint, regress, columns, write):
    logged by ``xec infer`` and tabulated by benchmarks/inference.py. ``xec infer`` runs three
    threads side by side (read + classical fill + normalize; the models; write), so the stages
    add up to more than the wall time; ``read`` is the time the models waited for a chunk."""

    STAGES = ("read", "normalize", "inpaint", "regress", "columns", "write")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.STAGES, 0.0)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def shares(self) -> str:
        total = sum(self.seconds.values()) or 1.0
        return ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f} %)" for k, v in self.seconds.items())


def read_ahead(chunks: Iterator[Any], times: StageTimes | None = None) -> Iterator[Any]:
    """Yield ``chunks`` while a thread produces the next one: ROOT decompression (lz4/zstd in
    C) and numpy, without the GIL, overlap the ONNX Runtime calls on the chunk before. ``times``
    gets the time the consumer waited for a chunk, i.e. the production that was not hidden."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xec-read") as pool:
        pending = pool.submit(next, chunks, None)
        while True:
            t0 = time.perf_counter()
            item = pending.result()  # re-raises a reading error (a truncated file) here
            if times is not None:
                times.seconds["read"] += time.perf_counter() - t0
            if item is None:
                return
            pending = pool.submit(next, chunks, None)
            yield item


def uses_rule(fill: str, hole_fill: str | None) -> bool:
    """Whether a run with this ``fill`` and ``inference.hole_fill`` calls the classical recovery
    (and so needs the ``baseline`` parameters)."""
    from xec.baseline.fill import CLASSICAL_FILLS

    return fill in CLASSICAL_FILLS or (fill == "inpainter" and hole_fill == "solid_angle")


def resolve_fill(fill: str | None, inpainter: str | None) -> str:
    """The dead-sensor treatment of a run: ``fill``, or without one ``inpainter`` when an
    inpainter is given (the behaviour of ``--inpainter`` alone) else ``sentinel``."""
    if fill is None:
        return "inpainter" if inpainter else "sentinel"
    if fill not in FILLS:
        raise XecError(f"unknown --fill {fill!r}; choose one of {FILLS}")
    if fill == "inpainter" and not inpainter:
        raise XecError("--fill inpainter needs --inpainter MODEL.onnx")
    if fill != "inpainter" and inpainter:
        raise XecError(f"--inpainter {inpainter} is used only with --fill inpainter (got --fill {fill})")
    return fill


class Predictor:
    """The regressor of ``xec infer`` on raw chunks: dead-sensor treatment, normalization and ONNX
    Runtime calls, the one home of that sequence (``xec infer`` and the dead-fraction sweep,
    xec.inpainting.deadsweep, both call it). ``fill`` (FILLS): dead sensors (npho > 9e9 or NaN)
    left as the preset's sentinel, filled by the classical neighbour average or solid-angle rule
    before the normalization (xec.baseline.fill, parameters ``baseline``: a
    xec.baseline.reco.BaselineConfig), or by the inpainter after it.

    ``time_from_live`` (config ``inference.time_from_live_sensors``): for the events with filled
    dead sensors, the timing outputs come from a second regressor pass in which those sensors
    have no time (the sentinel), the others from the filled input. A filled time (error ~1.4 ns
    for the inpainter) enters the regressor's time aggregate with the weight of a measured one
    (~0.2 ns) when its filled npho is bright; without a time it is skipped, as the classical
    reconstruction skips dead sensors. The encoder still wants the filled times for position and
    energy (without them: u x1.18, energy x1.21 at 10 % random dead sensors against x1.07, x1.09),
    hence two passes; docs/performance.md, "The event time from live sensors".

    ``hole_fill`` (config ``inference.hole_fill``; with ``fill`` inpainter only): ``solid_angle``
    fills the dead sensors inside a hole (a dead board: xec.baseline.fill.hole_mask) by the
    solid-angle rule before the normalization, the inpainter then fills the rest with the rule's
    values as context; ``inpainter``: the inpainter fills every dead sensor."""

    def __init__(
        self,
        model: str,
        inpainter: str | None = None,
        fill: str | None = None,
        preset: str | None = None,
        baseline: Any = None,
        batch_size: int = 256,
        device: str = "auto",
        intra_op_threads: int = 0,
        optimization: str = "all",
        allow_spinning: bool = False,
        time_from_live: bool = True,
        hole_fill: str = "solid_angle",
    ):
        if batch_size < 1:
            raise XecError(f"batch size must be >= 1 (got {batch_size})")
        if hole_fill not in HOLE_FILLS:
            raise XecError(f"unknown inference.hole_fill {hole_fill!r}; choose one of {HOLE_FILLS}")
        self.fill = resolve_fill(fill, inpainter)
        self.hole_fill = hole_fill if self.fill == "inpainter" else None
        if uses_rule(self.fill, hole_fill) and baseline is None:
            from xec.baseline.reco import BaselineConfig

            baseline = BaselineConfig()
        self.baseline = baseline
        self.model, self.batch_size = model, batch_size
        self.time_from_live = bool(time_from_live) and self.fill != "sentinel"
        if self.hole_fill == "solid_angle":
            # the holes' neighbour table (scipy's KD-tree: ~0.35 s with its import) is built
            # while ONNX Runtime builds the sessions, not in front of the first chunk
            from xec.baseline.fill import warm_up_holes

            warm_up_holes()
        self.meta, self.inp_meta, self.normalizer = load_models(model, inpainter, preset)
        # ONNX Runtime builds the sessions (its import and graph optimization: ~0.1-0.3 s per
        # graph on one core) in threads, one per graph, while the caller reads and normalizes
        # the first chunk; the first use of ``reg``/``inp`` waits and re-raises a loading error
        from concurrent.futures import ThreadPoolExecutor

        session_args = (device, intra_op_threads, optimization, allow_spinning)
        pool = ThreadPoolExecutor(max_workers=2 if inpainter else 1, thread_name_prefix="xec-sessions")
        self._reg = pool.submit(self._regressor_session, model, inpainter, session_args)
        self._inp = pool.submit(make_session, inpainter, *session_args) if inpainter else None
        pool.shutdown(wait=False)  # the threads end with their one task each
        self._session_pool = pool

    def _regressor_session(self, model: str, inpainter: str | None, session_args: tuple) -> Any:
        reg = make_session(model, *session_args)
        out_names = [o.name for o in reg.get_outputs()]
        if sorted(out_names) != sorted(self.meta.outputs):
            raise XecError(f"{model}: graph outputs {out_names} differ from its metadata {list(self.meta.outputs)}")
        log.info(
            "ONNX Runtime providers: %s; normalization preset %s; dead sensors: %s%s%s",
            reg.get_providers(),
            self.normalizer.preset,
            self.fill,
            f" ({inpainter})" if inpainter else "",
            "; holes (dead boards): solid-angle rule" if self.hole_fill == "solid_angle" else "",
        )
        return reg

    def settle(self) -> None:
        """Wait for the session threads, ignoring their errors: called when the run fails before
        using the sessions (a bad input file), so that the error is the command's last word, not
        followed by a session's log lines (or, in a test, written to a stream already closed).
        Joins the threads too: a task's future is done a moment before its thread has ended."""
        self._session_pool.shutdown(wait=True)

    @property
    def reg(self) -> Any:
        """The regressor's session (waits for its thread, re-raises its error)."""
        return self._reg.result()

    @property
    def inp(self) -> Any:
        """The inpainter's session, None without an inpainter (waits for its thread)."""
        return None if self._inp is None else self._inp.result()

    @functools.cached_property
    def out_names(self) -> list[str]:
        return [o.name for o in self.reg.get_outputs()]

    @functools.cached_property
    def timing_keys(self) -> list[str]:
        """The outputs the live-time pass replaces: timing and its sigma."""
        return [n[len("output_") :] for n in self.out_names if n.startswith("output_timing")]

    def inputs(
        self, npho: np.ndarray, time_s: np.ndarray, times: StageTimes | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(x, dead): the normalized (N, 4760, 2) input the regressor sees (before an inpainter),
        dead sensors treated by a classical ``fill``, and the (N, 4760) dead mask of the raw event."""
        from xec.baseline.fill import CLASSICAL_FILLS, dead_mask, fill_dead, hole_mask

        times = times if times is not None else StageTimes()
        dead = None
        if self.fill in CLASSICAL_FILLS:
            with times("inpaint"):
                npho, time_s, dead = fill_dead(npho, time_s, self.fill, self.baseline)
        elif self.hole_fill == "solid_angle":
            with times("inpaint"):
                dead = dead_mask(npho)  # the raw event's: the rule's holes no longer look dead after it
                holes = hole_mask(dead)
                if holes.any():
                    npho, time_s, _ = fill_dead(npho, time_s, "solid_angle", self.baseline, only=holes)
        with times("normalize"):
            x = self.normalizer.normalize_events(npho, time_s, precision="float32")
            if dead is None:
                dead = x[..., 0] == np.float32(self.normalizer.sentinel)
        return x, dead

    def predict(
        self, npho: np.ndarray, time_s: np.ndarray, times: StageTimes | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(predictions, n_dead) of raw chunk arrays: {output name without ``output_``: array}
        and the (N,) int32 number of dead sensors per event."""
        times = times if times is not None else StageTimes()
        return self.run(*self.inputs(npho, time_s, times), times)

    def run(
        self, x: np.ndarray, dead: np.ndarray, times: StageTimes | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """:meth:`predict` from :meth:`inputs`' (x, dead): the inpainter (x is filled in place)
        and the regressor, the ONNX Runtime part alone."""
        times = times if times is not None else StageTimes()
        rows = np.flatnonzero(dead.any(axis=1))  # events without dead sensors need no filling
        if self.inp is not None:
            with times("inpaint"):
                # the dead sensors still at the sentinel: not those a hole fill gave a value
                todo = dead & (x[..., 0] == np.float32(self.normalizer.sentinel))
                inp_rows = np.flatnonzero(todo.any(axis=1))
                if len(inp_rows):
                    feeds = {"input": x[inp_rows], "mask": todo[inp_rows].astype(np.float32)}
                    (x[inp_rows],) = run_batched(self.inp, feeds, self.batch_size)
        with times("regress"):
            outputs = run_batched(self.reg, {"input": x}, self.batch_size)
        preds = {name[len("output_") :]: val for name, val in zip(self.out_names, outputs)}
        if self.time_from_live and self.timing_keys and len(rows):
            with times("regress"):
                live = x[rows]  # a copy (fancy indexing)
                live[..., 1][dead[rows]] = np.float32(self.normalizer.sentinel)
                second = dict(zip(self.out_names, run_batched(self.reg, {"input": live}, self.batch_size)))
            for k in self.timing_keys:
                preds[k][rows] = second[f"output_{k}"]
        return preds, dead.sum(axis=1).astype(np.int32)


def iterate_predictions(
    model: str,
    inputs: list[str],
    inpainter: str | None = None,
    preset: str | None = None,
    batch_size: int = 256,
    chunk_size: int = 2000,
    device: str = "auto",
    intra_op_threads: int = 0,
    optimization: str = "all",
    allow_spinning: bool = False,
    tree: str = "tree",
    npho_branch: str = "npho",
    time_branch: str = "relative_time",
    times: StageTimes | None = None,
    fill: str | None = None,
    baseline: Any = None,
    time_from_live: bool = True,
    hole_fill: str = "solid_angle",
) -> Iterator[dict[str, np.ndarray]]:
    """Yield one dict of output columns per chunk. Validates the models and every input file
    before the first chunk; ``times`` (optional) accumulates the seconds per stage (the
    classical fills count as ``inpaint``); ``fill``/``baseline``: :class:`Predictor`."""
    from xec.rootio import PILEUP_BRANCHES, RECO_BRANCHES, TRUTH_BRANCHES, expand_inputs, iterate_events

    if batch_size < 1 or chunk_size < 1:
        raise XecError(f"batch size and chunk size must be >= 1 (got {batch_size}, {chunk_size})")
    predictor = Predictor(
        model,
        inpainter,
        fill,
        preset,
        baseline,
        batch_size,
        device,
        intra_op_threads,
        optimization,
        allow_spinning,
        time_from_live,
        hole_fill,
    )
    try:
        files = expand_inputs(inputs)
        _validate_inputs(files, tree, (npho_branch, time_branch))
    except BaseException:
        predictor.settle()
        raise
    optional = sorted({*TRUTH_BRANCHES, *RECO_BRANCHES, *PILEUP_BRANCHES})
    times = times if times is not None else StageTimes()
    seen = 0
    # the first chunk is two batches (one per batch worker on two threads): the models start
    # after reading and normalizing those instead of a whole chunk
    chunks = iterate_events(
        files,
        tree,
        (npho_branch, time_branch),
        optional_branches=optional,
        step_size=chunk_size,
        first_step=2 * batch_size,
    )

    def prepared() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
        # runs in read_ahead's thread: reading, the classical fills and the normalization of
        # the next chunk overlap ONNX Runtime on this one (numpy and decompression release the GIL)
        for _path, arrays in chunks:
            yield (arrays, *predictor.inputs(arrays[npho_branch], arrays[time_branch], times))

    for arrays, x, dead in read_ahead(prepared(), times):
        preds, n_dead = predictor.run(x, dead, times)
        with times("columns"):
            cols = _event_columns(arrays, seen)
            cols["n_dead"] = n_dead
            cols.update(prediction_columns(predictor.meta, preds, arrays))
        seen += len(n_dead)
        yield cols


def run_inference(model: str, inputs: list[str], out: str, parquet: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Stream predictions into a ROOT TTree and a parquet file, both written atomically: on
    any error neither output exists (and an older one is left untouched)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq
    from tqdm import tqdm

    from xec.rootio import count_events, expand_inputs, tree_writer

    parquet = parquet or str(Path(out).with_suffix(".parquet"))
    if Path(parquet).resolve() == Path(out).resolve():
        raise XecError(f"{out}: --parquet must differ from --out")
    times = StageTimes()
    predictions = iterate_predictions(model, inputs, times=times, **kwargs)
    t0 = time.perf_counter()
    n = 0
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(unit="ev", desc="infer", disable=not progress_enabled()))
        cols = next(predictions)  # validation errors surface here, before any output exists
        bar.total = count_events(expand_inputs(inputs), kwargs.get("tree", "tree"))
        writer = stack.enter_context(tree_writer(out, "tree", title="xec inference"))
        pq_tmp = stack.enter_context(atomic_path(parquet, suffix=".parquet"))
        pq_writer = stack.enter_context(pq.ParquetWriter(pq_tmp, arrow_table(cols).schema))

        def write(cols: dict[str, np.ndarray]) -> None:
            with times("write"):
                pq_writer.write_table(arrow_table(cols))
                writer.extend(cols)

        # chunk k is written while chunk k+1 runs through the models; the pool is entered after
        # the writers, so it is joined before they close (or are discarded on an error)
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="xec-write"))
        pending = None
        while cols is not None:
            if pending is not None:
                pending.result()  # re-raises a writing error; at most one chunk in flight
            pending = pool.submit(write, cols)
            n += len(cols["run"])
            bar.update(len(cols["run"]))
            cols = next(predictions, None)
        if pending is not None:
            pending.result()
    seconds = time.perf_counter() - t0
    log.info("time per stage: %s", times.shares())
    return {
        "events": n,
        "seconds": seconds,
        "events_per_s": n / max(seconds, 1e-9),
        "parquet": parquet,
        "stage_seconds": dict(times.seconds),
    }
