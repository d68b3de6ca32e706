"""`xec inpainting`: the exported inpainter against the classical dead-sensor recoveries.

    xec inpainting --inpainter results/inpainter/model.onnx
                   --sample val results/data/val.root --sample realdata results/data/realdata.root
                   --out results/inpainting/summary.json [--markdown ...md] [--html ...html]
                   [--plots DIR] [--threads N] [--config CFG] [--log LOG]
                   [--finetuned results/inpainter_finetune/model.onnx --holdout-sample realdata]

Per sample, live sensors are hidden (config ``inpainting.hide``, per face and event, among the
sensors with >= ``inpainting.min_npho`` photons; seeded with ``seed``) and the inpainter, the
neighbour average and the solid-angle rule are scored on exactly those sensors
(xec.inpainting.evaluate). The inpainter is the exported ONNX model, run through ONNX Runtime
as `xec infer` runs it on real data: what is scored is what is deployed, with the
normalization preset its metadata carries. Outputs (each atomic): the JSON, a markdown and an
HTML table (xec.summary_tables) and one plot per face (xec.plots.inpainting).

With ``--finetuned`` (the inpainter fine-tuned on the realdata sample by `xec finetune`), the
events of ``--holdout-sample`` that the fine-tuning held out (hash of run and event,
``finetune.holdout_fraction``; xec.inpainting.holdout) are also scored apart, on the same
hidden sensors, with both inpainters and the classical rules: the JSON's ``finetune`` entry,
a table of its own (what the fine-tuning gains over the simulation-only inpainter).
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

log = logging.getLogger("xec.inpainting")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inpainter", required=True, help="exported inpainter (model.onnx)")
    parser.add_argument(
        "--sample",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "FILE"),
        help="a sample name and its ROOT files or globs (repeat per sample)",
    )
    parser.add_argument("--out", required=True, help="summary JSON")
    parser.add_argument("--markdown", default=None, help="also write the table as markdown")
    parser.add_argument("--html", default=None, help="also write the table as HTML (Snakemake report)")
    parser.add_argument("--plots", default=None, help="directory for one plot per face (<face>.png)")
    parser.add_argument("--log", default=None, help="log file")
    add_threads_argument(parser)
    parser.add_argument(
        "--finetuned",
        default=None,
        help="the inpainter fine-tuned on realdata (xec finetune, then export): scored on the held-out events",
    )
    parser.add_argument(
        "--holdout-sample",
        default="realdata",
        help="the sample whose held-out events (finetune.holdout_fraction) --finetuned is scored on (default realdata)",
    )
    add_config_argument(parser)


def run(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    from xec.baseline.reco import BaselineConfig
    from xec.config import plain
    from xec.deploy.onnx_meta import read_metadata
    from xec.deploy.runtime import make_session
    from xec.inpainting.evaluate import FINETUNED, evaluate_sample
    from xec.inpainting.holdout import ID_BRANCHES, check_fraction, event_ids, holdout_flags
    from xec.inpainting.masking import check_counts
    from xec.inputs import expand_inputs
    from xec.rootio import check_branches, count_events, iterate_events, open_tree

    sec, data = cfg["inpainting"], cfg["data"]
    counts = check_counts(plain(sec["hide"]))
    edges = [float(e) for e in sec["npho_bins"]]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise XecError(f"config inpainting.npho_bins must increase, got {edges}")
    samples: dict[str, list[str]] = {}
    for entry in args.sample:
        if len(entry) < 2:
            raise XecError(f"--sample {entry[0]}: give the sample's ROOT files after its name")
        if entry[0] in samples:
            raise XecError(f"--sample {entry[0]} given twice")
        samples[entry[0]] = expand_inputs(entry[1:])
    tree, npho_b, time_b = data["tree"], data["npho_branch"], data["time_branch"]
    for files in samples.values():  # every input checked before the (long) evaluation
        for path in files:
            check_branches(open_tree(path, tree), path, (npho_b, time_b))
    meta = read_metadata(args.inpainter, expected_stage="inpainter")
    if meta.io_units != "normalized":
        raise XecError(f"{args.inpainter}: a {meta.io_units}-unit inpainter; give the normalized export (model.onnx)")
    icfg = cfg["inference"]
    session = make_session(args.inpainter, icfg["device"], threads_from(args, icfg))
    finetuned, fraction = None, None
    if args.finetuned:
        if args.holdout_sample not in samples:
            raise XecError(f"--holdout-sample {args.holdout_sample}: no such --sample (have {list(samples)})")
        fraction = check_fraction(cfg["finetune"]["holdout_fraction"])
        fmeta = read_metadata(args.finetuned, expected_stage="inpainter")
        if fmeta.io_units != "normalized":
            raise XecError(f"{args.finetuned}: a {fmeta.io_units}-unit inpainter; give the normalized export")
        fmeta.normalizer.check_compatible(meta.normalizer, where=f"{args.finetuned} vs {args.inpainter}")
        finetuned = make_session(args.finetuned, icfg["device"], threads_from(args, icfg))
    bcfg = BaselineConfig.from_dict(plain(cfg["baseline"]))
    max_events = sec["max_events"]
    result: dict[str, Any] = {
        "meta": {
            "inpainter": str(args.inpainter),
            "normalization_preset": meta.normalizer.preset,
            "hide": counts,
            "min_npho": float(sec["min_npho"]),
            "npho_bins": edges,
            "goal_ratio": float(sec["goal_ratio"]),
            "seed": int(cfg["seed"]),
            "max_events": max_events,
            "radius_cm": bcfg.dead_radius_cm,
            "fallback_npho": bcfg.dead_fallback_npho,
            "metrics": "relative error (pred - true) / true of npho on hidden sensors: rel_mae = mean |.|, "
            "rel_rms = sqrt(mean (.)^2), bias = mean (.); time_mae_ns on those with a true time",
        },
        "samples": {},
    }
    for name, files in samples.items():
        t0 = time.perf_counter()
        total = count_events(files, tree)
        if max_events is not None:
            total = min(total, int(max_events))

        split = finetuned is not None and name == args.holdout_sample

        def chunks(files=files, total=total, split=split):
            seen = 0
            entry: dict[str, int] = {}
            for path, arrays in iterate_events(
                files, tree, (npho_b, time_b), optional_branches=ID_BRANCHES, step_size=int(sec["chunk_size"])
            ):
                npho, t = arrays[npho_b][: total - seen], arrays[time_b][: total - seen]
                if len(npho) == 0:
                    return
                first = entry.get(path, 0)
                entry[path] = first + len(arrays[npho_b])
                seen += len(npho)
                if not split:
                    yield npho, t
                    continue
                ids = event_ids({k: v[: len(npho)] for k, v in arrays.items() if k in ID_BRANCHES}, first, len(npho))
                yield npho, t, holdout_flags(*ids, fraction)

        scores = evaluate_sample(
            chunks(),
            edges,
            session=session,
            normalizer=meta.normalizer,
            bcfg=bcfg,
            counts=counts,
            min_npho=float(sec["min_npho"]),
            seed=int(cfg["seed"]),
            batch_size=int(sec["batch_size"]),
            where=", ".join(files),
            finetuned=finetuned if split else None,
        )
        if split:
            scores, held = scores
            result["finetune"] = finetune_result(
                held.result(float(sec["goal_ratio"])), FINETUNED, float(sec["goal_ratio"])
            )
            result["finetune"].update(sample=name, holdout_fraction=fraction, finetuned=str(args.finetuned))
        res = scores.result(float(sec["goal_ratio"]))
        if not res["faces"]:
            raise XecError(f"{', '.join(files)}: no sensor could be hidden (none with >= {sec['min_npho']} photons?)")
        res["files"] = files
        res["seconds"] = time.perf_counter() - t0
        result["samples"][name] = res
        log.info(
            "%s: %d events, %d hidden sensors in %.1f s",
            name,
            res["events"],
            sum(res["hidden"].values()),
            res["seconds"],
        )
    result["goal_met"] = all(s["goal_met"] for s in result["samples"].values())
    if "finetune" in result:
        ft = result["finetune"]
        log.info(
            "%s held-out events (%d): relative MAE simulation-only -> fine-tuned inpainter: %s",
            ft["sample"],
            ft["events"],
            ", ".join(
                f"{f} {e['inpainter']['rel_mae']:.3f} -> {e[FINETUNED]['rel_mae']:.3f}" for f, e in ft["faces"].items()
            ),
        )
    return result


def finetune_result(held: dict[str, Any], method: str, goal_ratio: float) -> dict[str, Any]:
    """The held-out scores with, per face, the fine-tuned inpainter's relative MAE over the
    simulation-only one's (``gain``: < 1 means the fine-tuning helps) and over the solid-angle
    rule's (``ratio_to_solid_angle_finetuned``, ``goal_met_finetuned``)."""
    for e in held["faces"].values():
        e["gain"] = e[method]["rel_mae"] / e["inpainter"]["rel_mae"]
        e["ratio_to_solid_angle_finetuned"] = e[method]["rel_mae"] / e["solid_angle"]["rel_mae"]
        e["goal_met_finetuned"] = bool(e["ratio_to_solid_angle_finetuned"] <= goal_ratio)
    held["goal_met_finetuned"] = bool(held["faces"]) and all(e["goal_met_finetuned"] for e in held["faces"].values())
    return held


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config, command="inpainting")
    result = run(args, cfg)
    from xec.summary_tables import inpainting_html, inpainting_markdown
    from xec.utils import write_tables

    md = inpainting_markdown(result)
    if args.plots:
        from xec.plots.inpainting import inpainting_plots

        inpainting_plots(result, args.plots)
    html = inpainting_html(result) if args.html else ""
    write_tables(args.out, result, (args.markdown, md + "\n"), (args.html, html))
    log.info("inpainting -> %s\n%s", args.out, md)
    return 0
