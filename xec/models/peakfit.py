"""PeakWindowFit: a learned local fit of the inner-face light pattern around the brightest MPPC.

Where the light falls on the inner face IS the position measurement: the classical
reconstruction fits the solid-angle pattern in a window around the brightest MPPC and reaches
a few mm. A global-pooled encoder token has to rediscover sub-cell positions through learned
position embeddings, which a small model trained for minutes does poorly.
This module gives the heads the same view the fit has: a ``window`` x ``window`` patch of MPPCs
centred on the brightest one (shifted inwards at the face edges) - its normalized (npho, time),
npho relative to the peak, and soft-argmax centroids at four sharpnesses - read by an MLP, plus
the (u, v) of the patch centre. Offsets inside a 1.5 cm pitch window are an easy,
translation-invariant function to learn; the heads add them to the anchor (a linear path from
these features, xec.models.regressor.TaskHead).

Cost: one argmax, one gather and an MLP per event (~0.47M MACs at 11 x 11 and width 512),
small next to the encoder; everything is plain tensor algebra, so it exports to ONNX.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

COORD_SCALE_CM = 10.0  # anchor coordinates in units of 10 cm: O(1) features


class PeakWindowFit(nn.Module):
    def __init__(self, geometry, window: int = 11, hidden: int = 512, out_dim: int = 32, sentinel: float = -1.0):
        super().__init__()
        from xec.geometry import xyz_to_uvw

        index = np.array(geometry.inner_index)
        self.rows, self.cols = index.shape
        if not 1 <= window <= min(self.rows, self.cols):
            raise ValueError(f"peak window {window} does not fit the {self.rows}x{self.cols} inner face")
        self.window = window
        self.sentinel = float(sentinel)
        uv = xyz_to_uvw(geometry.positions[index.reshape(-1)])[:, :2] / COORD_SCALE_CM
        self.register_buffer("index", torch.as_tensor(index.reshape(-1), dtype=torch.long), persistent=False)
        self.register_buffer("coords", torch.as_tensor(uv, dtype=torch.float32), persistent=False)
        self.register_buffer("offsets", torch.arange(window), persistent=False)
        # soft-argmax centroids of the patch at a few sharpnesses: exp(tau * npho) with a log-like
        # npho transform is a power-law npho weighting, the classical centroid estimators
        rel = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
        self.register_buffer(
            "cell_rc", torch.stack(torch.meshgrid(rel, rel, indexing="ij"), -1).reshape(-1, 2), persistent=False
        )
        self.log_tau = nn.Parameter(torch.log(torch.tensor([2.0, 4.0, 8.0, 16.0])))
        n_cent = 4 * self.log_tau.numel()
        self.mlp = nn.Sequential(
            nn.Linear(3 * window * window + 2 + n_cent, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
        )
        self.out_dim = out_dim + n_cent + 2  # MLP features + centroids + the anchor (u, v)

    def local_patch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 4760, 2) -> the (B, window^2, 2) patch around the brightest valid MPPC and the
        (B, 2) (u, v) of the patch centre (in COORD_SCALE_CM units)."""
        b = x.shape[0]
        k, half = self.window, self.window // 2
        inner = x.index_select(1, self.index)  # (B, H*W, 2)
        peak = torch.argmax(inner[..., 0], dim=1)  # sentinel < every valid npho
        r0 = torch.clamp(torch.div(peak, self.cols, rounding_mode="floor") - half, 0, self.rows - k)
        c0 = torch.clamp(peak % self.cols - half, 0, self.cols - k)
        cells = (
            (r0[:, None] + self.offsets)[:, :, None] * self.cols + (c0[:, None] + self.offsets)[:, None, :]
        ).reshape(b, k * k)
        patch = torch.gather(inner, 1, cells.unsqueeze(-1).expand(b, k * k, 2))
        anchor = self.coords.index_select(0, (r0 + half) * self.cols + c0 + half)
        return patch, anchor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 4760, 2) normalized (invalid / hidden sensors = sentinel) -> (B, out_dim)."""
        patch, anchor = self.local_patch(x)
        # npho relative to the peak's: with a log-like npho transform this is the light pattern
        # independent of the energy, which an MLP cannot easily normalize out by itself
        npho = patch[..., 0]
        valid = npho != self.sentinel
        rel = npho - npho.amax(dim=1, keepdim=True)
        logits = torch.exp(self.log_tau)[None, :, None] * rel.masked_fill(~valid, -1e4).unsqueeze(1)
        rel = rel.masked_fill(~valid, self.sentinel)
        p = torch.softmax(logits, dim=-1)  # (B, K, window^2)
        mean = p @ self.cell_rc  # (B, K, 2) rows, cols from the centre
        spread = torch.sqrt((p @ (self.cell_rc * self.cell_rc) - mean * mean).clamp_min(0.0) + 1e-6)
        cent = torch.cat([mean.flatten(1), spread.flatten(1)], dim=1)
        feats = torch.cat([patch.flatten(1), rel, anchor, cent], dim=1)
        return torch.cat([self.mlp(feats), cent, anchor], dim=1)
