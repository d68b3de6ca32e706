"""XEC neural networks: building blocks, the face-aware encoder, MAE, inpainter and regressor.

    from xec.models import XECEncoder, XECMAE, XECInpainter, XECRegressor, model_config
    cfg = model_config({"preset": "tiny", "share_rect_backbone": False})   # config.yaml `model`

The names are loaded on first use, so that ``xec.models.presets`` (model sizes, read by the
config declarations of every command) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "XECEncoder": "encoder",
    "XECInpainter": "inpainter",
    "XECMAE": "mae",
    "npho_threshold_normalized": "mae",
    "random_mask": "mae",
    "PRESETS": "presets",
    "ModelConfig": "presets",
    "get_preset": "presets",
    "model_config": "presets",
    "model_config_from_dict": "presets",
    "XECRegressor": "regressor",
    "load_encoder_weights": "regressor",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'xec.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"xec.models.{_HOME[name]}"), name)
