"""`xec summary`: physics summary of a pipeline run, ML against the classical reconstruction.

    xec summary --bench-predictions results/inference/bench.parquet
                --bench-baseline results/baseline/bench.parquet
                [--val-predictions results/regressor/predictions.parquet
                 --val-baseline results/baseline/val.parquet]
                --realdata-predictions results/inference/realdata.parquet
                --realdata-noinpaint-predictions results/inference/realdata_noinpaint.parquet
                --realdata-baseline results/baseline/realdata.parquet
                [--pileup-predictions results/inference/pileup.parquet
                 --pileup-baseline results/baseline/pileup.parquet]
                [--realdata-neighbour-predictions ... --realdata-solid-angle-predictions ...]
                [--inpainting results/inpainting/summary.json] [--deadsweep results/deadsweep/summary.json]
                --out results/summary.json [--markdown results/summary.md] [--html results/summary.html]

Inputs are the parquet files of ``xec infer`` and ``xec baseline``; both use the columns
``pred_<task>_<col>`` / ``true_<task>_<col>`` (xec.targets names) plus ``opening_angle_deg``.
Methods are matched event by event on (run, event), so every number compares the same events.

Every resolution comes from :func:`xec.metrics.resolution` (68 % half-width ``width68`` and
Gaussian-core ``sigma_core`` with seeded bootstrap errors). Per method and per depth class
(``all``, ``w<split``, ``w>split`` by the TRUE depth, ``summary.w_split_cm``):
u, v, w (mm), energy sigma/E (%) and its low-tail fraction, time (ps), theta and phi (deg), and
the 68 % quantile of the opening angle between reconstructed and true direction (deg).

A sample without truth (real data) is compared with the classical reconstruction instead: the
"resolutions" are then widths of ML - baseline and ``reference`` says so. On realdata the ML
runs with four dead-sensor treatments (xec infer --fill): ``ml_inpainted`` (inpainter),
``ml_no_inpainting`` (sentinel), ``ml_neighbour_fill`` and ``ml_solid_angle_fill`` (the
classical recoveries of xec.baseline; for these two the JSON has no ``sigma_core_err`` and no
uncertainty entry, which keeps the summary's time: ``LIGHT_METHODS``).

``--pileup-*`` (the pile-up sample: bench-like events, a second gamma in a fraction of them)
gets the same tables as bench, in the ``pileup`` section, plus ``pileup_split``: the same
resolutions for the events with and without the second gamma (by its truth, the
``pileup_energy_truth`` column that xec infer and xec baseline copy from the simulated file).

``--val-*`` (the regressor's val predictions, ``regressor/predictions.parquet``, and the classical
reconstruction of the val sample) gets the same tables in the ``val`` section, without the
per-event uncertainty table (the sigmas are calibrated on val): model choices are made on val
(``xec scan-summary`` ranks scan points on it), bench only confirms them.

``--deadsweep`` adds the table of the dead-fraction sweep (xec deadsweep: resolution of the ML
and of the classical reconstruction vs the fraction of dead sensors on bench).

ML / classical (``ratios``, samples with truth, every ML method but the ``light`` ones): per
observable and class, width68 and sigma_core of the ML over the classical reconstruction's on the
same events, with paired bootstrap errors (:func:`xec.metrics.resolution_ratio`: both methods see
the same showers, so their widths are correlated), and the goals (``summary.ratio_goals``: the
ratio each observable should reach) that the tables check.

Per-event uncertainties (``uncertainty``, samples with truth, methods with ``sigma_<task>_<col>``
columns, i.e. the ML): per observable with a sigma (u, v, w, energy, time) and class (``all``,
``fiducial``), the pulls (pred - true) / sigma (``pull``: :func:`xec.metrics.resolution`; a
calibrated sigma has width68 1.00, the goal is 1.00 +/- 0.10), the resolution of the half of
the events with the smallest sigma against the other half (``split``: best, rest, rest/best) and
the resolution vs the kept fraction when cutting on sigma (``kept``), in the observable's units.
Events are ranked by sigma, for the energy by sigma / E_reco (the quoted quantity is relative).

The markdown and HTML tables of the JSON are xec.summary_tables'.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xec.config import add_config_argument, load_config
from xec.errors import XecError
from xec.summary_tables import NOTE, to_html, to_markdown
from xec.utils import setup_logging, write_tables

log = logging.getLogger("xec.summary")

# observable -> (task column, scale to the quoted unit, kind)
OBSERVABLES: dict[str, tuple[str, float, str]] = {
    "u_mm": ("uvwFI_u", 10.0, "diff"),
    "v_mm": ("uvwFI_v", 10.0, "diff"),
    "w_mm": ("uvwFI_w", 10.0, "diff"),
    "energy_pct": ("energy_energy", 100.0, "ratio"),
    "time_ps": ("timing_time", 1000.0, "diff"),
    "theta_deg": ("angle_theta", 1.0, "diff"),
    "phi_deg": ("angle_phi", 1.0, "diff"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bench-predictions", default=None, help="xec infer parquet of the bench sample (ML)")
    parser.add_argument("--bench-baseline", default=None, help="xec baseline parquet of the bench sample")
    parser.add_argument(
        "--val-predictions",
        default=None,
        help="the regressor's val predictions (regressor/predictions.parquet; the 'val' section)",
    )
    parser.add_argument("--val-baseline", default=None, help="xec baseline parquet of the val sample")
    parser.add_argument(
        "--pileup-predictions", default=None, help="xec infer parquet of the pile-up sample (ML; the 'pileup' section)"
    )
    parser.add_argument("--pileup-baseline", default=None, help="xec baseline parquet of the pile-up sample")
    parser.add_argument("--realdata-predictions", default=None, help="xec infer parquet of realdata, with inpainting")
    parser.add_argument(
        "--realdata-noinpaint-predictions", default=None, help="xec infer parquet of realdata, without inpainting"
    )
    parser.add_argument(
        "--realdata-neighbour-predictions",
        default=None,
        help="xec infer parquet of realdata, dead sensors filled by the neighbour average",
    )
    parser.add_argument(
        "--realdata-solid-angle-predictions",
        default=None,
        help="xec infer parquet of realdata, dead sensors filled by the solid-angle rule",
    )
    parser.add_argument("--realdata-baseline", default=None, help="xec baseline parquet of realdata")
    parser.add_argument("--deadsweep", default=None, help="xec deadsweep summary JSON: its table joins the summary")
    parser.add_argument("--inpainting", default=None, help="xec inpainting summary JSON: its table joins the summary")
    parser.add_argument("--out", required=True, help="summary JSON")
    parser.add_argument("--markdown", default=None, help="also write the tables as markdown")
    parser.add_argument("--html", default=None, help="also write the tables as HTML (for the Snakemake report)")
    add_config_argument(parser)
    parser.add_argument("--log", default=None, help="log file")


def read_results(path: str, max_events: int | None = None) -> pd.DataFrame:  # noqa: F821
    """Read an infer/baseline parquet file, a merged dataset directory (xec.scatter) or the
    regressor's val predictions (their columns renamed to xec infer's: xec.targets.standard_columns),
    at most ~``max_events`` events of it (xec.runs.read_sampled); clear errors for a missing file or
    missing columns."""
    from xec.runs import read_sampled
    from xec.targets import standard_columns

    p = Path(path)
    if not p.exists():
        raise XecError(f"{path}: no such file")
    try:
        df = standard_columns(read_sampled(p, max_events))
    except XecError:
        raise
    except Exception as exc:
        raise XecError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from exc
    if len(df) == 0:
        raise XecError(f"{path}: no events")
    if not any(c.startswith("pred_") for c in df.columns):
        raise XecError(f"{path}: no pred_<task>_<col> columns (is it an xec infer/baseline output?)")
    for key in ("run", "event"):
        if key not in df.columns:
            raise XecError(f"{path}: missing column {key!r}")
    return df


def _match(frames: dict[str, pd.DataFrame], paths: dict[str, str]) -> dict[str, pd.DataFrame]:  # noqa: F821
    """Restrict every method to the events all of them have (on run, event), same order."""
    keys = None
    for name, df in frames.items():
        k = df[["run", "event"]]
        if k.duplicated().any():
            raise XecError(f"{paths[name]}: duplicate (run, event) pairs; cannot match events across methods")
        idx = k.set_index(["run", "event"]).index
        keys = idx if keys is None else keys.intersection(idx, sort=False)
    if keys is None or len(keys) == 0:
        raise XecError(f"no common (run, event) between {', '.join(paths.values())}")
    out = {}
    for name, df in frames.items():
        sel = df.set_index(["run", "event"]).loc[keys].reset_index()
        if len(sel) < len(df):
            log.warning("%s: %d of %d events matched the other methods", paths[name], len(sel), len(df))
        out[name] = sel
    return out


match_events = _match  # public name (xec.plots matches its methods the same way)


# the realdata ML with classically filled dead sensors (xec infer --fill): compared in the tables,
# without the Gaussian-core bootstrap errors and the per-event uncertainty table (summary time)
LIGHT_METHODS = ("ml_neighbour_fill", "ml_solid_angle_fill")


def residual(df, col: str, kind: str, ref=None) -> np.ndarray | None:
    p = f"pred_{col}"
    if p not in df.columns:
        return None
    if ref is None:
        t = f"true_{col}"
        if t not in df.columns:
            return None
        truth = df[t].to_numpy(np.float64)
    else:
        if p not in ref.columns:
            return None
        truth = ref[p].to_numpy(np.float64)
    pred = df[p].to_numpy(np.float64)
    if kind == "ratio":
        with np.errstate(divide="ignore", invalid="ignore"):
            return pred / truth - 1.0
    d = pred - truth
    if col == "angle_phi":  # wrap to (-180, 180]
        d = (d + 180.0) % 360.0 - 180.0
    return d


def _scaled(res: dict[str, float], scale: float) -> dict[str, float]:
    out = dict(res)
    for k in ("width68", "width68_err", "sigma_core", "sigma_core_err", "bias", "rms", "mean", "mu_core"):
        if k in out:
            out[k] = out[k] * scale
    return out


def event_classes(
    n: int, w_true: np.ndarray | None, w_split: float, fiducial: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The event classes every resolution is quoted in: all, w<split, w>split (by the true depth,
    when known) and the same inside the fiducial volume (``fiducial``: its event mask)."""
    depth = {"all": np.ones(n, bool)}
    if w_true is not None:
        depth[f"w<{w_split:g}"] = w_true < w_split
        depth[f"w>{w_split:g}"] = w_true >= w_split
    classes = dict(depth)
    if fiducial is not None:
        classes.update({("fiducial" if c == "all" else f"fiducial {c}"): m & fiducial for c, m in depth.items()})
    return classes


def ratio_summary(
    df, reference, classes: Mapping[str, np.ndarray], n_boot: int, seed: int, n_boot_core: int
) -> dict[str, Any]:
    """ML / classical per observable and class: the ratios of the 68 % half-widths and of the
    Gaussian-core sigmas on the same events, with paired bootstrap errors
    (:func:`xec.metrics.resolution_ratio`). Residuals against the truth (samples with truth)."""
    from xec.metrics import resolution_ratio

    out: dict[str, Any] = {}
    for name, (col, _, kind) in OBSERVABLES.items():
        a, b = residual(df, col, kind), residual(reference, col, kind)
        if a is None or b is None:
            continue
        out[name] = {c: resolution_ratio(a[m], b[m], n_boot, seed, n_boot_core) for c, m in classes.items()}
    return out


def method_summary(
    df,
    w_true: np.ndarray | None,
    ref=None,
    n_boot: int = 200,
    seed: int = 0,
    w_split: float = 2.0,
    tail_nsigma: float = 3.0,
    n_boot_core: int = 50,
    fiducial: np.ndarray | None = None,
) -> dict[str, Any]:
    """All observables of one method (see module docstring). ``ref``: reference method frame
    instead of the truth (no truth available); ``fiducial``: event mask of the fiducial volume,
    which adds the classes ``fiducial``, ``fiducial w<split`` and ``fiducial w>split``."""
    from xec.metrics import opening_angle_deg, quantile, resolution, tail_fraction

    classes = event_classes(len(df), w_true, w_split, fiducial)
    out: dict[str, Any] = {}
    for name, (col, scale, kind) in OBSERVABLES.items():
        r = residual(df, col, kind, ref)
        if r is None:
            continue
        out[name] = {
            c: _scaled(resolution(r[m], n_boot=n_boot, seed=seed, n_boot_core=n_boot_core), scale)
            for c, m in classes.items()
        }
        if name == "energy_pct":
            out["energy_low_tail"] = {c: 100.0 * tail_fraction(r[m], tail_nsigma, "low") for c, m in classes.items()}
    # opening angle: against the truth (from the file's column) or against the reference
    angles = ("pred_angle_theta", "pred_angle_phi", "true_angle_theta", "true_angle_phi")
    if ref is None and "opening_angle_deg" in df.columns:
        ang = df["opening_angle_deg"].to_numpy(np.float64)
    elif ref is None and all(c in df.columns for c in angles):  # the val predictions have no column
        ang = opening_angle_deg(*(df[c] for c in angles))
    elif ref is not None and all(f"pred_angle_{c}" in d.columns for c in ("theta", "phi") for d in (df, ref)):
        ang = opening_angle_deg(
            df["pred_angle_theta"], df["pred_angle_phi"], ref["pred_angle_theta"], ref["pred_angle_phi"]
        )
    else:
        ang = None
    if ang is not None:
        out["opening68_deg"] = {c: quantile(ang[m], 68.27, n_boot=n_boot, seed=seed) for c, m in classes.items()}
    return out


PULL_GOAL = (0.9, 1.1)  # 68 % half-width of the pulls on bench (issue 13)


def uncertainty_summary(
    df, classes: Mapping[str, np.ndarray], n_boot: int = 200, seed: int = 0, n_boot_core: int = 50
) -> dict[str, Any]:
    """Pulls and sigma ranking of one method with sigma columns (see the module docstring);
    {} when the frame has no sigma or no truth."""
    from xec.metrics import kept_fraction_resolution, pulls, resolution, split_by_sigma

    out: dict[str, Any] = {}
    for name, (col, scale, kind) in OBSERVABLES.items():
        if not all(f"{k}_{col}" in df.columns for k in ("pred", "true", "sigma")):
            continue
        pred, true, sigma = (df[f"{k}_{col}"].to_numpy(np.float64) for k in ("pred", "true", "sigma"))
        pull = pulls(pred, true, sigma)
        r = residual(df, col, kind) * scale
        with np.errstate(divide="ignore", invalid="ignore"):
            rank = sigma / np.abs(pred) if kind == "ratio" else sigma
        out[name] = {
            c: {
                "pull": resolution(pull[m], n_boot=n_boot, seed=seed, n_boot_core=n_boot_core),
                "split": split_by_sigma(r[m], rank[m], 0.5),
                "kept": kept_fraction_resolution(r[m], rank[m]),
            }
            for c, m in classes.items()
        }
    return out


def files_summary(path: str) -> dict[str, Any] | None:
    """Input files of a merged dataset (xec.scatter): processed files, events, failed files."""
    from xec.scatter import read_merge_manifest

    manifest = read_merge_manifest(path)
    if manifest is None:
        return None
    return {
        "processed": len(manifest["files"]),
        "events": int(manifest["events"]),
        "failed": [{"input": f["input"], "error": f["error"]} for f in manifest["failed"]],
    }


def fiducial_mask(df, limits: Mapping[str, Any], prefix: str) -> np.ndarray:
    """Events whose ``<prefix>uvwFI_{u,v,w}`` (cm) lie inside ``limits`` ({u: [lo, hi], ...},
    lo <= x < hi); NaN positions are outside."""
    inside = np.ones(len(df), bool)
    for c in "uvw":
        x = df[f"{prefix}uvwFI_{c}"].to_numpy(np.float64)
        lo, hi = limits[c]
        inside &= (x >= lo) & (x < hi)
    return inside


def pileup_split(
    frames: Mapping[str, Any],
    fid_mask: np.ndarray | None,
    n_boot: int,
    seed: int,
    w_split: float,
    tail_nsigma: float,
) -> dict[str, Any] | None:
    """The resolutions of the events with a second gamma and of those without, per method
    (classes all and fiducial; no core-fit bootstrap), by the simulation's pile-up truth
    (``pileup_energy_truth`` > 0); None when no frame has that column."""
    src = next((df for df in frames.values() if "pileup_energy_truth" in df.columns), None)
    if src is None:
        return None
    piled = src["pileup_energy_truth"].to_numpy() > 0
    out = {}
    for part, sel in (("with_pileup", piled), ("without_pileup", ~piled)):
        fid = None if fid_mask is None else fid_mask[sel]
        methods = {
            name: method_summary(
                df[sel].reset_index(drop=True), None, None, n_boot, seed, w_split, tail_nsigma, 0, fiducial=fid
            )
            for name, df in frames.items()
        }
        out[part] = {"events": int(sel.sum()), "methods": methods}
    return out


def sample_summary(
    inputs: dict[str, str],
    reference_method: str,
    n_boot: int,
    seed: int,
    w_split: float,
    tail_nsigma: float,
    n_boot_core: int = 50,
    fiducial: Mapping[str, Any] | None = None,
    max_events: int | None = None,
    light: tuple[str, ...] = (),
    ratio_goals: Mapping[str, float] | None = None,
    with_uncertainty: bool = True,
) -> dict[str, Any]:
    """Summary of one sample: {events, reference ('truth' or a method), methods: {name: ...},
    fiducial: {limits, selected_by, events}}. ``fiducial`` ({u, v, w}: [lo, hi] cm): the fiducial
    volume, selected by the true first-interaction position, or by the reference method's
    reconstructed one where the sample has no truth (real data, as physicists select it).
    ``with_uncertainty`` false: no per-event uncertainty table (val, where the sigmas were calibrated)."""
    from xec.runs import count_events

    frames = _match({m: read_results(p, max_events) for m, p in inputs.items()}, inputs)
    first = next(iter(frames.values()))
    has_truth = any(c.startswith("true_") for c in first.columns)
    w_true = first["true_uvwFI_w"].to_numpy(np.float64) if "true_uvwFI_w" in first.columns else None
    ref = None
    if not has_truth:
        if reference_method not in frames:
            raise XecError(f"{', '.join(inputs.values())}: no truth columns and no {reference_method} to compare with")
        ref = frames[reference_method]
    fid_mask, fid_info = None, None
    if fiducial is not None:
        if "true_uvwFI_u" in first.columns:
            fid_mask, by = fiducial_mask(first, fiducial, "true_"), "truth"
        elif reference_method in frames and "pred_uvwFI_u" in frames[reference_method].columns:
            fid_mask, by = fiducial_mask(frames[reference_method], fiducial, "pred_"), reference_method
        if fid_mask is not None:
            fid_info = {
                "limits_cm": {c: list(fiducial[c]) for c in "uvw"},
                "selected_by": by,
                "events": int(fid_mask.sum()),
            }
    methods, uncertainty, ratios = {}, {}, {}
    classes = {"all": np.ones(len(first), bool), **({"fiducial": fid_mask} if fid_mask is not None else {})}
    ratio_classes = event_classes(len(first), w_true, w_split, fid_mask)
    for name, df in frames.items():
        if ref is not None and name == reference_method:
            continue
        # ``light`` methods (variants of another one): no Gaussian-core bootstrap error (the scipy
        # fits are the summary's slow part; the tables do not show it) and no uncertainty table
        n_core = 0 if name in light else n_boot_core
        methods[name] = method_summary(df, w_true, ref, n_boot, seed, w_split, tail_nsigma, n_core, fiducial=fid_mask)
        if has_truth and name not in light:
            u = uncertainty_summary(df, classes, n_boot, seed, n_boot_core) if with_uncertainty else {}
            if u:
                uncertainty[name] = u
            if name != reference_method and reference_method in frames:
                ratios[name] = ratio_summary(df, frames[reference_method], ratio_classes, n_boot, seed, n_boot_core)
    out = {
        "events": int(len(first)),
        "events_available": max(count_events(p) for p in inputs.values()),
        "reference": "truth" if ref is None else reference_method,
        "inputs": dict(inputs),
        "fiducial": fid_info,
        "methods": methods,
    }
    if uncertainty:
        out["uncertainty"] = {"pull_goal": list(PULL_GOAL), "methods": uncertainty}
    if ratios:
        out["ratios"] = {"reference": reference_method, "goals": dict(ratio_goals or {}), "methods": ratios}
    split = pileup_split(frames, fid_mask, n_boot, seed, w_split, tail_nsigma) if has_truth else None
    if split:
        out["pileup_split"] = split
    return out


def build_summary(args: argparse.Namespace, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of the parquet files named in ``args`` (``cfg``: a validated config)."""
    from xec import __version__

    sec = cfg["summary"]
    n_boot, w_split = int(sec["n_boot"]), float(sec["w_split_cm"])
    tail = float(sec["tail_nsigma"])
    n_core = int(sec["n_boot_core"])
    fiducial = sec["fiducial"]
    max_events = sec["max_events"]
    goals = {k: float(v) for k, v in sec["ratio_goals"].items()}
    seed = int(cfg["seed"])
    out: dict[str, Any] = {
        "meta": {
            "n_boot": n_boot,
            "n_boot_core": n_core,
            "w_split_cm": w_split,
            "tail_nsigma": tail,
            "fiducial_cm": {c: list(fiducial[c]) for c in "uvw"},
            "seed": seed,
            "max_events": max_events,
            "xec_version": __version__,
            "note": NOTE,
        }
    }
    bench = {k: v for k, v in (("ml", args.bench_predictions), ("baseline", args.bench_baseline)) if v}
    val = {k: v for k, v in (("ml", args.val_predictions), ("baseline", args.val_baseline)) if v}
    real = {
        k: v
        for k, v in (
            ("ml_inpainted", args.realdata_predictions),
            ("ml_no_inpainting", args.realdata_noinpaint_predictions),
            ("ml_neighbour_fill", args.realdata_neighbour_predictions),
            ("ml_solid_angle_fill", args.realdata_solid_angle_predictions),
            ("baseline", args.realdata_baseline),
        )
        if v
    }
    pileup = {k: v for k, v in (("ml", args.pileup_predictions), ("baseline", args.pileup_baseline)) if v}
    if not bench and not val and not real and not pileup and not args.inpainting and not args.deadsweep:
        raise XecError(
            "nothing to summarize: give --bench-*, --val-*, --pileup-*, --realdata-* parquet files, --inpainting "
            "and/or --deadsweep"
        )
    if bench:
        out["bench"] = sample_summary(
            bench, "baseline", n_boot, seed, w_split, tail, n_core, fiducial, max_events, ratio_goals=goals
        )
    if val:  # where choices are made (xec.scans ranks on it); 15-60 MeV, its sigmas calibrated on it
        out["val"] = sample_summary(
            val,
            "baseline",
            n_boot,
            seed,
            w_split,
            tail,
            n_core,
            fiducial,
            max_events,
            ratio_goals=goals,
            with_uncertainty=False,
        )
    if pileup:  # bench with a second gamma in a fraction of the events: the same tables
        out["pileup"] = sample_summary(
            pileup, "baseline", n_boot, seed, w_split, tail, n_core, fiducial, max_events, ratio_goals=goals
        )
    if real:
        out["realdata"] = sample_summary(
            real, "baseline", n_boot, seed, w_split, tail, n_core, fiducial, max_events, LIGHT_METHODS, goals
        )
        ml = args.realdata_predictions or args.realdata_noinpaint_predictions
        if ml:
            from xec.runs import run_table

            out["realdata"]["runs"] = run_table(ml, args.realdata_baseline)
            out["realdata"]["files"] = files_summary(ml)
    if args.inpainting:
        out["inpainting"] = read_inpainting(args.inpainting)
    if args.deadsweep:
        out["deadsweep"] = read_deadsweep(args.deadsweep)
    return out


def _read_result(path: str, command: str, valid) -> dict[str, Any]:
    """The summary JSON of ``xec <command>``, checked by ``valid(result)`` (raises ValueError);
    XecError naming the file when it is missing or not one. JSON null (a NaN written out) comes
    back as NaN, so the table formatting treats both alike."""
    import json

    p = Path(path)
    if not p.exists():
        raise XecError(f"{path}: no such file (run `xec {command}` first)")
    try:
        result = json.loads(p.read_text())
        valid(result)
    except (ValueError, AttributeError) as exc:
        raise XecError(f"{path}: not an xec {command} summary ({exc})") from exc
    return _none_to_nan(result)


def read_inpainting(path: str) -> dict[str, Any]:
    """The `xec inpainting` summary JSON; XecError naming the file when it is not one."""

    def valid(result: Any) -> None:
        if not isinstance(result.get("samples"), dict) or "meta" not in result:
            raise ValueError("no 'samples'/'meta'")

    return _read_result(path, "inpainting", valid)


def read_deadsweep(path: str) -> dict[str, Any]:
    """The `xec deadsweep` summary JSON; XecError naming the file when it is not one."""

    def valid(result: Any) -> None:
        if not isinstance(result.get("points"), list) or "methods" not in result:
            raise ValueError("no 'points'/'methods'")

    return _read_result(path, "deadsweep", valid)


def _none_to_nan(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _none_to_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_none_to_nan(v) for v in obj]
    return float("nan") if obj is None else obj


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config, command="summary")
    summary = build_summary(args, cfg)
    md = to_markdown(summary)
    html = to_html(summary) if args.html else ""
    write_tables(args.out, summary, (args.markdown, md + "\n"), (args.html, html))
    log.info("summary -> %s\n%s", args.out, md)
    return 0
