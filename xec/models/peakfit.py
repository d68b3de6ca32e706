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

``coarse`` > 0 adds a second, wider view for showers that convert deep in the xenon, whose light
spot outgrows the fine window: a ``coarse`` x ``coarse`` patch of 2 x 2-averaged MPPCs around the
same peak (2 * coarse MPPCs on a side), with its own centroids and its centre relative to the
fine one. A wider fine window (15 x 15) helped deep events but cost the shallow ones
(docs/performance.md, "Peak window").

Cost: one argmax, one gather and an MLP per event (~0.47M MACs at 11 x 11 and width 512),
small next to the encoder; everything is plain tensor algebra, so it exports to ONNX.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

COORD_SCALE_CM = 10.0  # anchor coordinates in units of 10 cm: O(1) features


class PeakWindowFit(nn.Module):
    def __init__(
        self,
        geometry,
        window: int = 11,
        hidden: int = 512,
        out_dim: int = 32,
        sentinel: float = -1.0,
        coarse: int = 0,
    ):
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
        n_in = 3 * window * window + 2 + n_cent
        self.coarse = int(coarse)
        if self.coarse:
            rows2, cols2 = (self.rows + 1) // 2, (self.cols + 1) // 2
            if not 1 <= self.coarse <= min(rows2, cols2):
                raise ValueError(f"coarse peak window {coarse} does not fit the {rows2}x{cols2} pooled inner face")
            # sensor ids of the face with an even number of rows: an odd last row is repeated,
            # which leaves every block mean the mean over the MPPCs that exist
            padded = np.concatenate([index, index[-1:]], 0) if self.rows % 2 else index
            padded = np.concatenate([padded, padded[:, -1:]], 1) if self.cols % 2 else padded
            padded_ids = torch.as_tensor(padded.reshape(-1), dtype=torch.long)
            self.register_buffer("coarse_index", padded_ids, persistent=False)
            # (u, v) of each 2 x 2 block: the mean over its MPPCs
            grid = xyz_to_uvw(geometry.positions[padded.reshape(-1)])[:, :2] / COORD_SCALE_CM
            blocks = grid.reshape(rows2, 2, cols2, 2, 2).mean(axis=(1, 3)).reshape(-1, 2)
            self.register_buffer("coarse_coords", torch.as_tensor(blocks, dtype=torch.float32), persistent=False)
            crel = torch.arange(self.coarse, dtype=torch.float32) - (self.coarse - 1) / 2
            cell = torch.stack(torch.meshgrid(crel, crel, indexing="ij"), -1).reshape(-1, 2)
            self.register_buffer("coarse_rc", cell, persistent=False)
            self.coarse_log_tau = nn.Parameter(torch.log(torch.tensor([2.0, 4.0, 8.0, 16.0])))
            n_in += 3 * self.coarse * self.coarse + 2 + n_cent
            n_cent *= 2
        self.mlp = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
        )
        self.out_dim = out_dim + n_cent + 2  # MLP features + centroids + the anchor (u, v)

    def peak_index(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) row-major inner-face index of the brightest valid MPPC (the sentinel is below
        every valid npho, so a dead sensor is never the peak)."""
        return torch.argmax(x[..., 0].index_select(1, self.index), dim=1)

    def window_sensors(self, peak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) peak index -> the (B, window^2) sensor ids of the window around it (row-major,
        shifted inwards at the face edges) and the (B, 2) (u, v) of the window centre (in
        COORD_SCALE_CM units)."""
        k, half = self.window, self.window // 2
        r0 = torch.clamp(torch.div(peak, self.cols, rounding_mode="floor") - half, 0, self.rows - k)
        c0 = torch.clamp(peak % self.cols - half, 0, self.cols - k)
        cells = (r0[:, None] + self.offsets)[:, :, None] * self.cols + (c0[:, None] + self.offsets)[:, None, :]
        sensors = self.index.index_select(0, cells.reshape(-1)).reshape(peak.shape[0], k * k)
        return sensors, self.coords.index_select(0, (r0 + half) * self.cols + c0 + half)

    def local_patch(self, x: torch.Tensor, peak: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 4760, 2) -> the (B, window^2, 2) patch around the brightest valid MPPC and the
        (B, 2) (u, v) of the patch centre (in COORD_SCALE_CM units)."""
        b, kk = x.shape[0], self.window * self.window
        sensors, anchor = self.window_sensors(self.peak_index(x) if peak is None else peak)
        patch = torch.gather(x, 1, sensors.reshape(b, kk, 1).expand(b, kk, 2))
        return patch, anchor

    def coarse_patch(self, x: torch.Tensor, peak: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 4760, 2) -> the (B, coarse^2, 2) patch of 2 x 2-averaged MPPCs (the mean of
        each channel over the block's valid values; the sentinel where none is) around the
        brightest valid MPPC, and the (B, 2) (u, v) of its centre. Only the 2k x 2k MPPCs of
        the patch are gathered and pooled."""
        b = x.shape[0]
        k, half = self.coarse, self.coarse // 2
        rows2, cols2 = (self.rows + 1) // 2, (self.cols + 1) // 2
        peak = self.peak_index(x) if peak is None else peak
        r0 = torch.clamp(torch.div(peak, self.cols, rounding_mode="floor") // 2 - half, 0, rows2 - k)
        c0 = torch.clamp((peak % self.cols) // 2 - half, 0, cols2 - k)
        span = torch.arange(2 * k, device=x.device)
        cells = ((2 * r0[:, None] + span)[:, :, None] * (2 * cols2) + (2 * c0[:, None] + span)[:, None, :]).reshape(-1)
        sensors = self.coarse_index.index_select(0, cells).reshape(b, 4 * k * k, 1)
        fine = torch.gather(x, 1, sensors.expand(b, 4 * k * k, 2)).reshape(b, k, 2, k, 2, 2)
        valid = (fine != self.sentinel).to(fine.dtype)
        total = (fine * valid).sum(dim=(2, 4))
        count = valid.sum(dim=(2, 4))
        patch = torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, self.sentinel))
        centre = self.coarse_coords.index_select(0, (r0 + half) * cols2 + c0 + half)
        return patch.reshape(b, k * k, 2), centre

    def _centroids(self, patch: torch.Tensor, log_tau: torch.Tensor, cell_rc: torch.Tensor):
        """npho relative to the patch's peak (sentinel where invalid) and the soft-argmax
        centroids and spreads (rows, cols from the centre) at the sharpnesses exp(log_tau)."""
        # npho relative to the peak's: with a log-like npho transform this is the light pattern
        # independent of the energy, which an MLP cannot easily normalize out by itself
        npho = patch[..., 0]
        valid = npho != self.sentinel
        rel = npho - npho.amax(dim=1, keepdim=True)
        logits = torch.exp(log_tau)[None, :, None] * rel.masked_fill(~valid, -1e4).unsqueeze(1)
        rel = rel.masked_fill(~valid, self.sentinel)
        p = torch.softmax(logits, dim=-1)  # (B, K, window^2)
        mean = p @ cell_rc  # (B, K, 2) rows, cols from the centre
        spread = torch.sqrt((p @ (cell_rc * cell_rc) - mean * mean).clamp_min(0.0) + 1e-6)
        return rel, torch.cat([mean.flatten(1), spread.flatten(1)], dim=1)

    def window_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 4760, 2) normalized -> (the MLP's input (B, n_in), the features passed on as
        they are: centroids and anchor (B, out_dim - MLP width)). The regressor's head refit
        trains a second MLP on the same input (``peak_mlp``)."""
        peak = self.peak_index(x)
        patch, anchor = self.local_patch(x, peak)
        rel, cent = self._centroids(patch, self.log_tau, self.cell_rc)
        feats = [patch.flatten(1), rel, anchor, cent]
        if self.coarse:
            cpatch, centre = self.coarse_patch(x, peak)
            crel, ccent = self._centroids(cpatch, self.coarse_log_tau, self.coarse_rc)
            feats += [cpatch.flatten(1), crel, centre - anchor, ccent]
            cent = torch.cat([cent, ccent], dim=1)
        return torch.cat(feats, dim=1), torch.cat([cent, anchor], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 4760, 2) normalized (invalid / hidden sensors = sentinel) -> (B, out_dim)."""
        inputs, passed = self.window_features(x)
        return torch.cat([self.mlp(inputs), passed], dim=1)
