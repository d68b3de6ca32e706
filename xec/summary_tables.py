"""Markdown and HTML tables of the physics summary (xec summary), the inpainter comparison
(xec inpainting) and the dead-fraction sweep (xec deadsweep): what ``summary.md`` and the
report's HTML show of the JSON those commands write. Rendering only; the numbers are computed in
xec.summary, xec.inpainting and xec.inpainting.deadsweep."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

TABLE_CSS = "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px;text-align:right}"

LABELS = {
    "u_mm": "u (mm)",
    "v_mm": "v (mm)",
    "w_mm": "w (mm)",
    "energy_pct": "sigma_E/E (%)",
    "energy_low_tail": "E low-tail fraction (%)",
    "time_ps": "time (ps)",
    "theta_deg": "theta (deg)",
    "phi_deg": "phi (deg)",
    "opening68_deg": "opening angle 68% (deg)",
}

# the per-sample sections of the summary, in the order of the tables
SAMPLE_SECTIONS = ("bench", "val", "pileup", "realdata")

# what a section is for, under its heading
SAMPLE_NOTES = {
    "val": "The validation sample (15-60 MeV, the regressor's own predictions): model choices and "
    "scans are made here (xec scan-summary ranks on it); bench, at 52.8 MeV, only confirms them.",
}

PILEUP_PARTS = {"with_pileup": "events with a piled-up gamma", "without_pileup": "events without"}


def _fmt(entry: Any, key: str) -> str:
    if entry is None:
        return "-"
    if key == "energy_low_tail":
        return "-" if not math.isfinite(entry) else f"{entry:.1f}"
    if key == "opening68_deg":
        v, e = entry["value"], entry["err"]
        return "-" if not math.isfinite(v) else (f"{v:.3g} ± {e:.2g}" if math.isfinite(e) else f"{v:.3g}")
    v, e, core = entry["width68"], entry["width68_err"], entry["sigma_core"]
    if not math.isfinite(v):
        return "-"
    s = f"{v:.3g} ± {e:.2g}" if math.isfinite(e) else f"{v:.3g}"
    if math.isfinite(core):
        s += f" (core {core:.3g})"
    return s


def table_rows(sample: dict[str, Any], fiducial: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows (observable x depth class) of one sample's table: the fiducial-volume
    classes, or those of all events."""
    methods = list(sample["methods"])
    header = ["observable", "events"] + methods
    rows = []
    first = sample["methods"][methods[0]] if methods else {}
    for key in LABELS:
        if key not in first:
            continue
        for cls in first[key]:
            if cls.startswith("fiducial") != fiducial:
                continue
            cells = [_fmt(sample["methods"][m].get(key, {}).get(cls), key) for m in methods]
            n = first[key][cls]["n"] if isinstance(first[key][cls], dict) else ""
            rows.append([f"{LABELS[key]} [{cls}]", str(n)] + cells)
    return header, rows


NOTE = (
    "Resolution = half-width of the central 68 % interval ± bootstrap error, (core) = sigma of "
    "the iterative ±2σ Gaussian core fit (xec.metrics); energy as (E_reco/E_true - 1) in %; "
    "w classes by the true depth. Headline: inside the fiducial volume (by the true position; on a "
    "sample without truth by the classical reconstruction's), then all events."
)


def _tables(sample: dict[str, Any]) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """(title, table) pairs of a sample: the fiducial volume first (the headline), then all events."""
    out = []
    fid = sample.get("fiducial")
    if fid:
        lim = fid["limits_cm"]
        title = (
            f"inside the fiducial volume ({fid['events']} events; u {lim['u']}, v {lim['v']}, w {lim['w']} cm, "
            f"selected by {fid['selected_by']})"
        )
        out.append((title, table_rows(sample, fiducial=True)))
    out.append(("all events", table_rows(sample)))
    for part, label in PILEUP_PARTS.items():
        if part in sample.get("pileup_split", {}):
            s = sample["pileup_split"][part]
            header, fid_rows = table_rows(s, fiducial=True)
            out.append((f"{label} ({s['events']}), fiducial volume then all", (header, fid_rows + table_rows(s)[1])))
    return out


def uncertainty_rows(sample: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (method x observable x class) of a sample's per-event uncertainty table."""
    header = ["method", "observable", "pull 68% (goal 0.9-1.1)", "pull core", "best 50%", "rest 50%", "rest/best"]
    rows = []
    for method, obs in sample.get("uncertainty", {}).get("methods", {}).items():
        for key, per_class in obs.items():
            for cls in sorted(per_class, key=lambda c: c != "fiducial"):  # the headline first
                e = per_class[cls]
                pull, split = e["pull"], e["split"]
                rows.append(
                    [
                        method,
                        f"{LABELS[key]} [{cls}]",
                        f"{pull['width68']:.3f} ± {pull['width68_err']:.3f}",
                        f"{pull['sigma_core']:.3f}",
                        f"{split['best']:.3g}",
                        f"{split['rest']:.3g}",
                        f"{split['ratio']:.2f}",
                    ]
                )
    return header, rows


RATIO_NOTE = (
    "ML / classical: the ML's 68 % half-width (Gaussian-core sigma) over the classical "
    "reconstruction's on the same events, ± paired bootstrap error (the two methods measure the same "
    "showers, so their widths move together); goal: the ratio to reach (summary.ratio_goals). "
    "'yes': the 68 % and the core ratio both at or below the goal; 'within error': a ratio above "
    "it by less than its error; 'no': further."
)


def _ratio_cell(r: Mapping[str, Any]) -> str:
    if not math.isfinite(r["width68"]):
        return "-"
    s = f"{r['width68']:.3f} ± {r['width68_err']:.3f}" if math.isfinite(r["width68_err"]) else f"{r['width68']:.3f}"
    if math.isfinite(r["sigma_core"]):
        err = f" ± {r['sigma_core_err']:.3f}" if math.isfinite(r["sigma_core_err"]) else ""
        s += f" (core {r['sigma_core']:.3f}{err})"
    return s


def ratio_verdict(r: Mapping[str, Any], goal: float) -> str:
    """yes / within error / no for one ratio cell against its goal (RATIO_NOTE)."""
    values = [(r[k], r[f"{k}_err"]) for k in ("width68", "sigma_core") if math.isfinite(r[k])]
    if not values:
        return "-"
    if all(v <= goal for v, _ in values):
        return "yes"
    if all(v <= goal or (math.isfinite(e) and v - e <= goal) for v, e in values):
        return "within error"
    return "no"


def ratio_rows(sample: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (observable x class, the fiducial classes first) of a sample's ML /
    classical table: per ML method the ratios and the verdict against the goal."""
    info = sample.get("ratios") or {}
    methods, goals = info.get("methods", {}), info.get("goals", {})
    names = list(methods)
    header = ["observable", "goal"] + [h for m in names for h in (f"{m} / classical", "meets")]
    rows: list[list[str]] = []
    if not names:
        return header, rows
    first = methods[names[0]]
    for key in LABELS:
        if key not in first:
            continue
        for cls in sorted(first[key], key=lambda c: not c.startswith("fiducial")):  # the headline first
            goal = goals.get(key)
            cells = []
            for m in names:
                r = methods[m].get(key, {}).get(cls)
                cells += ["-", "-"] if r is None else [_ratio_cell(r), "-" if goal is None else ratio_verdict(r, goal)]
            rows.append([f"{LABELS[key]} [{cls}]", "-" if goal is None else f"<= {goal:g}"] + cells)
    return header, rows


GOALS_NOTE = (
    "Goals at a glance: per sample and ML method, how many cells of its ML / classical table (observable x "
    "class) meet their goal, are within error of it or miss it, and which miss (68 % ratio, core ratio)."
)


def goal_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per sample and ML method with an ML / classical table: the count of its cells by
    verdict (:func:`ratio_verdict`) and the cells that miss their goal."""
    header = ["sample", "method", "yes", "within error", "no", "missing"]
    rows: list[list[str]] = []
    for name in SAMPLE_SECTIONS:
        info = (summary.get(name) or {}).get("ratios") or {}
        goals = info.get("goals", {})
        for method, table in info.get("methods", {}).items():
            counts = {"yes": 0, "within error": 0, "no": 0}
            missing = []
            for key in LABELS:
                if key not in table or goals.get(key) is None:
                    continue
                for cls, r in table[key].items():
                    verdict = ratio_verdict(r, goals[key])
                    if verdict in counts:
                        counts[verdict] += 1
                    if verdict == "no":
                        missing.append(f"{LABELS[key]} [{cls}] {r['width68']:.3f} ({r['sigma_core']:.3f})")
            rows.append([name, method, *(str(counts[k]) for k in counts), "; ".join(missing) or "none"])
    return header, rows


UNCERTAINTY_NOTE = (
    "Per-event uncertainties: pull = (pred - true) / sigma (68 % half-width; a calibrated sigma gives "
    "1.00), and the resolution (68 % half-width, the observable's units) of the 50 % of events with the "
    "smallest sigma against the other 50 % (energy ranked by sigma/E)."
)


def to_markdown(summary: dict[str, Any]) -> str:
    lines = ["# Physics summary: ML vs classical reconstruction", "", NOTE, ""]
    goals = goal_rows(summary)
    if goals[1]:
        lines += ["## Goals at a glance", "", GOALS_NOTE, "", *_md_table(*goals), ""]
    for name in SAMPLE_SECTIONS:
        if name not in summary:
            continue
        s = summary[name]
        ref = "truth" if s["reference"] == "truth" else f"the {s['reference']} reconstruction (no truth)"
        lines += [f"## {name} ({s['events']} events, residuals against {ref})", ""]
        if name in SAMPLE_NOTES:
            lines += [SAMPLE_NOTES[name], ""]
        for title, (header, rows) in _tables(s):
            lines += [f"### {title}", "", *_md_table(header, rows), ""]
        if s.get("ratios"):
            lines += ["### ML / classical", "", RATIO_NOTE, "", *_md_table(*ratio_rows(s)), ""]
        if s.get("uncertainty"):
            lines += ["### per-event uncertainties", "", UNCERTAINTY_NOTE, "", *_md_table(*uncertainty_rows(s)), ""]
        for title, note, (header, rows) in _run_period_tables(s):
            lines += [f"### {title}", "", note, ""]
            lines += _md_table(header, rows)
            lines.append("")
    if "inpainting" in summary:
        lines += [inpainting_markdown(summary["inpainting"], level=2), ""]
    if "deadsweep" in summary:
        lines += [deadsweep_markdown(summary["deadsweep"], level=2), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- inpainting (xec inpainting)
INPAINTING_METHODS = {"inpainter": "inpainter", "neighbour_average": "neighbour avg", "solid_angle": "solid angle"}
INPAINTING_NOTE = (
    "Hidden live sensors (true npho >= {min_npho:g} photons; per event {hide}), recovered by each "
    "method: relative error (pred - true) / true of npho -> relative MAE, relative RMS, bias; "
    "time MAE (ns). Poisson floor: the relative MAE even the exact expectation scores (the true "
    "value fluctuates: mean sqrt(2 / (pi npe))). ratio = inpainter / solid-angle relative MAE, goal <= {goal_ratio:g}; "
    "'below floor': {goal_ratio:g} x the solid-angle rule's relative MAE is under the Poisson "
    "floor, so no method can meet it."
)


def _goal(met: bool, below_floor: bool) -> str:
    return "met" if met else ("not met (below floor)" if below_floor else "not met")


def _num(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def inpainting_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (sample x face) of the inpainting table: per metric the three methods."""
    short = list(INPAINTING_METHODS.values())
    header = ["sample", "face", "hidden"]
    for metric in ("rel MAE", "rel RMS", "bias", "time MAE ns"):
        header += [f"{metric}: {m}" for m in short]
    header += ["Poisson floor", "ratio", "goal"]
    rows = []
    for name, sample in result["samples"].items():
        for face, e in sample["faces"].items():
            row = [name, face, str(e["inpainter"]["n"])]
            for key, fmt in (("rel_mae", ".3f"), ("rel_rms", ".3f"), ("bias", "+.3f"), ("time_mae_ns", ".2f")):
                row += [_num(e[m][key], fmt) for m in INPAINTING_METHODS]
            row += [_num(e.get("poisson_floor", float("nan"))), _num(e["ratio_to_solid_angle"], ".2f")]
            row.append(_goal(e["goal_met"], e.get("goal_below_floor", False)))
            rows.append(row)
    return header, rows


def inpainting_bin_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Relative MAE per true-npho bin (sample x face x bin)."""
    header = ["sample", "face", "true npho", "hidden"] + [f"rel MAE: {m}" for m in INPAINTING_METHODS.values()]
    header.append("Poisson floor")
    rows = []
    for name, sample in result["samples"].items():
        for face, e in sample["faces"].items():
            for b in e["bins"]:
                if not b["inpainter"]["n"]:
                    continue
                rng = f"{b['lo']:g}-{b['hi']:g}" if math.isfinite(b["hi"]) else f">= {b['lo']:g}"
                cells = [_num(b[m]["rel_mae"]) for m in INPAINTING_METHODS] + [_num(b.get("poisson_floor", math.nan))]
                rows.append([name, face, rng, str(b["inpainter"]["n"]), *cells])
    return header, rows


FINETUNE_NOTE = (
    "Held-out {sample} events ({events}; fraction {fraction:g}, by a hash of run and event, never "
    "trained on): relative MAE of npho on the same hidden sensors, for the simulation-only "
    "inpainter, the one fine-tuned on the {sample} sample's live sensors (xec finetune) and the "
    "solid-angle rule; gain = fine-tuned / simulation-only (< 1: the fine-tuning helps)."
)


def finetune_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (face) of the fine-tuning table (the ``finetune`` entry of xec inpainting)."""
    ft = result["finetune"]
    header = ["face", "hidden", "rel MAE: simulation-only", "rel MAE: fine-tuned", "rel MAE: solid angle", "gain"]
    header += ["time MAE ns: simulation-only", "time MAE ns: fine-tuned", "ratio fine-tuned / solid angle", "goal"]
    rows = []
    for face, e in ft["faces"].items():
        sim, fine, sa = e["inpainter"], e["inpainter_finetuned"], e["solid_angle"]
        rows.append(
            [
                face,
                str(sim["n"]),
                _num(sim["rel_mae"]),
                _num(fine["rel_mae"]),
                _num(sa["rel_mae"]),
                _num(e["gain"], ".2f"),
                _num(sim["time_mae_ns"], ".2f"),
                _num(fine["time_mae_ns"], ".2f"),
                _num(e["ratio_to_solid_angle_finetuned"], ".2f"),
                _goal(e["goal_met_finetuned"], e.get("goal_below_floor", False)),
            ]
        )
    return header, rows


def _finetune_note(result: Mapping[str, Any]) -> str:
    ft = result["finetune"]
    return FINETUNE_NOTE.format(sample=ft["sample"], events=ft["events"], fraction=ft["holdout_fraction"])


def _inpainting_note(result: Mapping[str, Any]) -> str:
    m = result["meta"]
    hide = ", ".join(f"{k} {v}" for k, v in m["hide"].items() if v)
    return INPAINTING_NOTE.format(min_npho=m["min_npho"], hide=hide, goal_ratio=m["goal_ratio"])


RUNS_NOTE = (
    "Per run: events, mean and 68 % width of the ML energy, and the median ML minus classical "
    "difference (the file's own reconstruction where it has one, else the xec baseline)."
)


def _run_period_tables(sample: dict[str, Any]) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    """(title, note, table) of the input files (processed, failed) and the per-run table."""
    from xec.runs import run_rows

    tables = []
    files = sample.get("files")
    if files:
        note = (
            f"{files['processed']} file(s) processed, {files['events']} events; "
            f"{len(files['failed'])} failed file(s), left out (xec.scatter: fix or replace them and rerun)."
        )
        rows = [[f["input"], " ".join(str(f["error"]).split())] for f in files["failed"]]
        tables.append(("input files", note, (["failed file", "error"], rows)))
    if sample.get("runs"):
        tables.append(("run by run", RUNS_NOTE, run_rows(sample["runs"])))
    return tables


def _page(parts: list[str]) -> str:
    """A standalone HTML page (the tables' CSS) around ``parts``, one per line."""
    head = f"<html><head><meta charset='utf-8'><style>{TABLE_CSS}</style></head><body>"
    return "\n".join([head, *parts, "</body></html>"])


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    import html

    return (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )


def inpainting_markdown(result: Mapping[str, Any], level: int = 1) -> str:
    h = "#" * level
    lines = [f"{h} Inpainter vs classical recovery of hidden sensors", "", _inpainting_note(result), ""]
    lines += _md_table(*inpainting_rows(result))
    lines += ["", f"{h}# relative MAE per bin of true npho", ""]
    lines += _md_table(*inpainting_bin_rows(result))
    if result.get("finetune"):
        lines += ["", f"{h}# fine-tuning on real data: held-out events", "", _finetune_note(result), ""]
        lines += _md_table(*finetune_rows(result))
    return "\n".join(lines)


def inpainting_html(result: Mapping[str, Any], standalone: bool = True) -> str:
    import html

    parts = [
        "<h2>Inpainter vs classical recovery of hidden sensors</h2>",
        f"<p>{html.escape(_inpainting_note(result))}</p>",
        _html_table(*inpainting_rows(result)),
        "<h4>relative MAE per bin of true npho</h4>",
        _html_table(*inpainting_bin_rows(result)),
    ]
    if result.get("finetune"):
        parts += [
            "<h4>fine-tuning on real data: held-out events</h4>",
            f"<p>{html.escape(_finetune_note(result))}</p>",
            _html_table(*finetune_rows(result)),
        ]
    return _page(parts) if standalone else "\n".join(parts)


# ---------------------------------------------------------------- dead-fraction sweep (xec deadsweep)
DEADSWEEP_OBSERVABLES = {
    "u_mm": "u (mm)",
    "v_mm": "v (mm)",
    "w_mm": "w (mm)",
    "energy_pct": "sigma_E/E (%)",
    "time_ps": "time (ps)",
}
DEADSWEEP_NOTE = (
    "Dead-fraction sweep on the first {events} bench events: per event, a fraction of the 4760 "
    "sensors dead ({patterns}; clustered = whole boards of <= {board_size} adjacent sensors; seeded); "
    "ML ({ml}) and the classical reconstruction on the same events and dead sensors. Resolution = 68 % "
    "half-width of the residuals against the truth; x(f)/x(0) = its growth over no dead sensor. The ML "
    "should degrade no faster than the classical method."
)


def _method_name(method: str) -> str:
    return f"ML {method[3:]}" if method.startswith("ml_") else method


def deadsweep_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (pattern x fraction) of the sweep table: per observable and method the
    68 % half-width and, beyond fraction 0, its ratio to the method's own fraction-0 value."""
    methods = list(result["methods"])
    zero = next((p for p in result["points"] if p["fraction"] == 0), None)
    header = ["pattern", "dead %", "dead/event"]
    header += [f"{DEADSWEEP_OBSERVABLES[o]}: {_method_name(m)}" for o in DEADSWEEP_OBSERVABLES for m in methods]
    rows = []
    points = sorted(result["points"], key=lambda p: (p["pattern"] != "any", p["pattern"], p["fraction"]))
    for p in points:
        dead = p["methods"][methods[-1]]["dead_per_event"]
        row = [p["pattern"], f"{100 * p['fraction']:g}", _num(dead, ".0f")]
        for o in DEADSWEEP_OBSERVABLES:
            for m in methods:
                e = p["methods"][m].get(o)
                if e is None:
                    row.append("-")
                    continue
                cell = f"{_num(e['width68'], '.3g')} ± {_num(e['width68_err'], '.2g')}"
                if zero is not None and p is not zero:
                    w0 = zero["methods"][m][o]["width68"]
                    if w0 and math.isfinite(w0) and math.isfinite(e["width68"]):
                        cell += f" (x{e['width68'] / w0:.2f})"
                row.append(cell)
        rows.append(row)
    return header, rows


def _deadsweep_note(result: Mapping[str, Any]) -> str:
    m = result.get("meta", {})
    ml = ", ".join(_method_name(x) for x in result["methods"] if x != "classical")
    return DEADSWEEP_NOTE.format(
        events=result["events"],
        patterns=", ".join(m.get("patterns", [])),
        board_size=m.get("board_size", "?"),
        ml=ml,
    ) + (
        " ML inpainter: the dead sensors inside a hole (a dead board) are filled by the solid-angle rule "
        "first, the inpainter fills the rest (inference.hole_fill)."
        if m.get("hole_fill") == "solid_angle" and "ml_inpainter" in result["methods"]
        else ""
    )


def deadsweep_markdown(result: Mapping[str, Any], level: int = 1) -> str:
    h = "#" * level
    lines = [f"{h} Resolution vs dead fraction (ML vs classical)", "", _deadsweep_note(result), ""]
    lines += _md_table(*deadsweep_rows(result))
    return "\n".join(lines)


def deadsweep_html(result: Mapping[str, Any], standalone: bool = True) -> str:
    import html

    parts = [
        "<h2>Resolution vs dead fraction (ML vs classical)</h2>",
        f"<p>{html.escape(_deadsweep_note(result))}</p>",
        _html_table(*deadsweep_rows(result)),
    ]
    return _page(parts) if standalone else "\n".join(parts)


def to_html(summary: dict[str, Any]) -> str:
    import html

    parts = [
        "<h2>Physics summary: ML vs classical reconstruction</h2>",
        f"<p>{html.escape(NOTE)}</p>",
    ]
    goals = goal_rows(summary)
    if goals[1]:
        parts += [f"<h3>Goals at a glance</h3><p>{html.escape(GOALS_NOTE)}</p>", _html_table(*goals)]
    for name in SAMPLE_SECTIONS:
        if name not in summary:
            continue
        s = summary[name]
        parts.append(f"<h3>{name}: {s['events']} events, reference: {html.escape(s['reference'])}</h3>")
        if name in SAMPLE_NOTES:
            parts.append(f"<p>{html.escape(SAMPLE_NOTES[name])}</p>")
        tables = _tables(s)
        if s.get("ratios"):
            tables.append(("ML / classical. " + RATIO_NOTE, ratio_rows(s)))
        if s.get("uncertainty"):
            tables.append(("per-event uncertainties. " + UNCERTAINTY_NOTE, uncertainty_rows(s)))
        tables += [(f"{title}. {note}", table) for title, note, table in _run_period_tables(s)]
        for title, table in tables:
            parts += [f"<h4>{html.escape(title)}</h4>", _html_table(*table)]
    if "inpainting" in summary:
        parts.append(inpainting_html(summary["inpainting"], standalone=False))
    if "deadsweep" in summary:
        parts.append(deadsweep_html(summary["deadsweep"], standalone=False))
    return _page(parts)
