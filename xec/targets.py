"""Regression targets: the one home for task names, truth/reco branches, units and the
target standardization that travels with shard manifests, checkpoints and ONNX models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xec.errors import XecError


@dataclass(frozen=True)
class Task:
    name: str
    truth_branch: str  # MC truth branch in the ROOT files
    reco_branch: str | None  # classical reconstruction branch in real-data files
    columns: tuple[str, ...]  # one name per output component
    unit: str
    # one scale for all components (a position): the loss then weighs a millimetre of u, v and w
    # alike instead of favouring the coordinate with the narrowest range
    isotropic: bool = False

    @property
    def dim(self) -> int:
        return len(self.columns)


TASKS: dict[str, Task] = {
    "angle": Task("angle", "emiAng", None, ("theta", "phi"), "deg"),
    "energy": Task("energy", "energyTruth", "energyReco", ("energy",), "GeV"),
    "timing": Task("timing", "timeTruth", "timeReco", ("time",), "ns"),
    "uvwFI": Task("uvwFI", "uvwTruth", "uvwRecoFI", ("u", "v", "w"), "cm", isotropic=True),
    "angleVec": Task("angleVec", "emiVec", None, ("vx", "vy", "vz"), "1"),
}
DEFAULT_TASKS = ("angle", "energy", "timing", "uvwFI")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise XecError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def standard_columns(df):
    """The regressor's val predictions (``regressor/predictions.parquet``) name their columns
    ``pred_<col>`` / ``sigma_<col>`` / ``true_<col>``; a pandas frame of them with the
    ``pred_<task>_<col>`` / ... names of xec infer and xec baseline (other frames unchanged)."""
    rename = {}
    for task in TASKS.values():
        for col in task.columns:
            for prefix in ("pred", "sigma", "true", "reco"):
                short, full = f"{prefix}_{col}", f"{prefix}_{task.name}_{col}"
                if short in df.columns and full not in df.columns:
                    rename[short] = full
    return df.rename(columns=rename) if rename else df


# pile-up truth branch -> output column of xec infer / xec baseline (read by the summary's split)
PILEUP_COLUMNS = {"pileupEnergyTruth": "pileup_energy_truth", "pileupTimeTruth": "pileup_time_truth"}


def pileup_columns(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The pile-up truth columns (float32) of the branches present in ``arrays``."""
    return {col: np.asarray(arrays[b], np.float32).reshape(-1) for b, col in PILEUP_COLUMNS.items() if b in arrays}


def targets_from_branches(
    arrays: Mapping[str, np.ndarray], tasks=tuple(TASKS), reco: bool = False
) -> dict[str, np.ndarray]:
    """Per-task (N, dim) float32 target arrays from truth (or reco) branch arrays. Tasks whose
    branch is absent are left out."""
    out = {}
    for name in tasks:
        task = get_task(name)
        branch = task.reco_branch if reco else task.truth_branch
        if branch is None or branch not in arrays:
            continue
        values = np.asarray(arrays[branch], dtype=np.float32).reshape(len(arrays[branch]), -1)
        if values.shape[1] != task.dim:
            raise XecError(f"branch {branch} has {values.shape[1]} components per event, task {name} needs {task.dim}")
        out[name] = values
    return out


@dataclass
class TargetStandardizer:
    """z = (y - mean) / std per task and component; fitted on the train split (shard manifest)."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    def standardize(self, task: str, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float32) - self.mean[task]) / self.std[task]

    def destandardize(self, task: str, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float32) * self.std[task] + self.mean[task]

    def to_dict(self) -> dict[str, Any]:
        return {t: {"mean": self.mean[t].tolist(), "std": self.std[t].tolist()} for t in self.mean}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> TargetStandardizer:
        mean, std = {}, {}
        for task, stats in d.items():
            mean[task] = np.asarray(stats["mean"], dtype=np.float32).reshape(-1)
            s = np.asarray(stats["std"], dtype=np.float32).reshape(-1)
            if task in TASKS and TASKS[task].isotropic:
                s = np.full_like(s, np.sqrt(np.mean(s.astype(np.float64) ** 2)))
            std[task] = np.where(s > 0, s, 1.0).astype(np.float32)  # constant target: no scaling
        return cls(mean, std)

    @classmethod
    def fit(cls, targets: Mapping[str, np.ndarray]) -> TargetStandardizer:
        return cls.from_dict({t: {"mean": np.mean(v, axis=0), "std": np.std(v, axis=0)} for t, v in targets.items()})
