"""`xec reweight`: fit per-task inverse-frequency histogram weights on the train shards.

Reads the targets of the tasks in the config's ``reweighting`` section from the train shards
(ShardReader, only the small target members), fits HistogramWeights (xec/data/weights.py: binning,
clipping and the weights.npz format) with the section's ``bins``, ``max_weight`` and
``range_percentiles``, logs each task's mean and max weight and effective sample size, optionally
plots the before/after distributions, and writes weights.npz last (it exists only if all of this
worked). ShardLoader(weights=...) then looks up each event's bin. This module does not import
torch (`xec reweight` stays light).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xec.config import add_config_argument, load_config
from xec.data.manifest import read_manifest
from xec.data.reader import ShardReader
from xec.data.weights import HistogramWeights
from xec.errors import XecError
from xec.targets import get_task
from xec.utils import atomic_path, setup_logging

log = logging.getLogger("xec.reweight")


def read_targets(manifest: dict[str, Any], tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """All targets of a shard split (only the small target members are read)."""
    missing = [t for t in tasks if t not in manifest["tasks"]]
    if missing:
        raise XecError(f"{manifest['_path']}: shards have no targets for task(s) {missing}")
    reader = ShardReader(manifest["_dir"], manifest["shards"], tuple(tasks))
    out = {t: np.empty((manifest["events"], get_task(t).dim), dtype=np.float32) for t in tasks}
    segments = [(s, u, 0, n) for s, shard in enumerate(manifest["shards"]) for u, n in enumerate(shard["units"])]
    try:
        reader.read_into(out, 0, segments)
    finally:
        reader.close()
    return out


def plot_weights(targets: Mapping[str, np.ndarray], weights: HistogramWeights, path: str | Path) -> None:
    """Before/after: each component's train distribution unweighted and weighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(weights.tasks)
    ncols = max(get_task(t).dim for t in tasks)
    fig, axs = plt.subplots(len(tasks), ncols, figsize=(3.6 * ncols, 2.8 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        values = targets[task]
        w = weights.event_weights(task, values)
        info = get_task(task)
        for col in range(ncols):
            ax = axs[row, col]
            if col >= info.dim:
                ax.axis("off")
                continue
            lo, hi = np.percentile(values[:, col], [0.5, 99.5])
            if not hi > lo:
                lo, hi = lo - 0.5, hi + 0.5
            ax.hist(values[:, col], bins=40, range=(lo, hi), histtype="step", label="before (unweighted)")
            ax.hist(values[:, col], bins=40, range=(lo, hi), weights=w, histtype="step", label="after (weighted)")
            ax.set_xlabel(f"{task}: {info.columns[col]} [{info.unit}]")
            ax.set_ylabel("events")
        axs[row, 0].set_title(
            f"{task}: max weight {w.max():.2f}, ESS {(w.sum() ** 2 / (w**2).sum()) / len(w):.2f} N",
            fontsize=9,
            loc="left",
        )
    axs[0, 0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="train shard manifest (results/shards/train/manifest.json)")
    parser.add_argument("--out", required=True, help="output weights .npz")
    add_config_argument(parser)
    parser.add_argument("--plot", default=None, help="before/after PNG")
    parser.add_argument("--log", default=None, help="log file")


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log)
    cfg = load_config(args.config, command="reweight")
    sec = cfg["reweighting"]
    manifest = read_manifest(args.manifest)
    targets = read_targets(manifest, sec["tasks"])
    meta = {
        "manifest": str(args.manifest),
        "events": manifest["events"],
        "bins": sec["bins"],
        "max_weight": sec["max_weight"],
        "range_percentiles": sec["range_percentiles"],
    }
    weights = HistogramWeights.fit(targets, sec["bins"], sec["max_weight"], sec["range_percentiles"], meta)
    for task in weights.tasks:
        w = weights.event_weights(task, targets[task])
        log.info(
            "%s: mean weight %.4f, max %.3f, effective sample size %.1f%%",
            task,
            w.mean(),
            w.max(),
            100 * w.sum() ** 2 / (w**2).sum() / len(w),
        )
    if args.plot:
        plot_weights(targets, weights, args.plot)
    weights.save(args.out)  # last: the rule's main output exists only when everything worked
    return 0
