"""XECMAE: masked-autoencoder pretraining of the XECEncoder.

* Invalid-aware masking (``random_mask``): only candidate sensors can be hidden. By default
  (``maskable="time_valid"``) a sensor whose time is already the sentinel (dead, or below the
  npho threshold) is never picked; ``maskable="npho_valid"`` also allows
  low-light sensors and ``time_valid_bias`` b > 0 then favours sensors with a valid time
  (probability proportional to 1 + b). Each candidate is hidden independently with
  probability mask_ratio (no per-event sort on the hot path); ``actual_mask_ratio`` reports
  the realised fraction.
* Hidden sensors are set to the sentinel AND passed to the encoder as its ``mask`` (FCMAE:
  hidden cells are zeroed after every spatial operation), so nothing of their values leaks.
* Per-face decoders (xec.models.decoders, level 2) predict (npho, time) for every sensor.
* Loss on the randomly hidden sensors only (never on sensors that were invalid already): npho
  everywhere hidden; time only where the true time is valid and the true normalized npho is
  above ``time_npho_threshold`` (the normalizer's npho_threshold in normalized units, see
  ``npho_threshold_normalized``). Options: loss mse / l1 / smooth_l1 / huber,
  ``time_weight_sqrt_npho`` (weight = sqrt of the true NORMALIZED npho, rescaled to mean 1
  over the selected sensors: no inverse normalization inside the model), and
  ``learn_log_vars`` (loss = sum_c exp(-s_c) L_c + s_c with learned s_c).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xec.errors import XecError
from xec.models.decoders import FaceDecoder
from xec.models.encoder import XECEncoder
from xec.models.presets import ModelConfig

LOSSES = ("mse", "l1", "smooth_l1", "huber")
MASKABLE = ("time_valid", "npho_valid")


def npho_threshold_normalized(normalizer) -> float:
    """The normalizer's npho_threshold (photons) in normalized npho units."""
    import numpy as np

    npho_n, _ = normalizer.normalize(np.array([normalizer.npho_threshold]), np.array([0.0]))
    return float(npho_n[0])


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":
        return F.mse_loss(pred, target, reduction="none")
    if kind == "l1":
        return F.l1_loss(pred, target, reduction="none")
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=0.1)
    if kind == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=1.0)
    raise XecError(f"unknown loss {kind!r}; choose one of {LOSSES}")


def random_mask(
    x: torch.Tensor,
    ratio: float,
    sentinel: float,
    maskable: str = "time_valid",
    time_valid_bias: float = 0.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 2) normalized input -> (mask (B, N) bool, candidates (B, N) bool).

    Each candidate is hidden independently with probability ``ratio`` (O(N), no sort; the
    realised fraction is reported as actual_mask_ratio). With ``time_valid_bias`` b > 0 the
    probability is proportional to 1 + b for valid-time sensors, scaled so that the expected
    fraction per event stays ``ratio`` (capped at 1)."""
    if maskable not in MASKABLE:
        raise XecError(f"unknown maskable {maskable!r}; choose one of {MASKABLE}")
    npho_valid = x[..., 0] != sentinel
    time_valid = x[..., 1] != sentinel
    cand = time_valid & npho_valid if maskable == "time_valid" else npho_valid
    if noise is not None:  # (B, N) uniform [0, 1): lets torch.compile trace without a generator
        u = noise
    else:
        dev = generator.device if generator is not None else x.device
        u = torch.rand(x.shape[:2], generator=generator, device=dev).to(x.device)
    if time_valid_bias > 0:
        w = torch.where(time_valid, 1.0 + time_valid_bias, 1.0) * cand
        p = ratio * w * (cand.sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1e-12))
        mask = (u < p.clamp(max=1.0)) & cand
    else:
        mask = (u < ratio) & cand
    return mask, cand


class XECMAE(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        sentinel: float = -1.0,
        time_npho_threshold: float = 0.0,
        mask_ratio: float = 0.6,
        loss: str = "smooth_l1",
        maskable: str = "time_valid",
        time_valid_bias: float = 0.0,
        time_weight_sqrt_npho: bool = False,
        learn_log_vars: bool = False,
        npho_loss_weight: float = 1.0,
        time_loss_weight: float = 1.0,
        face_losses: bool = False,
        geometry=None,
    ):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise XecError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if loss not in LOSSES:
            raise XecError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if maskable not in MASKABLE:
            raise XecError(f"unknown maskable {maskable!r}; choose one of {MASKABLE}")
        self.encoder = XECEncoder(cfg, sentinel=sentinel, geometry=geometry)
        self.decoder = FaceDecoder(self.encoder, cfg.decoder_dim, cfg.decoder_depth, level=2)
        self.sentinel = float(sentinel)
        self.time_npho_threshold = float(time_npho_threshold)
        self.mask_ratio = float(mask_ratio)
        self.loss_kind = loss
        self.maskable = maskable
        self.time_valid_bias = float(time_valid_bias)
        self.time_weight_sqrt_npho = bool(time_weight_sqrt_npho)
        self.channel_weights = (float(npho_loss_weight), float(time_loss_weight))
        self.log_vars = nn.Parameter(torch.zeros(2)) if learn_log_vars else None
        self.face_losses = bool(face_losses)  # also in training mode (always in eval mode)
        face_of_sensor = torch.zeros(len(self.encoder.face_names), self.encoder.n_sensors)
        lay = self.encoder.layout
        for i, face in enumerate(lay.rect):
            ids = face.index[face.index >= 0]
            face_of_sensor[i, torch.as_tensor(ids)] = 1.0
        for k in range(self.encoder.n_hex_faces):
            n = lay.hex.nodes_per_face
            face_of_sensor[len(lay.rect) + k, torch.as_tensor(lay.hex.ids[k * n : (k + 1) * n])] = 1.0
        self.register_buffer("face_onehot", face_of_sensor, persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """x (B, 4760, 2) normalized. ``mask`` (optional, bool (B, 4760)) overrides the random
        masking (evaluation with fixed masks); ``noise`` (B, N) uniform [0, 1) draws the random
        mask from given numbers (a ``generator`` inside a torch.compile'd forward costs two
        graph breaks; drawing the noise outside avoids them). Returns loss, loss_npho, loss_time,
        actual_mask_ratio, pred (B, 4760, 2), mask (B, 4760), and loss_face (F,) in eval mode
        (or always with ``face_losses=True``)."""
        if mask is None:
            mask, cand = random_mask(
                x, self.mask_ratio, self.sentinel, self.maskable, self.time_valid_bias, generator, noise
            )
        else:
            mask = mask.bool()
            cand = x[..., 0] != self.sentinel
            mask = mask & cand  # already-invalid sensors have no target
        # The encoder treats hidden sensors exactly like sentinel readings (values 0, validity
        # flags 0), i.e. "set to the sentinel", without materializing a masked copy of x.
        feats = self.encoder.forward_features(x, mask)
        pred = self.decoder(feats)
        out = self.loss(pred, x, mask)
        out["pred"] = pred
        out["mask"] = mask
        out["actual_mask_ratio"] = mask.sum() / cand.sum().clamp_min(1)
        return out

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        m = mask.to(pred.dtype)
        tn, tt = target[..., 0], target[..., 1]
        time_ok = (tt != self.sentinel) & (tn > self.time_npho_threshold)
        mt = m * time_ok.to(pred.dtype)
        if self.time_weight_sqrt_npho:
            w = torch.sqrt(tn.clamp_min(0.0)) * mt
            mt = w * (mt.sum() / w.sum().clamp_min(1e-12))
        # Unselected targets may be the sentinel: finite, and their loss is multiplied by 0.
        el = elementwise_loss(pred, target, self.loss_kind)  # (B, N, 2)
        l_npho = (el[..., 0] * m).sum() / m.sum().clamp_min(1.0)
        l_time = (el[..., 1] * mt).sum() / mt.sum().clamp_min(1.0)
        wn, wt = self.channel_weights
        if self.log_vars is not None:
            s = self.log_vars
            total = wn * (torch.exp(-s[0]) * l_npho + s[0]) + wt * (torch.exp(-s[1]) * l_time + s[1])
        else:
            total = wn * l_npho + wt * l_time
        out = {"loss": total, "loss_npho": l_npho.detach(), "loss_time": l_time.detach()}
        if self.face_losses or not self.training:
            with torch.no_grad():  # per-face loss (npho + time per sensor), for monitoring
                per_sensor = el[..., 0] * m + el[..., 1] * mt
                face_sum = self.face_onehot @ per_sensor.sum(0)
                face_cnt = self.face_onehot @ m.sum(0)
            out["loss_face"] = face_sum / face_cnt.clamp_min(1.0)
        return out
