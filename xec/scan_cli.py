"""`xec scan-summary`: rank the points of one scan (config ``scans:``, see :mod:`xec.scans`).

    xec scan-summary --config results/config.yaml --scan reg_lr
        --point NAME results/scans/reg_lr/NAME/summary.json results/scans/reg_lr/NAME/regressor/metrics.json
        [--point ...]  (one per point of the scan)
        --out results/scans/reg_lr/summary.json [--markdown ...md] [--html ...html] [--plot ...png] [--log LOG]

Reads the scan's own section only (``scans.<scan>``: its points and ``rank_by``), each point's
physics summary (``xec summary``) and regressor ``metrics.json``, and writes the ranked table
(best first) as JSON, Markdown and a self-contained HTML page, plus one PNG with the ranking
metric against each scanned key. The points are ranked on the val sample; a physics ranking
metric is shown on bench beside it (``bench_<metric>``) to confirm the choice, never to make it.
The ``--point`` names must be exactly the scan's points (:func:`xec.scans.point_name`); a missing
or unreadable file is an XecError naming it.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xec.config import add_config_argument, load_config
from xec.errors import XecError
from xec.scans import (
    CONFIRM_SAMPLE,
    METRICS,
    SAMPLE_METRICS,
    SUMMARY_SAMPLE,
    point_metrics,
    point_name,
    rank_points,
    sample_metrics,
    scan_point_overrides,
)
from xec.utils import atomic_path, setup_logging, write_tables

log = logging.getLogger("xec.scans")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "metrics for rank_by: " + ", ".join(METRICS)
    parser.add_argument("--scan", required=True, help="scan name (a key of the config's scans:)")
    parser.add_argument(
        "--point",
        nargs=3,
        action="append",
        required=True,
        metavar=("NAME", "SUMMARY_JSON", "REGRESSOR_METRICS_JSON"),
        help="one point: its name, its xec summary JSON and its regressor metrics.json (repeat for every point)",
    )
    parser.add_argument("--out", required=True, help="ranked table as JSON")
    parser.add_argument("--markdown", default=None, help="also write the table as markdown")
    parser.add_argument("--html", default=None, help="also write the table as a self-contained HTML page")
    parser.add_argument("--plot", default=None, help="PNG: the ranking metric against each scanned key")
    add_config_argument(parser)
    parser.add_argument("--log", default=None, help="log file")


def read_json(path: str, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; XecError naming the file when it is missing or not one."""
    p = Path(path)
    if not p.is_file():
        raise XecError(f"{path}: no such file ({what})")
    try:
        obj = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XecError(f"{path}: not a readable JSON file ({what}): {exc}") from exc
    if not isinstance(obj, dict):
        raise XecError(f"{path}: expected a JSON object ({what}), got {type(obj).__name__}")
    return obj


def build_table(
    scan: str, spec: Mapping[str, Any], points: Sequence[Sequence[str]], *, read=read_json
) -> dict[str, Any]:
    """The ranked table of one scan: ``spec`` is the scan's config section, ``points`` the
    (name, summary JSON, regressor metrics JSON) triples, one per point of the scan."""
    expected = {point_name(ov): ov for ov in scan_point_overrides(scan, spec)}
    given = [name for name, _s, _m in points]
    dup = sorted({n for n in given if given.count(n) > 1})
    if dup:
        raise XecError(f"scan {scan}: --point given more than once for {', '.join(dup)}")
    unknown, missing = sorted(set(given) - set(expected)), sorted(set(expected) - set(given))
    if unknown or missing:
        raise XecError(
            f"scan {scan}: the --point names do not match the scan's points (config changed since the "
            f"points ran?): unknown {unknown or 'none'}, missing {missing or 'none'}"
        )
    rank_by, higher = spec["rank_by"], bool(spec.get("higher_is_better", False))
    order = {name: i for i, name in enumerate(expected)}
    metrics_doc = dict(METRICS)
    confirm = None
    if rank_by in SAMPLE_METRICS:  # a physics metric: shown on bench too
        confirm = f"{CONFIRM_SAMPLE}_{rank_by}"
        metrics_doc[confirm] = (
            f"{rank_by} on the {CONFIRM_SAMPLE} sample: confirms the ranking made on {SUMMARY_SAMPLE}, never makes it"
        )
    rows = []
    for name, summary_path, metrics_path in sorted(points, key=lambda p: order[p[0]]):
        summary = read(summary_path, f"physics summary of point {name}")
        metrics = read(metrics_path, f"regressor metrics of point {name}")
        values = point_metrics(summary, metrics)
        if confirm:
            values[confirm] = sample_metrics(summary, CONFIRM_SAMPLE)[rank_by]
        if math.isnan(values[rank_by]):
            log.warning("point %s: no %s (from %s, %s): ranked last", name, rank_by, summary_path, metrics_path)
        rows.append(
            {
                "point": name,
                "overrides": expected[name],
                **values,
                "summary": str(summary_path),
                "regressor_metrics": str(metrics_path),
            }
        )
    ranked = rank_points(rows, rank_by, higher)
    from xec import __version__

    return {
        "scan": scan,
        "description": spec.get("description", ""),
        "rank_by": rank_by,
        "higher_is_better": higher,
        "keys": sorted({k for ov in expected.values() for k in ov}),
        "sample": SUMMARY_SAMPLE if confirm else None,  # training numbers (val_loss, events/s) have no sample
        "confirm": confirm,
        "metrics": metrics_doc,
        "rows": ranked,
        "xec_version": __version__,
    }


# ----------------------------------------------------------------------------- rendering
def fmt_number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def fmt_value(value: Any) -> str:
    """An override value as a table cell (strings bare, everything else as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def _columns(table: Mapping[str, Any]) -> list[str]:
    # the ranking metric first, then its bench confirmation, then every other metric in METRICS order
    first = [table["rank_by"]] + ([table["confirm"]] if table.get("confirm") else [])
    return first + [m for m in table["metrics"] if m not in first]


def _cells(table: Mapping[str, Any], row: Mapping[str, Any]) -> list[str]:
    rank = f"{row['rank']} (best)" if row["best"] else str(row["rank"])
    overrides = row["overrides"]
    keys = [fmt_value(overrides[k]) if k in overrides else "(config)" for k in table["keys"]]
    return [rank, row["point"], *keys, *(fmt_number(row.get(m)) for m in _columns(table))]


def _title(table: Mapping[str, Any]) -> str:
    direction = "higher" if table["higher_is_better"] else "lower"
    on = f" on {table['sample']}" if table.get("sample") else ""
    return f"Scan {table['scan']}: ranked by {table['rank_by']}{on} ({direction} is better)"


def to_markdown(table: Mapping[str, Any]) -> str:
    header = ["rank", "point", *table["keys"], *_columns(table)]
    lines = [f"# {_title(table)}", ""]
    if table["description"]:
        lines += [table["description"], ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in table["rows"]:
        cells = [c.replace("|", "\\|") for c in _cells(table, row)]
        if row["best"]:
            cells[:2] = [f"**{c}**" for c in cells[:2]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Metrics:", ""]
    lines += [f"- `{m}`: {desc}" for m, desc in table["metrics"].items()]
    return "\n".join(lines) + "\n"


def to_html(table: Mapping[str, Any]) -> str:
    esc = html.escape
    header = ["rank", "point", *table["keys"], *_columns(table)]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{esc(_title(table))}</title><style>",
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px;text-align:right}td.l,th.l{text-align:left}"
        "tr.best td{background:#d9f2d9;font-weight:bold}th.rank{background:#eef}",
        "</style></head><body>",
        f"<h2>{esc(_title(table))}</h2>",
    ]
    if table["description"]:
        parts.append(f"<p>{esc(table['description'])}</p>")
    n_left = 2 + len(table["keys"])
    ths = []
    for i, h in enumerate(header):
        cls = "l" if i < n_left else ("rank" if h == table["rank_by"] else "")
        title = table["metrics"].get(h, "")
        ths.append(f"<th class='{cls}' title='{esc(title)}'>{esc(h)}</th>")
    parts.append("<table><tr>" + "".join(ths) + "</tr>")
    for row in table["rows"]:
        tds = "".join(
            f"<td class='{'l' if i < n_left else ''}'>{esc(c)}</td>" for i, c in enumerate(_cells(table, row))
        )
        parts.append(f"<tr class='{'best' if row['best'] else ''}'>{tds}</tr>")
    parts.append("</table><p>Best point highlighted. Metrics:</p><ul>")
    parts += [f"<li><code>{esc(m)}</code>: {esc(d)}</li>" for m, d in table["metrics"].items()]
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _category(value: Any) -> str:
    return "(config)" if value is None else fmt_value(value)


def _panel(ax: Any, table: Mapping[str, Any], key: str) -> None:
    """One panel of :func:`plot_table`: the ranking metric against ``key``."""
    rank_by, rows = table["rank_by"], table["rows"]
    xs = [row["point"] if key == "point" else row["overrides"].get(key) for row in rows]
    present = [x for row, x in zip(rows, xs) if key == "point" or key in row["overrides"]]
    numeric = bool(present) and all(_is_number(x) for x in present)
    categories: dict[str, int] = {}
    if not numeric:
        for x in xs:
            categories.setdefault(_category(x), len(categories))
    # group points by the values of the other keys: one line per group
    others = [k for k in table["keys"] if k != key]
    confirm = table.get("confirm")
    groups: dict[str, list[tuple[float, float, bool, float]]] = {}
    for row, x in zip(rows, xs):
        y = row.get(rank_by)
        if (numeric and not _is_number(x)) or not _is_number(y):
            continue
        xp = float(x) if numeric else float(categories[_category(x)])
        label = ", ".join(f"{k}={fmt_value(row['overrides'][k])}" for k in others if k in row["overrides"])
        yc = row.get(confirm) if confirm else None
        groups.setdefault(label, []).append((xp, float(y), bool(row["best"]), yc if _is_number(yc) else math.nan))
    for i, (label, pts) in enumerate(sorted(groups.items())):  # colours by label, not by rank
        pts.sort()
        shown = (label or None) if len(groups) <= 8 else None  # a legend of dozens of lines says nothing
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i % 10}", label=shown, ms=5)
        # the bench confirmation: hollow markers, dashed, never ranked on
        if any(math.isfinite(p[3]) for p in pts):
            ax.plot([p[0] for p in pts], [p[3] for p in pts], "o--", color=f"C{i % 10}", mfc="none", ms=5, lw=0.8)
        for xp, y, best, _ in pts:
            if best:
                ax.plot([xp], [y], "*", color="crimson", ms=16, zorder=5, label="best")
    if numeric and all(float(x) > 0 for x in present) and max(present) > 10 * min(present):
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(list(categories.values()), list(categories), rotation=30, ha="right", fontsize=8)
    if not groups:
        ax.text(0.5, 0.5, f"no finite {rank_by}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(key)
    ax.set_ylabel(f"{rank_by} ({table['sample']}; hollow: {confirm})" if confirm else rank_by)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot_table(table: Mapping[str, Any], path: str, dpi: int = 110) -> None:
    """One PNG, one panel per scanned key: the ranking metric against that key's value (numeric
    keys on a log axis when the values span more than a factor 10, other keys as categories);
    points that share the other keys' values are joined, the best point is a star; the bench
    confirmation of a physics metric in hollow markers."""
    import matplotlib

    matplotlib.use("Agg")  # no display anywhere (batch jobs, CI), as xec.plots
    import matplotlib.pyplot as plt

    keys = table["keys"] or ["point"]  # no scanned key (a single default point): one panel by name
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    try:
        for ax in axes.flat[len(keys) :]:
            ax.set_visible(False)
        for ax, key in zip(axes.flat, keys):
            _panel(ax, table, key)
        fig.suptitle(_title(table), fontsize=10)
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config, command="scan-summary", scan=args.scan)
    if args.scan not in cfg["scans"]:
        raise XecError(f"{args.config or 'config'}: no scan {args.scan!r} under scans:")
    spec = cfg["scans"][args.scan]
    table = build_table(args.scan, spec, args.point)
    for row in table["rows"]:
        log.info("%d. %s: %s = %s", row["rank"], row["point"], table["rank_by"], fmt_number(row[table["rank_by"]]))
    if args.plot:
        plot_table(table, args.plot)
    markdown = (args.markdown, to_markdown(table) if args.markdown else "")
    write_tables(args.out, table, markdown, (args.html, to_html(table) if args.html else ""))
    log.info("scan %s: %d points ranked by %s -> %s", args.scan, len(table["rows"]), table["rank_by"], args.out)
    return 0
