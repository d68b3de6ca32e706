"""Run-by-run stability of a run period, and bounded reading of merged result datasets.

A run period's merged inference output (xec.scatter) can hold 10^8 events, so nothing here reads
a whole sample at once:

- :func:`run_table` streams the per-file parts one at a time and gives one row per run: events,
  mean and 68 % width of the predicted energy, and the ML minus the classical reconstruction
  (the file's own ``energyReco``/``timeReco``/``uvwRecoFI`` when the file has them, as
  ``reco_*`` columns of ``xec infer``; else the xec classical baseline of the same events).
  Memory: one file plus the runs that continue into later files.
- :func:`read_sampled` reads a result dataset keeping at most ``max_events`` events, chosen by
  a hash of (run, event): the same events in every method's output, so the methods stay matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xec.errors import XecError
from xec.metrics import width68
from xec.scatter import dataset_files, read_merge_manifest

# quantity -> (column of pred_/reco_, scale to the quoted unit, relative to the ML value?)
RUN_DIFFS: dict[str, tuple[str, float, bool]] = {
    "dE_pct": ("energy_energy", 100.0, True),
    "dt_ps": ("timing_time", 1000.0, False),
    "du_mm": ("uvwFI_u", 10.0, False),
    "dv_mm": ("uvwFI_v", 10.0, False),
    "dw_mm": ("uvwFI_w", 10.0, False),
}
RUN_LABELS = {
    "run": "run",
    "events": "events",
    "energy_mean_mev": "E mean (MeV)",
    "energy_width_mev": "E width68 (MeV)",
    "dE_pct": "ML-cl. E (%)",
    "dt_ps": "ML-cl. t (ps)",
    "du_mm": "ML-cl. u (mm)",
    "dv_mm": "ML-cl. v (mm)",
    "dw_mm": "ML-cl. w (mm)",
}


def _keep(run: np.ndarray, event: np.ndarray, fraction: float) -> np.ndarray:
    """A deterministic, method-independent subsample: splitmix64 of (run, event) below ``fraction``."""
    if fraction >= 1.0:
        return np.ones(len(run), bool)
    with np.errstate(over="ignore"):
        z = run.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + event.astype(np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def count_events(path: str | Path) -> int:
    """Events of a result parquet file or merged dataset, from metadata only."""
    import pyarrow.parquet as pq

    manifest = read_merge_manifest(path)
    if manifest is not None:
        return int(manifest["events"])
    return int(pq.ParquetFile(path).metadata.num_rows)


def read_sampled(path: str | Path, max_events: int | None = None, columns: Sequence[str] | None = None):
    """The events of a result file or merged dataset as one DataFrame, at most ~``max_events``
    of them (a (run, event)-hash subsample when there are more; None: all), file by file."""
    import pandas as pd
    import pyarrow.parquet as pq

    total = count_events(path)
    fraction = 1.0 if not max_events or total <= max_events else max_events / total
    frames = []
    for part in dataset_files(path):
        table = pq.read_table(part, columns=list(columns) if columns else None)
        if fraction < 1.0:
            ids = table.select(["run", "event"])
            mask = _keep(ids.column("run").to_numpy(), ids.column("event").to_numpy(), fraction)
            table = table.filter(mask)
        frames.append(table.to_pandas())
    if not frames:
        raise XecError(f"{path}: no parquet files")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _finish(run: int, rows: list[dict[str, np.ndarray]], reference: str) -> dict[str, Any]:
    cols = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    e_mev = cols["pred_energy_energy"] * 1000.0
    out: dict[str, Any] = {
        "run": run,
        "events": int(len(e_mev)),
        "energy_mean_mev": float(np.nanmean(e_mev)) if len(e_mev) else float("nan"),
        "energy_width_mev": width68(e_mev),
    }
    for name, (col, scale, relative) in RUN_DIFFS.items():
        ml, cl = cols.get(f"pred_{col}"), cols.get(f"ref_{col}")
        if ml is None or cl is None:
            out[name] = float("nan")
            continue
        d = (ml - cl) / ml if relative else ml - cl
        d = d[np.isfinite(d)]
        out[name] = float(np.median(d) * scale) if len(d) else float("nan")
    out["reference"] = reference
    return out


def run_table(ml: str | Path, baseline: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per run of a merged inference dataset (``ml``), in run order. The classical
    reference: the files' own reconstruction (``reco_`` columns) where present, else the
    matching part of the merged ``baseline`` dataset (same input file stems)."""
    import pyarrow.parquet as pq

    manifest = read_merge_manifest(ml)
    parts = (
        [(f["stem"], Path(ml) / f["parquet"], [r[0] for r in f["runs"]]) for f in manifest["files"]]
        if manifest
        else [(Path(ml).stem, Path(ml), None)]
    )
    base_parts: dict[str, Path] = {}
    if baseline is not None:
        bm = read_merge_manifest(baseline)
        base_parts = (
            {f["stem"]: Path(baseline) / f["parquet"] for f in bm["files"]} if bm else {Path(ml).stem: Path(baseline)}
        )
    remaining: dict[int, int] = {}  # run -> files still to read that hold it
    for _stem, _path, runs in parts:
        for r in runs or []:
            remaining[r] = remaining.get(r, 0) + 1
    pending: dict[int, list[dict[str, np.ndarray]]] = {}
    reference: dict[int, str] = {}
    rows = []
    for stem, path, _runs in parts:
        names = pq.read_schema(path).names
        cols = ["run", "event"] + [f"pred_{c}" for c, _, _ in RUN_DIFFS.values() if f"pred_{c}" in names]
        reco = [f"reco_{c}" for c, _, _ in RUN_DIFFS.values() if f"reco_{c}" in names]
        df = pq.read_table(path, columns=cols + reco).to_pandas()
        if reco:
            ref_name = "file reco"
            df = df.rename(columns={c: "ref_" + c[len("reco_") :] for c in reco})
        elif stem in base_parts:
            ref_name = "xec baseline"
            bnames = pq.read_schema(base_parts[stem]).names
            bcols = [f"pred_{c}" for c, _, _ in RUN_DIFFS.values() if f"pred_{c}" in bnames]
            base = pq.read_table(base_parts[stem], columns=["run", "event", *bcols]).to_pandas()
            base = base.rename(columns={c: "ref_" + c[len("pred_") :] for c in bcols})
            df = df.merge(base, on=["run", "event"], how="left")
        else:
            ref_name = "none"
        for run, group in df.groupby("run", sort=True):
            run = int(run)
            values = {c: group[c].to_numpy(np.float64) for c in group.columns if c not in ("run", "event")}
            pending.setdefault(run, []).append(values)
            reference[run] = ref_name
            left = remaining.get(run, 1) - 1
            remaining[run] = left
            if left <= 0:
                rows.append(_finish(run, pending.pop(run), reference[run]))
    for run, values in pending.items():  # runs the manifest did not list (a plain parquet file)
        rows.append(_finish(run, values, reference[run]))
    return sorted(rows, key=lambda r: r["run"])


def run_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The per-run table as strings, for markdown and HTML."""
    header = [RUN_LABELS[k] for k in RUN_LABELS] + ["classical"]

    def fmt(v: Any, key: str) -> str:
        if key in ("run", "events"):
            return str(v)
        return "-" if v is None or not np.isfinite(v) else f"{v:.2f}"

    return header, [[fmt(r[k], k) for k in RUN_LABELS] + [r["reference"]] for r in rows]
