"""The dead-fraction sweep: resolutions of the ML and of the classical reconstruction as more
sensors die (issue 14, part 3; command: xec.inpainting.deadsweep_cli).

For every pattern (xec.inpainting.boards: random sensors or whole readout boards) and dead
fraction, the same events of a sample with truth get the same dead sensors (npho and time set
to the files' 1e10 marker, as a dead channel arrives in a MEG II file), then
- ML: :class:`xec.deploy.infer.Predictor`, i.e. `xec infer`'s own code path (normalization
  with the model's preset, dead sensors treated by ``fill``: the inpainter by default), and its
  output columns (xec.deploy.infer.prediction_columns);
- classical: xec.baseline.reco.reconstruct_chunk with the calibration of the pipeline (its dead
  sensors filled by the solid-angle rule, as the baseline always does), columns as `xec baseline`
  writes them (xec.baseline.cli.reco_columns).
Residuals (xec.summary.residual, the summary's definitions and units) are kept per point, and the
resolution is xec.metrics.resolution: 68 % half-width with a bootstrap error, Gaussian-core sigma.
A fraction 0 is computed once and shared by the patterns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from xec.inpainting.boards import check_sweep, dead_masks

log = logging.getLogger("xec.deadsweep")

# summary observable -> label (xec.summary.OBSERVABLES: column, scale to the unit, kind)
SWEEP_OBSERVABLES = ("u_mm", "v_mm", "w_mm", "energy_pct", "time_ps")
DEAD_MARK = 1e10


def _residuals(cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Residuals (quoted units) of one chunk's output columns against the truth."""
    import pandas as pd

    from xec.summary import OBSERVABLES, residual

    df = pd.DataFrame({k: np.asarray(v) for k, v in cols.items() if np.ndim(v) == 1})
    out = {}
    for name in SWEEP_OBSERVABLES:
        col, scale, kind = OBSERVABLES[name]
        r = residual(df, col, kind)
        if r is None:
            raise ValueError(f"no pred_/true_{col} columns: the sweep needs a sample with truth")
        out[name] = r * scale
    return out


class _Point:
    """Residuals and dead counts of one (method, pattern, fraction)."""

    def __init__(self) -> None:
        self.res: dict[str, list[np.ndarray]] = {k: [] for k in SWEEP_OBSERVABLES}
        self.n_dead: list[np.ndarray] = []

    def add(self, res: Mapping[str, np.ndarray], n_dead: np.ndarray) -> None:
        for k, v in res.items():
            self.res[k].append(v)
        self.n_dead.append(np.asarray(n_dead))

    def result(self, n_boot: int, seed: int) -> dict[str, Any]:
        from xec.metrics import resolution

        out: dict[str, Any] = {"dead_per_event": float(np.concatenate(self.n_dead).mean())}
        for k, parts in self.res.items():
            r = resolution(np.concatenate(parts), n_boot=n_boot, seed=seed, n_boot_core=0)
            out[k] = {key: r[key] for key in ("n", "width68", "width68_err", "sigma_core", "bias")}
        return out


def sweep(
    chunks: Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]],
    *,
    predictors: Mapping[str, Any],
    bcfg,
    calib,
    fractions: Sequence[float],
    patterns: Sequence[str],
    seed: int,
    board_size: int = 16,
    n_boot: int = 100,
) -> dict[str, Any]:
    """The sweep over ``chunks`` of (arrays, npho, time) (arrays: the branches read, truth
    included). ``predictors``: ML method name -> xec.deploy.infer.Predictor. Returns
    {points: [{pattern, fraction, methods: {name: {dead_per_event, <observable>: {width68, ...}}}}],
    events, seconds: {method: s}}."""
    from xec.baseline.cli import reco_columns
    from xec.baseline.reco import reconstruct_chunk
    from xec.deploy.infer import prediction_columns

    fractions, patterns = check_sweep(fractions, patterns)
    methods = [*predictors, "classical"]
    keys = [("any" if f == 0 else p, f) for p in patterns for f in fractions]
    keys = list(dict.fromkeys(keys))  # fraction 0: one point for every pattern
    points = {(m, k): _Point() for m in methods for k in keys}
    seconds = dict.fromkeys([*methods, "masks"], 0.0)
    first = 0
    for arrays, npho, time_s in chunks:
        n = len(npho)
        events = np.arange(first, first + n)
        for pattern in patterns:
            t0 = time.perf_counter()
            masks = dead_masks(fractions, pattern, events, seed, board_size)
            seconds["masks"] += time.perf_counter() - t0
            for j, f in enumerate(fractions):
                key = ("any" if f == 0 else pattern, f)
                if f == 0 and pattern != patterns[0]:
                    continue
                m = masks[j]
                npho_m = np.where(m, np.float32(DEAD_MARK), npho)
                time_m = np.where(m, np.float32(DEAD_MARK), time_s)
                for name, pred in predictors.items():
                    t0 = time.perf_counter()
                    preds, n_dead = pred.predict(npho_m, time_m)
                    cols = prediction_columns(pred.meta, preds, arrays)
                    points[(name, key)].add(_residuals(cols), n_dead)
                    seconds[name] += time.perf_counter() - t0
                t0 = time.perf_counter()
                reco = reconstruct_chunk(npho_m, time_m, bcfg, calib)
                cols = reco_columns(reco, arrays, first)
                points[("classical", key)].add(_residuals(cols), reco["n_dead"])
                seconds["classical"] += time.perf_counter() - t0
        first += n
    out_points = []
    for pattern, f in keys:
        out_points.append(
            {
                "pattern": pattern,
                "fraction": f,
                "methods": {m: points[(m, (pattern, f))].result(n_boot, seed) for m in methods},
            }
        )
    return {"events": first, "methods": methods, "points": out_points, "seconds": seconds}


def curves(result: Mapping[str, Any], method: str, pattern: str, observable: str) -> tuple[np.ndarray, ...]:
    """(fractions, width68, width68_err) of one curve; the shared fraction-0 point included."""
    rows = [p for p in result["points"] if p["pattern"] in (pattern, "any")]
    rows.sort(key=lambda p: p["fraction"])
    f = np.array([p["fraction"] for p in rows], dtype=float)
    w = np.array([p["methods"][method][observable]["width68"] for p in rows], dtype=float)
    e = np.array([p["methods"][method][observable]["width68_err"] for p in rows], dtype=float)
    return f, w, e
