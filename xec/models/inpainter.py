"""XECInpainter: fill masked or dead sensors with predicted (npho, time).

Encoder (initialised from the MAE with ``load_encoder_weights``; ``freeze_encoder`` keeps it
fixed) + light per-face heads (xec.models.decoders, level 1): each head reads the encoder's
stage-1 map (stem resolution), the raw input of the patch (so it sees exactly which
neighbours are present) and its face's fused token (global context), runs
``inpaint_depth`` ConvNeXt V2 / HexNeXt blocks and predicts (npho, time) for every sensor.

* ``predict(x, mask)`` -> (B, 4760, 2) predictions for every sensor (train the loss on the
  hidden ones: ``fill_mask(x, mask)`` tells which).
* ``forward(x, mask)`` -> x with the sensors to fill replaced: those in ``mask`` and the dead
  ones (npho == sentinel). A filled npho below the time threshold gets the sentinel as its
  time, like the normalizer does for real readings.

With ``model.inpaint_context: false`` (the default config's) there is no encoder and no heads: the
sensor-level correction (xec.models.local_fill) fills the sensors from their neighbours and, with
``model.inpaint_peak_context``, from where the event's brightest known MPPC puts the shower.
"""

from __future__ import annotations

import torch
from torch import nn

from xec.models.blocks import fill_sensors
from xec.models.decoders import FaceDecoder
from xec.models.encoder import XECEncoder
from xec.models.local_fill import LocalFill
from xec.models.presets import ModelConfig


class XECInpainter(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        sentinel: float = -1.0,
        time_npho_threshold: float = 0.0,
        freeze_encoder: bool = False,
        geometry=None,
        normalizer=None,
    ):
        """``normalizer`` (xec.normalization.Normalizer), when given, sets ``sentinel`` and
        ``time_npho_threshold`` (its npho_threshold in normalized units)."""
        super().__init__()
        if normalizer is not None:
            from xec.models.mae import npho_threshold_normalized

            sentinel = float(normalizer.sentinel)
            time_npho_threshold = npho_threshold_normalized(normalizer)
        self.encoder = self.heads = None
        if cfg.inpaint_context:
            self.encoder = XECEncoder(cfg, sentinel=sentinel, geometry=geometry)
            self.heads = FaceDecoder(self.encoder, cfg.inpaint_dim, cfg.inpaint_depth, level=1, use_skip=True)
        self.local = None
        if cfg.inpaint_local_neighbours:
            if normalizer is None:
                raise ValueError("XECInpainter: inpaint_local_neighbours needs the normalizer (it works in photons)")
            if geometry is None:
                from xec.geometry import get_geometry

                geometry = get_geometry()
            self.local = LocalFill(
                geometry,
                normalizer,
                cfg.inpaint_local_neighbours,
                cfg.inpaint_local_hidden,
                cfg.inpaint_local_time,
                cfg.inpaint_peak_context,
            )
        self.sentinel = float(sentinel)
        self.time_npho_threshold = float(time_npho_threshold)
        self.freeze_encoder = bool(freeze_encoder) and self.encoder is not None
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen: no drop-path noise either
        return self

    def fill_mask(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, 4760) bool: the sensors ``forward`` replaces (hidden or dead)."""
        dead = x[..., 0] == self.sentinel
        return dead if mask is None else (dead | mask.bool())

    def predict(self, x: torch.Tensor, mask: torch.Tensor | None = None, with_heads: bool = False) -> torch.Tensor:
        """(B, 4760, 2) predictions; ``with_heads`` (training with the local correction): (B, 4760,
        4), the heads' own prediction in the last two channels, so that they keep their own loss
        (scored only through the correction, they drifted to values the correction had to undo).
        Without the encoder (``inpaint_context`` false): the correction's (B, 4760, 2) alone."""
        if self.encoder is None:
            return self.local(x, None, self.fill_mask(x, mask))
        if self.freeze_encoder:
            with torch.no_grad():
                feats = self.encoder.forward_features(x, mask)
        else:
            feats = self.encoder.forward_features(x, mask)
        heads = self.heads(feats)
        if self.local is None:
            return heads
        pred = self.local(x, heads, self.fill_mask(x, mask))
        return torch.cat([pred, heads], dim=-1) if with_heads else pred

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        pred = self.predict(x, mask)
        npho = pred[..., 0].clamp_min(0.0)
        time = torch.where(npho > self.time_npho_threshold, pred[..., 1], self.sentinel)
        return fill_sensors(x, self.fill_mask(x, mask), (npho, time))
