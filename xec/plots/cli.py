"""`xec plots`: every plot that the files of a pipeline run allow.

    xec plots --results results --out results/plots [--bench-root results/data/bench.root]
              [--part all|physics|training] [--config CFG] [--log LOG]

``--part physics`` makes the plots of the reconstructed samples (residuals, profiles, pulls,
realdata, event displays), ``--part training`` those of the trained models (training curves,
MAE and inpainter examples, saliency); the pipeline runs them as two jobs (`plots` and
`training_plots`), so that the training half runs beside the inference jobs.

Reads (each optional; a plot whose inputs are missing is skipped with a log line):
  inference/bench.parquet, baseline/bench.parquet       bench residuals, profiles, energy,
                                                        timing, opening angle, worst events,
                                                        pulls and resolution vs the fraction
                                                        kept by a cut on the ML sigma
  inference/pileup.parquet, baseline/pileup.parquet   pile-up sample residuals
  inference/realdata.parquet, inference/realdata_noinpaint.parquet, baseline/realdata.parquet
                                                        real-data distributions (and residuals
                                                        when the file has truth)
  regressor/predictions.parquet, baseline/val.parquet  resolution (68 % and core) vs true energy (val:
                                                        plots.profile_energy_mev), matched on (run, event)
  regressor/checkpoint.pt + shards/val/manifest.json   saliency per face and task (xec.plots.saliency,
                                                        plots.saliency_events val events)
  {mae,inpainter,regressor}/metrics.json                training curves
  mae/checkpoint.pt, inpainter/checkpoint.pt + shards/val/manifest.json
                                                        MAE reconstructions, inpainter truth vs
                                                        prediction (models run on a few val events)
  the bench ROOT file                                   event displays of the worst events
Writes OUT/<name>.png and .pdf per plot and OUT/index.json (made and skipped plots).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xec.config import add_config_argument, load_config
from xec.errors import XecError
from xec.summary import fiducial_mask
from xec.utils import setup_logging, write_json

log = logging.getLogger("xec.plots")
PARTS = ("all", "physics", "training")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="results directory of the run")
    parser.add_argument("--out", default=None, help="plot directory (default: RESULTS/plots)")
    parser.add_argument(
        "--bench-root",
        nargs="*",
        default=None,
        help="bench ROOT file(s) for the event displays (default: config data.bench or RESULTS/data/bench.root)",
    )
    parser.add_argument("--part", choices=PARTS, default="all", help="which plots: all (default), physics or training")
    add_config_argument(parser)
    parser.add_argument("--log", default=None, help="log file")


class PlotRun:
    """Calls plot functions, records what was made and why the rest was skipped."""

    def __init__(self, out: Path, formats: tuple[str, ...], dpi: int):
        self.out, self.formats, self.dpi = out, formats, dpi
        self.made: dict[str, list[str]] = {}
        self.skipped: dict[str, str] = {}

    def __call__(self, name: str, fn: Callable[..., list[Path]], *args: Any, **kwargs: Any) -> None:
        try:
            files = fn(*args, out=self.out / name, formats=self.formats, dpi=self.dpi, **kwargs)
        except (ValueError, KeyError, XecError, FileNotFoundError) as exc:
            self.skip(name, f"{type(exc).__name__}: {exc}")
            return
        self.made[name] = [str(f) for f in files]
        log.info("plot %s", name)

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why
        log.warning("skipped plot %s: %s", name, why)


def _read_capped(path: Path, what: str, max_events: int | None = None):
    """The frame of an infer/baseline/val-predictions parquet, or None (missing or unreadable:
    the plots that need it are skipped, the others still made)."""
    from xec.summary import read_results

    if not path.exists():
        log.info("%s: %s not found", what, path)
        return None
    try:
        return read_results(str(path), max_events)
    except XecError as exc:
        log.warning("%s: %s", what, exc)
        return None


def _matched(frames: dict, what: str) -> dict:
    """The methods restricted to their common (run, event) pairs (xec.summary: every resolution
    compares the same events); unmatched frames as they are, with a log line."""
    from xec.summary import match_events

    if len(frames) < 2:
        return frames
    try:
        return match_events(frames, {k: f"{what} {k}" for k in frames})
    except XecError as exc:
        log.warning("%s: methods not matched on (run, event): %s", what, exc)
        return frames


def _bench_files(args: argparse.Namespace, cfg: Mapping[str, Any], results: Path) -> list[str]:
    import glob

    if args.bench_root:
        return list(args.bench_root)
    # an empty data.bench means "the simulated bench sample" (schema), which the pipeline writes here
    patterns = cfg["data"]["bench"] or [str(results / "data" / "bench.root")]
    return sorted(f for p in patterns for f in glob.glob(p))


def worst_events(df, n: int) -> pd.DataFrame:  # noqa: F821
    """The ``n`` events with the largest position error |uvw_reco - uvw_true| (else the largest
    opening angle)."""
    cols = [f"uvwFI_{c}" for c in "uvw"]
    if all(f"pred_{c}" in df.columns and f"true_{c}" in df.columns for c in cols):
        err = np.sqrt(sum((df[f"pred_{c}"] - df[f"true_{c}"]) ** 2 for c in cols))
        label = "position error (cm)"
    elif "opening_angle_deg" in df.columns:
        err, label = df["opening_angle_deg"], "opening angle (deg)"
    else:
        raise ValueError("no truth to rank events by")
    df = df.assign(rank_error=np.nan_to_num(np.asarray(err, dtype=np.float64), nan=np.inf))
    out = df.sort_values("rank_error", ascending=False).head(n)
    out.attrs["label"] = label
    return out


def fetch_events(files: list[str], keys: list[tuple[int, int]], tree: str = "tree") -> dict[tuple[int, int], dict]:
    """npho and relative_time (ns) of the events (run, event) from ROOT files (chunked scan).
    Files without run/event branches are indexed by running entry number with run -1."""
    from xec.rootio import iterate_events

    want = set(keys)
    found: dict[tuple[int, int], dict] = {}
    seen = 0
    for _path, a in iterate_events(
        files, tree, ("npho", "relative_time"), optional_branches=("run", "event"), step_size=1000
    ):
        n = len(a["npho"])
        run = a["run"].astype(np.int64).reshape(n) if "run" in a else np.full(n, -1)
        ev = a["event"].astype(np.int64).reshape(n) if "event" in a else np.arange(seen, seen + n)
        for i in range(n):
            k = (int(run[i]), int(ev[i]))
            if k in want:
                t = a["relative_time"][i].astype(np.float64)
                found[k] = {"npho": a["npho"][i], "time_ns": np.where(np.abs(t) < 9e9, t * 1e9, np.nan)}
        seen += n
        if len(found) == len(want):
            break
    return found


def make_plots(
    results: Path, out: Path, cfg: Mapping[str, Any], bench_files: list[str], part: str = "all"
) -> dict[str, Any]:
    """Every plot of ``part`` (PARTS) that the files under ``results`` allow, into ``out``
    (``cfg``: a validated config); writes and returns ``out``/index.json."""
    if part not in PARTS:
        raise XecError(f"plots part {part!r}: expected one of {', '.join(PARTS)}")
    sec = cfg["plots"]
    run = PlotRun(out, tuple(sec["formats"]), int(sec["dpi"]))
    if part in ("all", "physics"):
        _physics_plots(run, results, cfg, bench_files)
    if part in ("all", "training"):
        _training_plots(run, results, cfg)
    index = {"made": run.made, "skipped": run.skipped}
    write_json(out / "index.json", index)
    return index


def _physics_plots(run: PlotRun, results: Path, cfg: Mapping[str, Any], bench_files: list[str]) -> None:
    """Residuals, resolution profiles, pulls, pile-up, realdata and event displays."""
    from xec import plots as P

    sec = cfg["plots"]
    n_bins, n_boot = int(sec["profile_bins"]), int(sec["n_boot"])
    n_core = int(sec["n_boot_core"])
    cap = cfg["summary"]["max_events"]

    def _read(path: Path, what: str):  # every sample at most summary.max_events events (xec.runs)
        return _read_capped(path, what, cap)

    def _methods(ml: Path, baseline: Path, sample: str) -> dict:  # the ML and classical frames present
        frames = (("ML", _read(ml, f"{sample} ML")), ("baseline", _read(baseline, f"{sample} baseline")))
        return {k: v for k, v in frames if v is not None}

    bench = _methods(results / "inference" / "bench.parquet", results / "baseline" / "bench.parquet", "bench")
    if bench:
        bench = _matched(bench, "bench")
        run("residuals_bench", P.residual_distributions, bench, title="bench (52.8 MeV): residuals")
        lim = cfg["summary"]["fiducial"]
        fid = {k: v[fiducial_mask(v, lim, "true_")] for k, v in bench.items() if "true_uvwFI_u" in v.columns}
        if fid:
            title = f"bench, fiducial volume (u {lim['u']}, v {lim['v']}, w {lim['w']} cm): residuals"
            run("residuals_bench_fiducial", P.residual_distributions, fid, title=title)
        for var in ("theta", "phi", "u", "v", "w", "energy"):
            title = f"bench (52.8 MeV): resolution vs true {var} (filled: 68 % half-width, open: Gaussian core)"
            run(
                f"profile_vs_{var}_bench",
                P.resolution_profiles,
                bench,
                var,
                n_bins=n_bins,
                n_boot=n_boot,
                n_boot_core=n_core,
                title=title,
            )
        run("energy_response_bench", P.energy_response, bench)
        ml = bench.get("ML")
        if ml is not None and any(c.startswith("sigma_") for c in ml.columns):
            classes = {"all": np.ones(len(ml), bool)}
            if "true_uvwFI_u" in ml.columns:
                classes["fiducial"] = fiducial_mask(ml, lim, "true_")
            run("sigma_kept_fraction_bench", P.kept_fraction, ml, classes, title="bench: resolution vs kept fraction")
            run("pulls_bench", P.pull_distributions, ml, title="bench: pulls (dashed: unit Gaussian)")
        run("timing_residuals_bench", P.timing_residuals, bench)
        run("opening_angle_bench", P.opening_angle_distribution, bench)
    else:
        run.skip("bench", "no bench predictions (inference/bench.parquet, baseline/bench.parquet)")

    pileup = _methods(results / "inference" / "pileup.parquet", results / "baseline" / "pileup.parquet", "pile-up")
    if pileup:
        title = "pile-up sample (bench with a second gamma in a fraction of the events): residuals"
        run("residuals_pileup", P.residual_distributions, _matched(pileup, "pileup"), title=title)

    val = _methods(results / "regressor" / "predictions.parquet", results / "baseline" / "val.parquet", "val")
    if val:
        val = _matched(val, "val")
        run("residuals_val", P.residual_distributions, val, title="val (15-60 MeV): residuals")
        # resolution vs the true energy over the val range, fixed 15-60 MeV bins (angles included)
        lo, hi = sec["profile_energy_mev"]
        run(
            "profile_vs_energy_val",
            P.resolution_profiles,
            val,
            "energy",
            n_boot=n_boot,
            n_boot_core=n_core,
            edges=np.linspace(lo, hi, n_bins + 1),
            title=f"val: resolution vs true energy ({lo:g}-{hi:g} MeV; filled: 68 % half-width, open: core)",
        )
        run("energy_response_val", P.energy_response, val)

    real = {
        k: v
        for k, v in (
            ("ML (inpainted)", _read(results / "inference" / "realdata.parquet", "realdata ML")),
            (
                "ML (no inpainting)",
                _read(results / "inference" / "realdata_noinpaint.parquet", "realdata ML no inpainting"),
            ),
            ("baseline", _read(results / "baseline" / "realdata.parquet", "realdata baseline")),
        )
        if v is not None
    }
    if real:
        run("realdata_distributions", P.realdata_distributions, real)
        if any(c.startswith("true_") for d in real.values() for c in d.columns):
            run("residuals_realdata", P.residual_distributions, real, title="realdata (dead sensors): residuals")
            run("opening_angle_realdata", P.opening_angle_distribution, real)
    real_ml = results / "inference" / "realdata.parquet"
    if real_ml.exists():
        from xec.runs import run_table

        base = results / "baseline" / "realdata.parquet"
        try:
            rows = run_table(real_ml, base if base.exists() else None)
            run("run_stability_realdata", P.run_stability, rows)
        except (XecError, OSError, ValueError) as exc:
            run.skip("run_stability_realdata", f"{type(exc).__name__}: {exc}")

    n_worst = int(sec["worst_events"])
    ranked_from = bench.get("ML", bench.get("baseline"))
    if n_worst and ranked_from is not None:
        try:
            worst = worst_events(ranked_from, n_worst)
            if not bench_files:
                raise FileNotFoundError("no bench ROOT file for the event displays")
            keys = [(int(r), int(e)) for r, e in zip(worst["run"], worst["event"])]
            events = fetch_events(bench_files, keys, cfg["data"]["tree"])
            for i, (k, err) in enumerate(zip(keys, worst["rank_error"])):
                if k not in events:
                    run.skip(f"event_display_worst_{i}", f"event {k} not found in {bench_files}")
                    continue
                title = (
                    f"bench run {k[0]} event {k[1]}: {worst.attrs['label']} {err:.2f} "
                    f"({'ML' if 'ML' in bench else 'baseline'})"
                )
                run(f"event_display_worst_{i}", P.event_display, events[k]["npho"], events[k]["time_ns"], title=title)
        except (ValueError, FileNotFoundError, XecError) as exc:
            run.skip("event_display_worst", f"{type(exc).__name__}: {exc}")


def _training_plots(run: PlotRun, results: Path, cfg: Mapping[str, Any]) -> None:
    """Training curves, MAE and inpainter examples and the regressor saliency (the models run
    on a few val events)."""
    from xec import plots as P

    sec = cfg["plots"]
    metrics = {}
    for stage in ("mae", "inpainter", "regressor"):
        p = results / stage / "metrics.json"
        if p.exists():
            try:
                metrics[stage] = json.loads(p.read_text())
            except json.JSONDecodeError as exc:
                run.skip(f"training_curves[{stage}]", f"{p}: not valid JSON ({exc})")
    if metrics:
        run("training_curves", P.training_curves, metrics)

    n_ex = int(sec["examples"])
    val_manifest = results / "shards" / "val" / "manifest.json"
    for stage, fn in (("mae", _mae_plots), ("inpainter", _inpainter_plots)):
        ck = results / stage / "checkpoint.pt"
        if n_ex and ck.exists() and val_manifest.exists():
            try:
                fn(run, str(ck), str(val_manifest), n_ex)
            except Exception as exc:  # a model problem must not cost the other plots
                run.skip(f"{stage}_examples", f"{type(exc).__name__}: {exc}")
        else:
            run.skip(f"{stage}_examples", f"needs {ck} and {val_manifest}")

    n_sal = int(sec["saliency_events"])
    ck = results / "regressor" / "checkpoint.pt"
    if n_sal and ck.exists() and val_manifest.exists():
        try:
            from xec.plots.saliency import run_saliency, saliency_bars

            result = run_saliency(str(ck), str(val_manifest), n_sal)
            log.info("saliency: %d val events in %.1f s", result["events"], result["seconds"])
            run("saliency_regressor", saliency_bars, result)
        except Exception as exc:  # a model problem must not cost the other plots
            run.skip("saliency_regressor", f"{type(exc).__name__}: {exc}")
    else:
        run.skip("saliency_regressor", f"needs {ck} and {val_manifest} (and plots.saliency_events > 0)")


def _mae_plots(run: PlotRun, ckpt: str, manifest: str, n: int) -> None:
    from xec.plots.models import mae_reconstruction, run_mae_examples

    for i, ex in enumerate(run_mae_examples(ckpt, manifest, n)):
        run(
            f"mae_reconstruction_{i}",
            mae_reconstruction,
            ex["npho"],
            ex["mask"],
            ex["reco_npho"],
            title=f"MAE: val event {i}",
        )


def _inpainter_plots(run: PlotRun, ckpt: str, manifest: str, n: int) -> None:
    from xec.plots.models import inpainter_truth_vs_prediction, run_inpainter_examples

    saved = Path(ckpt).parent / "predictions.root"  # written with inpainter.predictions_root
    if saved.exists():
        import uproot

        with uproot.open(saved) as f:
            a = f["inpaint"].arrays(["sensor", "truth_npho", "pred_npho"], library="np", entry_stop=200_000)
        ex = {"truth": a["truth_npho"], "pred": a["pred_npho"], "sensor": a["sensor"]}
        log.info("inpainter: %d hidden sensors from %s", len(ex["truth"]), saved)
    else:
        ex = run_inpainter_examples(ckpt, manifest, n=max(32, 32 * n))
    run("inpainter_truth_vs_prediction", inpainter_truth_vs_prediction, ex["truth"], ex["pred"], ex["sensor"])


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config, command="plots")
    results = Path(args.results)
    if not results.is_dir():
        raise XecError(f"{results}: results directory not found")
    out = Path(args.out) if args.out else results / "plots"
    out.mkdir(parents=True, exist_ok=True)
    index = make_plots(results, out, cfg, _bench_files(args, cfg, results), args.part)
    log.info("%d plots in %s, %d skipped", len(index["made"]), out, len(index["skipped"]))
    return 0
