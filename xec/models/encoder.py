"""XECEncoder: the face-aware encoder shared by the MAE, the inpainter and the regressor.

Input ``x``: (B, 4760, 2) normalized float32 (channel 0 npho, 1 time; invalid = the
normalization sentinel). Optional ``mask``: (B, 4760) bool, True = hide this sensor (MAE
masking, dead channels to inpaint).

Pipeline
1. Input channels: the 2 normalized values as they are. Invalid readings carry the sentinel
   (-1 for meg2: below every valid npho >= 0 and valid time), and hidden sensors are SET to
   the sentinel here, so the encoder is blind to their values. There are no separate
   validity-flag channels: the npho-valid pattern reaches the network through the FCMAE keep
   maps.
2. One gather (``gather_rows``: xec.models.faces.gather_rows) builds every face from the flat vector:
   inner 93x44, the outer face as ``geometry.outer_grid(outer_pool)`` (default 24x9, the PMTs
   sharing a cell stacked as input channels, see faces.py), US/DS 24x6, and the top/bottom
   hex node lists; rectangular faces are padded to a multiple of their total stride with
   empty ("sentinel") cells.
3. Rectangular faces: per-face patchify stem (``stem_stride`` inner, ``outer_stem_stride``,
   ``small_stem_stride`` US/DS) + a learned per-position embedding -> stage 1 ConvNeXt V2
   blocks -> 2x2 downsampling -> stage 2 blocks -> masked mean -> one token.
   ``share_rect_backbone`` shares the stages (stems, position embeddings and token
   projections stay per face: the faces have different strides and statistics).
4. Hex faces: linear stem + per-node embedding -> HexNeXt blocks (top and bottom as one node
   list with a shared weight per direction class, GRN per face) -> masked mean per face ->
   one token each.
5. Six tokens + learned positional embedding + face-type embedding (MPPC / rect PMT / hex PMT)
   -> pre-norm Transformer -> LayerNorm.

FCMAE masking: a stem cell is visible when at least one of its sensors has a valid npho and
is not hidden; invisible cells are zeroed after every spatial operation (blocks in
xec.models.blocks), so hidden sensors cannot leak into the tokens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xec.models.blocks import ConvNeXtV2Block, HexNeXtBlock, LayerNorm2d, TransformerLayer, fill_sensors
from xec.models.faces import HEX_FACES, RECT_FACES, FaceLayout, build_face_layout, flat_index, gather_rows
from xec.models.presets import ModelConfig

IN_CHANNELS = 2
FACE_ORDER = RECT_FACES + HEX_FACES  # == xec.geometry.FACE_NAMES
FACE_TYPES = {"inner": 0, "outer": 1, "us": 1, "ds": 1, "top": 2, "bottom": 2}


def masked_mean_2d(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), (B, 1, H, W) -> (B, C) mean over visible positions."""
    return (x * keep).sum(dim=(2, 3)) / keep.sum(dim=(2, 3)).clamp_min(1.0)


class RectStages(nn.Module):
    """Stage 1 blocks -> LN + 2x2 strided conv -> stage 2 blocks (NCHW, channels_last)."""

    def __init__(self, cfg: ModelConfig, dpr: list[float]):
        super().__init__()
        c1, c2 = cfg.rect_dims
        d1, d2 = cfg.rect_depths
        self.stage1 = nn.ModuleList(ConvNeXtV2Block(c1, cfg.kernel_size, cfg.mlp_ratio, dpr[i]) for i in range(d1))
        self.down = nn.Sequential(LayerNorm2d(c1), nn.Conv2d(c1, c2, kernel_size=2, stride=2))
        self.stage2 = nn.ModuleList(ConvNeXtV2Block(c2, cfg.kernel_size, cfg.mlp_ratio, dpr[d1 + i]) for i in range(d2))

    def forward(self, x: torch.Tensor, keep1: torch.Tensor, keep2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for blk in self.stage1:
            x = blk(x, keep1)
        f1 = x
        x = self.down(x) * keep2
        for blk in self.stage2:
            x = blk(x, keep2)
        return f1, x


class XECEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, sentinel: float = -1.0, geometry=None):
        super().__init__()
        if geometry is None:
            from xec.geometry import get_geometry

            geometry = get_geometry()
        self.cfg = cfg
        self.sentinel = float(sentinel)
        self.layout: FaceLayout = build_face_layout(
            geometry, cfg.stem_stride, cfg.outer_stem_stride, cfg.small_stem_stride, cfg.outer_pool
        )
        self.n_sensors = self.layout.n_sensors
        rows = torch.as_tensor(np.asarray(self.layout.gather_idx, dtype=np.int64))
        self.register_buffer("gather_rows", rows, persistent=False)
        self.register_buffer("gather_flat", flat_index(rows, IN_CHANNELS), persistent=False)
        c1, c2 = cfg.rect_dims
        d = cfg.token_dim
        n_rect_blocks = sum(cfg.rect_depths)
        dpr = [cfg.drop_path * i / max(n_rect_blocks - 1, 1) for i in range(n_rect_blocks)]

        self.stems = nn.ModuleDict()
        for face in self.layout.rect:
            self.stems[face.name] = nn.Sequential(
                nn.Conv2d(IN_CHANNELS * face.slots, c1, kernel_size=face.stem_stride, stride=face.stem_stride),
                LayerNorm2d(c1),
            )
        if cfg.share_rect_backbone:
            self.stages = RectStages(cfg, dpr)
        else:
            self.stages = nn.ModuleDict({f.name: RectStages(cfg, dpr) for f in self.layout.rect})
        self.rect_token = nn.ModuleDict(
            {f.name: nn.Sequential(nn.LayerNorm(c2), nn.Linear(c2, d)) for f in self.layout.rect}
        )

        hexf = self.layout.hex
        self.n_hex_faces = len(hexf.names)
        self.hex_nodes = hexf.nodes_per_face
        # Learned per-position embeddings after every stem: the faces are not translation
        # invariant (where the light falls IS the signal for u, v, w and the angles), so the
        # masked mean of the conv features should not have to rely on border effects to know
        # it.
        self.rect_pos = nn.ParameterDict(
            {
                f.name: nn.Parameter(torch.zeros(1, f.shape[0] // f.stem_stride[0], f.shape[1] // f.stem_stride[1], c1))
                for f in self.layout.rect
            }
        )
        self.hex_stem = nn.Linear(IN_CHANNELS, cfg.hex_dim)
        self.hex_pos = nn.Parameter(torch.zeros(1, hexf.ids.size, cfg.hex_dim))
        hdpr = [cfg.drop_path * i / max(cfg.hex_depth - 1, 1) for i in range(cfg.hex_depth)]
        self.hex_blocks = nn.ModuleList(
            HexNeXtBlock(cfg.hex_dim, hexf.neighbors, cfg.mlp_ratio, hdpr[i], segments=self.n_hex_faces)
            for i in range(cfg.hex_depth)
        )
        self.hex_token = nn.Sequential(nn.LayerNorm(cfg.hex_dim), nn.Linear(cfg.hex_dim, d))

        self.num_tokens = len(self.layout.rect) + self.n_hex_faces
        self.face_names = tuple(f.name for f in self.layout.rect) + tuple(hexf.names)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, d))
        self.type_embed = nn.Embedding(3, d)
        self.register_buffer("type_ids", torch.tensor([FACE_TYPES[n] for n in self.face_names]), persistent=False)
        self.fusion = nn.ModuleList(
            TransformerLayer(d, cfg.heads, cfg.mlp_ratio, cfg.drop_path) for _ in range(cfg.fusion_depth)
        )
        self.norm = nn.LayerNorm(d)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for p in self.rect_pos.values():
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.trunc_normal_(self.hex_pos, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ faces
    def gather_cells(self, x: torch.Tensor, fill: float | None = None) -> torch.Tensor:
        """(B, N, 2) per-sensor values -> (B, L, 2) concatenated face slots; empty slots and
        padding read ``fill`` (default: the sentinel, i.e. "no reading")."""
        fill = self.sentinel if fill is None else fill
        return gather_rows(F.pad(x, (0, 0, 0, 1), value=fill), self.gather_rows, self.gather_flat)

    def rect_cells(self, cells: torch.Tensor, face) -> torch.Tensor:
        """(B, L, C) -> (B, K*C, Hp, Wp) view of one rectangular face (channels_last memory;
        channel = slot * C + c)."""
        b, _, c = cells.shape
        hp, wp = face.shape
        return cells[:, face.offset : face.offset + face.size].reshape(b, hp, wp, face.slots * c).permute(0, 3, 1, 2)

    def rect_input(self, cells: torch.Tensor, face) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Face input (B, K*2, Hp, Wp) and its FCMAE keep maps at the stem resolution and after
        the 2x2 downsampling: a position is visible when one of its sensors has a valid npho."""
        inp = self.rect_cells(cells, face)
        vis = (inp[:, 0::IN_CHANNELS] != self.sentinel).to(inp.dtype)
        if face.slots > 1:
            vis = vis.amax(dim=1, keepdim=True)
        keep1 = F.max_pool2d(vis, face.stem_stride, face.stem_stride)
        keep2 = F.max_pool2d(keep1, 2, 2)
        return inp, keep1, keep2

    def rect_face(self, cells: torch.Tensor, face) -> tuple[torch.Tensor, tuple]:
        """One rectangular face -> its token (B, D) and (f1, f2, keep1, keep2)."""
        inp, keep1, keep2 = self.rect_input(cells, face)
        h = self.stems[face.name](inp)
        h = (h.permute(0, 2, 3, 1) + self.rect_pos[face.name]).permute(0, 3, 1, 2) * keep1
        stages = self.stages if self.cfg.share_rect_backbone else self.stages[face.name]
        f1, f2 = stages(h, keep1, keep2)
        return self.rect_token[face.name](masked_mean_2d(f2, keep2)), (f1, f2, keep1, keep2)

    def hex_faces(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top + bottom -> tokens (B, 2, D), node features (B, 2N, C), keep (B, 2N, 1)."""
        hin = self.hex_cells(cells)
        hkeep = (hin[..., 0:1] != self.sentinel).to(hin.dtype)
        h = (self.hex_stem(hin) + self.hex_pos) * hkeep
        for blk in self.hex_blocks:
            h = blk(h, hkeep)
        b = h.shape[0]
        hs = h.reshape(b, self.n_hex_faces, self.hex_nodes, -1)
        ks = hkeep.reshape(b, self.n_hex_faces, self.hex_nodes, 1)
        pooled = (hs * ks).sum(dim=2) / ks.sum(dim=2).clamp_min(1.0)
        return self.hex_token(pooled), h, hkeep

    def fuse(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens + self.pos_embed + self.type_embed(self.type_ids)
        for layer in self.fusion:
            t = layer(t)
        return self.norm(t)

    def hex_cells(self, cells: torch.Tensor) -> torch.Tensor:
        return cells[:, self.layout.hex.offset :]

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """Tokens (B, T, D) plus the per-face maps the decoders and heads use:
        ``rect[name] = (f1, f2, keep1, keep2)``, ``hex = (nodes (B, F*N, C), keep (B, F*N, 1))``,
        ``cells`` (B, L, 2) input values per face slot (hidden sensors = sentinel)."""
        if x.dim() != 3 or x.shape[1] != self.n_sensors or x.shape[2] != IN_CHANNELS:
            raise ValueError(f"XECEncoder expects (B, {self.n_sensors}, 2) input, got {tuple(x.shape)}")
        if mask is not None:
            x = fill_sensors(x, mask.bool(), self.sentinel)
        cells = self.gather_cells(x)
        tokens, rect = [], {}
        for face in self.layout.rect:
            tok, rect[face.name] = self.rect_face(cells, face)
            tokens.append(tok)
        hex_tokens, h, hkeep = self.hex_faces(cells)
        t = self.fuse(torch.cat([torch.stack(tokens, dim=1), hex_tokens], dim=1))
        return {"tokens": t, "rect": rect, "hex": (h, hkeep), "cells": cells}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(x, mask)["tokens"]
