"""`xec deadsweep`: resolution of the ML and of the classical reconstruction vs the fraction of
dead sensors (xec.inpainting.deadsweep), on the first ``deadsweep.max_events`` events of a
sample with truth (the pipeline's bench).

    xec deadsweep --model results/regressor/model.onnx --inpainter results/inpainter/model.onnx
                  --calibration results/baseline/calibration.json --input results/data/bench.root
                  --out results/deadsweep/summary.json [--markdown ...md] [--html ...html]
                  [--plot ...png] [--threads N] [--config CFG] [--log LOG]

Config ``deadsweep``: fractions, patterns (random, clustered readout boards of ``board_size``
adjacent sensors: xec.inpainting.boards), the ML's dead-sensor treatments ``ml_fills`` (default:
the inpainter), ``max_events``; ``seed`` seeds the dead sensors; ``baseline``: the classical
reconstruction. Outputs (each atomic): the JSON (points, wall seconds per method), a markdown and
an HTML table (xec.summary_tables.deadsweep_rows) and the plot (xec.plots.deadsweep).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from xec.config import add_config_argument, load_config
from xec.deploy.runtime import add_threads_argument, threads_from
from xec.errors import XecError
from xec.utils import setup_logging

log = logging.getLogger("xec.deadsweep")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported regressor (model.onnx)")
    parser.add_argument(
        "--inpainter", default=None, help="exported inpainter (needed for the ml_fills entry inpainter)"
    )
    parser.add_argument("--calibration", required=True, help="baseline calibration JSON (xec baseline --calibrate-on)")
    parser.add_argument("--input", required=True, nargs="+", help="ROOT files or globs of a sample with truth")
    parser.add_argument("--out", required=True, help="summary JSON")
    parser.add_argument("--markdown", default=None, help="also write the table as markdown")
    parser.add_argument("--html", default=None, help="also write the table as HTML (Snakemake report)")
    parser.add_argument("--plot", default=None, help="resolution vs dead fraction plot (PNG; a PDF next to it)")
    add_threads_argument(parser)
    parser.add_argument("--log", default=None, help="log file")
    add_config_argument(parser)


def run(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    from xec.baseline.cli import load_calibration
    from xec.baseline.reco import BaselineConfig
    from xec.config import plain
    from xec.deploy.infer import Predictor
    from xec.inpainting.boards import check_sweep, readout_boards
    from xec.inpainting.deadsweep import sweep
    from xec.inputs import expand_inputs
    from xec.rootio import TRUTH_BRANCHES, check_branches, count_events, iterate_events, open_tree

    sec, data = cfg["deadsweep"], cfg["data"]
    fractions, patterns = check_sweep(sec["fractions"], sec["patterns"])
    board_size = int(sec["board_size"])
    boards = readout_boards(board_size)
    fills = list(sec["ml_fills"])
    if "inpainter" in fills and not args.inpainter:
        raise XecError("config deadsweep.ml_fills has 'inpainter': give --inpainter MODEL.onnx")
    files = expand_inputs(args.input)
    tree, npho_b, time_b = data["tree"], data["npho_branch"], data["time_branch"]
    for path in files:  # every input checked before the sweep
        check_branches(open_tree(path, tree), path, (npho_b, time_b))
    calib = load_calibration(args.calibration)
    bcfg = BaselineConfig.from_dict(plain(cfg["baseline"]))
    icfg = cfg["inference"]
    threads = threads_from(args, icfg)
    batch = int(sec["batch_size"])
    predictors = {
        f"ml_{fill}": Predictor(
            args.model,
            args.inpainter if fill == "inpainter" else None,
            fill,
            baseline=bcfg,
            batch_size=batch,
            device=icfg["device"],
            intra_op_threads=threads,
            time_from_live=icfg["time_from_live_sensors"],
            hole_fill=icfg["hole_fill"],
        )
        for fill in fills
    }
    total = min(count_events(files, tree), int(sec["max_events"]))

    def chunks():
        seen = 0
        for _path, arrays in iterate_events(
            files, tree, (npho_b, time_b), optional_branches=sorted(TRUTH_BRANCHES), step_size=int(sec["chunk_size"])
        ):
            arrays = {k: v[: total - seen] for k, v in arrays.items()}
            n = len(arrays[npho_b])
            if n == 0:
                return
            seen += n
            yield arrays, arrays[npho_b], arrays[time_b]

    t0 = time.perf_counter()
    try:
        result = sweep(
            chunks(),
            predictors=predictors,
            bcfg=bcfg,
            calib=calib,
            fractions=fractions,
            patterns=patterns,
            seed=int(cfg["seed"]),
            board_size=board_size,
            n_boot=int(sec["n_boot"]),
        )
    except ValueError as exc:
        raise XecError(f"{', '.join(files)}: {exc}") from exc
    if result["events"] == 0:
        raise XecError(f"{', '.join(files)}: no events")
    result["seconds"]["total"] = time.perf_counter() - t0
    result["meta"] = {
        "files": files,
        "model": str(args.model),
        "inpainter": str(args.inpainter) if args.inpainter else None,
        "fractions": fractions,
        "patterns": patterns,
        "board_size": board_size,
        "boards": len(boards),
        "ml_fills": fills,
        "hole_fill": icfg["hole_fill"],
        "seed": int(cfg["seed"]),
        "max_events": int(sec["max_events"]),
        "metric": "68 % half-width of the residuals (xec.metrics.resolution) against the truth: u, v, w (mm), "
        "energy (E_reco/E_true - 1, %), time (ps)",
    }
    return result


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config, command="deadsweep")
    t0 = time.perf_counter()
    result = run(args, cfg)
    from xec.summary_tables import deadsweep_html, deadsweep_markdown
    from xec.utils import write_tables

    md = deadsweep_markdown(result)
    if args.plot:
        from xec.plots.deadsweep import deadsweep_plot

        deadsweep_plot(result, args.plot)
    html = deadsweep_html(result) if args.html else ""
    result["seconds"]["wall"] = time.perf_counter() - t0
    write_tables(args.out, result, (args.markdown, md + "\n"), (args.html, html))
    s = result["seconds"]
    log.info(
        "deadsweep: %d events, %d points in %.1f s (%s) -> %s\n%s",
        result["events"],
        len(result["points"]),
        s["wall"],
        ", ".join(f"{k} {v:.1f} s" for k, v in s.items() if k != "wall"),
        args.out,
        md,
    )
    return 0
