"""Checkpoints: the one home for writing and reading stage checkpoints (rebuilding a model
from one: ``xec.train.stages.build_model_from_checkpoint``).

A checkpoint is a plain dict (docs/architecture.md, "Checkpoints") saved with ``torch.save`` and loadable with
``torch.load(weights_only=True)``: only tensors and plain Python types go in (RNG states as
tensors/lists, config as plain dicts, normalization/standardization as ``to_dict()``).
Writes are atomic (temporary file, then rename), so a kill mid-save never leaves a half file.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xec.errors import XecError
from xec.models.presets import ENCODER_FIELDS
from xec.normalization import Normalizer
from xec.utils import atomic_path

log = logging.getLogger("xec.train")

PAYLOAD_KEYS = (
    "stage",
    "model_state",
    "ema_state",
    "optimizer",
    "scheduler",
    "epoch",
    "step",
    "config",
    "model",
    "normalization",
    "tasks",
    "target_standardization",
    "rng",
    "metrics",
    "xec_version",
)


def _plain(obj: Any) -> Any:
    """Turn numpy scalars/arrays and Paths into types the weights_only unpickler accepts."""
    if isinstance(obj, Mapping):
        return {str(k) if not isinstance(k, (int, str)) else k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj) if isinstance(obj, list) else tuple(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Atomically write ``payload`` (plain types + tensors) to ``path``."""
    if not isinstance(payload.get("stage"), str) or not payload["stage"]:
        raise ValueError(f"checkpoint payload needs a stage name, got {payload.get('stage')!r}")
    clean = {
        k: (v if isinstance(v, torch.Tensor) or k in ("model_state", "ema_state", "optimizer") else _plain(v))
        for k, v in payload.items()
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(clean, tmp)


def load_checkpoint(
    path: str | os.PathLike,
    expected_stage: str | tuple[str, ...] | None = None,
    expected_normalizer=None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``. One clear XecError for a missing or corrupt
    file, a checkpoint of another stage, or one made with another normalization preset."""
    path = Path(path)
    if not path.is_file():
        raise XecError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors of truncated or foreign files
        raise XecError(f"{path}: not a readable xec checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "stage" not in ckpt or "model_state" not in ckpt:
        raise XecError(f"{path}: not an xec checkpoint (no 'stage'/'model_state' entries)")
    if expected_stage is not None:
        allowed = (expected_stage,) if isinstance(expected_stage, str) else tuple(expected_stage)
        if ckpt["stage"] not in allowed:
            raise XecError(f"{path}: checkpoint of stage {ckpt['stage']!r}, expected {' or '.join(map(repr, allowed))}")
    if expected_normalizer is not None:
        if not ckpt.get("normalization"):
            raise XecError(f"{path}: checkpoint has no normalization preset")
        Normalizer.from_dict(ckpt["normalization"]).check_compatible(expected_normalizer, where=str(path))
    return ckpt


def check_model_compatible(
    ckpt: Mapping[str, Any], model_cfg: Mapping[str, Any], where: str, encoder_only: bool = False
) -> None:
    """XecError if the checkpoint's model config (preset and sizes) differs from ``model_cfg``.
    ``encoder_only``: compare only the keys that shape the encoder (initializing a fine-tuning
    stage from the MAE: the heads and decoders are the stage's own business)."""
    saved = dict(ckpt.get("model") or {})
    want = dict(_plain(model_cfg))
    if encoder_only:
        saved = {k: v for k, v in saved.items() if k in ENCODER_FIELDS}
        want = {k: v for k, v in want.items() if k in ENCODER_FIELDS}
    if saved != want:
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {want.get(k)!r}" for k in diff[:5])
        raise XecError(
            f"{where}: model configuration differs from the checkpoint's (preset "
            f"{saved.get('preset')!r} vs {want.get('preset')!r}; {detail})"
        )


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU, CUDA), NumPy and Python as tensors / plain types."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _plain_python_state(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def _plain_python_state(st: tuple) -> list:
    version, internal, gauss = st
    return [int(version), [int(v) for v in internal], gauss if gauss is None else float(gauss)]


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in state["cuda"]])
