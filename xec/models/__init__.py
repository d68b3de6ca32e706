"""XEC neural networks: building blocks, the face-aware encoder, MAE, inpainter and regressor.

    from xec.models import XECEncoder, XECMAE, XECInpainter, XECRegressor, model_config
    cfg = model_config({"preset": "tiny", "share_rect_backbone": False})   # config.yaml `model`
"""
from xec.models.encoder import XECEncoder
from xec.models.inpainter import XECInpainter
from xec.models.mae import XECMAE, npho_threshold_normalized, random_mask
from xec.models.presets import PRESETS, ModelConfig, get_preset, model_config, model_config_from_dict
from xec.models.regressor import XECRegressor, load_encoder_weights

__all__ = ["XECEncoder", "XECMAE", "XECInpainter", "XECRegressor", "ModelConfig", "PRESETS", "get_preset",
           "model_config", "model_config_from_dict", "load_encoder_weights", "npho_threshold_normalized",
           "random_mask"]
