"""HistogramWeights: per-task inverse-frequency weight tables, their fit, lookup and file format (no torch).

Fit (``HistogramWeights.fit``, run by `xec reweight`, xec/data/reweight.py): for each task a
histogram over its target components (angle: theta x phi; energy; timing; uvwFI: u x v x w, an
axis with 1 bin is dropped, so [10, 10, 1] is 2D in u-v) is filled with the train targets over
the ``range_percentiles`` [p_lo, p_hi] range (outliers fall into the edge bins). A bin's weight
is 1 / count, scaled to mean weight 1 over the train events, clipped at ``max_weight`` and
rescaled again until both hold. Bins without train events get the largest fitted weight.

Lookup (``event_weights``, used by ShardLoader(weights=...)): an event gets the weight of its bin
as float32; values outside the fitted range fall into the edge bins; tasks without a table get 1.

weights.npz (``save``/``load``), per task: ``<task>/axes`` (int64 component indices of the kept
axes), ``<task>/edges<k>`` (float64 bin edges of kept axis k), ``<task>/weights`` (float64 table,
one dimension per kept axis; shape (1,) when none is kept); and ``meta``: a JSON string with at
least ``tasks`` (the table order) and ``xec_version``, plus what the caller passed (`xec reweight`:
manifest, events, binning).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import xec
from xec.errors import XecError
from xec.targets import get_task
from xec.utils import atomic_path

__all__ = ["HistogramWeights"]


class HistogramWeights:
    """Per-task weight tables on (partial) regular grids over the task's components."""

    def __init__(self, tables: dict[str, dict[str, Any]], meta: dict[str, Any] | None = None):
        # tables[task] = {"axes": [component indices], "edges": [array per axis], "weights": ndarray}
        self.tables = tables
        self.meta = meta or {}

    @property
    def tasks(self) -> list[str]:
        return list(self.tables)

    @staticmethod
    def _flat_bins(table: dict[str, Any], values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        idx = []
        for axis, edges in zip(table["axes"], table["edges"]):
            # inner edges only: values outside the range land in the first/last bin
            idx.append(np.searchsorted(edges[1:-1], values[:, axis], side="right"))
        shape = table["weights"].shape
        return np.ravel_multi_index(tuple(idx), shape) if idx else np.zeros(len(values), np.int64)

    def event_weights(self, task: str, values: np.ndarray) -> np.ndarray:
        """float32 (n,) weights of events with targets ``values`` (n, dim); ones for other tasks."""
        if task not in self.tables:
            return np.ones(len(values), dtype=np.float32)
        table = self.tables[task]
        return table["weights"].reshape(-1)[self._flat_bins(table, values)].astype(np.float32)

    @classmethod
    def fit(
        cls,
        targets: Mapping[str, np.ndarray],
        bins: Mapping[str, Sequence[int]],
        max_weight: float = 10.0,
        range_percentiles: Sequence[float] = (0.5, 99.5),
        meta: dict[str, Any] | None = None,
    ) -> HistogramWeights:
        if max_weight <= 1:
            raise XecError(f"reweighting max_weight must be > 1, got {max_weight}")
        tables = {}
        for task, values in targets.items():
            values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
            if len(values) == 0:
                raise XecError(f"reweighting task {task}: no events")
            nbins = list(bins.get(task, [10] * values.shape[1]))
            if len(nbins) != values.shape[1]:
                raise XecError(
                    f"reweighting.bins.{task} has {len(nbins)} entries, task {task} has "
                    f"{values.shape[1]} components {get_task(task).columns}"
                )
            axes = [i for i, n in enumerate(nbins) if n > 1]
            edges = []
            for i in axes:
                lo, hi = np.percentile(values[:, i], range_percentiles)
                if not hi > lo:  # constant component: one wide bin around it
                    lo, hi = lo - 0.5, hi + 0.5
                edges.append(np.linspace(lo, hi, nbins[i] + 1))
            table = {"axes": axes, "edges": edges, "weights": np.zeros([nbins[i] for i in axes] or [1])}
            flat = cls._flat_bins(table, values)
            counts = np.bincount(flat, minlength=table["weights"].size).astype(np.float64)
            w = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
            n = len(values)
            for _ in range(200):  # scale to mean 1, clip, repeat until both hold
                w *= n / np.sum(counts * w)
                if w.max() <= max_weight * (1 + 1e-9):
                    break
                w = np.minimum(w, max_weight)
            w = np.minimum(w, max_weight)
            w[counts == 0] = w[counts > 0].max()
            table["weights"] = w.reshape(table["weights"].shape)
            tables[task] = table
        return cls(tables, meta)

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for task, table in self.tables.items():
            arrays[f"{task}/axes"] = np.asarray(table["axes"], dtype=np.int64)
            arrays[f"{task}/weights"] = np.asarray(table["weights"], dtype=np.float64)
            for k, e in enumerate(table["edges"]):
                arrays[f"{task}/edges{k}"] = np.asarray(e, dtype=np.float64)
        meta = {**self.meta, "tasks": self.tasks, "xec_version": xec.__version__}
        arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True))
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> HistogramWeights:
        path = Path(path)
        if not path.exists():
            raise XecError(f"{path}: no such reweighting file (run `xec reweight` first)")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                tables = {}
                for task in meta["tasks"]:
                    axes = z[f"{task}/axes"].tolist()
                    tables[task] = {
                        "axes": axes,
                        "weights": z[f"{task}/weights"],
                        "edges": [z[f"{task}/edges{k}"] for k in range(len(axes))],
                    }
        except XecError:
            raise
        except Exception as exc:
            raise XecError(f"{path}: not a readable reweighting file ({type(exc).__name__}: {exc})") from exc
        return cls(tables, meta)
