"""`xec baseline`: the classical reconstruction (xec.baseline.reco) of MEG II ROOT files.

    xec baseline --calibrate-on results/data/train.root --calibration results/baseline/calibration.json
    xec baseline --input results/data/bench.root --calibration results/baseline/calibration.json
                 --out results/baseline/bench.parquet [--root-out results/baseline/bench.root]

With ``--calibrate-on`` it reconstructs (at most ``baseline.calibration_events``) train events,
fits the energy and time calibration against their truth and writes it to ``--calibration``.
With ``--input`` it reconstructs every event and writes a parquet file with one row per event
(the column names follow ``xec infer`` so that the summary and plots read both the same way):

=====================  ======================================================================
run, event             int64 (absent in the file: run -1 and the running event index)
pred_uvwFI_u/_v/_w     first-interaction position (cm), chi2 fit of the inner-face pattern
pred_energy_energy     energy (GeV), calibrated; NaN when no ``--calibration`` is given
pred_timing_time       gamma time (ns, same reference as timeTruth/relative_time)
pred_angle_theta/_phi  direction (deg) from the target centre to the position
xyz_x, xyz_y, xyz_z    position in MEG II coordinates (cm)
energy_raw             face-weighted npho sum before the position/energy corrections (GeV)
chi2ndf, fit_status    fit quality; status 0 converged, 1 iteration limit, 2 no light
n_dead, n_time         dead sensors in the event; sensors used for the time
true_<task>_<col>      truth, when the file has it (emiAng, energyTruth, timeTruth, uvwTruth)
opening_angle_deg      angle between the reconstructed and the true direction (needs emiAng)
pileup_energy_truth,   pile-up gamma energy (GeV, 0 = none) and relative time (ns), when the
pileup_time_truth      file has pileupEnergyTruth/pileupTimeTruth (simulated pile-up samples)
=====================  ======================================================================

``--root-out`` writes a copy of the input (all per-sensor and truth branches present) with the
reco branches energyReco, timeReco, uvwRecoFI and xyzRecoFI filled by this reconstruction.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xec.baseline.reco import BaselineConfig, Calibration, calibrate, reconstruct_chunk
from xec.config import add_config_argument, load_config, plain
from xec.errors import InputFileError, XecError
from xec.scatter import add_failure_record_argument
from xec.utils import arrow_table, atomic_path, progress_enabled, setup_logging, write_json

log = logging.getLogger("xec.baseline")

TASK_COLUMNS = {"angle": ("theta", "phi"), "energy": ("energy",), "timing": ("time",), "uvwFI": ("u", "v", "w")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", default=None, help="ROOT files or globs to reconstruct")
    parser.add_argument("--out", default=None, help="output parquet (one row per event)")
    parser.add_argument(
        "--calibration", default=None, help="calibration JSON: read it (with --input) or write it (with --calibrate-on)"
    )
    parser.add_argument(
        "--calibrate-on",
        nargs="+",
        default=None,
        metavar="ROOT",
        help="train ROOT files with truth: fit the energy/time calibration on them",
    )
    parser.add_argument("--root-out", default=None, help="also write a ROOT copy of the input with the reco branches")
    parser.add_argument("--max-events", type=int, default=None, help="reconstruct at most this many events")
    add_config_argument(parser)
    parser.add_argument("--log", default=None, help="log file")
    add_failure_record_argument(parser)


def _settings(cfg: Mapping[str, Any]) -> tuple[BaselineConfig, dict[str, Any]]:
    """The reconstruction parameters and the whole ``baseline`` section (a plain dict: it goes
    into the calibration JSON) of a validated config."""
    section = plain(cfg["baseline"])
    return BaselineConfig.from_dict(section), section


def _event_ids(arrays: dict[str, np.ndarray], first: int) -> dict[str, np.ndarray]:
    n = len(next(iter(arrays.values())))
    run, event = arrays.get("run"), arrays.get("event")
    return {
        "run": np.full(n, -1, np.int64) if run is None else np.asarray(run).astype(np.int64).reshape(n),
        "event": (
            np.arange(first, first + n, dtype=np.int64)
            if event is None
            else np.asarray(event).astype(np.int64).reshape(n)
        ),
    }


def reco_columns(reco: dict[str, np.ndarray], arrays: dict[str, np.ndarray], first: int) -> dict[str, np.ndarray]:
    """Parquet columns of one chunk (names: module docstring)."""
    from xec.metrics import opening_angle_deg
    from xec.targets import pileup_columns, targets_from_branches

    cols = _event_ids(arrays, first)
    cols.update(pileup_columns(arrays))
    f32 = np.float32
    for j, c in enumerate("uvw"):
        cols[f"pred_uvwFI_{c}"] = reco["uvw"][:, j].astype(f32)
    cols["pred_energy_energy"] = reco["energy"].astype(f32)
    cols["pred_timing_time"] = reco["time"].astype(f32)
    cols["pred_angle_theta"] = reco["theta"].astype(f32)
    cols["pred_angle_phi"] = reco["phi"].astype(f32)
    for j, c in enumerate("xyz"):
        cols[f"xyz_{c}"] = reco["xyz"][:, j].astype(f32)
    cols["energy_raw"] = reco["energy_raw"].astype(f32)
    cols["chi2ndf"] = (reco["chi2"] / np.maximum(reco["ndf"], 1)).astype(f32)
    cols["fit_status"] = reco["status"].astype(np.int8)
    cols["n_dead"] = reco["n_dead"].astype(np.int32)
    cols["n_time"] = reco["n_time"].astype(np.int32)
    truth = targets_from_branches(arrays, tuple(TASK_COLUMNS))
    for task, names in TASK_COLUMNS.items():
        if task in truth:
            for j, c in enumerate(names):
                cols[f"true_{task}_{c}"] = truth[task][:, j]
    if "angle" in truth:
        t = truth["angle"]
        cols["opening_angle_deg"] = opening_angle_deg(reco["theta"], reco["phi"], t[:, 0], t[:, 1]).astype(f32)
    return cols


def _present_branches(files: list[str], tree: str, names: tuple[str, ...]) -> list[str]:
    from xec.rootio import open_tree

    keys = set(open_tree(files[0], tree).keys())
    for path in files[1:]:
        keys &= set(open_tree(path, tree).keys())
    return [b for b in names if b in keys]


def iterate_reco(
    files: list[str],
    section: Mapping[str, Any],
    bcfg: BaselineConfig,
    calib: Calibration | None,
    tree: str,
    extra_sensor: tuple[str, ...] = (),
    max_events: int | None = None,
    desc: str = "baseline",
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Yield (reco, arrays) per chunk; arrays holds the branches read (truth where present)."""
    from tqdm import tqdm

    from xec.rootio import PILEUP_BRANCHES, RECO_BRANCHES, TRUTH_BRANCHES, count_events, iterate_events

    npho_b, time_b = section["npho_branch"], section["time_branch"]
    sensor = tuple(dict.fromkeys((npho_b, time_b, *extra_sensor)))
    total = count_events(files, tree)
    if max_events is not None:
        total = min(total, max_events)
    if total == 0:
        raise XecError(
            f"{files[0]}: no events in tree {tree!r}" if len(files) == 1 else f"{', '.join(files)}: no events"
        )
    seen = 0
    optional = sorted({*TRUTH_BRANCHES, *RECO_BRANCHES, *PILEUP_BRANCHES})
    with tqdm(total=total, desc=desc, unit="ev", disable=not progress_enabled()) as bar:
        for _path, arrays in iterate_events(
            files, tree, sensor, optional_branches=optional, step_size=int(section["chunk_size"])
        ):
            if seen >= total:
                break
            if seen + len(arrays[npho_b]) > total:
                arrays = {k: v[: total - seen] for k, v in arrays.items()}
            npho = arrays[npho_b]
            reco = reconstruct_chunk(npho, arrays[time_b], bcfg, calib)
            seen += len(npho)
            bar.update(len(npho))
            yield reco, arrays


def run_calibration(files: list[str], out: str, cfg: Mapping[str, Any], max_events: int | None = None) -> Calibration:
    bcfg, section = _settings(cfg)
    tree = cfg["data"]["tree"]
    limit = max_events if max_events is not None else section["calibration_events"]
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("face_sums", "uvw_fit", "xyz_fit", "status", "time_raw", "energy_raw")
    }
    e_true, t_true, xyz_true = [], [], []
    for reco, arrays in iterate_reco(files, section, bcfg, None, tree, max_events=limit, desc="calibration"):
        if "energyTruth" not in arrays:
            raise XecError(f"{files[0]}: calibration needs the truth branch energyTruth")
        for k in parts:
            parts[k].append(reco[k])
        e = np.asarray(arrays["energyTruth"], np.float64).reshape(-1)
        if "pileupEnergyTruth" in arrays:
            # the calibration is of one gamma's response: events with a piled-up second gamma
            # (a train sample simulated with pile-up) are left out, as NaN truth
            e = np.where(np.asarray(arrays["pileupEnergyTruth"]).reshape(-1) > 0, np.nan, e)
        e_true.append(e)
        t_true.append(
            np.asarray(arrays["timeTruth"], np.float64).reshape(-1)
            if "timeTruth" in arrays
            else np.full(len(reco["uvw"]), np.nan)
        )
        xyz_true.append(
            np.asarray(arrays["xyzTruth"], np.float64)
            if "xyzTruth" in arrays
            else np.full((len(reco["uvw"]), 3), np.nan)
        )
    reco_all = {k: np.concatenate(v) for k, v in parts.items()}
    tt, xt = np.concatenate(t_true), np.concatenate(xyz_true)
    try:
        calib = calibrate(
            reco_all,
            np.concatenate(e_true),
            None if np.all(np.isnan(tt)) else tt,
            None if np.all(np.isnan(xt)) else xt,
            meta={"files": [str(f) for f in files], "baseline": section},
        )
    except ValueError as exc:
        raise XecError(f"{files[0]}: {exc}") from exc
    from xec import __version__

    calib.meta["xec_version"] = __version__
    write_json(out, calib.to_dict())
    log.info(
        "calibration from %d events -> %s (time offset %.3f ns)", calib.meta["n_events"], out, calib.time_offset_ns
    )
    return calib


def load_calibration(path: str) -> Calibration:
    p = Path(path)
    if not p.exists():
        raise XecError(f"{path}: calibration file not found (run `xec baseline --calibrate-on ...` first)")
    try:
        return Calibration.from_dict(json.loads(p.read_text()))
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise XecError(f"{path}: not a baseline calibration ({exc})") from exc


def run_baseline(
    files: list[str],
    out: str,
    cfg: Mapping[str, Any],
    calib: Calibration | None,
    root_out: str | None = None,
    max_events: int | None = None,
) -> dict[str, Any]:
    """Reconstruct ``files`` into the parquet ``out`` (and the ROOT copy ``root_out``), both atomic."""
    import contextlib

    import pyarrow.parquet as pq

    from xec.rootio import PILEUP_BRANCHES, SENSOR_BRANCHES, TRUTH_BRANCHES, tree_writer

    bcfg, section = _settings(cfg)
    tree = cfg["data"]["tree"]
    extra = tuple(_present_branches(files, tree, SENSOR_BRANCHES)) if root_out else ()
    t0 = time.perf_counter()
    n = 0
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(out, suffix=".parquet"))
        rw = stack.enter_context(tree_writer(root_out, tree)) if root_out else None
        writer = None
        for reco, arrays in iterate_reco(files, section, bcfg, calib, tree, extra, max_events):
            cols = reco_columns(reco, arrays, n)
            table = arrow_table(cols)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            if rw is not None:
                copy = {b: arrays[b] for b in extra}
                copy.update({b: v for b, v in arrays.items() if b in TRUTH_BRANCHES or b in PILEUP_BRANCHES})
                copy.update(
                    energyReco=reco["energy"].astype(np.float32),
                    timeReco=reco["time"].astype(np.float32),
                    uvwRecoFI=reco["uvw"].astype(np.float32),
                    xyzRecoFI=reco["xyz"].astype(np.float32),
                )
                rw.extend(copy)
            n += len(cols["run"])
        if writer is None:
            raise InputFileError(files[0], f"{files[0]}: no events to reconstruct")
        writer.close()
    dt = time.perf_counter() - t0
    log.info("baseline: %d events in %.1f s (%.0f events/s) -> %s", n, dt, n / max(dt, 1e-9), out)
    return {"events": n, "seconds": dt}


def main(args: argparse.Namespace) -> int:
    from xec.rootio import expand_inputs

    setup_logging(args.log)
    cfg = load_config(args.config, command="baseline")
    if not args.input and not args.calibrate_on:
        raise XecError("nothing to do: give --input FILE.root and --out, and/or --calibrate-on TRAIN.root")
    if args.max_events is not None and args.max_events < 1:
        raise XecError(f"--max-events must be >= 1, got {args.max_events}")
    calib = None
    if args.calibrate_on:
        if not args.calibration:
            raise XecError("--calibrate-on needs --calibration PATH to write the calibration to")
        calib = run_calibration(expand_inputs(args.calibrate_on), args.calibration, cfg, args.max_events)
    if args.input:
        if not args.out:
            raise XecError("--input needs --out PATH.parquet")
        if calib is None and args.calibration:
            calib = load_calibration(args.calibration)
        if calib is None:
            log.warning("no --calibration: the energy column will be NaN")
        run_baseline(expand_inputs(args.input), args.out, cfg, calib, args.root_out, args.max_events)
    return 0
